"""Local training and batched evaluation of a causal language model on packed :class:`~fedpeft.data.code_corpus.TokenBlocks`.

Training mirrors what the code report's Hugging Face ``Trainer`` did on each client (AdamW, weight decay 0, a
fresh optimizer each round, linear decay to zero over the local steps, no warm-up), as a plain loop so that
FedProx's proximal term can be added and every batch order is seeded from ``(seed, round, client)``.
Evaluation runs without gradients, in batches of ``eval_batch_size`` blocks.

The loss is the mean next-token cross-entropy in nats per predicted token (a block of L tokens predicts L-1);
perplexity is ``exp(loss)``. The trainer counts tokens and seconds separately for training and evaluation, so
throughput (tokens per second) is reported for each.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from fedpeft.core.device import resolve_device, resolve_precision, synchronize
from fedpeft.data.code_corpus import TokenBlocks
from fedpeft.training.contract import (
    EvalResult,
    ExtraLoss,
    Trainer,
    TrainStats,
    batches,
    check_learning_rate,
    check_positive_int,
    optimizer_step,
)

PRECISIONS = ("fp32", "bf16", "auto")


@dataclass
class TokenMeter:
    """Tokens processed and seconds spent, for training and for evaluation."""

    train_tokens: int = 0
    train_seconds: float = 0.0
    eval_tokens: int = 0
    eval_seconds: float = 0.0

    def rates(self) -> dict[str, float]:
        nan = float("nan")
        return {
            "train_tokens_per_s": self.train_tokens / self.train_seconds if self.train_seconds else nan,
            "eval_tokens_per_s": self.eval_tokens / self.eval_seconds if self.eval_seconds else nan,
        }


@dataclass
class CausalLMTrainer(Trainer):
    """``epochs`` local epochs over the client's blocks per round, ``batch_size`` blocks per step."""

    lr: float
    batch_size: int
    epochs: int
    eval_batch_size: int = 4
    precision: str = "fp32"
    device: str = "cpu"
    weight_decay: float = 0.0
    meter: TokenMeter = field(default_factory=TokenMeter, compare=False)  # running totals, not a setting

    def __post_init__(self) -> None:
        check_positive_int(self, "batch_size", "eval_batch_size", "epochs")
        check_learning_rate(self.lr)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision = {self.precision!r} is not allowed; it must be one of {list(PRECISIONS)}")
        self.torch_device = resolve_device(self.device)
        self.precision = resolve_precision(self.precision)

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.torch_device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train(self, model: nn.Module, data: TokenBlocks, generator: torch.Generator, extra_loss: ExtraLoss | None = None,
              client_id: str = "all") -> TrainStats:
        if len(data) == 0:
            raise ValueError(f"client {client_id}: cannot train on an empty data set")
        model.to(self.torch_device)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total_steps = self.epochs * math.ceil(len(data) / self.batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total_steps)
        model.train()
        start = time.perf_counter()
        loss_sum, seen = 0.0, 0
        for _ in range(self.epochs):
            for idx in batches(len(data), self.batch_size, generator):
                ids = data.input_ids[idx].to(self.torch_device)
                with self._autocast():
                    loss = model(input_ids=ids, labels=ids).loss
                optimizer_step(optimizer, model, loss, extra_loss)
                scheduler.step()
                loss_sum += float(loss.detach()) * len(idx)
                seen += len(idx)
        synchronize(self.torch_device)
        seconds = time.perf_counter() - start
        self.meter.train_tokens += seen * data.block_size
        self.meter.train_seconds += seconds
        return TrainStats(loss=loss_sum / seen, examples=seen, seconds=seconds)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: TokenBlocks) -> EvalResult:
        """Mean loss (nats per predicted token) and perplexity."""
        model.to(self.torch_device)
        model.eval()
        start = time.perf_counter()
        loss_sum = 0.0
        for idx in batches(len(data), self.eval_batch_size):
            ids = data.input_ids[idx].to(self.torch_device)
            with self._autocast():
                loss_sum += float(model(input_ids=ids, labels=ids).loss.float()) * len(idx)
        synchronize(self.torch_device)
        seconds = time.perf_counter() - start
        self.meter.eval_tokens += data.num_tokens
        self.meter.eval_seconds += seconds
        loss = loss_sum / len(data)
        return EvalResult(loss=loss, metrics={"perplexity": math.exp(loss)}, examples=len(data), seconds=seconds)

    @torch.no_grad()
    def block_losses(self, model: nn.Module, data: TokenBlocks) -> torch.Tensor:
        """Each block's mean next-token loss (nats per predicted token), shape ``(samples,)``; their mean is
        :meth:`evaluate`'s loss (every block predicts the same number of tokens)."""
        model.to(self.torch_device)
        model.eval()
        start = time.perf_counter()
        out = []
        for idx in batches(len(data), self.eval_batch_size):
            ids = data.input_ids[idx].to(self.torch_device)
            with self._autocast():
                logits = model(input_ids=ids).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            out.append(nll.mean(dim=1).cpu())
        synchronize(self.torch_device)
        self.meter.eval_tokens += data.num_tokens
        self.meter.eval_seconds += time.perf_counter() - start
        return torch.cat(out)
