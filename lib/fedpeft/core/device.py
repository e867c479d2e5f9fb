"""Where and in what precision training runs: the ``device`` setting every trainer takes (``auto`` picks CUDA
when a GPU is visible) and ``precision`` (``auto`` picks bf16 only where it is native)."""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

DEVICES = ("auto", "cpu", "cuda")
DEVICE_ENV = "FEDPEFT_DEVICE"


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``; ``cuda`` without a GPU is an error."""
    if device not in DEVICES:
        raise ValueError(f"device = {device!r} is not allowed; it must be one of {list(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device = 'cuda' is not allowed here: no GPU is visible; use 'cpu' or 'auto'")
    return torch.device(device)


def run_device(params: Mapping[str, Any] | None = None) -> str:
    """The device every trainer of a run uses: ``FEDPEFT_DEVICE`` when set (``auto``, ``cpu`` or ``cuda``), else the
    experiment's own ``device`` setting where it has one (the code LM's, kept so that its records stay valid), else
    ``auto`` (CUDA when a GPU is visible). Not part of a record's identity: like the machine, it is recorded in the
    record's ``meta`` (``device``)."""
    chosen = os.environ.get(DEVICE_ENV)
    where = DEVICE_ENV
    if not chosen and params is not None and "device" in params:  # ``in``: not a tracked read when the key is absent
        chosen, where = params["device"], "device"
    chosen = chosen or "auto"
    if chosen not in DEVICES:
        raise ValueError(f"{where} = {chosen!r} is not allowed; it must be one of {list(DEVICES)}")
    return chosen


def apply_torch_threads(threads: int) -> None:
    """Set torch's intra-op threads for this process (``threads`` = 0 leaves torch's default: one per core). The run
    harness (:func:`fedpeft.experiments.runs.execute`) applies an experiment's ``torch_threads`` before every run."""
    if threads < 0:
        raise ValueError(f"torch_threads = {threads!r} is not allowed; it must be 0 (torch's default) or a positive count")
    if threads:
        torch.set_num_threads(threads)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings cover it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AMX-BF16 or AVX512-BF16).

    Without them oneDNN emulates bf16, and autocast makes the EuroSAT CNN about 2x *slower* (measured: 144 vs
    342 images/s on a 2-core AVX-512 Xeon), so ``precision="auto"`` only picks bf16 where this is true.
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported`` also answers True for AVX512-BW, so it is not used.)
    """
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` on CPUs with native bf16 (or on CUDA), else ``fp32``; other values pass through."""
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() or cpu_supports_bf16() else "fp32"
