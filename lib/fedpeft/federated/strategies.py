"""Federated aggregation strategies: FedAvg, FedProx and DiLoCo.

A strategy does two things: it may add a term to each client's local loss (FedProx's proximal term), and it
turns the clients' returned states into the next global state (``aggregate``). States are plain
``{name: tensor}`` dicts, so the same strategy object runs in the in-process loop and on Flower.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Collection, Mapping, Sequence

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]


def normalize_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """Weights summing to 1 (``None``: equal weights); the one check of aggregation weights: one per state,
    finite, >= 0 and not all 0."""
    if count < 1:
        raise ValueError("aggregation needs at least one state; got none")
    if weights is None:
        return [1.0 / count] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise ValueError(f"weights has {len(weights)} values but there are {count} states; give one weight per state")
    if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights = {weights} is not allowed; they must be finite, >= 0 and not all 0")
    total = sum(weights)
    return [w / total for w in weights]


def weighted_average(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> StateDict:
    """Average ``states`` key by key with ``weights`` (example counts in FedAvg).

    Floating tensors are averaged in float32 and cast back to their dtype; integer tensors (such as BatchNorm's
    ``num_batches_tracked``) get the rounded weighted mean.
    """
    fractions = normalize_weights(weights, len(states))
    keys = list(states[0])
    for i, s in enumerate(states[1:], start=1):
        if list(s) != keys:
            raise ValueError(f"state {i} has keys {sorted(set(s) ^ set(keys))} that state 0 does not share")
    out: StateDict = {}
    for k in keys:
        ref = states[0][k]
        acc = torch.zeros(ref.shape, dtype=torch.float32)
        for s, w in zip(states, fractions, strict=True):
            acc.add_(s[k].to(torch.float32), alpha=w)
        out[k] = acc.round().to(ref.dtype) if not ref.is_floating_point() else acc.to(ref.dtype)
    return out


def proximal_term(model: nn.Module, global_params: Mapping[str, torch.Tensor], mu: float) -> torch.Tensor | None:
    """FedProx's client-side term ``mu/2 * ||w - w_global||^2`` over ``model``'s trainable parameters (None for
    mu = 0). A pure function of what the server sends: the global parameters and ``mu`` (as train config)."""
    if mu == 0:
        return None
    terms = [
        (p - global_params[name].to(device=p.device, dtype=p.dtype)).pow(2).sum()
        for name, p in model.named_parameters()
        if p.requires_grad
    ]
    return 0.5 * mu * torch.stack(terms).sum()


class FedAvg:
    """Federated Averaging (McMahan et al., 2017): the example-weighted mean of the clients' states."""

    name = "fedavg"
    #: True when :meth:`base_delta` can return something: the strategy then needs the in-process round loop.
    folds_base_weights = False
    #: True when the server sends each client its own message (:meth:`downlink`) and reads each client's back
    #: (:meth:`from_uplink`): clients that train adapters of different ranks. Needs the in-process round loop.
    per_client_messages = False

    def client_config(self) -> dict[str, float]:
        """What the server sends clients with each round's model, as Flower's train config (FedAvg: nothing)."""
        return {}

    def proximal_term(self, model: nn.Module, global_params: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Extra client loss from this strategy's client config (:func:`proximal_term`)."""
        return proximal_term(model, global_params, self.client_config().get("proximal-mu", 0.0))

    def expand_for_model(self, state: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> StateDict:
        """The global state laid out as the clients' model holds it (unchanged here; LoRA strategies that keep
        a smaller global adapter than clients train override it). ``generator`` seeds any new values."""
        return dict(state)

    def downlink(self, state: Mapping[str, torch.Tensor], client_index: int) -> StateDict:
        """What the server sends client ``client_index`` of the global ``state`` (all of it here)."""
        return dict(state)

    def client_view(self, received: Mapping[str, torch.Tensor], client_index: int,
                    generator: torch.Generator | None = None) -> StateDict:
        """What client ``client_index`` loads into its model from what it ``received``: :meth:`expand_for_model`
        here, the same for every client."""
        return self.expand_for_model(received, generator)

    def uplink(self, state: Mapping[str, torch.Tensor], client_index: int) -> StateDict:
        """What client ``client_index`` sends of its trained ``state`` (all of it here)."""
        return dict(state)

    def from_uplink(self, state: Mapping[str, torch.Tensor], client_index: int) -> StateDict:
        """The server's layout of what client ``client_index`` sent (unchanged here), as :meth:`aggregate` takes it. With
        ``per_client_messages`` it gets the message as it travelled (not cast to the global state's dtypes): another
        layout, or an encoded update."""
        return dict(state)

    def aggregate(
        self,
        global_state: Mapping[str, torch.Tensor],
        client_states: Sequence[Mapping[str, torch.Tensor]],
        num_examples: Sequence[int],
        trainable_keys: Collection[str] | None = None,
    ) -> StateDict:
        return weighted_average(client_states, num_examples)

    def base_delta(self) -> StateDict | None:
        """What the last :meth:`aggregate` folds into the clients' frozen weights (parameter name -> tensor added to
        it), sent with the next model; None for every strategy that only averages what clients send (FedEx-LoRA
        overrides it). The round loop applies it to the clients' and the server's model and counts its bytes."""
        return None

    def folded_base(self) -> StateDict:
        """Everything folded into the frozen weights so far (the sum of every :meth:`base_delta`), so that a
        resumed run starts from the same frozen weights; empty here."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def describe(self) -> str:
        return "FedAvg"


class FedProx(FedAvg):
    """FedProx (Li et al., 2020): FedAvg aggregation, and each client minimises
    ``loss + mu/2 * ||w - w_global||^2`` over its trainable parameters."""

    name = "fedprox"

    def __init__(self, mu: float) -> None:
        if not isinstance(mu, (int, float)) or mu < 0:
            raise ValueError(f"FedProx mu = {mu!r} is not allowed; it must be a number >= 0")
        self.mu = float(mu)

    def client_config(self) -> dict[str, float]:
        return {"proximal-mu": self.mu}

    def describe(self) -> str:
        return f"FedProx(mu={self.mu:g})"


def fedprox_or_fedavg(mu: float) -> FedAvg:
    """FedAvg for ``mu`` = 0 (the same algorithm: the proximal term vanishes), FedProx(``mu``) otherwise."""
    return FedAvg() if mu == 0 else FedProx(mu)


class DiLoCo(FedAvg):
    """DiLoCo (Douillard et al., 2023): the averaged client change is a pseudo-gradient
    ``global - mean(client)`` to which an outer optimizer, SGD with Nesterov momentum, is applied.

    Only trainable keys take the outer step; buffers (BatchNorm statistics) are averaged as in FedAvg.
    With ``outer_lr=1`` and ``momentum=0`` this is exactly FedAvg.
    """

    name = "diloco"

    def __init__(self, outer_lr: float = 0.7, momentum: float = 0.9, nesterov: bool = True) -> None:
        if not isinstance(outer_lr, (int, float)) or outer_lr <= 0:
            raise ValueError(f"DiLoCo outer_lr = {outer_lr!r} is not allowed; it must be a number > 0")
        if not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"DiLoCo momentum = {momentum!r} is not allowed; it must be in [0, 1)")
        self.outer_lr = float(outer_lr)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov) and momentum > 0
        self._params: dict[str, nn.Parameter] | None = None
        self._optimizer: torch.optim.SGD | None = None
        self._pending_state: dict[str, Any] | None = None

    def _ensure_optimizer(self, global_state: Mapping[str, torch.Tensor], keys: list[str]) -> None:
        if self._params is None:
            self._params = {k: nn.Parameter(global_state[k].detach().to(torch.float32).clone()) for k in keys}
            self._optimizer = torch.optim.SGD(
                list(self._params.values()), lr=self.outer_lr, momentum=self.momentum, nesterov=self.nesterov
            )
            if self._pending_state is not None:
                self._optimizer.load_state_dict(self._pending_state)
                self._pending_state = None
        with torch.no_grad():
            for k, p in self._params.items():
                p.copy_(global_state[k].to(torch.float32))

    def aggregate(self, global_state, client_states, num_examples, trainable_keys=None) -> StateDict:
        average = weighted_average(client_states, num_examples)
        trainable = set(global_state) if trainable_keys is None else set(trainable_keys)
        keys = [k for k in global_state if k in trainable and global_state[k].is_floating_point()]
        self._ensure_optimizer(global_state, keys)
        assert self._params is not None and self._optimizer is not None
        for k, p in self._params.items():
            p.grad = global_state[k].to(torch.float32) - average[k].to(torch.float32)
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        new_state = dict(average)
        for k, p in self._params.items():
            new_state[k] = p.detach().clone().to(global_state[k].dtype)
        return new_state

    def state_dict(self) -> dict[str, Any]:
        """A copy of the outer optimizer's state (momentum buffers), safe to keep while training goes on."""
        if self._optimizer is not None:
            return copy.deepcopy(self._optimizer.state_dict())
        return copy.deepcopy(self._pending_state or {})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        if self._optimizer is not None:
            self._optimizer.load_state_dict(dict(state))
        else:
            self._pending_state = dict(state)

    def describe(self) -> str:
        return f"DiLoCo(outer_lr={self.outer_lr:g}, momentum={self.momentum:g}, nesterov={self.nesterov})"


STRATEGIES = {"fedavg": FedAvg, "fedprox": FedProx, "diloco": DiLoCo}


def build_strategy(name: str, **kwargs: Any) -> FedAvg:
    """Build a strategy by name (``fedavg``, ``fedprox``, ``diloco``) with its keyword settings."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy = {name!r} is not known; allowed: {sorted(STRATEGIES)}")
    return STRATEGIES[name](**kwargs)
