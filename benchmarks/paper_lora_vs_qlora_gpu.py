"""LoRA vs QLoRA at the seed's full size on a GPU: peak memory and steps/s (a measurement, not a test).

The seed of notebook 03 (``../shared/seeds/002_831372d6abfe4dd9.txt``) reports, on an RTX 3060, Gemma-2-2B peak VRAM
7.71 GB (LoRA, bf16) vs 7.40 GB (QLoRA, NF4 + double quantization, bf16 compute) at batch 1, sequence 512, r 16 on
the seven projections, and for the SD 1.5 UNet 2.43 GB (LoRA) vs 4.20 GB (QLoRA) at 0.69 vs 0.61 it/s. This script
rebuilds both architectures from their published configs with **random weights** (nothing can be downloaded; memory
and speed depend on shapes and dtypes, not on the values), puts the seed's adapters on them through the study's own
loaders and trainers (``sft.load_for_arm``, ``SFTTrainer``, ``nf4.quantize_linear_layers``, ``DiffusionTrainer``), and
times every optimizer step. Each arm runs in a fresh process so that one arm's cached blocks cannot lower the next
arm's peak, and each arm runs ``--repeats`` times (a fresh process each), so that the claims engine judges speed
on every timed step of every repeat and memory on every repeat's peak.

Reported per arm: peak ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` (GiB and GB, from an empty
device; the reserved figure is the closer one to what ``nvidia-smi`` or a Windows task manager shows, minus the CUDA
context), and steps/s as the median of the warm steps with the interquartile range. A Gemma step is one optimizer
update of 8 examples (batch 1 x gradient accumulation 8, as the seed); a UNet step is one update of batch 1 at 512 px
(64 x 64 latents), as the seed's loop.

    python benchmarks/paper_lora_vs_qlora_gpu.py            # every arm, writes reports/paper/lora_vs_qlora_gpu.{md,csv}
    python benchmarks/paper_lora_vs_qlora_gpu.py --arms gemma:lora:512 gemma:qlora:512 --repeats 3 --out-dir DIR
    python benchmarks/paper_lora_vs_qlora_gpu.py --one gemma:lora:512 --json out.json   # one arm (used internally)

Writes ``lora_vs_qlora_gpu.csv`` (one row per arm and repeat), ``lora_vs_qlora_gpu_steps.csv`` (every timed step's
seconds) and the markdown summary; ``--merge`` adds the rows of an earlier CSV (other arms run in another call).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

GEMMA_STEPS, UNET_STEPS, WARM = 12, 40, 4  # optimizer steps timed per arm; the first WARM are not counted
ARMS = ("gemma:lora:512", "gemma:qlora:512", "gemma:lora:768", "gemma:qlora:768", "unet:lora:0", "unet:qlora:0")
GEMMA_BASE = Path(tempfile.gettempdir()) / "fedpeft-gemma-2-2b-random"
GIB, GB = 2**30, 1e9


def _speed(records: list[dict]) -> dict:
    rates = np.array([1.0 / r["seconds"] for r in records[WARM:]])
    q1, med, q3 = np.percentile(rates, [25, 50, 75])
    return {"timed_steps": len(rates), "steps_per_s": float(med), "steps_per_s_q1": float(q1), "steps_per_s_q3": float(q3),
            "step_seconds": [float(r["seconds"]) for r in records[WARM:]]}


def gemma_arm(arm: str, seq: int) -> dict:
    from fedpeft.models.text import attach_lora
    from fedpeft.training import sft

    folder = GEMMA_BASE
    if not (folder / "config.json").exists():
        from transformers import Gemma2ForCausalLM

        torch.manual_seed(0)
        model = Gemma2ForCausalLM(sft.gemma2_2b_config()).to(torch.bfloat16)
        model.save_pretrained(folder)
        del model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = sft.load_for_arm(folder, arm, torch.bfloat16, torch.bfloat16, double_quant=True)
    model = attach_lora(base, 16, 32, 0.05, sft.SEED_TARGETS, seed=0, task_type="CAUSAL_LM")
    if arm == "lora":
        model.to("cuda")
    after_load = torch.cuda.memory_allocated()
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(3, 256000, (seq,), generator=g) for _ in range(64)]
    trainer = sft.SFTTrainer(GEMMA_STEPS, 8, 2e-4, 0.03)
    trainer.train(model, data, torch.Generator().manual_seed(0))
    return {"model": "google/gemma-2-2b (random weights)", "arm": arm, "setting": f"batch 1 x accum 8, {seq} tokens, r 16, 7 projections",
            "weights_and_adapter_GiB": after_load / GIB, **_peaks(), **_speed(trainer.records)}


def unet_arm(arm: str, seq: int = 0) -> dict:  # noqa: ARG001 - same signature as gemma_arm
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from fedpeft.quantization import nf4
    from fedpeft.training import diffusion

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**diffusion.SD15_UNET).to(torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()
    if arm == "qlora":
        nf4.quantize_linear_layers(unet, torch.bfloat16, double_quant=True)
    unet.to("cuda")
    diffusion.attach_unet_lora(unet, 4, 4)
    after_load = torch.cuda.memory_allocated()
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(8, 4, 64, 64, generator=g).to("cuda", torch.bfloat16)
    text = torch.randn(8, 77, 768, generator=g).to("cuda", torch.bfloat16)
    trainer = diffusion.DiffusionTrainer(DDPMScheduler(num_train_timesteps=1000), UNET_STEPS, 1, 1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # bf16 weights, fp32 noise: mixed precision as the seed's Accelerate loop
        trainer.train(unet, diffusion.LatentCaptions(latents, text), torch.Generator().manual_seed(0))
    return {"model": "SD 1.5 UNet (random weights)", "arm": arm, "setting": "batch 1, 512 px (64x64 latents), r 4, attention",
            "weights_and_adapter_GiB": after_load / GIB, **_peaks(), **_speed(trainer.records)}


def _peaks() -> dict:
    alloc, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    return {"peak_allocated_GiB": alloc / GIB, "peak_reserved_GiB": reserved / GIB, "peak_reserved_GB": reserved / GB}


def run_all(out_dir: Path, arms: tuple[str, ...] = ARMS, repeats: int = 3, merge: Path | None = None) -> None:
    from fedpeft.core.profiling import machine_description
    from fedpeft.reporting.outputs import MarkdownReport, package_versions

    rows, steps = [], []
    for arm in arms:
        for repeat in range(repeats):
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                start = time.perf_counter()
                subprocess.run([sys.executable, __file__, "--one", arm, "--json", f.name], check=True)
                row = json.loads(Path(f.name).read_text())
            row["arm_wall_s"], row["repeat"], row["arm_id"] = time.perf_counter() - start, repeat, arm
            steps += [{"model": row["model"], "arm": row["arm"], "setting": row["setting"], "repeat": repeat, "step": i + WARM + 1,
                       "seconds": sec} for i, sec in enumerate(row.pop("step_seconds"))]
            rows.append(row)
            print({k: v for k, v in row.items()}, flush=True)
    table, step_table = pd.DataFrame(rows), pd.DataFrame(steps)
    out_dir.mkdir(parents=True, exist_ok=True)
    if merge is not None:
        table = pd.concat([pd.read_csv(merge), table], ignore_index=True)
        step_table = pd.concat([pd.read_csv(merge.with_name(merge.stem + "_steps.csv")), step_table], ignore_index=True)
    table.to_csv(out_dir / "lora_vs_qlora_gpu.csv", index=False)
    step_table.to_csv(out_dir / "lora_vs_qlora_gpu_steps.csv", index=False)
    if GEMMA_BASE.exists():
        import shutil

        shutil.rmtree(GEMMA_BASE)
    seed = pd.DataFrame([
        {"model": "google/gemma-2-2b", "arm": "lora", "seed_peak_GB": 7.71, "seed_steps_per_s": 0.13, "seed_tokens": "768 (its note)"},
        {"model": "google/gemma-2-2b", "arm": "qlora", "seed_peak_GB": 7.40, "seed_steps_per_s": 0.09, "seed_tokens": "768 (its note)"},
        {"model": "SD 1.5 UNet", "arm": "lora", "seed_peak_GB": 2.43, "seed_steps_per_s": 0.69},
        {"model": "SD 1.5 UNet", "arm": "qlora", "seed_peak_GB": 4.20, "seed_steps_per_s": 0.61},
    ])
    summary = table.groupby(["model", "arm", "setting"], sort=False).agg(
        repeats=("repeat", "count"), peak_reserved_GiB=("peak_reserved_GiB", "mean"), peak_reserved_GiB_max=("peak_reserved_GiB", "max"),
        peak_allocated_GiB=("peak_allocated_GiB", "mean"), steps_per_s=("steps_per_s", "median")).reset_index()
    report = MarkdownReport("Paper profile: LoRA vs QLoRA at full size on a GPU")
    report.text(__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1])
    report.table(summary, "Measured here (random weights, the seed's shapes and settings): mean over repeats, median steps/s")
    report.table(table.drop(columns=["arm_wall_s"]), "Every repeat (a fresh process each)")
    report.table(seed, "The seed's figures (RTX 3060 12 GB). Its parameters say sequence 512, but its note says the compared runs used 768")
    report.table(pd.DataFrame([machine_description()]), "Machine")
    report.table(package_versions(("torch", "transformers", "peft", "bitsandbytes", "diffusers")), "Versions")
    report.write(out_dir / "lora_vs_qlora_gpu.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=ARMS)
    parser.add_argument("--json")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per arm")
    parser.add_argument("--merge", type=Path, default=None, help="an earlier lora_vs_qlora_gpu.csv whose rows to keep")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the CSVs and markdown go (default reports/paper)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU (the paper profile's memory claims are GPU memory)")
    if args.one:
        kind, arm, seq = args.one.split(":")
        row = (gemma_arm if kind == "gemma" else unet_arm)(arm, int(seq))
        Path(args.json).write_text(json.dumps(row))
        return
    from fedpeft.core.config import REPO_ROOT

    if args.repeats < 1:
        sys.exit(f"--repeats = {args.repeats}: at least 1")
    run_all(args.out_dir or REPO_ROOT / "reports" / "paper", tuple(args.arms), args.repeats, args.merge)


if __name__ == "__main__":
    main()
