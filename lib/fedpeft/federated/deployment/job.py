"""The files a deployment run hands to its Flower App: one for the server, one per farmer, and the result.

The engine writes them into a private folder (mode 0700) before starting Flower; the ServerApp reads ``server.pt``
and writes ``result.pt``; farmer ``i``'s ClientApp reads only ``client-<i>.pt`` (its own data) and keeps its trainer
state in ``state-<i>.pt`` between rounds. They are pickles of the study's own objects (model, strategy, trainer),
read with ``weights_only=False``: only ever our own files, written by the same process tree.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedpeft.core.files import atomic_torch_save
from fedpeft.federated.loop import Client, RoundConfig
from fedpeft.federated.network import NetworkModel
from fedpeft.federated.strategies import FedAvg
from fedpeft.training.contract import Trainer

SERVER_FILE = "server.pt"
RESULT_FILE = "result.pt"


def client_file(job_dir: Path, pid: int) -> Path:
    return Path(job_dir) / f"client-{pid}.pt"


def client_state_file(job_dir: Path, pid: int) -> Path:
    return Path(job_dir) / f"state-{pid}.pt"


def model_bytes(model: nn.Module) -> bytes:
    """The whole model pickled: each process unpickles its own copy (bitsandbytes' NF4 state survives that, not a
    deep copy of an unpickled model)."""
    packed = io.BytesIO()
    torch.save(model, packed)
    return packed.getvalue()


def load_model(data: bytes) -> nn.Module:
    return torch.load(io.BytesIO(data), weights_only=False)  # our own bytes, see the module docstring


@dataclass
class ServerJob:
    model: bytes
    strategy: FedAvg
    trainer: Trainer
    config: RoundConfig
    server_test: Any | None
    clients: list[Client]  # ids and example counts only: each farmer's data stays in its own file
    link_interfaces: list[str]  # host-side veth per farmer ([] on loopback)
    torch_threads: int


@dataclass
class ClientJob:
    model: bytes
    client: Client
    strategy: FedAvg
    trainer: Trainer
    config: RoundConfig
    network: NetworkModel | None
    torch_threads: int


class _Count:
    """A stand-in for a farmer's data on the server: only its length (the example count FedAvg weighs by)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def write_job(job_dir: Path, model: nn.Module, clients: list[Client], strategy: FedAvg, trainer: Trainer,
              config: RoundConfig, server_test: Any | None, network: NetworkModel | None, link_interfaces: list[str],
              torch_threads: int) -> None:
    job_dir = Path(job_dir)
    job_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    packed = model_bytes(model)
    trainer.reset_state()
    counts = [Client(c.cid, _Count(c.num_examples)) for c in clients]
    atomic_torch_save(ServerJob(packed, strategy, trainer, config, server_test, counts, link_interfaces, torch_threads),
                      job_dir / SERVER_FILE)
    for pid, c in enumerate(clients):
        atomic_torch_save(ClientJob(packed, Client(c.cid, c.train), strategy, trainer, config, network, torch_threads),
                          client_file(job_dir, pid))


def read(path: Path) -> Any:
    return torch.load(path, weights_only=False)  # our own files, see the module docstring
