"""A farmer's resident client: one long-lived process per farmer that loads torch, the model and the farmer's job
once, then trains on every message the resident ClientApp (:mod:`.resident_app`) forwards to it.

Started by the engine inside the farmer's network namespace (``python -m fedpeft.federated.deployment.resident_worker
<job-dir> <partition-id>``); it listens on :func:`.resident_app.socket_path` once it is ready (the engine waits for
that) and serves one message at a time until it is stopped. Each message is trained exactly as :mod:`.apps`'
ClientApp trains it in a fresh process: the model's trainable tensors, buffers and train/eval modes, the strategy and
the trainer are restored to the job's before every message, and the trainer's state between rounds goes through the same
``state-<i>.pt`` file (``tests/test_deployment.py`` checks that both give the same final state).
"""

from __future__ import annotations

import copy
import pickle
import sys
import traceback
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener
from pathlib import Path

import bitsandbytes  # noqa: F401 - the job's model may hold NF4 layers (bitsandbytes) under peft adapters
import peft  # noqa: F401
import torch

from fedpeft.federated.deployment import job
from fedpeft.federated.deployment.resident_app import socket_path
from fedpeft.federated.flower_bridge import client_train_content


def serve(job_dir: Path, pid: int) -> None:
    """Load farmer ``pid``'s job from ``job_dir`` and serve train messages until the process is stopped. A connection
    that fails (refused, cut, unreadable) is logged to stderr and the next one served."""
    spec, model, initial = job.load_client(job_dir, pid)
    pristine = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad} \
        | {n: b.detach().clone() for n, b in model.named_buffers()}
    modes = {name: m.training for name, m in model.named_modules()}  # train / eval, as unpickled

    def restore() -> None:
        """The job's model again: looked up by name each time (moving a module to a device replaces its buffers)."""
        tensors = dict(model.named_parameters()) | dict(model.named_buffers())
        with torch.no_grad():
            for name, value in pristine.items():
                tensors[name].copy_(value)
        for name, m in model.named_modules():
            m.training = modes[name]

    address = socket_path(job_dir, pid)
    address.unlink(missing_ok=True)
    with Listener(str(address), family="AF_UNIX", authkey=job.job_key()) as listener:  # the socket appears when ready
        while True:
            try:
                conn = listener.accept()  # the HMAC challenge under the run's key, before anything is unpickled
            except (AuthenticationError, EOFError, OSError) as refused:
                print(f"refused a connection: {refused!r}", file=sys.stderr, flush=True)
                continue
            with conn:
                try:
                    request = conn.recv()
                except (EOFError, OSError, pickle.UnpicklingError) as lost:
                    print(f"could not read a request: {lost!r}", file=sys.stderr, flush=True)
                    continue
                try:
                    restore()
                    content = client_train_content(request, pid, spec.client, model, copy.deepcopy(spec.strategy),
                                                   copy.deepcopy(spec.trainer), spec.config, initial,
                                                   job.client_state_file(job_dir, pid), spec.network, request["timestamps"])
                    reply = ("ok", content)
                except Exception:  # noqa: BLE001 - the ClientApp raises it, so Flower reports the round's failure
                    reply = ("error", traceback.format_exc())
                try:
                    conn.send(reply)
                except OSError as lost:
                    print(f"could not send a reply: {lost!r}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m fedpeft.federated.deployment.resident_worker <job-dir> <partition-id>")
    serve(Path(sys.argv[1]), int(sys.argv[2]))
