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
from fedpeft.experiments.lora_vs_qlora.experiment import EXPERIMENT as DECLARED
from fedpeft.experiments.lora_vs_qlora.settings import (  # noqa: F401 - the notebook's API
    ARMS,
    EXPERIMENT,
    FP16_RELOAD_TOLERANCE,
    load,
)
from fedpeft.models.causal_lm import build_on_meta
from fedpeft.models.lora_settings import lora_config
from fedpeft.models.text import attach_lora
from fedpeft.quantization import nf4 as qlora
from fedpeft.reporting.claims import (
    ClaimsLedger,
    at_most,
    fact,
    matches,
    not_testable,
    one_run_difference_matches,
    one_run_matches,
    one_run_ratio_matches,
    paired_faster,
    paired_greater,
    paired_less,
    positive,
    says,
    stated,
    stated_range,
)
from fedpeft.reporting.outputs import STUDY_PACKAGES, scale_gap
from fedpeft.training import diffusion, sft

TITLE = DECLARED.title
SEED_REPORT = DECLARED.seed_report
NOTEBOOK = DECLARED.notebook
LIMITATIONS = """\
- `embedded` uses a 2-layer Gemma-2 with a byte-level tokenizer, generated instruction pairs, and a tiny UNet, VAE
  and text encoder with random weights: it tests the plumbing.
- `local` uses SmolLM2-135M-Instruct (Llama architecture, 135M parameters), not Gemma-2-2B, and a small UNet built
  from a config with random weights (no diffusion weights install here): speed and memory are real, samples are
  not art. This CPU has no native bf16, so both arms compute in fp32; the seed's bf16 figures are in the analytic
  table.
- The few steps per arm measure speed and memory; they are not the seed's two epochs, so the losses compare the
  arms with each other, not with the seed's values.
- The seed's memory and speed at its own scale are judged on the committed GPU measurements (random weights, the
  `paper` profile's evidence, tallied there): its runs in `reports/paper/`, not this profile's."""
PACKAGES = STUDY_PACKAGES + DECLARED.packages

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
            "SD 1.5 at 512 px on Van Gogh paintings. " + qlora.CPU_PATH_METHOD + "\n\n" + scale_gap([
                ("language model", "Gemma-2-2B (2.6B parameters)", f"`{p['lm_model']}`"),
                ("data", "Dolly 15k: 14,860 training / 151 evaluation records", f"`{p['lm_data']}`: {r['train_pairs']:,} / {r['eval_pairs']:,} pairs"),
                ("steps", "2 epochs, about 3,700 steps of 1 x 8 (its compared runs: about 2,800)",
                 f"{p['lm_steps']} steps of {p['grad_accum']} examples (the first {p['warm_steps']} untimed)"),
                ("sequence length", "512 (its note: 768)", str(p["max_length"])),
                ("LoRA, lr", "r 16, alpha 32, 7 projections; lr 2e-4, cosine, warm-up 0.03",
                 f"r {p['lora_rank']} on {len(p['target_modules'])} projections; lr {p['learning_rate']:g}"),
                ("precision", "bf16, or NF4 + double quant with bf16 compute", f"base {p['base_dtype']}, compute {p['compute_dtype']}"),
                ("UNet", "SD 1.5 (about 860M parameters), 512 px, Van Gogh paintings",
                 f"`{p['diffusion_model']}`, {u['images']} images at {p['resolution']} px, LoRA r {p['unet_lora_rank']}, "
                 f"{p['diffusion_steps']} steps of batch {p['diffusion_batch']}"),
                ("device", "RTX 3060 12 GB, Windows", "this profile's CPU (the compute table names it); the committed GPU "
                                                       "measurements: an H100, random weights"),
                ("runs", "one per arm", f"{len(p['seeds'])} seeds per arm; 3 fresh processes per arm on the GPU"),
            ], s.profile))


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


#: Where the committed GPU measurements were made (reports/paper/lora_vs_qlora_gpu.md names the machine).
GPU_DEVICE = "NVIDIA H100 80GB HBM3"


