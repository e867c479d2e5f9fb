"""What both Flower engines share: the ClientApp's training step and the server strategy around a fedpeft strategy.

:mod:`fedpeft.federated.flower_engine` (Flower's simulation, one process) and :mod:`fedpeft.federated.deployment`
(SuperLink and SuperNodes as real processes) call these, so that the simulation, the deployment and the in-process
loop do identical arithmetic: the ClientApp runs :func:`fedpeft.federated.loop.client_update`, the server hands the
replies, ordered by partition id, to the same fedpeft strategy object, and the ledger records the bytes of the
safetensors message the in-process loop would serialize.

A farmer that a :class:`~fedpeft.federated.network.NetworkModel` drops out of a round has downloaded the global model
(the ledger counts it) but does not train or upload; its reply carries only ``reported = 0`` (a few hundred bytes of
metrics on the wire, where the in-process loop sends nothing).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from fedpeft.core.files import atomic_torch_save
from fedpeft.federated.ledger import CommunicationLedger, serialize_state
from fedpeft.federated.loop import Client, RoundConfig, client_update
from fedpeft.federated.network import NetworkModel
from fedpeft.federated.strategies import FedAvg, StateDict
from fedpeft.training.contract import Trainer

#: Environment of every Flower process the study starts: no telemetry, update checks or dependency installation.
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}


def state_converter(initial: StateDict) -> Callable[[Any], StateDict]:
    """A function from a Flower ``ArrayRecord`` back to a state dict in ``initial``'s dtypes."""
    dtypes = {k: v.dtype for k, v in initial.items()}
    return lambda record: {k: v.to(dtypes[k]) for k, v in record.to_torch_state_dict().items()}


def array_record_bytes(record: Any) -> int:
    """Bytes of the tensors as Flower carries them (each ``Array``'s serialized data, headers included)."""
    return int(sum(len(array.data) for array in record.values()))


def client_train_reply(msg: Any, pid: int, client: Client, model: nn.Module, strategy: FedAvg, trainer: Trainer,
                       config: RoundConfig, initial: StateDict, state_file: Path, network: NetworkModel | None = None,
                       timestamps: dict[str, float] | None = None) -> Any:
    """The ClientApp's reply to one train message: :func:`client_train_content` of its content, as a Flower message."""
    from flwr.app import Message, RecordDict

    content = client_train_content(msg.content, pid, client, model, strategy, trainer, config, initial, state_file,
                                   network, timestamps)
    return Message(content=RecordDict(content), reply_to=msg)


def client_train_content(content: Any, pid: int, client: Client, model: nn.Module, strategy: FedAvg, trainer: Trainer,
                         config: RoundConfig, initial: StateDict, state_file: Path, network: NetworkModel | None = None,
                         timestamps: dict[str, float] | None = None) -> dict[str, Any]:
    """A ClientApp's work for one train message's ``content`` (its ``"config"`` and ``"arrays"`` records): restore the
    trainer's state of this client from ``state_file``, train with :func:`client_update` (unless ``network`` drops the
    farmer this round), save the state again, and return the reply's records (``"arrays"`` and ``"metrics"``).

    With ``timestamps`` (wall-clock seconds since the epoch, ``time.time()``, named ``*_t``: the deployment engine's
    ClientApp passes when its process started and when Flower called it), the reply's metrics carry them and
    ``train_start_t`` / ``train_end_t`` around the local training: what the server needs to take a round apart."""
    from flwr.app import ArrayRecord, MetricRecord

    round_ = int(content["config"]["server-round"])
    if network is not None and not network.reports(round_, pid):
        return {"metrics": MetricRecord({"partition-id": pid, "reported": 0, "num-examples": client.num_examples, "train_s": 0.0})}
    to_state = state_converter(initial)
    trainer.load_client_state(client.cid, torch.load(state_file, weights_only=True) if state_file.is_file() else None)
    sent = {k: v for k, v in content["config"].items() if k != "server-round"}
    arrays = to_state(content["arrays"])
    train_start_t = time.time()
    new_state, stats = client_update(model, arrays, client, pid, round_, strategy, trainer, config.seed, client_config=sent)
    train_end_t = time.time()
    client_state = trainer.client_state(client.cid)
    if client_state is not None:
        atomic_torch_save(client_state, state_file)
    stamps = {} if timestamps is None else {**timestamps, "train_start_t": train_start_t, "train_end_t": train_end_t}
    metrics = MetricRecord({"train_loss": float(stats.loss), "num-examples": client.num_examples, "partition-id": pid,
                            "train_s": float(stats.seconds), "reported": 1, **stamps})
    return {"arrays": ArrayRecord(new_state), "metrics": metrics}


def flower_failure(server_round: int, errors: Sequence[Any]) -> RuntimeError:
    reason = str(getattr(errors[0], "reason", errors[0]))
    said = re.findall(r"Message: (.*?)'?>?\s*$", reason, flags=re.S)
    return RuntimeError(f"round {server_round}: {len(errors)} Flower client(s) failed; the first said: "
                        f"{said[-1].strip() if said else reason}\n\nIts traceback, as Flower reported it:\n{reason}")


