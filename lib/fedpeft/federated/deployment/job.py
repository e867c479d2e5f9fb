"""The files a deployment run hands to its Flower App: one for the server, one per farmer, and the result.

The engine writes them into a private folder (mode 0700) before starting Flower; the ServerApp reads ``server.pt``
and writes ``result.pt``; farmer ``i``'s ClientApp reads only ``client-<i>.pt`` (its own data) and keeps its trainer
state in ``state-<i>.pt`` between rounds (tensors only, read with ``weights_only=True``). The job and result files
are pickles of the study's own objects (model, strategy, trainer: the NF4 state of a 4-bit model survives nothing
else), so each is signed: an HMAC-SHA256 of its bytes under the run's key, ``FEDPEFT_JOB_KEY`` (hex, made by the
engine for every run and handed to the Flower processes in their environment; on a cluster, the same secret on every
machine). A file is unpickled only after its signature checks, so a file someone else wrote into the job folder (or
changed) is refused instead of running its code.
"""

from __future__ import annotations

import hashlib
import hmac
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedpeft.core.files import atomic_write_bytes
from fedpeft.federated.deployment.secret import KEY_ENV, job_key  # noqa: F401 - KEY_ENV: the name callers use here
from fedpeft.federated.loop import Client, RoundConfig, exchanged_keys
from fedpeft.federated.network import NetworkModel
from fedpeft.federated.strategies import FedAvg
from fedpeft.training.contract import Trainer

SERVER_FILE = "server.pt"
RESULT_FILE = "result.pt"
MAGIC = b"fedpeft-signed-job-v1\n"


def write_signed(obj: Any, path: Path, key: bytes | None = None) -> Path:
    """Pickle ``obj`` with torch and write it signed (HMAC-SHA256 under ``key``, else :func:`job_key`)."""
    packed = io.BytesIO()
    torch.save(obj, packed)
    payload = packed.getvalue()
    mac = hmac.new(key or job_key(), payload, hashlib.sha256).digest()
    return atomic_write_bytes(path, MAGIC + mac + payload)


def read(path: Path, key: bytes | None = None) -> Any:
    """Read a file of :func:`write_signed`: its signature is checked before anything is unpickled."""
    data = Path(path).read_bytes()
    mac, payload = data[len(MAGIC): len(MAGIC) + 32], data[len(MAGIC) + 32:]
    if not data.startswith(MAGIC) or not hmac.compare_digest(mac, hmac.new(key or job_key(), payload, hashlib.sha256).digest()):
        raise PermissionError(f"{path} is not a job file signed with this run's key ({KEY_ENV}); it was written by someone "
                              "else or changed, and is not unpickled (it could run code). Start the run again.")
    return torch.load(io.BytesIO(payload), weights_only=False)  # signed by this run: the study's own objects


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
    return torch.load(io.BytesIO(data), weights_only=False)  # bytes from a signed job file (see the module docstring)


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


def load_client(job_dir: Path, pid: int) -> tuple[ClientJob, nn.Module, dict[str, torch.Tensor]]:
    """Farmer ``pid``'s job, ready to train: its spec (torch threads applied), its own model and the exchanged tensors
    of that model (``initial``: their dtypes turn Flower's arrays back into a state dict)."""
    spec: ClientJob = read(client_file(job_dir, pid))
    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    model = load_model(spec.model)
    full = model.state_dict()
    return spec, model, {k: full[k] for k in exchanged_keys(model, spec.config.exchange)}


class _Count:
    """A stand-in for a farmer's data on the server: only its length (the example count FedAvg weighs by)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def write_job(job_dir: Path, model: nn.Module, clients: list[Client], strategy: FedAvg, trainer: Trainer,
              config: RoundConfig, server_test: Any | None, network: NetworkModel | None, link_interfaces: list[str],
              torch_threads: int, key: bytes | None = None) -> None:
    job_dir = Path(job_dir)
    job_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    packed = model_bytes(model)
    trainer.reset_state()
    counts = [Client(c.cid, _Count(c.num_examples)) for c in clients]
    write_signed(ServerJob(packed, strategy, trainer, config, server_test, counts, link_interfaces, torch_threads),
                 job_dir / SERVER_FILE, key)
    for pid, c in enumerate(clients):
        write_signed(ClientJob(packed, Client(c.cid, c.train), strategy, trainer, config, network, torch_threads),
                     client_file(job_dir, pid), key)
