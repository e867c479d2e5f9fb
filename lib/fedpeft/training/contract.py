"""The one contract every trainer implements, so that the in-process loop and the Flower engines can drive any
of them: ``train`` (one client's local fit), ``evaluate`` (one :class:`EvalResult`), and the per-client state a
resumed run needs (optimizer moments, schedules) as plain dictionaries of tensors.

Trainers are dataclasses holding their settings; ``describe()`` lists those settings, so a checkpoint can tell
whether it was written by a trainer with the same ones.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

ExtraLoss = Callable[[nn.Module], "torch.Tensor | None"]


@dataclass
class TrainStats:
    """One local fit: mean training loss over the examples seen (task loss, without a proximal term), examples
    processed (epochs included) and wall-clock seconds."""

    loss: float
    examples: int
    seconds: float


@dataclass
class EvalResult:
    """One evaluation: mean loss per example (or per predicted token for language models), the task's metrics
    (fractions in [0, 1], not percentages; ``perplexity`` for language models), examples and seconds."""

    loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    examples: int = 0
    seconds: float = 0.0

    def __getitem__(self, key: str) -> float:
        if key == "loss":
            return self.loss
        if key not in self.metrics:
            raise KeyError(f"{key!r} is not measured by this evaluation; it has {['loss', *self.metrics]}")
        return self.metrics[key]

    def as_dict(self) -> dict[str, float]:
        """``{"loss": ..., **metrics}``: the values a history row records."""
        return {"loss": self.loss, **self.metrics}


class Trainer(abc.ABC):
    """Base of every trainer. Subclasses are dataclasses; they set ``torch_device`` in ``__post_init__``."""

    torch_device: torch.device = torch.device("cpu")

    @abc.abstractmethod
    def train(self, model: nn.Module, data: Any, generator: torch.Generator, extra_loss: ExtraLoss | None = None,
              client_id: str = "all") -> TrainStats:
        """Train ``model`` in place on ``data``; ``extra_loss(model)`` (FedProx's proximal term) is added to each
        step's objective; ``client_id`` keys any state the trainer keeps per client across rounds."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, data: Any) -> EvalResult:
        """Evaluate ``model`` on ``data`` without gradients."""

    def client_state(self, client_id: str) -> dict[str, Any] | None:
        """State kept for ``client_id`` between rounds (``None``: none; the default for stateless trainers)."""
        return None

    def load_client_state(self, client_id: str, state: Mapping[str, Any] | None) -> None:
        """Restore what :meth:`client_state` returned (stateless trainers accept only ``None``)."""
        if state is not None:
            raise ValueError(f"{type(self).__name__} keeps no per-client state, but state for {client_id!r} was given")

    def state_dict(self) -> dict[str, Any]:
        """Every client's state, for a checkpoint."""
        return {}

    def reset_state(self) -> None:  # noqa: B027 - stateless trainers have nothing to forget
        """Forget every client's state (a fresh run starts from none)."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for client_id, client_state in state.items():
            self.load_client_state(client_id, client_state)

    def describe(self) -> dict[str, str]:
        """The trainer's settings (dataclass fields compared by equality, not starting with ``_``), as strings."""
        return {f.name: repr(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.compare and not f.name.startswith("_")}


def batches(n: int, batch_size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Index batches over ``n`` examples; shuffled when a generator is given; the last batch may be short."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def optimizer_step(optimizer: torch.optim.Optimizer, model: nn.Module, loss: torch.Tensor,
                   extra_loss: ExtraLoss | None = None) -> None:
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


def check_positive_int(owner: object, *names: str) -> None:
    """Raise a clear error for each setting in ``names`` that is not an integer >= 1."""
    for name in names:
        value = getattr(owner, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} = {value!r} is not allowed; it must be an integer >= 1")


def check_learning_rate(lr: float) -> None:
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr = {lr!r} is not allowed; it must be a finite number > 0")