def _gpu(gpu, model: str, arm: str, setting: str = "") -> pd.DataFrame:
    """The runs (fresh processes) of one GPU arm: one row per repeat with its peak reserved GB (10^9 bytes) and GiB,
    weight GiB and median steps/s."""
    runs, _ = gpu
    sel = runs["model"].str.startswith(model) & (runs["arm"] == arm) & runs["setting"].str.contains(setting, regex=False)
    return runs.loc[sel].set_index("repeat")


# --- claims ----------------------------------------------------------------------------------------------------

def claims(s: Settings, profile: str, lm: pd.DataFrame, dm: pd.DataFrame, adapters: pd.DataFrame, memory: pd.DataFrame,
           gpu: tuple[pd.DataFrame, pd.DataFrame] | None) -> ClaimsLedger:
    """Every claim of the seed (``002_831372d6abfe4dd9.txt``) and the study's own checks, judged by the claims engine.

    A replicate is a run: speeds are one value per run (the median of its timed steps), never a step. This profile's
    arms share each seed's data and adapter initialisation, so they are paired by seed; the GPU benchmark's arms ran
    as separate fresh processes (unpaired). The seed measured one run per arm, so its figures are compared with the
    prediction interval of one run (of a ratio, for speed-ups). Rows judged on the committed GPU measurements name
    the ``paper`` profile and the GPU as their evidence and are tallied there. Sizes computed on the meta device are
    matched to the seed's stated precision."""
    ledger = ClaimsLedger(profile, EXPERIMENT)
    ledger.few_seeds = ("its rows are speeds and losses paired within each seed on one kind of CPU (see the compute "
                        "table); more seeds must come from that kind of machine, whose kernels the speeds depend on")
    g = adapters.iloc[0]
    ledger.add("Gemma-2-2B LoRA r 16 adapter is 83.1 MB saved in fp32", f"{SEED['adapter_fp32_mb']} MB",
               matches(float(g["fp32_MB"]), stated(str(SEED["adapter_fp32_mb"])), "safetensors size", "{:.2f}", " MB"), "paper_adapters",
               f"{g['adapter_parameters']:,} parameters, serialized on the meta-device architecture; MB = 10^6 bytes",
               key="fp32_size")
    ledger.add("... and 41.6 MB in fp16", f"{SEED['adapter_fp16_mb']} MB",
               matches(float(g["fp16_MB"]), stated(str(SEED["adapter_fp16_mb"])), "safetensors size", "{:.2f}", " MB"), "paper_adapters",
               key="fp16_size")
    ledger.add("QLoRA's adapter is twice LoRA's because it is saved in fp32 (a dtype, not a method, difference)", "twice",
               matches(float(g["fp32_file_bytes"] / g["fp16_file_bytes"]), stated_range(1.95, 2.05, "twice"), "fp32 / fp16 file",
                       "{:.3f}", "x"), "paper_adapters", "the same adapter shapes in both methods; bytes per element decide the file")
    qruns = lm[lm["arm"] == "qlora"]
    ledger.add("QLoRA adapters can be cast to fp16 to match LoRA's size", "cast to fp16",
               at_most(float(qruns["fp16_reload_max_abs_diff"].max()), FP16_RELOAD_TOLERANCE,
                       "largest logit difference after reloading the fp16 copy", "{:.2g}", " logit units"), "lm_runs",
               f"every QLoRA run ({len(qruns)} seeds), reloaded in fp16 and compared with the trained model", key="fp16_cast")
    lora, qlora = lm[lm["arm"] == "lora"].set_index("seed"), lm[lm["arm"] == "qlora"].set_index("seed")
    dlora, dqlora = dm[dm["arm"] == "lora"].set_index("seed"), dm[dm["arm"] == "qlora"].set_index("seed")
    unet_band = stated_range(0.685 / 0.615, 0.695 / 0.605, "0.69 / 0.61")
    ledger.add(f"LoRA trains 45 % faster than QLoRA (language model; {s['lm_model']}, this machine)", "0.13 vs 0.09 steps/s (45 % faster)",
               one_run_matches((lora["steps_per_s"] / qlora["steps_per_s"]).tolist(), stated("1.45"), "LoRA / QLoRA steps/s", "{:.3g}",
                               "x", "seeds (each arm's run of a seed paired)", log=True), "speed_and_memory",
               "one value per run: the median steps/s of its timed steps", key="lm_speed")
    ledger.add(f"LoRA trains faster than QLoRA on the UNet (0.69 vs 0.61 it/s; {s['diffusion_model']}, this machine)", "0.69 vs 0.61 it/s",
               one_run_matches((dlora["steps_per_s"] / dqlora["steps_per_s"]).tolist(), unet_band, "LoRA / QLoRA it/s", "{:.3g}", "x",
                               "seeds (paired)", log=True), "speed_and_memory",
               "one value per run: the median steps/s of its timed steps", key="unet_speed")
    gpu_where = {"evidence_profile": "paper", "device": GPU_DEVICE}
    if gpu is not None:
        gl, gq = _gpu(gpu, "google/gemma-2-2b", "lora", "512 tokens"), _gpu(gpu, "google/gemma-2-2b", "qlora", "512 tokens")
        ledger.add("LoRA trains 45 % faster than QLoRA at Gemma-2-2B", "0.13 vs 0.09 steps/s (45 % faster)",
                   one_run_ratio_matches(gl["steps_per_s"], gq["steps_per_s"], stated("1.45"), "LoRA / QLoRA steps/s",
                                         "fresh processes a side"), "gpu_measurements",
                   "random weights, 512 tokens; one value per run: the median steps/s of its timed steps", key="gpu_speed", **gpu_where)
        # The seed's 7.40 / 7.71 GB runs used 768 tokens (its table's note: only the optimized run used 512), so the
        # 768-token rows judge its claim and the 512-token rows are the study's own check of the same gap.
        for tokens in ("768", "512"):
            gl, gq = _gpu(gpu, "google/gemma-2-2b", "lora", f"{tokens} tokens"), _gpu(gpu, "google/gemma-2-2b", "qlora", f"{tokens} tokens")
            if len(gl) and len(gq):
                ledger.add(f"Gemma-2-2B peak VRAM: QLoRA 0.31 GB below LoRA (7.40 vs 7.71 GB; {tokens} tokens)",
                           "7.40 - 7.71 = -0.31 GB",
                           one_run_difference_matches(gq["peak_reserved_GB"], gl["peak_reserved_GB"],
                                                      stated_range(7.395 - 7.715, 7.405 - 7.705, "-0.31"), "QLoRA - LoRA peak reserved memory",
                                                      "{:+.3f}", " GB", "fresh processes a side"), "gpu_measurements",
                           f"torch's peak reserved memory; QLoRA {gq['peak_reserved_GB'].mean():.2f} GB, LoRA {gl['peak_reserved_GB'].mean():.2f} GB",
                           kind="seed claim" if tokens == "768" else "study check", key=f"gpu_memory_{tokens}", **gpu_where)
        ul, uq = _gpu(gpu, "SD 1.5 UNet", "lora"), _gpu(gpu, "SD 1.5 UNet", "qlora")
        ledger.add("SD 1.5 UNet: QLoRA's fixed overhead exceeds its 4-bit saving, 4.20 vs 2.43 GB", "4.20 - 2.43 = +1.77 GB",
                   one_run_difference_matches(uq["peak_reserved_GB"], ul["peak_reserved_GB"], stated_range(4.195 - 2.435, 4.205 - 2.425, "+1.77"),
                                              "QLoRA - LoRA peak reserved memory", "{:+.3f}", " GB", "fresh processes a side"),
                   "gpu_measurements",
                   f"QLoRA {uq['peak_reserved_GB'].mean():.2f} GB, LoRA {ul['peak_reserved_GB'].mean():.2f} GB; the 4-bit weights save "
                   f"{(ul['weights_and_adapter_GiB'] - uq['weights_and_adapter_GiB']).mean():.3f} GiB", key="gpu_unet_memory", **gpu_where)
        ledger.add("SD 1.5 UNet: LoRA trains faster than QLoRA (0.69 vs 0.61 it/s)", "0.69 vs 0.61 it/s",
                   one_run_ratio_matches(ul["steps_per_s"], uq["steps_per_s"], unet_band, "LoRA / QLoRA it/s", "fresh processes a side"),
                   "gpu_measurements", "one value per run: the median it/s of its timed steps", key="gpu_unet_speed", **gpu_where)
    else:
        for claim in ("Gemma-2-2B peak VRAM 7.71 (LoRA) vs 7.40 GB (QLoRA)", "SD 1.5 UNet: QLoRA uses 4.20 GB vs LoRA's 2.43 GB"):
            ledger.add(claim, "GPU memory", not_testable("needs the GPU benchmark (benchmarks/paper_lora_vs_qlora_gpu.py)", needs="gpu"), "setup")
    gm = memory[memory["model"] == "google/gemma-2-2b"].set_index("storage")
    bits = 8 * float(gm.loc["nf4 (linear) + bf16", "bytes"] - gm.loc["nf4 + double quant (linear) + bf16", "bytes"]) / float(gm["linear_parameters"].iloc[0])
    ledger.add("Double quantization saves 0.37 bits per parameter", "0.37 bits",
               matches(bits, stated("0.37"), "bits saved per linear-layer parameter", "{:.3f}", " bits"), "paper_memory",
               "from bitsandbytes' block sizes (64 weights per fp32 absmax; 256 absmax per fp32 second-level scale), checked against measured NF4 bytes")
    ledger.add("The LoRA run's final loss is lower than QLoRA's (0.276 vs 0.70)", "0.276 vs 0.70",
               matches(SEED["lora_final_loss"], stated("0.276"), "LoRA's final training loss in the seed's own table", "{:.2f}", " nats/token"),
               "setup", "the seed's summary quotes its optimized 4-bit run's 0.276 as LoRA's; its own table gives LoRA 0.60")
    ledger.add("LoRA reaches a lower final loss than QLoRA (0.60 vs 0.70)", f"{SEED['lora_final_loss']:.2f} vs {SEED['qlora_final_loss']:.2f}",
               not_testable("the seed's training losses after two epochs of Gemma-2-2B on Dolly; this profile trains another model "
                            f"for {s['lm_steps']} steps (the held-out losses are compared in the study's checks)", needs="seed model"), "lm_runs")
    ledger.add("An evaluation loss of 1.65 indicates some overfitting", "1.65",
               not_testable("no run here reaches the seed's 3,714 steps, and the seed gives no starting evaluation loss", needs="gpu"), "lm_runs")
    ledger.add("Pure FP16 training gives NaN gradients; BF16 fixes it", "NaN in fp16",
               not_testable("no fp16 training run here: the CPU profiles compute in fp32 and the GPU benchmark in bf16", needs="gpu"), "setup")
    ledger.add("The optimized 4-bit run peaked at 14.13 GB through Windows shared memory", "14.13 GB",
               not_testable("a Windows shared-GPU-memory effect of the seed's 12 GB card; not reproducible on Linux", needs="seed machine"), "setup")
    ledger.add("Both methods yield comparable generation quality", "comparable",
               not_testable("no generation-quality evaluation (the held-out loss is compared instead)", needs="seed model"), "setup")
    ledger.add("The overhead of 4-bit dequantization outweighs the memory-bandwidth savings", "slower",
               not_testable("no kernel-level timing: the step times include everything", needs="gpu"), "speed_and_memory")
    ledger.add("For models above 7B QLoRA becomes essential", "> 7B",
               not_testable("no model above 2B is built here; paper_memory gives the per-parameter weight bytes to extrapolate", needs="seed model"),
               "paper_memory")

    # --- the study's own checks ---
    for label, table, evidence in (("language model", lm, "lm_runs"), ("UNet", dm, "unet_runs")):
        unit = " nats/token" if label == "language model" else " MSE"
        for arm in ARMS:
            t = table[table["arm"] == arm]
            ledger.check(f"{'LoRA' if arm == 'lora' else 'QLoRA'} lowers the held-out loss ({label})",
                         positive((t["initial_eval_loss"] - t["eval_loss"]).tolist(), f"{arm} held-out loss drop ({label})",
                                  "{:.4g}", unit), evidence, f"{len(t)} seeds; the seed says both methods converged",
                         seed_figure="both converged")
    start_gap = float(qlora["initial_eval_loss"].mean() - lora["initial_eval_loss"].mean())
    ledger.check("LoRA reaches a lower held-out loss than QLoRA (language model)",
                 paired_less(lora["eval_loss"], qlora["eval_loss"], 0.0, "LoRA - QLoRA held-out loss", "{:+.4f}", " nats/token",
                             "seeds, paired"), "lm_runs",
                 f"confounded: before any update QLoRA's loss is already {start_gap:+.3f} higher, because NF4 re-quantizes the base",
                 key="lm_loss")
    ledger.check("... once the arms' starting losses are discounted: LoRA lowers the loss more than QLoRA",
                 paired_greater(lora["initial_eval_loss"] - lora["eval_loss"], qlora["initial_eval_loss"] - qlora["eval_loss"], 0.0,
                                "LoRA - QLoRA loss drop", "{:+.4f}", " nats/token", "seeds, paired"), "lm_runs",
                 "the fair version of the comparison above", key="lm_drop")
    for label, a, b, key in (("language model", lora, qlora, "lm_faster"), ("UNet", dlora, dqlora, "unet_faster")):
        ledger.check(f"LoRA trains faster than QLoRA ({label}, this machine)",
                     paired_faster(a["steps_per_s"], b["steps_per_s"], "LoRA / QLoRA steps/s", "seeds, paired"), "speed_and_memory",
                     "a direction; the seed's magnitude is judged above", key=key)
    unet = memory[memory["model"] == "SD 1.5 UNet"]
    share = float(unet["linear_parameters"].iloc[0] / (unet["linear_parameters"].iloc[0] + unet["other_parameters"].iloc[0]))
    ledger.check("Only the SD 1.5 UNet's linear layers become NF4", fact(f"{100 * share:.0f} % of its weights are in linear layers",
                                                                         "bitsandbytes quantizes linear layers; convolutions stay bf16"),
                 "paper_memory", key="unet_linear_share")
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


