"""A run's checkpoints, owned by the run harness: one folder per run, kept until its record is safely written.

The harness (:func:`fedpeft.experiments.runs.execute`) activates a :class:`RunCheckpoints` for every run it executes,
in ``<cache>/checkpoints/<profile>/<experiment>/<run id>/``, and removes the folder only once the run's record is
written. Inside a run, the experiment's code asks :func:`active` for it and

- passes :meth:`RunCheckpoints.path` to whatever writes its own checkpoints (the round loop after every round, the
  LoRA-vs-QLoRA trainers every ``checkpoint_every_s`` seconds of steps), or
- wraps each self-contained part of the run in :meth:`RunCheckpoints.part` (a baseline, one case of a study): a part
  that finished before a kill is read back instead of computed again, and the global random states are set to what
  they were when it first finished, so that the rest of the run draws what an uninterrupted run would have.

A folder written by a run with other settings or code is cleared at activation (and the harness says so). Outside the
harness (a notebook calling an experiment's functions, a test) :func:`active` is ``None`` and nothing is written.
Every file is written atomically and read with ``torch.load(weights_only=True)``: tensors and plain values only.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from fedpeft.core.files import atomic_torch_save

EVERY_S_ENV = "FEDPEFT_CHECKPOINT_EVERY_S"  # seconds of training between two step checkpoints (0: after every step)
DEFAULT_EVERY_S = 60.0
IDENTITY_FILE = "identity.pt"

_ACTIVE: contextvars.ContextVar[RunCheckpoints | None] = contextvars.ContextVar("fedpeft_run_checkpoints", default=None)


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of the fedpeft library's source: a checkpoint written by other code is not resumed."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def every_s() -> float:
    """Seconds between two step checkpoints: ``FEDPEFT_CHECKPOINT_EVERY_S`` (default 60; 0 writes after every step)."""
    raw = os.environ.get(EVERY_S_ENV, str(DEFAULT_EVERY_S))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"{EVERY_S_ENV} = {raw!r} is not allowed; it must be a number of seconds >= 0")
    return value


def rng_states() -> dict[str, Any]:
    """The global random states (torch, CUDA when used, numpy, random) as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                              "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    kind, keys, pos, has_gauss, cached = states["numpy"]
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


def plain(obj: Any) -> Any:
    """``obj`` with numpy scalars as Python numbers (lists, tuples and dicts walked), so that ``weights_only``
    loading reads it back; a part's result is returned in this form whether it was computed or read back."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return obj


def load(path: Path) -> Any:
    """Read a checkpoint file (tensors and plain values only); a damaged file is an error naming it."""
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a cut-off or foreign file: say which and what to do
        raise ValueError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); it is damaged or not a fedpeft "
                         "checkpoint. Delete it to start the run afresh.") from exc
    if not isinstance(saved, dict):
        raise ValueError(f"checkpoint {path} holds a {type(saved).__name__}, not a fedpeft checkpoint (a dict). Delete it to "
                         "start the run afresh.")
    return saved


@dataclass
class RunCheckpoints:
    """The checkpoint folder of one run. ``identity``: what the folder's files were made with (the run's record
    identity and the library's code); ``kept``: set by a run that should resume later although it ended (a run
    stopped by its time limit), so the harness leaves the folder."""

    folder: Path
    identity: str
    kept: bool = False

    def open(self) -> str | None:
        """Prepare the folder; returns why an existing one was cleared (``None`` when it was not)."""
        marker = self.folder / IDENTITY_FILE
        why = None
        if self.folder.is_dir() and any(self.folder.iterdir()):
            try:
                found = load(marker)["identity"] if marker.is_file() else None
            except ValueError:
                found = None
            if found != self.identity:
                why = "it was written by a run with other settings or code" if found else "it has no readable identity"
                shutil.rmtree(self.folder)
        atomic_torch_save({"identity": self.identity}, marker)
        return why

    def path(self, name: str) -> Path:
        """Where a part of the run keeps its own checkpoint file (``name``: a plain file name, no suffix)."""
        return self.folder / f"{name}.pt"

    def resumed_parts(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.pt") if p.name != IDENTITY_FILE)

    def part(self, name: str, compute: Callable[[], Any]) -> Any:
        """``compute()``'s result, read back from this folder when an earlier attempt of the run finished it (its
        result must be tensors and plain Python values); the global random states are restored to what they were
        after it."""
        path = self.path(name)
        if path.is_file():
            saved = load(path)
            set_rng_states(saved["rng"])
            return saved["result"]
        result = plain(compute())
        atomic_torch_save({"result": result, "rng": rng_states()}, path)
        return result

    def keep(self) -> None:
        """Leave the folder after the record is written (the run is to resume later)."""
        self.kept = True

    def close(self) -> None:
        """Remove the folder (called by the harness once the run's record is written), unless :meth:`keep` was called."""
        if not self.kept:
            shutil.rmtree(self.folder, ignore_errors=True)


def active() -> RunCheckpoints | None:
    """The checkpoints of the run the harness is executing (``None`` outside the harness)."""
    return _ACTIVE.get()


def path(name: str) -> Path | None:
    """:meth:`RunCheckpoints.path` of the active run, or ``None`` outside the harness (no checkpoint)."""
    ckpt = active()
    return None if ckpt is None else ckpt.path(name)


def part(name: str, compute: Callable[[], Any]) -> Any:
    """:meth:`RunCheckpoints.part` of the active run; outside the harness, ``compute()``."""
    ckpt = active()
    return compute() if ckpt is None else ckpt.part(name, compute)


@contextlib.contextmanager
def activated(ckpt: RunCheckpoints) -> Iterator[RunCheckpoints]:
    token = _ACTIVE.set(ckpt)
    try:
        yield ckpt
    finally:
        _ACTIVE.reset(token)


def save_steps(path: Path, model: torch.nn.Module, step: int, stateful: dict[str, Any], extra: dict[str, Any]) -> None:
    """A step loop's checkpoint after ``step``: the model's trainable tensors, each of ``stateful`` (optimizer, schedule:
    anything with ``state_dict``), the global random states and ``extra`` (the loop's own state: records, draw order)."""
    trainable = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
    atomic_torch_save({"step": step, "trainable": trainable, "stateful": {k: v.state_dict() for k, v in stateful.items()},
                       "rng": rng_states(), "extra": plain(extra)}, path)


def resume_steps(path: Path | None, model: torch.nn.Module, stateful: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Load what :func:`save_steps` wrote at ``path`` into ``model`` and ``stateful`` and restore the random states;
    returns (last completed step, ``extra``), or (0, {}) when there is no checkpoint."""
    if path is None or not Path(path).is_file():
        return 0, {}
    saved = load(path)
    params = dict(model.named_parameters())
    unknown = sorted(set(saved["trainable"]) - {n for n, p in params.items() if p.requires_grad})
    if unknown:
        raise ValueError(f"checkpoint {path} holds tensors this model does not train ({unknown[:3]}); delete it to start afresh")
    with torch.no_grad():
        for name, value in saved["trainable"].items():
            params[name].copy_(value)
    for key, obj in stateful.items():
        obj.load_state_dict(saved["stateful"][key])
    set_rng_states(saved["rng"])
    return int(saved["step"]), saved["extra"]
