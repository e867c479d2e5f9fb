"""Running a fedpeft strategy on Flower's simulation engine (the seeds' framework; also how users scale out).

The ClientApp calls the same :func:`fedpeft.federated.loop.client_update` as the in-process loop, with any
trainer of the contract in :mod:`fedpeft.training.contract`; a trainer's per-client state (the weeds head's
optimizer) is kept in a temporary folder between rounds, written before the client replies, so it survives
whichever Ray actor runs the client next. The server strategy subclasses Flower's ``FedAvg`` only to hand the replies to the same fedpeft strategy
object, so both engines do identical arithmetic (replies are ordered by partition id before aggregation, as
in-process). The ledger records the bytes of the same safetensors messages the in-process loop serializes. Each
Ray actor gets one CPU, so torch runs one thread there; results are bitwise comparable with an in-process run
that also uses one thread (convolution sums depend on the thread count).
Flower's telemetry, update checks and runtime dependency installation are switched off. Each simulation starts a
local Ray instance and shuts it down when it returns, unless it is given a running cluster (``ray_address``, or Ray's
own ``RAY_ADDRESS``), which it joins and leaves running: several simulations then share one cluster (the tests do),
or a simulation spans machines. The ClientApp's step and the server strategy are :mod:`fedpeft.federated.flower_bridge`'s,
shared with the deployment engine.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from fedpeft.federated.flower_bridge import (
    FLOWER_ENV,
    RoundLog,
    client_train_reply,
    fedpeft_strategy_class,
    server_evaluate_fn,
    state_converter,
)
from fedpeft.federated.loop import Client, FederatedResult, RoundConfig, exchanged_keys
from fedpeft.federated.network import NetworkModel
from fedpeft.federated.strategies import FedAvg, StateDict
from fedpeft.training.contract import Trainer

__all__ = ["FLOWER_ENV", "run_flower"]


def run_flower(
    model: nn.Module,
    clients: Sequence[Client],
    strategy: FedAvg,
    trainer: Trainer,
    config: RoundConfig,
    server_test: Any | None = None,
    num_cpus: int = 2,
    network: NetworkModel | None = None,
    ray_address: str | None = None,
    index_messages: bool = True,
    shelve_clients: bool = True,
) -> FederatedResult:
    """Run ``config.num_rounds`` rounds on Flower's Ray simulation and return the same result type as the
    in-process loop: per-round history (train loss and server evaluation; ``round_s`` is the wall time between
    server evaluations), per-(round, client) rows, the ledger and the final global state.

    Supports whole-state or trainable-only exchange and client sampling (Flower samples the nodes itself);
    fp32 transport only, and no wall-clock limit (use the in-process engine for those). ``network``: its drop-out
    draws decide which farmers skip a round, as in the in-process loop. ``num_cpus``: CPUs of the local Ray instance
    (each client takes one). ``ray_address``: a running Ray cluster (``ray start --head``) to join instead, its CPUs
    deciding how many clients train at once; ``RAY_ADDRESS`` when not given. Without either, a new local instance is
    started even where another Ray cluster runs on the machine (Ray would otherwise join that one).
    ``index_messages``: Flower's in-memory state finds each node's messages through an index by destination node
    (:mod:`fedpeft.federated.linkstate_index`), so a round's cost grows linearly with the clients instead of with
    their square; ``False`` keeps Flower's own scan (the scale benchmark's "before"). ``shelve_clients``: the ClientApp
    loads the model and its client's data from files written once (:class:`ClientShelf`); ``False`` holds them in the
    app, which Ray then pickles with every message (the scale benchmark's "before").
    """
    os.environ.update(FLOWER_ENV)
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedpeft.federated.linkstate_index import indexed_link_state

    if config.transport != "fp32":
        raise ValueError(f"transport = {config.transport!r} is not supported on the Flower engine; use 'fp32'")
    address = ray_address or os.environ.get("RAY_ADDRESS") or None
    # Ray refuses num_cpus when it joins a cluster; "local" makes it start its own even if `ray start` runs here
    init_args = {"address": address} if address else {"address": "local", "num_cpus": num_cpus, "include_dashboard": False}
    keys = exchanged_keys(model, config.exchange)
    trainable_keys = [n for n, p in model.named_parameters() if p.requires_grad]
    full = model.state_dict()
    initial: StateDict = {k: full[k].detach().clone() for k in keys}
    to_state = state_converter(initial)

    # A trainer's per-client state (the weeds head's AdamW) is kept on disk between rounds, written before the client
    # replies: Flower's simulation may hand a node its next message before it has stored the node's context.state.
    state_dir = Path(tempfile.mkdtemp(prefix="fedpeft-flower-clients-"))
    # Ray pickles the ClientApp's factory with every message it hands an actor, so the app holds only paths: the model
    # and each client's data are written once, here, and each call loads its own client. (Holding the clients in the
    # app made every message carry every client's data: a round's cost grew with the square of the clients.) Each call
    # also loads its own copy of the model: deep-copying a model that Ray has unpickled loses bitsandbytes' NF4
    # quantization state (a QLoRA head then fails with "quant_state is required").
    shelf = ClientShelf(state_dir, model, clients) if shelve_clients else InAppClients(model, clients)
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        return client_train_reply(msg, pid, shelf.client(pid), shelf.model(), strategy, trainer, config, initial,
                                  state_dir / f"{pid}.pt", network)

    outcome: dict[str, Any] = {}
    log = RoundLog()
    strategy_class = fedpeft_strategy_class(strategy, clients, trainable_keys, to_state, log)
    start = time.perf_counter()
    evaluate_fn = server_evaluate_fn(copy.deepcopy(model), trainer, server_test, to_state, log, start)
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:  # noqa: ARG001 - Flower's ServerApp signature
        flower_strategy = strategy_class(
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
        with warnings.catch_warnings(), indexed_link_state() if index_messages else contextlib.nullcontext():
            # Ray announces on every start that a future version will stop hiding GPUs from tasks that ask for none;
            # the clients here ask for none and run on the CPU either way
            warnings.filterwarnings("ignore", message=r"Tip: In future versions of Ray", category=FutureWarning)
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=len(clients),
                backend_config={
                    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                    "init_args": init_args | {"log_to_driver": False},
                },
            )
    finally:
        _shutdown_ray()
        shutil.rmtree(state_dir, ignore_errors=True)
    if "final_state" not in outcome:
        raise RuntimeError("the Flower simulation ended without a final model; see its log above")
    return round_log_result(log, outcome["final_state"], time.perf_counter() - start)


class ClientShelf:
    """The model and every client's data written to ``folder`` once (``torch.save``), loaded back one at a time by the
    ClientApp, so that what Ray pickles with each message is a path, whatever the number of clients."""

    def __init__(self, folder: Path, model: nn.Module, clients: Sequence[Client]) -> None:
        self.folder = Path(folder) / "shelf"
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save(model, self.folder / "model.pt")
        for pid, client in enumerate(clients):
            torch.save(client, self.folder / f"client-{pid}.pt")

    def model(self) -> nn.Module:
        return torch.load(self.folder / "model.pt", weights_only=False)  # our own file, written above

    def client(self, pid: int) -> Client:
        return torch.load(self.folder / f"client-{pid}.pt", weights_only=False)  # our own file, written above


class InAppClients:
    """The model and the clients held in the ClientApp itself (how this engine ran before :class:`ClientShelf`; kept
    for the scale benchmark's "before"): Ray pickles all of it with every message."""

    def __init__(self, model: nn.Module, clients: Sequence[Client]) -> None:
        packed = io.BytesIO()
        torch.save(model, packed)
        self.model_bytes, self.clients = packed.getvalue(), list(clients)

    def model(self) -> nn.Module:
        return torch.load(io.BytesIO(self.model_bytes), weights_only=False)  # our own bytes, made above

    def client(self, pid: int) -> Client:
        return self.clients[pid]


def round_log_result(log: RoundLog, final_state: StateDict, wall_s: float) -> FederatedResult:
    """A :class:`FederatedResult` from what the server strategy logged (rounds without a row get NaN)."""
    history = pd.DataFrame([{"round": r, "num_clients": 0, "train_loss": np.nan} | log.rows[r] for r in sorted(log.rows)])
    return FederatedResult(history=history, client_history=pd.DataFrame(log.client_rows), ledger=log.ledger,
                           final_state=final_state, wall_s=wall_s, stopped_by_time_limit=False, resumed_from_round=0)


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass
