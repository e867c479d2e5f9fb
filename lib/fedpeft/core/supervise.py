"""Run a command that ends when its parent ends: ``python -m fedpeft.core.supervise CMD [ARGS...]``.

``make repro`` runs DVC through this. Killed with SIGKILL, ``make`` cannot stop its children, and DVC (with the run
stage it is executing) would go on unsupervised, writing records and ``dvc.lock`` after the user thought it stopped.
Here Linux sends this process SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), and on SIGTERM, SIGINT or SIGHUP
it ends the command's whole process tree (SIGTERM, then SIGKILL after 10 s) before it exits. The command's exit code
is this process's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys

import psutil

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def end_process_tree(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM ``pid`` and all its descendants, then SIGKILL whatever is left after ``timeout_s``."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [*root.children(recursive=True), root]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def main(argv: list[str] | None = None) -> None:
    command = list(sys.argv[1:] if argv is None else argv)
    if not command:
        raise SystemExit("usage: python -m fedpeft.core.supervise CMD [ARGS...]")
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # the parent died before the request took effect
        raise SystemExit(f"{command[0]}: not started, its parent (process {parent}) has already ended")
    child = subprocess.Popen(command)

    def stop(signum, _frame):
        end_process_tree(child.pid)
        sys.stderr.write(f"{' '.join(command[:2])}: stopped by signal {signum}\n")
        sys.exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    sys.exit(child.wait())


if __name__ == "__main__":
    main()
