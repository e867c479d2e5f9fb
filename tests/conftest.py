import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_images():
    from fedpeft.data.eurosat import generate_landcover_images

    return generate_landcover_images(6, seed=0)  # 60 images, 10 classes


@dataclass(frozen=True)
class RayCluster:
    address: str  # host:port, for run_flower's ray_address
    pid: int  # `ray start --head --block`, the ancestor of every process of the cluster


@pytest.fixture(scope="session")
def ray_cluster() -> RayCluster:
    """One Ray cluster (2 CPUs) that the session's Flower simulations join (``run_flower(..., ray_address=...)``):
    joining takes about a second, starting and stopping a local instance about 8 s each time. Started with
    ``ray start --head --block`` in a process group of its own, which is stopped at the end."""
    pytest.importorskip("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = Path(sys.executable).with_name("ray")
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen([str(ray), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 90
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`ray start --head` did not listen on port {port} (exit code {head.poll()})")
            time.sleep(0.2)
    yield RayCluster(f"127.0.0.1:{port}", head.pid)
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
