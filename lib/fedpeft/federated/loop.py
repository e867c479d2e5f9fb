"""The in-process federated round loop: broadcast, local training, upload, aggregation, evaluation.

One round, as in Flower's FedAvg: the server samples ``fraction_train`` of the clients, serializes the global
state and sends it to each (``down``; a strategy with ``per_client_messages`` sends each client its own part, as to
clients of different LoRA ranks); each client loads it, trains locally (plus its strategy's proximal term) and sends
its state back (``up``); the strategy aggregates the states weighted by the clients' example counts.
The server then evaluates the new global model on its own test set and every client evaluates it on its local
test split. The loop stops between rounds once a wall-clock limit is reached, and writes a checkpoint after
every round from which an interrupted run resumes with identical results (all randomness is derived from
``(seed, round, client)``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from fedpeft.core.checkpoints import code_digest
from fedpeft.core.checkpoints import load as load_checkpoint
from fedpeft.core.files import atomic_torch_save
from fedpeft.core.seeding import seed_global_rng, seeded_generator
from fedpeft.federated.ledger import CommunicationLedger, deserialize_state, serialize_state
from fedpeft.federated.network import NetworkModel
from fedpeft.federated.strategies import FedAvg, StateDict, proximal_term
from fedpeft.training.contract import EvalResult, Trainer, TrainStats

EXCHANGES = ("state", "trainable")
DIVERGENCE_FACTOR = 100.0  # a server loss this many times the initial one is reported as divergence


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or infinite loss or weight; the run stops rather than carry it on."""


def _settings_hint(trainer: Trainer, strategy: FedAvg) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in trainer.describe().items() if k in ("lr", "optimizer", "precision", "epochs",
                                                                                     "local_steps", "batch_size"))
    return f"look at the trainer's settings ({settings}) and the strategy ({strategy.describe()}); a lower lr usually fixes it"


