"""``make repro`` runs DVC under fedpeft.core.supervise: when make dies, even by SIGKILL, DVC and what it runs end too."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil


def test_the_command_ends_when_its_parent_is_killed():
    # a stand-in for make: a process whose child is the supervisor of a long command
    make = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-m', "
                             "'fedpeft.core.supervise', sys.executable, '-c', 'import time; time.sleep(600)'])"])
    deadline = time.monotonic() + 60
    while len(psutil.Process(make.pid).children(recursive=True)) < 2:
        assert time.monotonic() < deadline, "the supervised command never started"
        time.sleep(0.1)
    tree = psutil.Process(make.pid).children(recursive=True)
    make.kill()
    make.wait()
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert alive == [], f"left running after its parent was killed: {[p.pid for p in alive]}"


def test_the_exit_code_is_the_commands():
    done = subprocess.run([sys.executable, "-m", "fedpeft.core.supervise", sys.executable, "-c", "raise SystemExit(3)"])
    assert done.returncode == 3
