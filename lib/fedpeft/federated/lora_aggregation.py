"""Aggregating LoRA adapters from several clients, and what each way of doing it costs in exactness.

A LoRA layer adds ``delta_W = scaling * B @ A`` to a frozen weight (``A``: ``r x in``, ``B``: ``out x r``,
``scaling = lora_alpha / r``, peft's shapes). FedAvg wants the example-weighted mean of the clients'
``delta_W``; the four methods here differ in how close they get:

``svd``    (the GLUE report's default) average the ``delta_W`` and factor the mean back to ``svd_rank`` with a
           truncated SVD. Exact when ``svd_rank`` >= the sum of the clients' ranks; the SVD is computed from
           the stacked factors (QR of each side, then the SVD of a small ``K r x K r`` core), so it never forms
           the dense ``out x in`` matrix.
``naive``  (the report's ``--skip_svd``) average ``A`` and ``B`` separately. ``mean(B) @ mean(A)`` is not
           ``mean(B @ A)``: the cross terms ``B_i A_j`` make it inexact whenever clients differ.
``ffa``    FFA-LoRA (Sun et al., ICLR 2024): ``A`` stays frozen at its shared initial value and only ``B`` is
           trained and averaged, so ``mean(B) @ A = mean(B @ A)`` exactly.
``flora``  FLoRA (Wang et al., NeurIPS 2024): stack the clients' factors, ``B = [w_1 s_1 B_1 | ...]`` and
           ``A = [A_1; ...]``, exact, with a rank that grows to the sum of the clients' ranks.
``fedex``  FedEx-LoRA (Singhal et al., 2024): average ``A`` and ``B`` as ``naive`` does, and fold the residual
           ``s * (mean(B A) - mean(B) mean(A))`` into the frozen weight, so that frozen weight plus adapter is
           exactly the mean ``delta_W``. The residual is dense (``out x in`` per layer): the price of exactness,
           sent to every client each round (the round loop counts it as downlink).

Everything else a client sends (the classification head) is averaged as in FedAvg. Aggregation runs in
float64 and returns the input dtype.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from fedpeft.federated.strategies import FedAvg, StateDict, normalize_weights, weighted_average

METHODS = ("svd", "naive", "ffa", "flora", "fedex")
ROUND_METHODS = ("svd", "naive", "ffa", "fedex")  # flora's rank grows every round, so it is a one-shot merge only here
#: Suffix of the key under which :func:`merge_lora_states` returns FedEx-LoRA's residual of a layer (``<layer>`` +
#: suffix): peft's name of the frozen weight the residual is added to.
FROZEN_WEIGHT = ".base_layer.weight"


@dataclass(frozen=True)
class LoraFactors:
    """One client's (or the global) adapter of one layer."""

    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    scaling: float  # lora_alpha / r

    def __post_init__(self) -> None:
        if self.A.ndim != 2 or self.B.ndim != 2 or self.A.shape[0] != self.B.shape[1]:
            raise ValueError(f"LoRA factors need A (r x in) and B (out x r); got A {tuple(self.A.shape)}, B {tuple(self.B.shape)}")

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def delta(self) -> torch.Tensor:
        """``scaling * B @ A`` in float64 (``out x in``)."""
        return self.scaling * (self.B.double() @ self.A.double())


def mean_delta(factors: Sequence[LoraFactors], weights: Sequence[float] | None = None) -> torch.Tensor:
    """The quantity FedAvg wants: the weighted mean of the clients' ``delta_W`` (float64, dense)."""
    w = normalize_weights(weights, len(factors))
    return sum(wi * f.delta() for wi, f in zip(w, factors, strict=True))