def finding(s: Settings, lm: pd.DataFrame, dm: pd.DataFrame, adapters: pd.DataFrame, memory: pd.DataFrame,
            claims: ClaimsLedger, gpu: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> str:
    """The report's opening paragraph, written from the measured tables and the ledger's verdicts: the GPU
    measurements at the seed's scale first (where they exist), then this profile's runs."""
    v = claims.verdicts
    by, d = arm_means(lm), arm_means(dm)
    g = adapters.iloc[0]
    gm = memory[memory["model"] == "google/gemma-2-2b"].set_index("storage")["GB"]
    um = memory[memory["model"] == "SD 1.5 UNet"].set_index("storage")["GB"]
    dq = "nf4 + double quant (linear) + bf16"
    parts = []
    memory_key = next((k for k in ("gpu_memory_768", "gpu_memory_512") if k in v), None)
    if gpu is not None and "gpu_speed" in v and memory_key and "gpu_unet_memory" in v:
        tokens = memory_key.rsplit("_", 1)[1]
        gl, gq = _gpu(gpu, "google/gemma-2-2b", "lora", f"{tokens} tokens"), _gpu(gpu, "google/gemma-2-2b", "qlora", f"{tokens} tokens")
        ul, uq = _gpu(gpu, "SD 1.5 UNet", "lora"), _gpu(gpu, "SD 1.5 UNet", "qlora")
        gap, ugap = v[memory_key].interval.estimate, v["gpu_unet_memory"].interval.estimate
        parts.append(
            f"At the seed's scale, on an {GPU_DEVICE} (random weights, {len(gl)} fresh processes per arm; the `paper` profile's "
            f"evidence): Gemma-2-2B with QLoRA peaked at {gq['peak_reserved_GB'].mean():.2f} GB against LoRA's "
            f"{gl['peak_reserved_GB'].mean():.2f} GB at {tokens} tokens; "
            + says(v[memory_key], "the seed's 0.31 GB difference holds ({measured}).",
                   f"QLoRA saves {'more' if gap < -0.31 else 'less'} than the seed's 0.31 GB ({{measured}}).",
                   "the seed's 0.31 GB difference is undecided ({measured}).", "")
            + f" On the SD 1.5 UNet QLoRA peaked at {uq['peak_reserved_GB'].mean():.2f} GB and LoRA at {ul['peak_reserved_GB'].mean():.2f} GB: "
            + says(v["gpu_unet_memory"], "QLoRA's overhead exceeds its saving by what the seed says ({measured}).",
                   ("QLoRA needs no more memory than LoRA, so the seed's 1.77 GB overhead does not appear ({measured})." if ugap <= 0 else
                    f"QLoRA's extra memory is {'smaller' if ugap < 1.77 else 'larger'} than the seed's 1.77 GB ({{measured}})."),
                   "undecided ({measured}).", "")
            + " LoRA's speed-up over QLoRA on Gemma is " + says(v["gpu_speed"], "one a single run could share with the seed's 45 % "
                                                                 "({measured}).", "not the seed's 45 % ({measured}).",
                                                                 "too uncertain to place the seed's 45 % ({measured}).", ""))
    parts += [
        f"On `{s['lm_model']}` here LoRA ran at {by.loc['lora', 'steps_per_s']:.3g} steps/s and QLoRA at "
        f"{by.loc['qlora', 'steps_per_s']:.3g}: " + says(v["lm_faster"], "LoRA is faster ({measured}, paired by seed)",
                                                        "QLoRA is faster ({measured}, paired by seed)",
                                                        "no speed difference can be told ({measured}, paired by seed)", "")
        + "; " + says(v["lm_speed"], "one run of this study could still show the seed's 45 %.",
                      "the seed's 45 % lies outside what one run gives.", "too few runs to place the seed's 45 %.", "")
        + f" Peak memory {by.loc['lora', 'peak_memory_mib']:.0f} vs {by.loc['qlora', 'peak_memory_mib']:.0f} MiB "
        f"({lm['memory_kind'].iloc[0]}; a CPU process computing in fp32, so not the GPU's picture). Held-out loss after "
        f"{s['lm_steps']} steps {by.loc['lora', 'eval_loss']:.4f} vs {by.loc['qlora', 'eval_loss']:.4f} nats/token, from "
        f"{by.loc['lora', 'initial_eval_loss']:.4f} vs {by.loc['qlora', 'initial_eval_loss']:.4f} before training; "
        + says(v["lm_drop"], "LoRA lowered it more ({measured}).", "QLoRA lowered it more ({measured}).",
               "the two lowered it by amounts that cannot be told apart ({measured}).", ""),
        f"On the `{s['diffusion_model']}` UNet: {d.loc['lora', 'steps_per_s']:.3g} vs {d.loc['qlora', 'steps_per_s']:.3g} steps/s "
        "(" + says(v["unet_faster"], "LoRA faster, {measured}", "QLoRA faster, {measured}", "no difference told, {measured}", "")
        + f"), {d.loc['lora', 'peak_memory_mib']:.0f} vs {d.loc['qlora', 'peak_memory_mib']:.0f} MiB.",
        f"The seed's Gemma-2-2B adapter has {g['adapter_parameters']:,} parameters: {g['fp32_MB']:.1f} MB in fp32 and "
        f"{g['fp16_MB']:.1f} MB in fp16" + (", the seed's two sizes, so the difference it saw is the dtype the adapter was saved in."
                                             if v["fp32_size"].verdict == v["fp16_size"].verdict == "holds" else
                                             ", not both of the seed's sizes.")
        + f" {reload_sentence(lm)}",
        f"4-bit weights shrink Gemma-2-2B from {gm['bf16']:.2f} GB (bf16) to {gm[dq]:.2f} GB but the SD 1.5 UNet only from "
        f"{um['bf16']:.2f} to {um[dq]:.2f} GB: " + claims.verdicts["unet_linear_share"].measured + ", and only those become NF4.",
    ]
    return " ".join(parts)
