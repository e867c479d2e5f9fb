"""What a killed deployment run leaves behind, found and removed.

Every run of :func:`fedpeft.federated.deployment.engine.run_deployment` works in a folder of its own,
``<tmp>/fedpeft-deployment-*``, and records there (``owner.json``, rewritten as it goes) its own process id, the id of
every Flower process it starts (SuperLink, SuperNodes, ``flwr run``) and the token in the names of its namespaces and
links. A run that ends in any way but SIGKILL removes all of it itself. After a SIGKILL nothing runs to clean up, so
the next deployment run (and ``make clean-deployments``: ``python -m fedpeft.federated.deployment.cleanup``) calls
:func:`clean_orphans`: for each folder whose owner is dead it stops the recorded processes and everything they started
(the SuperExecs run in sessions of their own), deletes the folder (the pickled job files with it), and deletes every
namespace and interface of the study's prefix that no live run owns. Process ids are matched with their start time,
so a recycled id is never signalled.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import psutil

from fedpeft.core.files import atomic_write_text
from fedpeft.core.supervise import end_process_tree
from fedpeft.federated.deployment.links import PREFIX, leftovers

WORK_PREFIX = "fedpeft-deployment-"
OWNER_FILE = "owner.json"
YOUNG_S = 120.0  # a folder without an owner file younger than this may be a run that is starting: left alone


def _started(pid: int) -> float | None:
    with suppress(psutil.Error):
        return psutil.Process(pid).create_time()
    return None


class Owner:
    """The ``owner.json`` of one run's work folder: kept up to date as the run starts processes and makes links."""

    def __init__(self, work: Path) -> None:
        self.path = Path(work) / OWNER_FILE
        self.body = {"pid": os.getpid(), "started": _started(os.getpid()), "links_token": None, "processes": []}
        self._write()

    def _write(self) -> None:
        if self.path.parent.is_dir():
            atomic_write_text(self.path, json.dumps(self.body))

    def add_process(self, pid: int) -> None:
        self.body["processes"].append({"pid": pid, "started": _started(pid)})
        self._write()

    def set_links_token(self, token: str) -> None:
        self.body["links_token"] = token
        self._write()


def _alive(entry: dict) -> psutil.Process | None:
    """The process of a recorded ``{pid, started}``, if it still runs (and is the same process)."""
    with suppress(psutil.Error, TypeError):
        proc = psutil.Process(int(entry["pid"]))
        if entry.get("started") is not None and abs(proc.create_time() - float(entry["started"])) < 0.01:
            return proc
    return None


def work_folders(root: Path | None = None) -> list[Path]:
    return sorted(Path(root or tempfile.gettempdir()).glob(f"{WORK_PREFIX}*"))


def clean_orphans(root: Path | None = None) -> list[str]:
    """Remove what dead deployment runs left (see the module docstring); returns a line per thing removed."""
    removed: list[str] = []
    live_tokens: set[str] = set()
    for work in work_folders(root):
        try:
            owner = json.loads((work / OWNER_FILE).read_text())
        except (OSError, ValueError):
            owner = None
        if owner is None:
            with suppress(OSError):
                if time.time() - work.stat().st_mtime > YOUNG_S:
                    shutil.rmtree(work, ignore_errors=True)
                    removed.append(f"folder {work} (no owner recorded)")
            continue
        if _alive(owner) is not None:
            if owner.get("links_token"):
                live_tokens.add(owner["links_token"])
            continue
        for entry in owner.get("processes", []):
            proc = _alive(entry)
            if proc is not None:
                with suppress(psutil.Error):
                    name, started = proc.name(), len(proc.children(recursive=True))
                    end_process_tree(proc.pid, timeout_s=5.0)
                    removed.append(f"process {entry['pid']} ({name}) and {started} it started")
        if (work / "job").exists():  # a run that ended by itself removed its job files (a failed one keeps its logs)
            shutil.rmtree(work, ignore_errors=True)
            removed.append(f"folder {work} (job files and logs of a run whose process {owner.get('pid')} is gone)")
    if shutil.which("ip") is not None and os.geteuid() == 0:
        for name in leftovers():
            if any(name.startswith(f"{PREFIX}{token}") for token in live_tokens):
                continue
            if subprocess.run(["ip", "netns", "delete", name], capture_output=True).returncode == 0:
                removed.append(f"namespace {name}")
            elif subprocess.run(["ip", "link", "delete", name], capture_output=True).returncode == 0:
                removed.append(f"interface {name}")
    return removed


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    removed = clean_orphans()
    print("\n".join(removed) if removed else "nothing left by a killed deployment run")


if __name__ == "__main__":
    main()
