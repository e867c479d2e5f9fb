"""Wall time, throughput and peak memory of a block of work.

Memory: on a GPU, ``torch.cuda.max_memory_allocated`` over the block; on the CPU, the peak of the process's
resident set size (sampled every few milliseconds by a background thread) minus its value when the block
began. Each measurement says which one it is in ``memory_kind``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

import psutil
import torch

from fedpeft.core.device import cpu_supports_bf16


@dataclass
class Measurement:
    wall_s: float = 0.0
    peak_memory_bytes: int = 0
    memory_kind: str = ""  # "cuda_max_allocated" or "cpu_peak_rss_delta"
    items: int = 0  # images, tokens, steps... whatever the caller counts

    @property
    def throughput(self) -> float:
        """Items per second of wall time."""
        return self.items / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def peak_memory_mib(self) -> float:
        return self.peak_memory_bytes / 2**20


class _RssSampler(threading.Thread):
    def __init__(self, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process()
        self.interval_s = interval_s
        self.baseline = self.proc.memory_info().rss
        self.peak = self.baseline
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop_event.wait(self.interval_s)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        return self.peak - self.baseline


@contextlib.contextmanager
def measure(device: str | torch.device = "cpu", sample_interval_s: float = 0.005):
    """Measure the enclosed block; set ``.items`` on the yielded object to get a throughput."""
    m = Measurement()
    on_cuda = torch.device(device).type == "cuda"
    sampler = None
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        sampler = _RssSampler(sample_interval_s)
        sampler.start()
    start = time.perf_counter()
    try:
        yield m
    finally:
        if on_cuda:
            torch.cuda.synchronize()
            m.wall_s = time.perf_counter() - start
            m.peak_memory_bytes = torch.cuda.max_memory_allocated() - base
            m.memory_kind = "cuda_max_allocated"
        else:
            m.wall_s = time.perf_counter() - start
            m.peak_memory_bytes = sampler.stop()
            m.memory_kind = "cpu_peak_rss_delta"


def machine_description() -> dict[str, str]:
    import platform

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores": str(psutil.cpu_count(logical=True)),
        "torch_threads": str(torch.get_num_threads()),
        "memory_gib": f"{psutil.virtual_memory().total / 2**30:.1f}",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "cpu_bf16": str(cpu_supports_bf16()),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info