def _mean_factors(factors: Sequence[LoraFactors], weights: Sequence[float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted means of ``A`` and of ``B`` in float64 (all clients must share rank and scaling)."""
    w = normalize_weights(weights, len(factors))
    ranks = {f.rank for f in factors}
    scalings = {f.scaling for f in factors}
    if len(ranks) > 1 or len(scalings) > 1:
        raise ValueError(f"naive averaging needs equal ranks and scalings; got ranks {sorted(ranks)}, scalings {sorted(scalings)}")
    A = sum(wi * f.A.double() for wi, f in zip(w, factors, strict=True))
    B = sum(wi * f.B.double() for wi, f in zip(w, factors, strict=True))
    return A, B


def aggregate_naive(factors: Sequence[LoraFactors], weights: Sequence[float] | None = None) -> LoraFactors:
    """Average ``A`` and ``B`` separately (all clients must share rank and scaling)."""
    A, B = _mean_factors(factors, weights)
    return LoraFactors(A.to(factors[0].A.dtype), B.to(factors[0].B.dtype), factors[0].scaling)


def _stack(factors: Sequence[LoraFactors], w: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    B = torch.cat([wi * f.scaling * f.B.double() for wi, f in zip(w, factors, strict=True)], dim=1)
    A = torch.cat([f.A.double() for f in factors], dim=0)
    return A, B


def aggregate_stacked(factors: Sequence[LoraFactors], weights: Sequence[float] | None = None) -> LoraFactors:
    """FLoRA: exact, rank = the sum of the clients' ranks, scaling 1 (the weights and scalings live in ``B``)."""
    A, B = _stack(factors, normalize_weights(weights, len(factors)))
    return LoraFactors(A.to(factors[0].A.dtype), B.to(factors[0].B.dtype), 1.0)


def aggregate_svd(factors: Sequence[LoraFactors], weights: Sequence[float] | None, rank: int, scaling: float = 1.0) -> LoraFactors:
    """Best rank-``rank`` approximation (Frobenius norm) of the mean ``delta_W``, as ``B = U S / scaling``,
    ``A = V^T`` (the report's split). Exact when ``rank`` >= the sum of the clients' ranks."""
    out_features, in_features = factors[0].B.shape[0], factors[0].A.shape[1]
    if not isinstance(rank, int) or not 1 <= rank <= min(out_features, in_features):
        raise ValueError(
            f"svd_rank = {rank!r} is not allowed for a {out_features} x {in_features} layer; "
            f"it must be an integer in [1, {min(out_features, in_features)}]"
        )
    if not scaling > 0:
        raise ValueError(f"scaling = {scaling!r} is not allowed; it must be > 0")
    A_cat, B_cat = _stack(factors, normalize_weights(weights, len(factors)))
    q_b, r_b = torch.linalg.qr(B_cat)  # (out x k), (k x R)
    q_a, r_a = torch.linalg.qr(A_cat.T)  # (in x k'), (k' x R)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
    keep = min(rank, s.numel())
    U = q_b @ u[:, :keep]
    V = q_a @ vh[:keep].T
    B = torch.zeros(out_features, rank, dtype=torch.float64)
    A = torch.zeros(rank, in_features, dtype=torch.float64)
    B[:, :keep] = U * s[:keep] / scaling
    A[:keep] = V.T
    return LoraFactors(A.to(factors[0].A.dtype), B.to(factors[0].B.dtype), scaling)


def fedex_residual(factors: Sequence[LoraFactors], weights: Sequence[float] | None = None) -> torch.Tensor:
    """FedEx-LoRA's residual ``s * (sum_i w_i B_i A_i - (sum_i w_i B_i)(sum_i w_i A_i))`` (float64, ``out x in``):
    what naive averaging leaves out of the mean ``delta_W``. Clients must share rank and scaling."""
    A, B = _mean_factors(factors, weights)  # checks equal ranks and scalings
    w = normalize_weights(weights, len(factors))
    mean_product = sum(wi * (f.B.double() @ f.A.double()) for wi, f in zip(w, factors, strict=True))
    return factors[0].scaling * (mean_product - B @ A)


def aggregate_frozen_a(factors: Sequence[LoraFactors], weights: Sequence[float] | None = None) -> LoraFactors:
    """FFA-LoRA: every client holds the same frozen ``A``; average ``B`` alone."""
    A0 = factors[0].A
    if any(not torch.equal(f.A, A0) or f.scaling != factors[0].scaling for f in factors[1:]):
        raise ValueError("FFA-LoRA needs the same frozen A and scaling on every client; the adapters' A differ")
    w = normalize_weights(weights, len(factors))
    B = sum(wi * f.B.double() for wi, f in zip(w, factors, strict=True))
    return LoraFactors(A0, B.to(factors[0].B.dtype), factors[0].scaling)


def aggregate(method: str, factors: Sequence[LoraFactors], weights: Sequence[float] | None = None, svd_rank: int | None = None, scaling: float = 1.0) -> LoraFactors:
    """Dispatch by method name (see the module docstring)."""
    if method == "svd":
        if svd_rank is None:
            raise ValueError("method = 'svd' needs svd_rank")
        return aggregate_svd(factors, weights, svd_rank, scaling)
    if method in ("naive", "fedex"):  # fedex: the residual comes from fedex_residual
        return aggregate_naive(factors, weights)
    if method == "ffa":
        return aggregate_frozen_a(factors, weights)
    if method == "flora":
        return aggregate_stacked(factors, weights)
    raise ValueError(f"aggregation = {method!r} is not known; allowed: {list(METHODS)}")


def relative_error(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """``||reference - approximation||_F / ||reference||_F`` (0 when both are 0)."""
    ref_norm = torch.linalg.matrix_norm(reference.double())
    diff = torch.linalg.matrix_norm(reference.double() - approximation.double())
    if ref_norm == 0:
        return 0.0 if diff == 0 else math.inf
    return float(diff / ref_norm)


def lora_layer_names(state: Mapping[str, Any]) -> list[str]:
    """Layer prefixes that hold a LoRA pair, from keys like ``<layer>.lora_A[.default].weight``."""
    return sorted({k.split(".lora_A")[0] for k in state if ".lora_A" in k} | {k.split(".lora_B")[0] for k in state if ".lora_B" in k})


def _pair_keys(state_keys, layer: str) -> tuple[str, str]:
    a = next(k for k in state_keys if k.startswith(layer + ".lora_A"))
    return a, a.replace(".lora_A", ".lora_B", 1)


def merge_lora_states(states: Sequence[Mapping[str, torch.Tensor]], scalings: Sequence[float], method: str,
                      weights: Sequence[float] | None, svd_rank: int | None = None, scaling: float = 1.0,
                      frozen: Mapping[str, torch.Tensor] | None = None) -> tuple[StateDict, list[dict]]:
    """Merge the LoRA pairs of ``states`` layer by layer with ``method`` (``frozen``: FFA-LoRA's ``A`` matrices,
    absent from the states) and average every other key; return the merged state and one row per layer (the
    merged rank, the relative error against the mean delta-W, its norm and the seconds spent measuring them).
    ``fedex`` adds each layer's residual under ``<layer>.base_layer.weight`` (to be added to the frozen weight), and
    its error counts the residual in."""
    frozen = dict(frozen or {})
    w = normalize_weights(weights, len(states))
    keys = list(states[0])
    merged: StateDict = {}
    rows, lora_keys = [], set()
    for layer in lora_layer_names(frozen | dict(states[0])):
        ka, kb = _pair_keys(list(frozen) + keys, layer)
        lora_keys |= {ka, kb}
        factors = [LoraFactors(frozen[ka] if ka in frozen else s[ka], s[kb], sc) for s, sc in zip(states, scalings, strict=True)]
        out = aggregate(method, factors, w, svd_rank=svd_rank, scaling=scaling)
        merged[ka], merged[kb] = out.A, out.B
        effective = out.delta()
        if method == "fedex":
            residual = fedex_residual(factors, w)
            merged[layer + FROZEN_WEIGHT] = residual.to(out.A.dtype)
            effective = effective + residual
        t0 = time.perf_counter()
        target = mean_delta(factors, w)
        rows.append({"layer": layer, "method": method, "rank": out.rank,
                     "relative_error": relative_error(target, effective),
                     "mean_delta_norm": float(torch.linalg.matrix_norm(target)), "measure_s": time.perf_counter() - t0})
    rest = [k for k in keys if k not in lora_keys]
    if rest:
        merged |= weighted_average([{k: s[k] for k in rest} for s in states], w)
    return merged, rows


class LoraAggregation(FedAvg):
    """A round-loop strategy that aggregates the LoRA pairs of the clients' states with ``method`` and
    averages everything else. It records the aggregation error of every layer in every round.

    ``client_rank``/``client_alpha``: the adapters the clients train. ``global_rank``/``global_alpha``: the
    adapter the server keeps (``svd``: ``global_rank = svd_rank``, may be below the client rank, "train at 16,
    compress to 8"). ``frozen``: for ``ffa``, the frozen ``A`` matrices (they are not sent).
    """

    name = "lora"

    def __init__(self, method: str, client_rank: int, client_alpha: float, global_rank: int | None = None,
                 global_alpha: float | None = None, frozen: Mapping[str, torch.Tensor] | None = None) -> None:
        if method not in ROUND_METHODS:
            hint = " (flora's adapter rank grows every round; use it in merge_adapters)" if method == "flora" else ""
            raise ValueError(f"aggregation = {method!r} is not allowed in the round loop; allowed: {list(ROUND_METHODS)}{hint}")
        self.method = method
        self.client_rank = int(client_rank)
        self.client_scaling = float(client_alpha) / self.client_rank
        self.global_rank = int(global_rank if global_rank is not None else client_rank)
        alpha = global_alpha if global_alpha is not None else (self.global_rank if method == "svd" else client_alpha)
        self.global_scaling = float(alpha) / self.global_rank
        if method != "svd" and (self.global_rank != self.client_rank or self.global_scaling != self.client_scaling):
            raise ValueError(f"aggregation = {method!r} keeps the clients' rank and alpha; only 'svd' can compress "
                             f"rank {self.client_rank} to {self.global_rank}")
        if self.global_rank > self.client_rank:
            raise ValueError(f"svd_rank = {self.global_rank} is above the clients' rank {self.client_rank}; "
                             "the global adapter cannot be larger than the ones clients train")
        if method == "ffa" and not frozen:
            raise ValueError("aggregation = 'ffa' needs the frozen A matrices (frozen=...)")
        self.frozen = {k: v.detach().clone() for k, v in (frozen or {}).items()}
        self.errors: list[dict] = []
        self.measure_s: list[float] = []  # per round: seconds spent measuring the error (not part of aggregating)
        self._round = 0
        self.folds_base_weights = method == "fedex"
        self._fold: StateDict = {}  # fedex: residuals of the last round, not yet handed to the loop
        self.folded: StateDict = {}  # fedex: the sum of every residual so far (what a resumed run re-applies)

    def expand_for_model(self, state: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> StateDict:
        """The global adapter laid out as a client's (rank ``client_rank``, scaling ``client_scaling``) with the
        same ``delta_W``: extra ``A`` rows drawn as peft initializes them (zeros when ``generator`` is None),
        extra ``B`` columns zero."""
        if self.client_rank == self.global_rank and self.client_scaling == self.global_scaling:
            return dict(state)
        out = dict(state)
        extra = self.client_rank - self.global_rank
        for layer in lora_layer_names(state):
            ka, kb = _pair_keys(state.keys(), layer)
            A, B = state[ka], state[kb]
            if A.shape[0] == self.client_rank:  # already a client's layout (the initial model)
                continue
            new_rows = torch.zeros(extra, A.shape[1], dtype=A.dtype)
            if generator is not None:
                bound = 1.0 / math.sqrt(A.shape[1])  # kaiming_uniform_(a=sqrt(5)), peft's lora_A init
                new_rows = (torch.rand(extra, A.shape[1], generator=generator, dtype=torch.float64) * 2 - 1).mul(bound).to(A.dtype)
            out[ka] = torch.cat([A, new_rows], dim=0)
            out[kb] = torch.cat([B * (self.global_scaling / self.client_scaling), torch.zeros(B.shape[0], extra, dtype=B.dtype)], dim=1)
        return out

    def aggregate(self, global_state, client_states, num_examples, trainable_keys=None) -> StateDict:
        self._round += 1
        merged, rows = merge_lora_states(client_states, [self.client_scaling] * len(client_states), self.method,
                                         num_examples, svd_rank=self.global_rank, scaling=self.global_scaling,
                                         frozen=self.frozen)
        self.errors += [{"round": self._round} | {k: r[k] for k in ("layer", "method", "relative_error", "mean_delta_norm")}
                        for r in rows]
        self.measure_s.append(sum(r["measure_s"] for r in rows))
        self._fold = {k: v for k, v in merged.items() if k.endswith(FROZEN_WEIGHT)}
        for k, v in self._fold.items():
            self.folded[k] = self.folded[k] + v if k in self.folded else v.clone()
        return {k: merged[k].to(v.dtype) for k, v in global_state.items()}

    def base_delta(self) -> StateDict | None:
        """FedEx-LoRA: the residuals of the last aggregation, once (None for the other methods)."""
        fold, self._fold = self._fold, {}
        return fold or None

    def folded_base(self) -> StateDict:
        return dict(self.folded)

    def error_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.errors, columns=["round", "layer", "method", "relative_error", "mean_delta_norm"])

    def state_dict(self) -> dict[str, Any]:
        state = {"errors": list(self.errors), "measure_s": list(self.measure_s), "round": self._round}
        return state | ({"folded": dict(self.folded)} if self.folded else {})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.errors = list(state.get("errors", []))
        self.measure_s = list(state.get("measure_s", []))
        self._round = int(state.get("round", 0))
        self.folded = dict(state.get("folded", {}))

    def describe(self) -> str:
        return (f"LoRA-{self.method}(client r={self.client_rank}, s={self.client_scaling:g}; "
                f"global r={self.global_rank}, s={self.global_scaling:g})")


# --- one-shot merge of adapters saved by peft -----------------------------------------------------------------

def manifest_sizes(manifest_paths: Sequence[Path]) -> list[int]:
    """Examples per client from shard manifests written by :func:`fedpeft.federated.partition.save_shard_manifests`."""
    sizes = []
    for p in manifest_paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"shard manifest not found: {path}")
        sizes.append(len(json.loads(path.read_text())["indices"]))
    return sizes


def merge_weights(count: int, weights: Sequence[float] | None = None, manifests: Sequence[Path] | None = None) -> tuple[list[float], str]:
    """The merge's weights and where they came from: manifest sample counts, given weights, or equal."""
    if weights is not None and manifests is not None:
        raise ValueError("give weights or shard manifests, not both")
    if manifests is not None:
        if len(manifests) != count:
            raise ValueError(f"{len(manifests)} shard manifests for {count} adapters; give one manifest per adapter")
        return normalize_weights(manifest_sizes(manifests), count), "manifest sample counts"
    if weights is not None:
        return normalize_weights(weights, count), "given weights"
    return normalize_weights(None, count), "equal"


def merge_adapter_states(states: Sequence[Mapping[str, torch.Tensor]], scalings: Sequence[float], method: str,
                         weights: Sequence[float], svd_rank: int | None = None, scaling: float = 1.0) -> tuple[StateDict, pd.DataFrame]:
    """Merge adapters held as state dicts (peft key names); returns the merged state and per-layer errors."""
    if len(scalings) != len(states):
        raise ValueError(f"{len(scalings)} scalings for {len(states)} adapters")
    keys = list(states[0])
    for i, s in enumerate(states[1:], start=1):
        if list(s) != keys:
            raise ValueError(f"adapter {i} has keys {sorted(set(s) ^ set(keys))} that adapter 0 does not share")
    merged, rows = merge_lora_states(states, scalings, method, weights, svd_rank=svd_rank, scaling=scaling)
    errors = pd.DataFrame(rows, columns=["layer", "method", "rank", "relative_error"])
    return {k: merged[k] for k in keys}, errors


def merge_adapter_dirs(adapter_dirs: Sequence[Path], out_dir: Path, method: str = "svd", svd_rank: int | None = None,
                       alpha: float | None = None, weights: Sequence[float] | None = None,
                       manifests: Sequence[Path] | None = None) -> dict[str, Any]:
    """The report's ``fedavg_merge.py``: merge K peft adapter folders into one, saved in peft's format (loadable
    with ``PeftModel.from_pretrained``) with a ``fuse_manifest.json``. ``alpha`` defaults to ``svd_rank``."""
    from peft.utils import load_peft_weights
    from safetensors.torch import save_file

    from fedpeft.core.files import atomic_write_text

    if method == "fedex":
        raise ValueError("method = 'fedex' folds a dense residual into the frozen weights, which a peft adapter folder "
                         "cannot hold; merge states with merge_adapter_states, or use svd, naive or flora here")
    dirs = [Path(d) for d in adapter_dirs]
    for d in dirs:
        if not (d / "adapter_config.json").is_file():
            raise FileNotFoundError(f"adapter folder {d} has no adapter_config.json; train and save the adapter first")
    w, weighting = merge_weights(len(dirs), weights, manifests)
    configs = [json.loads((d / "adapter_config.json").read_text()) for d in dirs]
    scalings = [c["lora_alpha"] / c["r"] for c in configs]
    states = [load_peft_weights(str(d), device="cpu") for d in dirs]
    if method == "svd":
        rank = svd_rank if svd_rank is not None else configs[0]["r"]
        new_alpha = float(alpha if alpha is not None else rank)
        scaling = new_alpha / rank
    elif method == "flora":
        rank = sum(c["r"] for c in configs)
        new_alpha, scaling = float(rank), 1.0
    else:
        rank, new_alpha, scaling = configs[0]["r"], float(configs[0]["lora_alpha"]), scalings[0]
    merged, errors = merge_adapter_states(states, scalings, method, w, svd_rank=rank, scaling=scaling)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = dict(configs[0]) | {"r": int(rank), "lora_alpha": new_alpha}
    save_file({k: v.contiguous() for k, v in merged.items()}, str(out_dir / "adapter_model.safetensors"))
    atomic_write_text(out_dir / "adapter_config.json", json.dumps(config, indent=2))
    manifest = {
        "method": method, "rank": int(rank), "lora_alpha": new_alpha, "weighting": weighting,
        "adapters": [str(d) for d in dirs], "weights": w,
        "max_relative_error": float(errors["relative_error"].max()) if len(errors) else 0.0,
    }
    atomic_write_text(out_dir / "fuse_manifest.json", json.dumps(manifest, indent=2))
    return manifest
