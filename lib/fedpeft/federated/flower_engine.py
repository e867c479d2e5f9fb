"""Running a fedpeft strategy on Flower's simulation engine (the seeds' framework; also how users scale out).

The ClientApp calls the same :func:`fedpeft.federated.loop.client_update` as the in-process loop, with any
trainer of the contract in :mod:`fedpeft.training.contract`; a trainer's per-client state (the weeds head's
optimizer) is kept in a temporary folder between rounds, written before the client replies, so it survives
whichever Ray actor runs the client next. The server strategy subclasses Flower's ``FedAvg`` only to hand the replies to the same fedpeft strategy
object, so both engines do identical arithmetic (replies are ordered by partition id before aggregation, as
in-process). The ledger records the bytes of the same safetensors messages the in-process loop serializes. Each
Ray actor gets one CPU, so torch runs one thread there; results are bitwise comparable with an in-process run
that also uses one thread (convolution sums depend on the thread count).
Flower's telemetry, update checks and runtime dependency installation are switched off, and Ray is shut down
when the simulation returns.
"""

from __future__ import annotations

import copy
import io
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from fedpeft.core.files import atomic_torch_save
from fedpeft.federated.ledger import CommunicationLedger, serialize_state
from fedpeft.federated.loop import Client, FederatedResult, RoundConfig, client_update, exchanged_keys
from fedpeft.federated.strategies import FedAvg, StateDict
from fedpeft.training.contract import Trainer

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}