def check_finite(state: Mapping[str, torch.Tensor], loss: float, where: str, hint: str) -> None:
    """Raise :class:`NonFiniteError` naming ``where`` if ``loss`` or any floating tensor of ``state`` is NaN/inf."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if not np.isfinite(loss) or bad:
        what = f"loss {loss}" if not np.isfinite(loss) else f"non-finite weights in {bad[:3]}{' ...' if len(bad) > 3 else ''}"
        raise NonFiniteError(f"{where}: training produced {what}; the run stops here. To fix it, {hint}")


@dataclass
class Client:
    """A federated participant: an id, its local training data and (optionally) a local test split."""

    cid: str
    train: Any
    test: Any | None = None

    @property
    def num_examples(self) -> int:
        return len(self.train)


@dataclass
class RoundConfig:
    """Settings of the round loop.

    ``exchange``: ``"state"`` sends the whole ``state_dict`` (parameters and buffers); ``"trainable"`` sends
    only parameters with ``requires_grad`` (adapters). ``transport``: precision of floating tensors on the wire.
    ``time_limit_s``: stop between rounds once this many seconds (wall clock) have passed; ``None`` for no limit.
    """

    num_rounds: int
    seed: int = 0
    fraction_train: float = 1.0
    min_train_clients: int = 1
    time_limit_s: float | None = None
    exchange: str = "state"
    transport: str = "fp32"
    evaluate_clients: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.num_rounds, int) or self.num_rounds < 1:
            raise ValueError(f"num_rounds = {self.num_rounds!r} is not allowed; it must be an integer >= 1")
        if not 0 < self.fraction_train <= 1:
            raise ValueError(f"fraction_train = {self.fraction_train!r} is not allowed; it must be in (0, 1]")
        if self.min_train_clients < 1:
            raise ValueError(f"min_train_clients = {self.min_train_clients!r} is not allowed; it must be >= 1")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise ValueError(f"time_limit_s = {self.time_limit_s!r} is not allowed; it must be > 0 or None")
        if self.exchange not in EXCHANGES:
            raise ValueError(f"exchange = {self.exchange!r} is not allowed; it must be one of {list(EXCHANGES)}")


@dataclass
class FederatedResult:
    history: pd.DataFrame  # one row per round (round 0: the initial model, before any training)
    client_history: pd.DataFrame  # one row per (round, client)
    ledger: CommunicationLedger
    final_state: StateDict
    wall_s: float  # wall-clock seconds of this call (a resumed run counts only its own part)
    stopped_by_time_limit: bool
    resumed_from_round: int  # 0 for a fresh run

    @property
    def rounds_completed(self) -> int:
        return int(self.history["round"].max())

    def step_seconds(self) -> float:
        """Seconds spent in local training and evaluation alone (the loop's useful work)."""
        h = self.history[self.history["round"] > self.resumed_from_round]
        return float(h["train_s"].sum() + h["eval_s"].sum())

    def loop_overhead(self) -> float:
        """Wall time divided by training + evaluation time (1.0 means no overhead)."""
        return self.wall_s / self.step_seconds()


def exchanged_keys(model: nn.Module, exchange: str) -> list[str]:
    """State keys that travel between server and clients."""
    if exchange == "state":
        return list(model.state_dict().keys())
    return [name for name, p in model.named_parameters() if p.requires_grad]


def update_norm(new_state: Mapping[str, torch.Tensor], old_state: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of a client's change over the floating tensors it sends (its drift from the global model); NaN
    when the client trains another layout than the server keeps (a LoRA rank the server compresses)."""
    total = 0.0
    for k, v in new_state.items():
        if v.shape != old_state[k].shape:
            return float("nan")
        if v.is_floating_point():
            total += float((v.to(torch.float32) - old_state[k].to(torch.float32)).pow(2).sum())
    return total ** 0.5


def add_to_parameters(model: nn.Module, deltas: Mapping[str, torch.Tensor]) -> None:
    """Add each tensor of ``deltas`` to the parameter of that name (FedEx-LoRA's residual into a frozen weight)."""
    if not deltas:
        return
    params = dict(model.named_parameters())
    unknown = sorted(set(deltas) - set(params))
    if unknown:
        raise KeyError(f"the strategy folds into parameters the model does not have: {unknown[:3]}")
    with torch.no_grad():
        for name, delta in deltas.items():
            params[name].add_(delta.to(device=params[name].device, dtype=params[name].dtype))


def sample_clients(num_clients: int, fraction: float, min_clients: int, seed: int, round_: int) -> list[int]:
    """Indices of the clients that train in ``round_``: ``max(min_clients, int(fraction * n))`` of them."""
    k = min(num_clients, max(min_clients, int(fraction * num_clients)))
    if k == num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng([seed, round_])
    return sorted(rng.choice(num_clients, size=k, replace=False).tolist())


def client_update(
    model: nn.Module,
    received: Mapping[str, torch.Tensor],
    client: Client,
    client_index: int,
    round_: int,
    strategy: FedAvg,
    trainer: Trainer,
    seed: int,
    client_config: Mapping[str, Any] | None = None,
) -> tuple[StateDict, TrainStats]:
    """Load the received global state into ``model``, train on the client's data, return its new state (on the
    CPU) and stats.

    ``client_config``: what the server sent with the model (FedProx's ``proximal-mu``); by default the strategy's
    :meth:`~fedpeft.federated.strategies.FedAvg.client_config`, which is what the Flower server sends as train config.
    Shared by the in-process loop and the Flower ClientApp, so both engines do exactly the same local work.
    """
    mu = float((strategy.client_config() if client_config is None else client_config).get("proximal-mu", 0.0))
    generator = seeded_generator(seed, round_, client_index)
    seed_global_rng(seed, round_, client_index)  # dropout draws from the global generator
    received = strategy.client_view(received, client_index, generator)
    model.load_state_dict(received, strict=False)
    global_params = {k: v.detach().clone() for k, v in received.items()}
    stats = trainer.train(model, client.train, generator, lambda m: proximal_term(m, global_params, mu), client_id=client.cid)
    state = model.state_dict()
    new_state = {k: state[k].detach().to("cpu", copy=True) for k in received}
    check_finite(new_state, stats.loss, f"round {round_}, client {client.cid}", _settings_hint(trainer, strategy))
    return new_state, stats


def _metrics(prefix: str, result: EvalResult) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in result.as_dict().items()}


def data_digest(obj: Any) -> str:
    """sha256 of every tensor, array and value inside ``obj`` (dataclasses, lists, tuples and dicts are walked), so
    a checkpoint can tell whether a client's data changed."""
    digest = hashlib.sha256()

    def feed(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, np.ndarray):
            digest.update(f"{x.dtype}{x.shape}".encode())
            digest.update(np.ascontiguousarray(x).tobytes())
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            for f in dataclasses.fields(x):
                feed(getattr(x, f.name))
        elif isinstance(x, (list, tuple)):
            for item in x:
                feed(item)
        elif isinstance(x, dict):
            for key in sorted(x, key=str):
                feed(key)
                feed(x[key])
        else:
            digest.update(repr(x).encode())

    feed(obj)
    return digest.hexdigest()[:16]


def run_identity(cfg: RoundConfig, strategy: FedAvg, trainer: Trainer, clients: Sequence[Client],
                 keys: Sequence[str]) -> dict[str, str]:
    """What a resumed run must share with the run that wrote the checkpoint, one digest per part: the round
    settings (the time limit aside), the strategy, the trainer's settings, the clients and their data, the
    exchanged keys and the library's code."""

    def short(obj: Any) -> str:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]

    return {
        "round settings": short(dataclasses.asdict(cfg) | {"time_limit_s": None}),
        "strategy": short(strategy.describe()),
        "trainer settings": short({"class": type(trainer).__name__, **trainer.describe()}),
        "clients": short([(c.cid, c.num_examples) for c in clients]),
        "data": data_digest([(c.train, c.test) for c in clients]),
        "exchanged keys": short(list(keys)),
        "code": code_digest(),
    }


def _warn_if_diverging(first: Mapping[str, Any], row: Mapping[str, Any], trainer: Trainer, strategy: FedAvg) -> None:
    start, now = first.get("server_loss"), row.get("server_loss")
    if start is None or now is None:
        return
    if not np.isfinite(now):
        raise NonFiniteError(f"round {row['round']}: the server's loss is {now}; the run stops here. To fix it, "
                             f"{_settings_hint(trainer, strategy)}")
    if np.isfinite(start) and start > 0 and now > DIVERGENCE_FACTOR * start:
        warnings.warn(f"round {row['round']}: the server's loss {now:.4g} is over {DIVERGENCE_FACTOR:g}x its initial "
                      f"{start:.4g}: training is diverging; {_settings_hint(trainer, strategy)}", RuntimeWarning, stacklevel=3)


def run_federated(
    model: nn.Module,
    clients: Sequence[Client],
    strategy: FedAvg,
    trainer: Trainer,
    config: RoundConfig,
    server_test: Any | None = None,
    checkpoint_path: Path | None = None,
    progress: bool = True,
    description: str = "rounds",
    stop_after_round: int | None = None,
    network: NetworkModel | None = None,
    client_state_dir: Path | None = None,
) -> FederatedResult:
    """Run ``config.num_rounds`` rounds of federated training starting from ``model``'s weights.

    ``checkpoint_path``: written after every round; if it exists when the call starts (same settings), the run
    resumes after its last round. ``stop_after_round`` ends the call early (to simulate an interruption).
    ``network``: farmers that it says drop out of a round download the global model but never report; the
    round aggregates those that report (with none, the global model stays as it was).
    ``client_state_dir``: each client's trainer state (the weeds head's AdamW moments) is written there after its
    update and dropped from memory, and read back at its next one, so that memory does not grow with the number of
    clients (identical results; not together with ``checkpoint_path``, whose checkpoint holds the states).
    """
    if client_state_dir is not None and checkpoint_path is not None:
        raise ValueError("client_state_dir and checkpoint_path cannot be used together: a checkpoint holds the trainer's "
                         "client states in memory; use one of them")
    if not clients:
        raise ValueError("run_federated needs at least one client")
    empty = [c.cid for c in clients if c.num_examples == 0]
    if empty:
        raise ValueError(f"clients {empty} hold no training examples; use fewer clients or more data")
    start = time.perf_counter()
    keys = exchanged_keys(model, config.exchange)
    trainable_keys = [n for n, p in model.named_parameters() if p.requires_grad]
    work_model = copy.deepcopy(model)
    full_state = model.state_dict()
    global_state: StateDict = {k: full_state[k].detach().clone() for k in keys}
    identity = run_identity(config, strategy, trainer, clients, keys) if checkpoint_path is not None else {}

    history: list[dict] = []
    client_rows: list[dict] = []
    ledger = CommunicationLedger()
    first_round = 1
    trainer.reset_state()
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        ckpt = load_checkpoint(checkpoint_path)
        changed = [part for part in identity if ckpt.get("identity", {}).get(part) != identity[part]]
        if changed:
            warnings.warn(f"checkpoint {checkpoint_path} was written by a run with other {', '.join(changed)}; "
                          "starting afresh (it is replaced after the first round)", RuntimeWarning, stacklevel=2)
        else:
            global_state = ckpt["global_state"]
            strategy.load_state_dict(ckpt["strategy_state"])
            trainer.load_state_dict(ckpt["trainer_state"])
            history, client_rows = ckpt["history"], ckpt["client_history"]
            ledger = CommunicationLedger.from_state_dict(ckpt["ledger"])
            first_round = ckpt["round"] + 1
    resumed_from = first_round - 1
    add_to_parameters(work_model, strategy.folded_base())  # a resumed FedEx-LoRA run's frozen weights

    def evaluate_global(round_: int, row: dict) -> None:
        t0 = time.perf_counter()
        work_model.load_state_dict(strategy.expand_for_model(global_state), strict=False)
        if server_test is not None:
            row.update(_metrics("server", trainer.evaluate(work_model, server_test)))
        if config.evaluate_clients:
            weighted: dict[str, float] = {}
            total = 0
            for c in clients:
                if c.test is None or len(c.test) == 0:
                    continue
                m = _metrics("test", trainer.evaluate(work_model, c.test))
                client_rows.append({"round": round_, "client": c.cid, "test_examples": len(c.test), **m})
                for k, v in m.items():
                    weighted[k] = weighted.get(k, 0.0) + v * len(c.test)
                total += len(c.test)
            row.update({k.replace("test_", "client_", 1): v / total for k, v in weighted.items()} if total else {})
        row["eval_s"] = time.perf_counter() - t0

    if first_round == 1:
        row0 = {"round": 0, "num_clients": 0, "train_loss": np.nan, "train_s": 0.0, "aggregate_s": 0.0, "comm_s": 0.0}
        evaluate_global(0, row0)
        history.append(row0)

    stopped = False
    bar = tqdm(range(first_round, config.num_rounds + 1), desc=description, disable=not progress, leave=False)
    for round_ in bar:
        round_start = time.perf_counter()
        chosen = sample_clients(len(clients), config.fraction_train, config.min_train_clients, config.seed, round_)
        train_s = comm_s = 0.0
        states, weights, losses = [], [], []
        t0 = time.perf_counter()
        shared_down = None if strategy.per_client_messages else serialize_state(global_state, config.transport)
        comm_s += time.perf_counter() - t0
        for i in chosen:
            c = clients[i]
            t0 = time.perf_counter()
            down = shared_down if shared_down is not None else serialize_state(strategy.downlink(global_state, i), config.transport)
            received = deserialize_state(down, like=global_state)
            ledger.record(round_, c.cid, "down", len(down))
            comm_s += time.perf_counter() - t0
            if network is not None and not network.reports(round_, i):
                client_rows.append({"round": round_, "client": c.cid, "train_examples": c.num_examples, "train_loss": np.nan,
                                    "update_norm": np.nan, "train_s": 0.0, "reported": False})
                continue
            t0 = time.perf_counter()
            if client_state_dir is not None:
                saved = Path(client_state_dir) / f"{i}.pt"
                trainer.load_client_state(c.cid, torch.load(saved, weights_only=True) if saved.is_file() else None)
            new_state, stats = client_update(work_model, received, c, i, round_, strategy, trainer, config.seed)
            if client_state_dir is not None:
                kept = trainer.client_state(c.cid)
                if kept is not None:
                    atomic_torch_save(kept, saved)
                trainer.load_client_state(c.cid, None)
            client_train_s = time.perf_counter() - t0
            train_s += client_train_s
            t0 = time.perf_counter()
            up = serialize_state(strategy.uplink(new_state, i), config.transport)
            ledger.record(round_, c.cid, "up", len(up))
            # a per-client strategy reads its own messages (another layout, or an encoded update) in from_uplink
            states.append(strategy.from_uplink(deserialize_state(up, like=None if strategy.per_client_messages else global_state), i))
            comm_s += time.perf_counter() - t0
            weights.append(c.num_examples)
            losses.append(stats.loss)
            client_rows.append({"round": round_, "client": c.cid, "train_examples": c.num_examples, "train_loss": stats.loss,
                                "update_norm": update_norm(states[-1], received), "train_s": client_train_s, "reported": True})
        t0 = time.perf_counter()
        if states:
            global_state = strategy.aggregate(global_state, states, weights, trainable_keys)
            check_finite(global_state, 0.0, f"round {round_}, server aggregation", _settings_hint(trainer, strategy))
            folded = strategy.base_delta()
            if folded:  # sent to every client with the next model: its bytes count as this round's downlink
                extra = len(serialize_state(folded, config.transport))
                for c in clients:
                    ledger.record(round_, c.cid, "down", extra, payload="folded into frozen weights")
                add_to_parameters(work_model, folded)
        aggregate_s = time.perf_counter() - t0
        row = {
            "round": round_,
            "num_clients": len(states),
            "train_loss": float(np.average(losses, weights=weights)) if states else np.nan,
            "train_s": train_s,
            "aggregate_s": aggregate_s,
            "comm_s": comm_s,
        }
        evaluate_global(round_, row)
        _warn_if_diverging(history[0], row, trainer, strategy)
        row["round_s"] = time.perf_counter() - round_start
        history.append(row)
        if "server_accuracy" in row:
            bar.set_postfix(acc=f"{row['server_accuracy']:.3f}", loss=f"{row['train_loss']:.3f}")
        if checkpoint_path is not None:
            atomic_torch_save(
                {
                    "identity": identity,
                    "round": round_,
                    "global_state": global_state,
                    "strategy_state": strategy.state_dict(),
                    "trainer_state": trainer.state_dict(),
                    "history": history,
                    "client_history": client_rows,
                    "ledger": ledger.state_dict(),
                },
                Path(checkpoint_path),
            )
        if config.time_limit_s is not None and time.perf_counter() - start >= config.time_limit_s:
            stopped = round_ < config.num_rounds
            break
        if stop_after_round is not None and round_ >= stop_after_round:
            break
    bar.close()
    return FederatedResult(
        history=pd.DataFrame(history),
        client_history=pd.DataFrame(client_rows),
        ledger=ledger,
        final_state=global_state,
        wall_s=time.perf_counter() - start,
        stopped_by_time_limit=stopped,
        resumed_from_round=resumed_from,
    )
