"""Running a fedpeft strategy on Flower's simulation engine (the seeds' framework; also how users scale out).

The ClientApp calls the same :func:`fedpeft.federated.client_update` as the in-process loop, and the server
strategy subclasses Flower's ``FedAvg`` only to hand the replies to the same fedpeft strategy object, so both
engines do identical arithmetic (replies are ordered by partition id before aggregation, as in-process). Each
Ray actor gets one CPU, so torch runs one thread there; results are bitwise comparable with an in-process run
that also uses one thread (convolution sums depend on the thread count).
Flower's telemetry, update checks and runtime dependency installation are switched off, and Ray is shut down
when the simulation returns.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Sequence

import torch
from torch import nn

from .federated import Client, RoundConfig, client_update, exchanged_keys
from .strategies import FedAvg, StateDict

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
    trainer: Any,
    config: RoundConfig,
    server_test: Any | None = None,
    num_cpus: int = 2,
) -> dict[str, Any]:
    """Run ``config.num_rounds`` rounds on Flower's Ray simulation; return the final global state and the
    server-side evaluation per round (``{"final_state": ..., "server_metrics": {round: {...}}}``).

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

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        round_ = int(msg.content["config"]["server-round"])
        local = copy.deepcopy(model)
        new_state, stats = client_update(
            local, to_state(msg.content["arrays"]), clients[pid], pid, round_, strategy, trainer, config.seed
        )
        metrics = MetricRecord({"train_loss": float(stats.loss), "num-examples": clients[pid].num_examples, "partition-id": pid})
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
            if not valid:
                return None, None
            states = [to_state(m.content["arrays"]) for m in valid]
            weights = [int(m.content["metrics"]["num-examples"]) for m in valid]
            new_state = strategy.aggregate(self._global, states, weights, trainable_keys)
            loss = sum(float(m.content["metrics"]["train_loss"]) * w for m, w in zip(valid, weights)) / sum(weights)
            return ArrayRecord(new_state), MetricRecord({"train_loss": loss})

    outcome: dict[str, Any] = {"server_metrics": {}}
    eval_model = copy.deepcopy(model)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_test is None:
            return None
        eval_model.load_state_dict(to_state(arrays), strict=False)
        stats = trainer.evaluate(eval_model, server_test)
        values = {k: float(v) for k, v in vars(stats).items() if k in ("loss", "accuracy")}
        outcome["server_metrics"][server_round] = values
        return MetricRecord(values)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
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
            train_config=ConfigRecord(),
            evaluate_fn=evaluate_fn,
        )
        outcome["final_state"] = to_state(result.arrays)

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=len(clients),
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": num_cpus, "include_dashboard": False, "log_to_driver": False},
        },
    )
    _shutdown_ray()
    if "final_state" not in outcome:
        raise RuntimeError("the Flower simulation ended without a final model; see its log above")
    return outcome


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass
