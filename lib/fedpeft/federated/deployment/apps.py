"""The study's Flower App: a ServerApp and a ClientApp that run fedpeft's strategies and trainers unchanged.

``flower_app/pyproject.toml`` names these two objects as the app's components; ``flwr run flower_app <connection>``
submits the app to a SuperLink, which starts the ServerApp, and every SuperNode starts the ClientApp for each message
it receives. The run config key ``job-dir`` names the folder of :mod:`.job` files the engine wrote: the ServerApp
drives the rounds with :func:`fedpeft.federated.flower_bridge.fedpeft_strategy_class` and writes ``result.pt`` there;
each ClientApp trains with :func:`fedpeft.federated.flower_bridge.client_train_reply` on its own farmer's file.
"""

from __future__ import annotations

import time
from pathlib import Path

import bitsandbytes  # noqa: F401 - the models the job files hold need peft and bitsandbytes: imported with the app,
import peft  # noqa: F401 - they count as the ClientApp's start-up (most of it: ~11 CPU-s), not as loading its job
import psutil
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedpeft.federated.deployment import job
from fedpeft.federated.flower_bridge import (
    RoundLog,
    client_train_reply,
    fedpeft_strategy_class,
    server_evaluate_fn,
    state_converter,
)
from fedpeft.federated.loop import exchanged_keys

server_app = ServerApp()
client_app = ClientApp()


def _interface_bytes(interfaces: list[str]) -> list[dict[str, int]]:
    out = []
    for name in interfaces:
        stats = Path("/sys/class/net") / name / "statistics"
        out.append({"down": int((stats / "tx_bytes").read_text()), "up": int((stats / "rx_bytes").read_text())})
    return out


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    job_dir = Path(str(context.run_config["job-dir"]))
    spec: job.ServerJob = job.read(job_dir / job.SERVER_FILE)
    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    model = job.load_model(spec.model)
    keys = exchanged_keys(model, spec.config.exchange)
    trainable_keys = [n for n, p in model.named_parameters() if p.requires_grad]
    full = model.state_dict()
    initial = {k: full[k].detach().clone() for k in keys}
    to_state = state_converter(initial)
    log = RoundLog()
    links: list[dict] = []
    start = time.perf_counter()
    evaluate = server_evaluate_fn(model, spec.trainer, spec.server_test, to_state, log, start)

    def evaluate_and_count(server_round: int, arrays: ArrayRecord):
        metrics = evaluate(server_round, arrays)
        links.extend({"round": server_round, "farmer": i, **c} for i, c in enumerate(_interface_bytes(spec.link_interfaces)))
        return metrics

    strategy = fedpeft_strategy_class(spec.strategy, spec.clients, trainable_keys, to_state, log)(
        fraction_train=spec.config.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=spec.config.min_train_clients,
        min_available_nodes=len(spec.clients),
    )
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=spec.config.num_rounds,
                            train_config=ConfigRecord(spec.strategy.client_config()), evaluate_fn=evaluate_and_count)
    job.write_signed({"final_state": to_state(result.arrays), "rows": log.rows, "client_rows": log.client_rows,
                      "ledger": log.ledger.state_dict(), "flower_bytes": log.flower_bytes, "link_bytes": links,
                      "wall_s": time.perf_counter() - start}, job_dir / job.RESULT_FILE)


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    # wall clock, shared by every namespace of the machine: when this ClientApp process started (Flower starts one per
    # message) and when Flower handed it the message, after importing Python, torch, Flower and this app
    timestamps = {"process_start_t": psutil.Process().create_time(), "app_enter_t": time.time()}
    job_dir = Path(str(context.run_config["job-dir"]))
    pid = int(context.node_config["partition-id"])
    spec, model, initial = job.load_client(job_dir, pid)
    return client_train_reply(msg, pid, spec.client, model, spec.strategy, spec.trainer, spec.config, initial,
                              job.client_state_file(job_dir, pid), spec.network, timestamps=timestamps)
