"""Training a LoRA/QLoRA classifier head (:mod:`fedpeft.models.head`) on cached backbone features.

Each farmer keeps its own AdamW and cosine schedule across rounds (keyed by its client id), the schedule spanning
``rounds`` x its step budget, so one client over many rounds is exactly centralized training with periodic
evaluation, and DiLoCo's inner optimizer keeps its state as in Douillard et al. That state is part of the trainer
contract's per-client state, so checkpoints carry it and a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

from fedpeft.core.device import resolve_device, synchronize
from fedpeft.training.contract import (
    EvalResult,
    ExtraLoss,
    Trainer,
    TrainStats,
    check_learning_rate,
    check_positive_int,
    optimizer_step,
)


@dataclass
class FeatureViews:
    """A farmer's training data: ``features`` (N, views, D) of augmented views, ``labels`` (N,); ``local_steps``
    overrides the trainer's step budget for this farmer (heterogeneous devices)."""

    features: torch.Tensor
    labels: torch.Tensor
    local_steps: int | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FeatureSet:
    """Evaluation data: ``features`` (N, D) of the plain images, ``labels`` (N,)."""

    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def inverse_frequency_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy class weights ``N / (K * count_k)`` (a class absent from ``labels`` gets weight 0)."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    weights = torch.where(counts > 0, len(labels) / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights


@dataclass
class HeadTrainer(Trainer):
    """Trains a head for ``local_steps`` steps of ``batch_size`` (image, view) pairs drawn with replacement,
    with a per-client AdamW and cosine schedule that persist across rounds (see the module docstring)."""

    local_steps: int
    rounds: int
    batch_size: int
    lr: float
    class_weights: torch.Tensor | None = None
    weight_decay: float = 0.01
    device: str = "cpu"
    # client id -> (weak reference to the model the optimizer holds, optimizer, scheduler); or a saved state to restore
    _clients: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_positive_int(self, "local_steps", "rounds", "batch_size")
        check_learning_rate(self.lr)
        self.torch_device = resolve_device(self.device)

    def _optimizer(self, model: nn.Module, client_id: str, steps: int):
        """The client's optimizer and schedule over ``model``'s trainable parameters; when the model object is new
        (a Flower client rebuilds it each round) they are rebuilt on it and the saved moments loaded."""
        held = self._clients.get(client_id)
        if isinstance(held, tuple) and held[0]() is model:  # a weak reference: a new model at a freed address is not it
            return held[1], held[2]
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps * self.rounds)
        saved = self.client_state(client_id)
        if saved is not None:
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
        self._clients[client_id] = (weakref.ref(model), opt, sched)
        return opt, sched

    def client_state(self, client_id: str) -> dict[str, Any] | None:
        held = self._clients.get(client_id)
        if held is None:
            return None
        if isinstance(held, tuple):
            return {"optimizer": held[1].state_dict(), "scheduler": held[2].state_dict()}
        return held

    def load_client_state(self, client_id: str, state: Mapping[str, Any] | None) -> None:
        if state is None:
            self._clients.pop(client_id, None)
        else:
            self._clients[client_id] = {"optimizer": state["optimizer"], "scheduler": state["scheduler"]}

    def state_dict(self) -> dict[str, Any]:
        return {cid: self.client_state(cid) for cid in self._clients}

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (for a Flower actor) with each client's state as plain tensors, not live optimizers."""
        return self.__dict__ | {"_clients": self.state_dict()}

    def reset_state(self) -> None:
        self._clients.clear()

    def train(self, model: nn.Module, data: FeatureViews, generator: torch.Generator, extra_loss: ExtraLoss | None = None,
              client_id: str = "all") -> TrainStats:
        if len(data) == 0:
            raise ValueError(f"farmer {client_id} has no training examples")
        steps = data.local_steps or self.local_steps
        model.to(self.torch_device)
        opt, sched = self._optimizer(model, client_id, steps)
        model.train()
        features, labels = data.features.to(self.torch_device), data.labels.to(self.torch_device)
        weights = self.class_weights.to(self.torch_device) if self.class_weights is not None else None
        n, views = features.shape[:2]
        total = torch.zeros((), dtype=torch.float64, device=self.torch_device)
        start = time.perf_counter()
        for _ in range(steps):
            idx = torch.randint(n, (self.batch_size,), generator=generator).to(self.torch_device)
            view = torch.randint(views, (self.batch_size,), generator=generator).to(self.torch_device)
            loss = F.cross_entropy(model(features[idx, view]), labels[idx], weight=weights)
            optimizer_step(opt, model, loss, extra_loss)
            sched.step()
            total += loss.detach().double()
        synchronize(self.torch_device)
        return TrainStats(loss=float(total) / steps, examples=steps * self.batch_size, seconds=time.perf_counter() - start)

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, data: FeatureSet) -> EvalResult:
        """Unweighted mean cross-entropy, accuracy and scikit-learn's macro F1 (over the classes present in labels
        or predictions)."""
        start = time.perf_counter()
        model.to(self.torch_device)
        model.eval()
        logits = model(data.features.to(self.torch_device)).float().cpu()
        pred = logits.argmax(1)
        y = data.labels
        metrics = {"accuracy": float((pred == y).float().mean()),
                   "macro_f1": float(f1_score(y.numpy(), pred.numpy(), average="macro", zero_division=0))}
        return EvalResult(loss=float(F.cross_entropy(logits, y)), metrics=metrics, examples=len(y),
                          seconds=time.perf_counter() - start)
