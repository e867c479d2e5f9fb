"""Local training and evaluation of an image classifier held as :class:`~fedpeft.data.eurosat.ImageArrays`.

Batches are drawn by index from in-memory uint8 tensors, moved to the trainer's device and normalized there. On
CPUs with native bf16 (AMX) ``precision="bf16"`` runs forward and backward under ``torch.autocast`` with
channels-last tensors, which is 2-3x faster than fp32 for the EuroSAT CNN. Master weights and the optimizer stay
in fp32 either way.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedpeft.core.device import resolve_device, synchronize
from fedpeft.data.eurosat import ImageArrays, normalize_batch
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

PRECISIONS = ("fp32", "bf16")
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class ClassifierTrainer(Trainer):
    """Trains a classifier for ``epochs`` local epochs with a fresh optimizer each call (as the seeds do)."""

    lr: float
    batch_size: int
    epochs: int
    optimizer: str = "adam"
    precision: str = "fp32"
    channels_last: bool = False
    eval_batch_size: int = 256
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision = {self.precision!r} is not allowed; it must be one of {list(PRECISIONS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer = {self.optimizer!r} is not allowed; it must be one of {list(OPTIMIZERS)}")
        check_positive_int(self, "batch_size", "epochs", "eval_batch_size")
        check_learning_rate(self.lr)
        self.torch_device = resolve_device(self.device)

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.torch_device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize_batch(images.to(self.torch_device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model on the trainer's device (and in channels-last layout when that is set)."""
        model = model.to(self.torch_device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def _make_optimizer(self, params) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.lr)
        return torch.optim.SGD(params, lr=self.lr)

    def train(self, model: nn.Module, data: ImageArrays, generator: torch.Generator, extra_loss: ExtraLoss | None = None,
              client_id: str = "all") -> TrainStats:
        if len(data) == 0:
            raise ValueError(f"client {client_id}: cannot train on an empty data set")
        model = self.prepare(model)
        model.train()
        opt = self._make_optimizer([p for p in model.parameters() if p.requires_grad])
        labels = data.labels.to(self.torch_device)
        total_loss = torch.zeros((), dtype=torch.float64, device=self.torch_device)
        seen = 0
        start = time.perf_counter()
        for _ in range(self.epochs):
            for idx in batches(len(data), self.batch_size, generator):
                x, y = self._inputs(data.images[idx]), labels[idx.to(self.torch_device)]
                with self._autocast():
                    loss = F.cross_entropy(model(x), y)
                optimizer_step(opt, model, loss, extra_loss)
                total_loss += loss.detach().double() * len(idx)
                seen += len(idx)
        synchronize(self.torch_device)
        return TrainStats(loss=float(total_loss) / seen, examples=seen, seconds=time.perf_counter() - start)

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, data: ImageArrays, input_dtype: torch.dtype | None = None) -> EvalResult:
        """Loss and accuracy of ``model`` on ``data``; ``input_dtype`` feeds e.g. an fp16 model fp16 inputs."""
        start = time.perf_counter()
        logits = self.predict(model, data, input_dtype)
        labels = data.labels.to(logits.device)
        n = max(len(data), 1)
        loss = F.cross_entropy(logits, labels, reduction="sum").item() / n if len(data) else float("nan")
        accuracy = (logits.argmax(1) == labels).sum().item() / n
        return EvalResult(loss=loss, metrics={"accuracy": accuracy}, examples=len(data), seconds=time.perf_counter() - start)

    @torch.inference_mode()
    def predict(self, model: nn.Module, data: ImageArrays, input_dtype: torch.dtype | None = None) -> torch.Tensor:
        """fp32 logits of ``model`` on ``data``, in order, on the trainer's device."""
        model = self.prepare(model)
        model.eval()
        outs = []
        for idx in batches(len(data), self.eval_batch_size):
            x = self._inputs(data.images[idx])
            if input_dtype is not None:
                x = x.to(input_dtype)
            with self._autocast() if input_dtype is None else contextlib.nullcontext():
                outs.append(model(x).float())
        return torch.cat(outs) if outs else torch.empty(0, device=self.torch_device)
