"""Local training and evaluation of a transformers sequence classifier on :class:`~fedpeft.data.glue.TokenizedText`.

Mirrors what the GLUE report's Hugging Face ``Trainer`` did each round (AdamW, a fresh optimizer and a linear
decay to zero over the local steps, no warm-up), written as a plain loop so that the federated round loop can
add FedProx's proximal term and seed every batch order from ``(seed, round, client)``.

A regression task (STS-B) predicts ``target_scale`` times the model's output, so its MSE and predictions stay on the
task's own score scale (0 to 5) while the head works near [0, 1]. With Adam this is the same as training on targets
divided by ``target_scale``; it matters because a fresh head needs many Adam steps to reach outputs of about 2.7 (the
mean STS-B score): at the ``local`` profile's 50 to 120 steps per round, raw 0-5 targets left MiniLM's STS-B
predictions near the mean score (Pearson near 0) for several rounds.

Batches are grouped by length (as ``Trainer(group_by_length=True)``): the examples are shuffled, cut into
chunks of 50 batches, sorted by length inside a chunk, and the batches are shuffled again. GLUE sentences are
short and vary a lot in length, so this removes most padding (about 2.5x faster on SST-2 with MiniLM).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedpeft.core.device import resolve_device, synchronize
from fedpeft.data.glue import TokenizedText, compute_metrics, get_task
from fedpeft.training.contract import (
    EvalResult,
    ExtraLoss,
    Trainer,
    TrainStats,
    check_learning_rate,
    check_positive_int,
    optimizer_step,
)

SCHEDULES = ("linear", "constant")


def length_grouped_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator, chunk_batches: int = 50) -> Iterator[torch.Tensor]:
    """Shuffled index batches of similar lengths; every index appears exactly once per epoch."""
    order = torch.randperm(len(lengths), generator=generator)
    chunk = batch_size * chunk_batches
    batches: list[torch.Tensor] = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[torch.argsort(lengths[part], descending=True, stable=True)]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    for j in torch.randperm(len(batches), generator=generator).tolist():
        yield batches[j]


@dataclass
class TextClassifierTrainer(Trainer):
    """``epochs`` may be fractional (the report's ``--local_epochs 1.0``): the loop stops after
    ``ceil(epochs * examples / batch_size)`` optimizer steps. ``target_scale`` (regression only): the prediction is
    this times the model's output."""

    task: str
    lr: float
    batch_size: int
    epochs: float
    weight_decay: float = 0.0
    schedule: str = "linear"
    eval_batch_size: int = 64
    device: str = "cpu"
    target_scale: float = 1.0

    def __post_init__(self) -> None:
        self.spec = get_task(self.task)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule = {self.schedule!r} is not allowed; it must be one of {list(SCHEDULES)}")
        check_positive_int(self, "batch_size", "eval_batch_size")
        if not isinstance(self.epochs, (int, float)) or not 0 < self.epochs < float("inf"):
            raise ValueError(f"epochs = {self.epochs!r} is not allowed; it must be a finite number > 0")
        check_learning_rate(self.lr)
        if not isinstance(self.target_scale, (int, float)) or not 0 < self.target_scale < float("inf"):
            raise ValueError(f"target_scale = {self.target_scale!r} is not allowed; it must be a finite number > 0")
        if self.target_scale != 1 and not self.spec.is_regression:
            raise ValueError(f"target_scale = {self.target_scale!r} is not allowed for {self.task}, a classification task; "
                             "it scales a regression task's predictions, so it must be 1 here")
        self.torch_device = resolve_device(self.device)

    def _batch(self, data: TokenizedText, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.to(self.torch_device, non_blocking=True) for k, v in data.batch(idx).items()}

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """A regression model's predictions on the task's scale."""
        return logits.squeeze(-1) * self.target_scale

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.spec.is_regression:
            return F.mse_loss(self.scores(logits), labels.to(logits.dtype))
        return F.cross_entropy(logits, labels)

    def train(self, model: nn.Module, data: TokenizedText, generator: torch.Generator, extra_loss: ExtraLoss | None = None,
              client_id: str = "all") -> TrainStats:
        if len(data) == 0:
            raise ValueError(f"client {client_id}: cannot train on an empty data set")
        model.to(self.torch_device)
        labels = data.labels.to(self.torch_device)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total_steps = max(1, math.ceil(self.epochs * len(data) / self.batch_size))
        decay = (lambda step: 1.0 - step / total_steps) if self.schedule == "linear" else (lambda step: 1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
        model.train()
        start = time.perf_counter()
        lengths = data.lengths
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.torch_device)
        seen, step = 0, 0
        while step < total_steps:
            for idx in length_grouped_batches(lengths, self.batch_size, generator):
                logits = model(**self._batch(data, idx)).logits
                loss = self.loss(logits, labels[idx.to(self.torch_device)])
                optimizer_step(optimizer, model, loss, extra_loss)
                scheduler.step()
                loss_sum += loss.detach().double() * len(idx)
                seen += len(idx)
                step += 1
                if step >= total_steps:
                    break
        synchronize(self.torch_device)
        return TrainStats(loss=float(loss_sum) / seen, examples=seen, seconds=time.perf_counter() - start)

    @torch.no_grad()
    def predict(self, model: nn.Module, data: TokenizedText) -> tuple[np.ndarray, float]:
        """Predictions in the data's order (class ids, or scores for regression) and the mean loss."""
        model.to(self.torch_device)
        model.eval()
        order = torch.argsort(data.lengths, descending=True, stable=True)
        preds = torch.empty(len(data), dtype=torch.float32 if self.spec.is_regression else torch.long)
        loss_sum = 0.0
        for start in range(0, len(order), self.eval_batch_size):
            idx = order[start : start + self.eval_batch_size]
            logits = model(**self._batch(data, idx)).logits.float()
            loss_sum += float(self.loss(logits, data.labels[idx].to(self.torch_device))) * len(idx)
            preds[idx] = (self.scores(logits) if self.spec.is_regression else logits.argmax(dim=-1)).cpu()
        return preds.numpy(), loss_sum / max(len(data), 1)

    def evaluate(self, model: nn.Module, data: TokenizedText) -> EvalResult:
        """Mean loss, the task's GLUE metrics and ``score`` (its headline metric)."""
        start = time.perf_counter()
        preds, loss = self.predict(model, data)
        metrics = compute_metrics(self.task, preds, data.labels.numpy())
        return EvalResult(loss=loss, metrics={**metrics, "score": metrics[self.spec.metrics[0]]}, examples=len(data),
                          seconds=time.perf_counter() - start)
