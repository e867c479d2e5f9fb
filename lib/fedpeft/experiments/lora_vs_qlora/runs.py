"""LoRA vs QLoRA: the four runs (two arms on a language model, two on a diffusion UNet), one DVC stage each.

A language-model run loads the base (full precision for ``lora``, NF4 for ``qlora``), trains ``lm_steps`` steps
timing each, evaluates, saves the adapter in fp32 and fp16 and reloads the fp16 copy; a UNet run does the same
training on VAE latents (the ``lora`` arm also draws one sample image). Each record holds the arm's speed, memory,
losses, adapter bytes, the per-step times and losses, the weight bytes by layer type and the NF4 bytes check.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from fedpeft.core import checkpoints
from fedpeft.core.config import Settings
from fedpeft.core.device import resolve_device, run_device
from fedpeft.core.profiling import measure
from fedpeft.core.records import RunRecord, RunSpec
from fedpeft.data import instruct
from fedpeft.experiments.lora_vs_qlora.settings import ARMS, DTYPES, EXPERIMENT
from fedpeft.models.causal_lm import byte_level_tokenizer, cache_smollm2, check_sequence_length
from fedpeft.models.counting import count_parameters
from fedpeft.models.text import attach_lora
from fedpeft.quantization import nf4 as qlora
from fedpeft.training import diffusion, sft


def run_specs(s: Settings) -> list[RunSpec]:
    """``<lm|unet>-<lora|qlora>-s<seed>`` for each of ``seeds``: the seed draws the adapters' initial weights and the
    batch order; the data, its split and the base model come from ``seed`` and are the same in every run."""
    first = s["seeds"][0]
    return [RunSpec(f"{kind}-{arm}-s{seed}", {"arm": arm, "seed": seed} | ({"sample": arm == "lora" and seed == first} if kind == "unet" else {}), kind)
            for kind in ("lm", "unet") for seed in s["seeds"] for arm in ARMS]


def execute(s: Settings, spec: RunSpec, progress: bool = True) -> RunRecord:  # noqa: ARG001 - no progress bars here
    arm, seed = spec.args["arm"], spec.args["seed"]
    if spec.kind == "lm":
        data = prepare_lm(s)
        with tempfile.TemporaryDirectory() as tmp:
            result = run_lm_arm(s, data, arm, Path(tmp), seed)
        extra = {"pairs": data.pairs, "train_pairs": len(data.train), "eval_pairs": len(data.eval),
                 "first_pair_rendered": instruct.render(lm_pairs(s)[0], data.tokenizer)[:600]}
        arrays = {}
    else:
        ddata = prepare_diffusion(s)
        result = run_diffusion_arm(s, ddata, arm, seed)
        extra = {"images": ddata.images, "first_caption": ddata.captions[0]}
        arrays = {"sample": diffusion_sample(s, ddata, result["unet"])} if spec.args["sample"] else {}
    scalars = {k: v for k, v in result.items() if k not in ("records", "weights", "unet", "nf4")} | extra | {"seed": seed}
    tables = {"steps": pd.DataFrame(result["records"]), "weights": result["weights"], "nf4": pd.DataFrame([result["nf4"]])}
    return RunRecord(EXPERIMENT, spec.run_id, spec.args, scalars, tables, arrays)


# --- the language model arm -------------------------------------------------------------------------------------

@dataclass
class LMData:
    base_dir: Path
    tokenizer: Any
    train: list[torch.Tensor]
    eval: list[torch.Tensor]
    pairs: int


def lm_pairs(s: Settings) -> list[instruct.Pair]:
    if s["lm_data"] == "generated":
        pairs = instruct.generated_pairs(max(s["lm_pairs"], 2), seed=s["seed"])
    elif s["lm_data"] == "stdlib":
        pairs = instruct.stdlib_pairs()
    else:
        pairs = instruct.dolly_pairs()
    if s["lm_pairs"] and s["lm_pairs"] < len(pairs):
        keep = np.random.default_rng(s["seed"]).choice(len(pairs), s["lm_pairs"], replace=False)
        pairs = [pairs[i] for i in sorted(keep)]
    return pairs


def prepare_lm(s: Settings) -> LMData:
    """The base model saved once in a folder both arms load from, and the tokenized train/eval pairs."""
    from transformers import AutoConfig, AutoTokenizer

    if s["lm_model"] == "tiny-gemma2":
        tokenizer = byte_level_tokenizer()
        torch.manual_seed(s["seed"])
        base_dir = sft.save_base(sft.tiny_gemma2(tokenizer), tokenizer, s.cache_dir / EXPERIMENT / "tiny-gemma2")
    elif s["lm_model"] == "smollm2":
        base_dir = cache_smollm2(s.cache_dir)
    else:
        base_dir = Path(s["lm_model"])  # a hub id: from_pretrained resolves it
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    check_sequence_length(s["max_length"], AutoConfig.from_pretrained(base_dir))
    train, held = instruct.split_pairs(lm_pairs(s), s["eval_fraction"], seed=s["seed"])
    return LMData(base_dir, tokenizer, instruct.tokenize_pairs(train, tokenizer, s["max_length"]),
                  instruct.tokenize_pairs(held, tokenizer, s["max_length"]), len(train) + len(held))


def lm_adapter_model(s: Settings, data: LMData, arm: str, seed: int) -> nn.Module:
    base = sft.load_for_arm(data.base_dir, arm, DTYPES[s["compute_dtype"]], DTYPES[s["base_dtype"]], s["double_quant"],
                            device=resolve_device(run_device(s.params)))
    torch.manual_seed(seed)
    return attach_lora(base, s["lora_rank"], s["lora_alpha"], s["lora_dropout"], s["target_modules"], seed=seed,
                       task_type="CAUSAL_LM")


def speed_summary(records: list[dict[str, float]], warm_steps: int) -> dict[str, float]:
    """Median steps/s over the warm steps (after the first ``warm_steps``), with the spread as half the
    interquartile range of the per-step rates."""
    rates = [1.0 / r["seconds"] for r in records[warm_steps:]]
    q1, q3 = np.percentile(rates, [25, 75])
    return {"steps_per_s": float(statistics.median(rates)), "steps_per_s_spread": float((q3 - q1) / 2),
            "timed_steps": len(rates), "total_s": float(sum(r["seconds"] for r in records))}


DTYPES_SAVE = {"fp32": torch.float32, "fp16": torch.float16}


def run_lm_arm(s: Settings, data: LMData, arm: str, work_dir: Path, seed: int) -> dict[str, Any]:
    """Load, evaluate (before any update: the arms' bases differ once NF4 re-quantizes them), train ``lm_steps``
    steps, evaluate, save the adapter in fp32 and fp16 and reload the fp16 copy."""
    autocast = DTYPES[s["compute_dtype"]] if (arm == "lora" and s["base_dtype"] == "bf16") else None
    device = resolve_device(run_device(s.params))
    with measure(device) as m:
        model = lm_adapter_model(s, data, arm, seed)
        trainer = sft.SFTTrainer(s["lm_steps"], s["grad_accum"], s["learning_rate"], s["warmup_ratio"], autocast,
                                 checkpoint_path=checkpoints.path("steps"), checkpoint_every_s=checkpoints.every_s())
        initial_eval_loss = trainer.evaluate(model, data.eval).loss
        trainer.train(model, data.train, torch.Generator().manual_seed(seed))
        records = trainer.records
    eval_loss = trainer.evaluate(model, data.eval).loss
    sizes = {dt: sft.save_adapter_copy(model, work_dir / f"{arm}_{dt}", DTYPES_SAVE[dt]) for dt in DTYPES_SAVE}
    adapter_dtype = str(next(p.dtype for n, p in model.named_parameters() if p.requires_grad)).removeprefix("torch.")
    reload_error = fp16_reload_error(s, data, arm, model, work_dir / f"{arm}_fp16", seed)
    trainable, total = count_parameters(model, trainable_only=True), count_parameters(model)
    last = records[-max(1, len(records) // 4):]
    return {"arm": arm, **speed_summary(records, s["warm_steps"]), "peak_memory_mib": m.peak_memory_bytes / 2**20,
            "memory_kind": m.memory_kind, "final_train_loss": float(np.mean([r["loss"] for r in last])),
            "initial_eval_loss": initial_eval_loss, "eval_loss": eval_loss, "adapter_fp32_bytes": sizes["fp32"], "adapter_fp16_bytes": sizes["fp16"],
            "adapter_dtype_in_training": adapter_dtype, "fp16_reload_max_abs_diff": reload_error,
            "trainable": trainable, "total": total, "records": records, "weights": qlora.weight_bytes_by_layer_type(model),
            "nf4": qlora.nf4_measured_vs_formula(model)}


@torch.no_grad()
def fp16_reload_error(s: Settings, data: LMData, arm: str, model: nn.Module, folder: Path, seed: int) -> float:
    """Largest absolute logit difference between the trained model and a fresh one loaded with the fp16 copy."""
    fresh = lm_adapter_model(s, data, arm, seed)
    sft.load_adapter_copy(fresh, folder)
    ids = data.eval[0][: min(64, len(data.eval[0]))].unsqueeze(0)
    model.eval()
    fresh.eval()
    device = next(model.parameters()).device
    return float((model(input_ids=ids.to(device)).logits.float().cpu() - fresh(input_ids=ids.to(device)).logits.float().cpu()).abs().max())


# --- the diffusion arm ------------------------------------------------------------------------------------------

@dataclass
class DiffusionData:
    components: diffusion.Components
    latents: torch.Tensor
    text: torch.Tensor
    captions: list[str]
    images: int


def prepare_diffusion(s: Settings) -> DiffusionData:
    if s["diffusion_model"] in diffusion.SIZES:
        comps = diffusion.build_components(s["diffusion_model"], seed=s["seed"])
    else:
        comps = diffusion.load_hub_components(s["diffusion_model"])
    if s["diffusion_images"] == "generated":
        images, captions = diffusion.generated_images(s["generated_images"], s["resolution"], seed=s["seed"])
    else:
        images, captions = diffusion.load_image_folder(s.data_root / s["diffusion_images"], s["resolution"], data_root=s.data_root)
    return DiffusionData(comps, diffusion.encode_images(comps, images), diffusion.encode_captions(comps, captions),
                         captions, len(images))


def run_diffusion_arm(s: Settings, data: DiffusionData, arm: str, seed: int) -> dict[str, Any]:
    """LoRA on the UNet's attention projections; for ``qlora`` every linear layer of the UNet is NF4 first."""
    device = resolve_device(run_device(s.params))
    with measure(device) as m:
        unet = copy.deepcopy(data.components.unet)
        if arm == "qlora":  # NF4 layers on the CPU path (quantize_linear_layers pins it); the LoRA UNet goes to the device
            qlora.quantize_linear_layers(unet, DTYPES[s["compute_dtype"]], s["double_quant"])
        torch.manual_seed(seed)  # the adapters' gaussian init: the same for both arms, whatever ran before
        diffusion.attach_unet_lora(unet, s["unet_lora_rank"], s["unet_lora_alpha"])
        if arm == "lora":
            unet.to(device)
        trainer = diffusion.DiffusionTrainer(data.components.scheduler, s["diffusion_steps"], s["diffusion_batch"], s["diffusion_lr"],
                                             checkpoint_path=checkpoints.path("steps"), checkpoint_every_s=checkpoints.every_s())
        images = diffusion.LatentCaptions(data.latents, data.text)
        initial_eval_loss = trainer.evaluate(unet, images).loss
        trainer.train(unet, images, torch.Generator().manual_seed(seed))
        records = trainer.records
    eval_loss = trainer.evaluate(unet, images).loss
    trainable, total = count_parameters(unet, trainable_only=True), count_parameters(unet)
    last = records[-max(1, len(records) // 4):]
    return {"arm": arm, **speed_summary(records, s["warm_steps"]), "peak_memory_mib": m.peak_memory_bytes / 2**20,
            "memory_kind": m.memory_kind, "final_train_loss": float(np.mean([r["loss"] for r in last])),
            "initial_eval_loss": initial_eval_loss, "eval_loss": eval_loss, "trainable": trainable, "total": total,
            "records": records, "unet": unet,
            "weights": qlora.weight_bytes_by_layer_type(unet), "nf4": qlora.nf4_measured_vs_formula(unet)}


def diffusion_sample(s: Settings, ddata: DiffusionData, unet) -> Any:
    """One image from ``unet`` for the first caption (DDIM, ``sample_steps`` steps, seeded)."""
    p = s.params
    return diffusion.sample_image(ddata.components, unet, ddata.captions[0],
                                  diffusion.latent_size(p["resolution"], ddata.components.vae), steps=p["sample_steps"], seed=p["seed"])


