"""Benchmark (not a test): training and inference throughput of the EuroSAT CNN on this machine.

Measures images/s of warm training steps (batch 32, Adam) and of inference (several batch sizes) for fp32 and
bf16 autocast, contiguous and channels-last, with median and spread over repeats, and writes a markdown table
with the machine's description to ``reports/benchmarks/eurosat_cnn_throughput.md``.

    .venv/bin/python benchmarks/eurosat_cnn_throughput.py [--repeats 5] [--steps 30]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import pandas as pd
import torch
import torch.nn.functional as F

from fedpeft.core.config import REPO_ROOT
from fedpeft.core.profiling import machine_description
from fedpeft.models.cnn import EuroSATCNN
from fedpeft.reporting.outputs import MarkdownReport, package_versions


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def train_rate(precision: str, channels_last: bool, steps: int, batch: int = 32) -> float:
    torch.manual_seed(0)
    model = EuroSATCNN()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch, 3, 64, 64).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))

    def step():
        with _autocast(precision):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):  # warm-up: oneDNN builds its kernels on the first calls
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


@torch.inference_mode()
def eval_rate(precision: str, channels_last: bool, batch: int, images: int = 2048) -> float:
    model = EuroSATCNN().eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, 64, 64).contiguous(memory_format=fmt)
    with _autocast(precision):
        model(x)
        start = time.perf_counter()
        for _ in range(max(1, images // batch)):
            model(x)
    return max(1, images // batch) * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    rows = []
    for precision in ("fp32", "bf16"):
        for cl in (False, True):
            tr = [train_rate(precision, cl, args.steps) for _ in range(args.repeats)]
            rows.append({"work": "train (batch 32)", "precision": precision, "channels_last": cl,
                         "median_images_per_s": statistics.median(tr), "min": min(tr), "max": max(tr)})
            for batch in (32, 64, 256):
                ev = [eval_rate(precision, cl, batch) for _ in range(args.repeats)]
                rows.append({"work": f"inference (batch {batch})", "precision": precision, "channels_last": cl,
                             "median_images_per_s": statistics.median(ev), "min": min(ev), "max": max(ev)})
    df = pd.DataFrame(rows)
    report = MarkdownReport("EuroSAT CNN throughput on this machine")
    report.text(f"`benchmarks/eurosat_cnn_throughput.py`, {args.repeats} repeats of {args.steps} warm training steps "
                "(or 2,048 inference images); median and range, images per second.")
    report.table(df, "Throughput", "{:.0f}")
    report.table(pd.DataFrame([machine_description()]), "Machine")
    report.table(package_versions(["torch"]), "Versions")
    path = report.write(REPO_ROOT / "reports" / "benchmarks" / "eurosat_cnn_throughput.md")
    print(df.round(0).to_string(index=False))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
