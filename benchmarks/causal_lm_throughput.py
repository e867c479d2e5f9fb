"""Benchmark (not a test): training and evaluation throughput of SmolLM2-135M with LoRA on this machine.

The code experiment's local model (``smollm2``, LoRA r 16 on q_proj and v_proj, packed blocks of 128 tokens).
Training: one AdamW step per batch of 2 blocks (the seed's batch size), in fp32 and under bf16 autocast.
Evaluation: the seed's evaluation batch of 4 with and without gradient tracking, then batches of 1, 4 and 8
without it, in fp32 and bf16. Tokens per second are the median over warm repeats (the first call of each setting is
discarded). Writes ``reports/benchmarks/causal_lm_throughput.md``.

    .venv/bin/python benchmarks/causal_lm_throughput.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import pandas as pd
import torch

from fedpeft.core.config import REPO_ROOT, load_raw
from fedpeft.core.device import cpu_supports_bf16
from fedpeft.core.profiling import machine_description
from fedpeft.models.causal_lm import load_causal_lm
from fedpeft.models.text import attach_lora
from fedpeft.reporting.outputs import MarkdownReport, package_versions

BLOCK = 128


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def median_tokens_per_s(fn, tokens: int, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    rates = [tokens / t for t in times]
    return statistics.median(rates), (max(rates) - min(rates)) / 2


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    cache = REPO_ROOT / load_raw("local")["common"]["cache_dir"]
    model, _ = load_causal_lm("smollm2", cache)
    model = attach_lora(model, 16, 32, 0.5, ["q_proj", "v_proj"], task_type="CAUSAL_LM")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(0, model.config.vocab_size, (8, BLOCK))
    rows = []

    for precision in ("fp32", "bf16"):
        def step(batch=ids[:2], precision=precision):
            model.train()
            with autocast(precision):
                loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        rate, spread = median_tokens_per_s(step, 2 * BLOCK, args.repeats)
        rows.append({"phase": "train", "precision": precision, "batch": 2, "gradients": "yes", "tokens/s": rate, "+/-": spread})

    for precision in ("fp32", "bf16"):
        for batch, grad in ((4, True), (1, False), (4, False), (8, False)):
            def forward(b=ids[:batch], grad=grad, precision=precision):
                model.eval()
                with torch.set_grad_enabled(grad), autocast(precision):
                    model(input_ids=b, labels=b).loss.float()
            rate, spread = median_tokens_per_s(forward, batch * BLOCK, args.repeats)
            rows.append({"phase": "eval", "precision": precision, "batch": batch, "gradients": "yes" if grad else "no",
                         "tokens/s": rate, "+/-": spread})

    table = pd.DataFrame(rows)
    report = MarkdownReport("Causal LM throughput: SmolLM2-135M + LoRA on this machine")
    report.text(__doc__.split("\n\n")[1].replace("\n", " "))
    report.text(f"This CPU has native bf16 instructions (AMX-BF16 or AVX512-BF16): **{cpu_supports_bf16()}**. "
                "Without them oneDNN emulates bf16, which is why the study's `precision: auto` stays in fp32 here.")
    report.table(table, f"Median tokens/s over {args.repeats} warm repeats (+/- half the range), blocks of {BLOCK} tokens", "{:.1f}")
    report.table(pd.DataFrame([machine_description()]), "Machine")
    report.table(package_versions(["torch", "transformers", "peft"]), "Versions")
    out = report.write(REPO_ROOT / "reports" / "benchmarks" / "causal_lm_throughput.md")
    print(table.round(1).to_string(index=False))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
