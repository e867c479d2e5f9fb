"""Clients that train LoRA adapters of different ranks (say 4, 8 and 16) in one federation, and three ways to
aggregate them.

Every client's model holds the largest rank ``R`` of the federation; client ``i`` trains its first ``r_i`` components
(rows of ``A``, columns of ``B``) and the others stay exactly zero: a component whose ``A`` row and ``B`` column are
both zero gets zero gradient in both, so it is a rank-``r_i`` adapter. The client sends only its ``r_i`` components
(the ledger counts those bytes) and the server pads them back with zeros. Every client has the same scaling
``lora_alpha / r`` (alpha grows with the rank, as in the rank sweep), so the ranks differ only in how many
components train.

``svd``       the GLUE report's aggregation: the exact mean ``delta_W``, factored back by a truncated SVD to a common
              ``svd_rank``; client ``i`` receives the top ``min(r_i, svd_rank)`` components and draws fresh ``A`` rows
              for any it trains beyond them (``B`` zero), as peft initializes a new adapter: a client above the
              common rank restarts its extra components every round. With ``svd_rank`` = the largest rank it is
              ``flexlora``; the two differ only in the rank the server keeps.
``hetlora``   HetLoRA's zero-padding (Cho et al., 2024): average the zero-padded ``A`` and ``B`` separately (inexact,
              like naive averaging); client ``i`` receives the first ``r_i`` components of the average. HetLoRA's
              sparsity-weighted aggregation and rank self-pruning are not used.
``flexlora``  FlexLoRA (Bai et al., 2024): the SVD of the exact mean ``delta_W``; client ``i`` receives its top ``r_i``
              components. The server keeps the top ``R`` (the largest client rank) rather than the dense mean, so that
              its model has the clients' layout; as every ``r_i <= R``, each client still receives exactly FlexLoRA's
              components, and only the model the server evaluates is the rank-``R`` truncation (its error is recorded
              every round).

Pure layout functions (:func:`keep_components`, :func:`pad_components`) and one round-loop strategy,
:class:`MixedRankLora`, built on :func:`~fedpeft.federated.lora_aggregation.merge_lora_states`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from fedpeft.federated.lora_aggregation import _pair_keys, lora_layer_names, merge_lora_states
from fedpeft.federated.strategies import FedAvg, StateDict

MIXED_RANK_METHODS = ("svd", "hetlora", "flexlora")
_MERGE = {"svd": "svd", "hetlora": "naive", "flexlora": "svd"}  # merge_lora_states' method for each


def keep_components(state: Mapping[str, torch.Tensor], rank: int) -> StateDict:
    """``state`` with every LoRA pair cut to its first ``rank`` components (``A[:rank]``, ``B[:, :rank]``); other
    keys unchanged."""
    out = dict(state)
    for layer in lora_layer_names(state):
        ka, kb = _pair_keys(state.keys(), layer)
        out[ka], out[kb] = state[ka][:rank].clone(), state[kb][:, :rank].clone()
    return out


def pad_components(state: Mapping[str, torch.Tensor], rank: int) -> StateDict:
    """``state`` with every LoRA pair padded with zero components (``A`` rows, ``B`` columns) to ``rank``."""
    out = dict(state)
    for layer in lora_layer_names(state):
        ka, kb = _pair_keys(state.keys(), layer)
        A, B = state[ka], state[kb]
        extra = rank - A.shape[0]
        if extra < 0:
            raise ValueError(f"{layer}: an adapter of rank {A.shape[0]} cannot be padded to rank {rank}")
        out[ka] = torch.cat([A, A.new_zeros(extra, A.shape[1])], dim=0)
        out[kb] = torch.cat([B, B.new_zeros(B.shape[0], extra)], dim=1)
    return out


class MixedRankLora(FedAvg):
    """A round-loop strategy for clients of different LoRA ranks (see the module docstring).

    ``client_ranks``: the rank of each client, by index (its length is the number of clients). ``scaling``: every
    adapter's ``lora_alpha / r``. ``svd_rank``: the common rank the ``svd`` method keeps (ignored by the others).
    The global state has the clients' model layout (rank ``max(client_ranks)``).
    """

    name = "lora-mixed-rank"
    per_client_messages = True

    def __init__(self, method: str, client_ranks: Sequence[int], scaling: float, svd_rank: int | None = None) -> None:
        if method not in MIXED_RANK_METHODS:
            raise ValueError(f"mixed_rank_aggregations: {method!r} is not allowed; allowed: {list(MIXED_RANK_METHODS)}")
        ranks = list(client_ranks)
        if not ranks or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in ranks):
            raise ValueError(f"mixed_ranks (client_ranks) = {ranks!r} is not allowed; it must be a non-empty list of integers >= 1, "
                             "one per client")
        if not scaling > 0:
            raise ValueError(f"scaling = {scaling!r} is not allowed; it must be > 0")
        self.method, self.client_ranks, self.scaling = method, ranks, float(scaling)
        self.model_rank = max(ranks)
        if method == "svd":
            if not isinstance(svd_rank, int) or not 1 <= svd_rank <= self.model_rank:
                raise ValueError(f"svd_rank = {svd_rank!r} is not allowed with client ranks {ranks}; it must be an "
                                 f"integer in [1, {self.model_rank}]")
            self.global_rank = svd_rank
        else:
            self.global_rank = self.model_rank
        self.errors: list[dict] = []
        self.measure_s: list[float] = []
        self._round = 0

    def rank_of(self, client_index: int) -> int:
        if not 0 <= client_index < len(self.client_ranks):
            raise IndexError(f"client {client_index} has no rank: client_ranks lists {len(self.client_ranks)} clients")
        return self.client_ranks[client_index]

    def downlink(self, state: Mapping[str, torch.Tensor], client_index: int) -> StateDict:
        """The global adapter's first ``min(r_i, global rank)`` components (the top ones after an SVD)."""
        return keep_components(state, min(self.rank_of(client_index), self.global_rank))

    def client_view(self, received: Mapping[str, torch.Tensor], client_index: int,
                    generator: torch.Generator | None = None) -> StateDict:
        """What the client received, padded to the model's rank; with ``svd``, the components the client trains beyond
        the common rank get fresh ``A`` rows (peft's kaiming-uniform bound ``1 / sqrt(in)``; zeros without a
        ``generator``) and zero ``B`` columns."""
        rank = self.rank_of(client_index)
        out = pad_components(received, self.model_rank)
        fresh = rank - min(rank, self.global_rank)
        if fresh and generator is not None:
            for layer in lora_layer_names(out):
                ka, _ = _pair_keys(out.keys(), layer)
                A = out[ka].clone()
                bound = 1.0 / math.sqrt(A.shape[1])
                draw = torch.rand(fresh, A.shape[1], generator=generator, dtype=torch.float64) * 2 - 1
                A[self.global_rank:rank] = (draw * bound).to(A.dtype)
                out[ka] = A
        return out

    def uplink(self, state: Mapping[str, torch.Tensor], client_index: int) -> StateDict:
        """The client's own ``r_i`` components."""
        return keep_components(state, self.rank_of(client_index))

    def from_uplink(self, state: Mapping[str, torch.Tensor], client_index: int) -> StateDict:
        """The client's components padded with zeros to the model's rank (in the precision they travelled in)."""
        return pad_components(state, self.model_rank)

    def aggregate(self, global_state, client_states, num_examples, trainable_keys=None) -> StateDict:
        """Merge the zero-padded client adapters (see the module docstring); the head is averaged as in FedAvg. Each
        layer's error is measured against the exact mean ``delta_W`` of the clients."""
        self._round += 1
        merged, rows = merge_lora_states(client_states, [self.scaling] * len(client_states), _MERGE[self.method],
                                         num_examples, svd_rank=self.global_rank, scaling=self.scaling)
        merged = pad_components(merged, self.model_rank)
        self.errors += [{"round": self._round, "layer": r["layer"], "method": self.method,
                         "relative_error": r["relative_error"], "mean_delta_norm": r["mean_delta_norm"]} for r in rows]
        self.measure_s.append(sum(r["measure_s"] for r in rows))
        return {k: merged[k].to(v.dtype) for k, v in global_state.items()}

    def error_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.errors, columns=["round", "layer", "method", "relative_error", "mean_delta_norm"])

    def state_dict(self) -> dict[str, Any]:
        return {"errors": list(self.errors), "measure_s": list(self.measure_s), "round": self._round}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.errors = list(state.get("errors", []))
        self.measure_s = list(state.get("measure_s", []))
        self._round = int(state.get("round", 0))

    def describe(self) -> str:
        return (f"LoRA-{self.method}(client ranks {self.client_ranks}, s={self.scaling:g}; "
                f"global r={self.global_rank})")
