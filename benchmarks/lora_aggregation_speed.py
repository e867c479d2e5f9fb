"""Benchmark (not a test): server-side time of one round's LoRA aggregation at RoBERTa sizes.

For roberta-base (12 layers x query, value: 768 x 768) and roberta-large (24 layers, 1024 x 1024) with LoRA
r = 8 and K clients, times one round of each aggregation: naive A/B averaging, FFA-LoRA (B only), FLoRA
stacking, and delta-W + SVD back to r = 8 computed two ways: from the stacked factors (QR + a small SVD, what
``fedpeft.lora`` does) and from the dense mean delta-W (``torch.linalg.svd`` of an out x in matrix, what the
report's description implies). Median of repeats; writes ``reports/benchmarks/lora_aggregation_speed.md``.

    .venv/bin/python benchmarks/lora_aggregation_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch

from fedpeft.core.config import REPO_ROOT
from fedpeft.core.profiling import machine_description
from fedpeft.federated.lora_aggregation import LoraFactors, aggregate, mean_delta
from fedpeft.reporting.outputs import MarkdownReport, package_versions

MODELS = {"roberta-base": (12, 768), "roberta-large": (24, 1024)}


def dense_svd(factors, weights, rank):
    u, s, vh = torch.linalg.svd(mean_delta(factors, weights), full_matrices=False)
    return u[:, :rank] * s[:rank], vh[:rank]


def time_round(fn, layers, repeats: int) -> float:
    """Median seconds to aggregate every adapted layer once (one round)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for factors in layers:
            fn(factors)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for model, (num_layers, width) in MODELS.items():
        for k in (3, 10):
            shared_a = [torch.randn(args.rank, width) * 0.01 for _ in range(2 * num_layers)]
            layers = [[LoraFactors(torch.randn(args.rank, width) * 0.01, torch.randn(width, args.rank) * 0.01, 1.0)
                       for _ in range(k)] for i in range(2 * num_layers)]
            ffa_layers = [[LoraFactors(shared_a[i], f.B, 1.0) for f in layer] for i, layer in enumerate(layers)]
            w = [1.0 / k] * k
            methods = {
                "naive": (lambda fs, w=w: aggregate("naive", fs, w), layers),
                "ffa": (lambda fs, w=w: aggregate("ffa", fs, w), ffa_layers),
                "flora": (lambda fs, w=w: aggregate("flora", fs, w), layers),
                "svd (stacked factors)": (lambda fs, w=w: aggregate("svd", fs, w, svd_rank=args.rank), layers),
                "svd (dense delta-W)": (lambda fs, w=w: dense_svd(fs, w, args.rank), layers),
            }
            for name, (fn, data) in methods.items():
                seconds = time_round(fn, data, args.repeats)
                rows.append({"model": model, "adapted layers": 2 * num_layers, "clients": k, "aggregation": name,
                             "ms per round": 1000 * seconds})
    table = pd.DataFrame(rows)
    wide = table.pivot_table(index=["model", "clients"], columns="aggregation", values="ms per round").reset_index()
    report = MarkdownReport("LoRA aggregation time per round (server side)")
    report.text(__doc__.split("\n\n")[1].replace("\n", " "))
    report.table(wide, f"Median ms per round over {args.repeats} repeats, LoRA r = {args.rank}", "{:.1f}")
    report.table(pd.DataFrame([machine_description()]), "Machine")
    report.table(package_versions(["torch", "numpy"]), "Versions")
    out = report.write(REPO_ROOT / "reports" / "benchmarks" / "lora_aggregation_speed.md")
    print(wide.round(1).to_string(index=False))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
