"""Benchmark (not a test): the study's trainers against a plain PyTorch loop on the same batches.

For the EuroSAT CNN (``ClassifierTrainer``: Adam, batch 32) and MiniLM with LoRA (``TextClassifierTrainer``: AdamW,
linear decay, batch 16), one local epoch is timed through the study's trainer and through a plain loop written
here with the same model, optimizer, batch order and loss bookkeeping. Repetitions are interleaved in ABBA order
(study, plain, plain, study, ...) so that the machine's drift hits both alike; the table reports each side's
median examples/s and the median and spread (min-max) of the per-repetition ratio plain / study. The goal is a
ratio within 5 % of 1. Writes ``reports/benchmarks/trainer_overhead.md``.

    .venv/bin/python benchmarks/trainer_overhead.py [--repeats 6]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import pandas as pd
import torch
import torch.nn.functional as F

from fedpeft.core.config import REPO_ROOT
from fedpeft.core.profiling import machine_description
from fedpeft.core.seeding import seeded_generator
from fedpeft.data import glue
from fedpeft.data.eurosat import generate_landcover_images, normalize_batch
from fedpeft.models.cnn import EuroSATCNN
from fedpeft.models.text import attach_lora, load_text_model
from fedpeft.reporting.outputs import MarkdownReport, package_versions
from fedpeft.training.contract import batches
from fedpeft.training.image import ClassifierTrainer
from fedpeft.training.text import TextClassifierTrainer, length_grouped_batches


def plain_image_epoch(model, data, lr: float, batch_size: int, generator: torch.Generator) -> float:
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    total = 0.0
    for idx in batches(len(data), batch_size, generator):
        loss = F.cross_entropy(model(normalize_batch(data.images[idx])), data.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
    return total / len(data)


def plain_text_epoch(model, data, lr: float, batch_size: int, generator: torch.Generator) -> float:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    steps = -(-len(data) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / steps)
    total = 0.0
    for idx in length_grouped_batches(data.lengths, batch_size, generator):
        loss = F.cross_entropy(model(**data.batch(idx)).logits, data.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item() * len(idx)
    return total / len(data)


def interleaved(study_fn, plain_fn, examples: int, repeats: int) -> dict[str, float]:
    """Examples/s of each side over ``repeats`` ABBA-ordered pairs, and the plain/study ratio per pair."""
    study_fn(0), plain_fn(0)  # warm-up: oneDNN and the allocator settle on the first calls
    study, plain = [], []
    for r in range(repeats):
        order = (("study", study_fn), ("plain", plain_fn)) if r % 2 == 0 else (("plain", plain_fn), ("study", study_fn))
        for name, fn in order:
            start = time.perf_counter()
            fn(r + 1)
            (study if name == "study" else plain).append(examples / (time.perf_counter() - start))
    ratios = [p / s for p, s in zip(plain, study, strict=True)]
    return {"study examples/s": statistics.median(study), "plain examples/s": statistics.median(plain),
            "ratio plain/study (median)": statistics.median(ratios), "ratio min": min(ratios), "ratio max": max(ratios),
            "repeats": repeats}


def image_case(repeats: int) -> dict[str, float]:
    data = generate_landcover_images(128, seed=0)  # 1,280 images of 64 x 64
    torch.manual_seed(0)
    base = EuroSATCNN()
    trainer = ClassifierTrainer(lr=1e-3, batch_size=32, epochs=1)

    def study(r):
        trainer.train(copy.deepcopy(base), data, seeded_generator(0, r))

    def plain(r):
        plain_image_epoch(copy.deepcopy(base), data, 1e-3, 32, seeded_generator(0, r))

    return {"model": "EuroSAT CNN (Adam, batch 32)", "examples": len(data)} | interleaved(study, plain, len(data), repeats)


def text_case(repeats: int) -> dict[str, float]:
    table = glue.generate_sentiment_sentences(320, 0)
    model, tokenizer = load_text_model("minilm", 2, seed=0)
    base = attach_lora(model, 8, 16, 0.0, ["query", "value"], seed=0)
    data = glue.tokenize(tokenizer, table, 64)
    trainer = TextClassifierTrainer("sst2", lr=2e-4, batch_size=16, epochs=1)

    def study(r):
        trainer.train(copy.deepcopy(base), data, seeded_generator(0, r))

    def plain(r):
        plain_text_epoch(copy.deepcopy(base), data, 2e-4, 16, seeded_generator(0, r))

    return {"model": "MiniLM-L6 + LoRA r 8 (AdamW, batch 16)", "examples": len(data)} | interleaved(study, plain, len(data), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    rows = [image_case(args.repeats), text_case(args.repeats)]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    report = MarkdownReport("Study trainers against a plain PyTorch loop")
    report.text(__doc__.split("\n\n")[1])
    report.table(table, "One local epoch, study trainer vs plain loop on the same batches (ratio > 1: the plain loop is faster)")
    report.table(pd.DataFrame([machine_description()]), "Machine")
    report.table(package_versions(("torch", "transformers", "peft")), "Versions")
    report.write(REPO_ROOT / "reports" / "benchmarks" / "trainer_overhead.md")


if __name__ == "__main__":
    main()
