"""The resident ClientApp: a ClientApp that imports Flower only and hands each train message to its farmer's
resident client (:mod:`.resident_worker`), a process the engine starts once per farmer that has torch, the model and
the farmer's data loaded already.

Flower 1.42 starts one ClientApp process per message in both of its isolation modes; :mod:`.apps`' ClientApp imports
torch, peft and bitsandbytes and loads its job every time (some 15 CPU-seconds, most of a round on shared cores). This
one starts in about half a CPU-second and forwards the message's records over a Unix socket in the run's private job
folder; the connection is admitted only after an HMAC challenge under the run's key (``FEDPEFT_JOB_KEY``), before
anything is unpickled. Used when ``run_deployment(..., clientapps="resident")``.
"""

from __future__ import annotations

import time
from multiprocessing.connection import Client as connect
from pathlib import Path

import psutil
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedpeft.federated.deployment.secret import job_key

client_app = ClientApp()


def socket_path(job_dir: Path | str, pid: int) -> Path:
    """Where farmer ``pid``'s resident client listens (a Unix socket: reachable from the farmer's network namespace,
    which shares the machine's file system)."""
    return Path(job_dir) / f"resident-{pid}.sock"


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    # the same stamps as apps.client_train: the resident client adds train_start_t / train_end_t
    timestamps = {"process_start_t": psutil.Process().create_time(), "app_enter_t": time.time()}
    pid = int(context.node_config["partition-id"])
    address = socket_path(str(context.run_config["job-dir"]), pid)
    with connect(str(address), family="AF_UNIX", authkey=job_key()) as conn:
        conn.send({"config": msg.content["config"], "arrays": msg.content["arrays"], "timestamps": timestamps})
        status, payload = conn.recv()
    if status != "ok":
        raise RuntimeError(f"farmer {pid}'s resident client failed on this message; its traceback:\n{payload}")
    return Message(content=RecordDict(payload), reply_to=msg)
