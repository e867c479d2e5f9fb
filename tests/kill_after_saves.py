"""Run ``python -m <module> <args>`` and SIGKILL the process right after its N-th checkpoint write.

``python tests/kill_after_saves.py N MATCH MODULE ARGS...``: every file written through
:func:`fedpeft.core.files.atomic_torch_save` whose path contains ``MATCH`` counts (a checkpoint folder's
``identity.pt`` does not); after the N-th the process kills itself with SIGKILL, as a machine that loses power would:
no handler runs, nothing is flushed. Used by ``tests/test_resume.py``; the patch is made before any other fedpeft
module is imported, so every module that imports ``atomic_torch_save`` gets the counting one.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

from fedpeft.core import files

limit, match, module = int(sys.argv[1]), sys.argv[2], sys.argv[3]
sys.argv = [module, *sys.argv[4:]]
real_save = files.atomic_torch_save
count = 0


def counting_save(obj, path):
    global count
    out = real_save(obj, path)
    if match in str(path) and not str(path).endswith("identity.pt"):
        count += 1
        if count >= limit:
            os.kill(os.getpid(), signal.SIGKILL)
    return out


files.atomic_torch_save = counting_save
runpy.run_module(module, run_name="__main__", alter_sys=True)