def run_flower(
    model: nn.Module,
    clients: Sequence[Client],
    strategy: FedAvg,
    trainer: Trainer,
    config: RoundConfig,
    server_test: Any | None = None,
    num_cpus: int = 2,
) -> FederatedResult:
    """Run ``config.num_rounds`` rounds on Flower's Ray simulation and return the same result type as the
    in-process loop: per-round history (train loss and server evaluation; ``round_s`` is the wall time between
    server evaluations), the ledger and the final global state (per-client rows are not collected).

    Supports whole-state or trainable-only exchange and client sampling (Flower samples the nodes itself);
    fp32 transport only, and no wall-clock limit (use the in-process engine for those).
    """
    os.environ.update(FLOWER_ENV)
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
    from flwr.simulation import run_simulation

    if config.transport != "fp32":
        raise ValueError(f"transport = {config.transport!r} is not supported on the Flower engine; use 'fp32'")
    keys = exchanged_keys(model, config.exchange)
    trainable_keys = [n for n, p in model.named_parameters() if p.requires_grad]
    full = model.state_dict()
    initial: StateDict = {k: full[k].detach().clone() for k in keys}
    dtypes = {k: v.dtype for k, v in initial.items()}

    def to_state(record: ArrayRecord) -> StateDict:
        return {k: v.to(dtypes[k]) for k, v in record.to_torch_state_dict().items()}

    # A trainer's per-client state (the weeds head's AdamW) is kept on disk between rounds, written before the client
    # replies: Flower's simulation may hand a node its next message before it has stored the node's context.state.
    state_dir = Path(tempfile.mkdtemp(prefix="fedpeft-flower-clients-"))
    # Each client call unpickles its own copy: deep-copying a model that Ray has unpickled loses bitsandbytes'
    # NF4 quantization state (a QLoRA head then fails with "quant_state is required").
    packed = io.BytesIO()
    torch.save(model, packed)
    model_bytes = packed.getvalue()
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        round_ = int(msg.content["config"]["server-round"])
        cid = clients[pid].cid
        state_file = state_dir / f"{pid}.pt"
        trainer.load_client_state(cid, torch.load(state_file, weights_only=True) if state_file.is_file() else None)
        local = torch.load(io.BytesIO(model_bytes), weights_only=False)  # our own bytes, made just above
        sent = {k: v for k, v in msg.content["config"].items() if k != "server-round"}
        new_state, stats = client_update(
            local, to_state(msg.content["arrays"]), clients[pid], pid, round_, strategy, trainer, config.seed, client_config=sent
        )
        client_state = trainer.client_state(cid)
        if client_state is not None:
            atomic_torch_save(client_state, state_file)
        metrics = MetricRecord({"train_loss": float(stats.loss), "num-examples": clients[pid].num_examples,
                                "partition-id": pid, "train_s": float(stats.seconds)})
        return Message(content=RecordDict({"arrays": ArrayRecord(new_state), "metrics": metrics}), reply_to=msg)

    class FedpeftStrategy(FlowerFedAvg):
        """Flower's FedAvg message flow around a fedpeft strategy's aggregation."""

        def configure_train(self, server_round, arrays, config_record, grid):
            self._global = to_state(arrays)
            return super().configure_train(server_round, arrays, config_record, grid)

        def aggregate_train(self, server_round, replies):
            valid = sorted(
                (m for m in replies if m.has_content()), key=lambda m: int(m.content["metrics"]["partition-id"])
            )
            errors = [m.error for m in replies if m.has_error()]
            if errors:
                reason = str(getattr(errors[0], "reason", errors[0]))
                said = re.findall(r"Message: (.*?)'?>?\s*$", reason, flags=re.S)
                raise RuntimeError(f"round {server_round}: {len(errors)} Flower client(s) failed; the first said: "
                                   f"{said[-1].strip() if said else reason}\n\nIts traceback, as Ray reported it:\n{reason}")
            if not valid:
                return None, None
            states = [to_state(m.content["arrays"]) for m in valid]
            weights = [int(m.content["metrics"]["num-examples"]) for m in valid]
            down = len(serialize_state(self._global))
            for m, state in zip(valid, states, strict=True):
                cid = clients[int(m.content["metrics"]["partition-id"])].cid
                ledger.record(server_round, cid, "down", down)
                ledger.record(server_round, cid, "up", len(serialize_state(state)))
            new_state = strategy.aggregate(self._global, states, weights, trainable_keys)
            loss = sum(float(m.content["metrics"]["train_loss"]) * w for m, w in zip(valid, weights, strict=True)) / sum(weights)
            rows[server_round] = {"num_clients": len(valid), "train_loss": loss,
                                  "train_s": sum(float(m.content["metrics"]["train_s"]) for m in valid)}
            return ArrayRecord(new_state), MetricRecord({"train_loss": loss})

    outcome: dict[str, Any] = {}
    rows: dict[int, dict[str, float]] = {}
    ledger = CommunicationLedger()
    eval_model = copy.deepcopy(model)
    start = time.perf_counter()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        row = rows.setdefault(server_round, {})
        row["round_s"] = time.perf_counter() - start - sum(r.get("round_s", 0.0) for r in rows.values())
        if server_test is None:
            return None
        t0 = time.perf_counter()
        eval_model.load_state_dict(to_state(arrays), strict=False)
        values = {k: float(v) for k, v in trainer.evaluate(eval_model, server_test).as_dict().items()}
        row.update({f"server_{k}": v for k, v in values.items()} | {"eval_s": time.perf_counter() - t0})
        return MetricRecord(values)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:  # noqa: ARG001 - Flower's ServerApp signature
        flower_strategy = FedpeftStrategy(
            fraction_train=config.fraction_train,
            fraction_evaluate=0.0,
            min_train_nodes=config.min_train_clients,
            min_available_nodes=len(clients),
        )
        result = flower_strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial),
            num_rounds=config.num_rounds,
            train_config=ConfigRecord(strategy.client_config()),  # FedProx's mu travels as config
            evaluate_fn=evaluate_fn,
        )
        outcome["final_state"] = to_state(result.arrays)

    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=len(clients),
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": num_cpus, "include_dashboard": False, "log_to_driver": False},
            },
        )
    finally:
        _shutdown_ray()
        shutil.rmtree(state_dir, ignore_errors=True)
    if "final_state" not in outcome:
        raise RuntimeError("the Flower simulation ended without a final model; see its log above")
    history = pd.DataFrame([{"round": r, "num_clients": 0, "train_loss": np.nan} | rows[r] for r in sorted(rows)])
    return FederatedResult(history=history, client_history=pd.DataFrame(), ledger=ledger,
                           final_state=outcome["final_state"], wall_s=time.perf_counter() - start,
                           stopped_by_time_limit=False, resumed_from_round=0)


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass
