"""Atomic file writes: a file is written beside its target and renamed over it, so a killed run never leaves
half a file behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` (parents created) through a temporary file in the same folder."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` (parents created) through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """``torch.save`` to ``path`` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        tmp.replace(path)
    except (OSError, RuntimeError) as exc:  # a full disk, a read-only folder (not a pickling error: that one is clear)
        tmp.unlink(missing_ok=True)
        # torch names no path when the disk fills up ("inline_container.cc ... unexpected pos"): say which file and why
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else None
        raise OSError(f"could not write {path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                      + (f"; {free / 2**20:.0f} MiB are free on its disk" if free is not None else "")
                      + ". If the disk is full, free some space (or point FEDPEFT_CACHE_DIR elsewhere) and run again.") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