class RoundLog:
    """What the server strategy collects: one row per round, one per (round, client), the ledger and the bytes
    Flower itself carried per message."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, float]] = {}
        self.client_rows: list[dict[str, Any]] = []
        self.ledger = CommunicationLedger()
        self.flower_bytes: list[dict[str, Any]] = []


def fedpeft_strategy_class(strategy: FedAvg, clients: Sequence[Client], trainable_keys: Sequence[str],
                           to_state: Callable[[Any], StateDict], log: RoundLog, transport: str = "fp32") -> type:
    """A subclass of Flower's ``FedAvg`` whose aggregation is ``strategy``'s (Flower keeps the message flow). Flower
    sends every client the same arrays, so a strategy that folds a residual into the frozen weights or sends each
    client its own message is refused here (the in-process round loop runs it)."""
    if strategy.folds_base_weights or strategy.per_client_messages:
        raise ValueError(f"{strategy.describe()} cannot run on Flower's engines: it "
                         + ("folds a residual into the clients' frozen weights" if strategy.folds_base_weights
                            else "sends each client its own message (adapters of different ranks)")
                         + ", and Flower sends every client the same arrays; use engine 'inprocess'")
    from flwr.app import ArrayRecord, MetricRecord
    from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

    class FedpeftStrategy(FlowerFedAvg):
        """Flower's FedAvg message flow around a fedpeft strategy's aggregation."""

        def configure_train(self, server_round, arrays, config_record, grid):
            log.rows.setdefault(server_round, {})["sent_t"] = time.time()  # just before Flower pushes the messages
            self._global = to_state(arrays)
            self._down_flower = array_record_bytes(arrays)
            return super().configure_train(server_round, arrays, config_record, grid)

        def aggregate_train(self, server_round, replies):
            log.rows.setdefault(server_round, {})["received_t"] = time.time()  # every reply is in
            replies = list(replies)
            errors = [m.error for m in replies if m.has_error()]
            if errors:
                raise flower_failure(server_round, errors)
            answered = sorted((m for m in replies if m.has_content()), key=lambda m: int(m.content["metrics"]["partition-id"]))
            valid = [m for m in answered if int(m.content["metrics"].get("reported", 1))]
            down = len(serialize_state(self._global, transport))
            for m in answered:
                pid = int(m.content["metrics"]["partition-id"])
                reported = bool(int(m.content["metrics"].get("reported", 1)))
                log.ledger.record(server_round, clients[pid].cid, "down", down)
                log.flower_bytes.append({"round": server_round, "client": clients[pid].cid, "direction": "down",
                                         "flower_bytes": self._down_flower})
                log.client_rows.append({"round": server_round, "client": clients[pid].cid, "reported": reported,
                                        "train_examples": clients[pid].num_examples,
                                        "train_s": float(m.content["metrics"]["train_s"]),
                                        "train_loss": float(m.content["metrics"].get("train_loss", float("nan"))),
                                        **{k: float(v) for k, v in m.content["metrics"].items() if k.endswith("_t")}})
            if not valid:
                log.rows[server_round] |= {"num_clients": 0, "train_loss": float("nan"), "train_s": 0.0}
                return None, None
            states = [to_state(m.content["arrays"]) for m in valid]
            weights = [int(m.content["metrics"]["num-examples"]) for m in valid]
            for m, state in zip(valid, states, strict=True):
                cid = clients[int(m.content["metrics"]["partition-id"])].cid
                log.ledger.record(server_round, cid, "up", len(serialize_state(state, transport)))
                log.flower_bytes.append({"round": server_round, "client": cid, "direction": "up",
                                         "flower_bytes": array_record_bytes(m.content["arrays"])})
            new_state = strategy.aggregate(self._global, states, weights, list(trainable_keys))
            loss = sum(float(m.content["metrics"]["train_loss"]) * w for m, w in zip(valid, weights, strict=True)) / sum(weights)
            log.rows[server_round] |= {"num_clients": len(valid), "train_loss": loss,
                                       "train_s": sum(float(m.content["metrics"]["train_s"]) for m in valid)}
            return ArrayRecord(new_state), MetricRecord({"train_loss": loss})

    return FedpeftStrategy


def server_evaluate_fn(model: nn.Module, trainer: Trainer, server_test: Any | None, to_state: Callable[[Any], StateDict],
                       log: RoundLog, start: float) -> Callable[[int, Any], Any]:
    """Flower's ``evaluate_fn``: the round's wall time (between server evaluations) and the server's test metrics."""
    from flwr.app import MetricRecord

    def evaluate_fn(server_round: int, arrays: Any) -> Any:
        row = log.rows.setdefault(server_round, {})
        row["round_s"] = time.perf_counter() - start - sum(r.get("round_s", 0.0) for r in log.rows.values())
        if server_test is None:
            return None
        t0 = time.perf_counter()
        model.load_state_dict(to_state(arrays), strict=False)
        values = {k: float(v) for k, v in trainer.evaluate(model, server_test).as_dict().items()}
        row.update({f"server_{k}": v for k, v in values.items()} | {"eval_s": time.perf_counter() - t0})
        return MetricRecord(values)

    return evaluate_fn
