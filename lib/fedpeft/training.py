"""Local training and evaluation of an image classifier held as :class:`~fedpeft.data.ImageArrays`.

Batches are drawn by index from in-memory uint8 tensors and normalized on the fly; on CPUs with bf16 support
(AMX) ``precision="bf16"`` runs forward and backward under ``torch.autocast`` with channels-last tensors, which
is 2-3x faster than fp32 for the EuroSAT CNN. Master weights and the optimizer stay in fp32 either way.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageArrays, normalize_batch

PRECISIONS = ("fp32", "bf16")
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class TrainStats:
    loss: float  # mean training loss over the examples seen (task loss, without a proximal term)
    examples: int  # examples processed, epochs included
    seconds: float


@dataclass
class EvalStats:
    loss: float  # mean cross-entropy per example
    accuracy: float  # fraction in [0, 1]
    examples: int
    seconds: float


def batches(n: int, batch_size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Index batches over ``n`` examples; shuffled when a generator is given; the last batch may be short."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


@dataclass
class ClassifierTrainer:
    """Trains a classifier for ``epochs`` local epochs with a fresh optimizer each call (as the seeds do)."""

    lr: float
    batch_size: int
    epochs: int
    optimizer: str = "adam"
    precision: str = "fp32"
    channels_last: bool = False
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision = {self.precision!r} is not allowed; it must be one of {list(PRECISIONS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer = {self.optimizer!r} is not allowed; it must be one of {list(OPTIMIZERS)}")
        for name in ("batch_size", "epochs", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)!r} is not allowed; it must be an integer >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr = {self.lr!r} is not allowed; it must be > 0")

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize_batch(images)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def _make_optimizer(self, params) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.lr)
        return torch.optim.SGD(params, lr=self.lr)

    def train(
        self,
        model: nn.Module,
        data: ImageArrays,
        generator: torch.Generator,
        extra_loss: Callable[[nn.Module], torch.Tensor | None] | None = None,
    ) -> TrainStats:
        """Train in place. ``extra_loss(model)`` (e.g. FedProx's proximal term) is added to each batch's loss."""
        if len(data) == 0:
            raise ValueError("cannot train on an empty data set")
        model.train()
        opt = self._make_optimizer([p for p in model.parameters() if p.requires_grad])
        total_loss, seen = 0.0, 0
        start = time.perf_counter()
        for _ in range(self.epochs):
            for idx in batches(len(data), self.batch_size, generator):
                x, y = self._inputs(data.images[idx]), data.labels[idx]
                with self._autocast():
                    loss = F.cross_entropy(model(x), y)
                optimizer_step(opt, model, loss, extra_loss)
                total_loss += loss.item() * len(idx)
                seen += len(idx)
        return TrainStats(loss=total_loss / seen, examples=seen, seconds=time.perf_counter() - start)

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, data: ImageArrays, input_dtype: torch.dtype | None = None) -> EvalStats:
        """Loss and accuracy of ``model`` on ``data``; ``input_dtype`` feeds e.g. an fp16 model fp16 inputs."""
        preds = self.predict(model, data, input_dtype)
        start = time.perf_counter()
        loss = F.cross_entropy(preds["logits"], data.labels, reduction="sum").item() if len(data) else float("nan")
        correct = (preds["logits"].argmax(1) == data.labels).sum().item()
        n = max(len(data), 1)
        return EvalStats(loss=loss / n, accuracy=correct / n, examples=len(data), seconds=preds["seconds"] + time.perf_counter() - start)

    @torch.inference_mode()
    def predict(self, model: nn.Module, data: ImageArrays, input_dtype: torch.dtype | None = None) -> dict:
        model.eval()
        start = time.perf_counter()
        outs = []
        for idx in batches(len(data), self.eval_batch_size):
            x = self._inputs(data.images[idx])
            if input_dtype is not None:
                x = x.to(input_dtype)
            with self._autocast() if input_dtype is None else contextlib.nullcontext():
                outs.append(model(x).float())
        logits = torch.cat(outs) if outs else torch.empty(0)
        return {"logits": logits, "seconds": time.perf_counter() - start}


def optimizer_step(optimizer: torch.optim.Optimizer, model: nn.Module, loss: torch.Tensor,
                   extra_loss: Callable[[nn.Module], torch.Tensor | None] | None = None) -> None:
    """One optimizer step on ``loss`` plus ``extra_loss(model)`` when that gives a term (FedProx's proximal
    term); the caller logs ``loss`` alone."""
    objective = loss
    if extra_loss is not None:
        term = extra_loss(model)
        if term is not None:
            objective = loss + term
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    optimizer.step()


def seeded_generator(*keys: int) -> torch.Generator:
    """A torch generator seeded from a tuple of integers (e.g. run seed, round, client), stable across runs."""
    seed = int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] % (2**63))
    return torch.Generator().manual_seed(seed)
