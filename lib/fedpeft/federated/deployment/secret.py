"""The run's secret: the key that signs the deployment's job files and admits ClientApps to resident clients.

Kept apart from :mod:`.job` (which needs torch) so that the resident ClientApp (:mod:`.resident_app`), whose point is
to start without importing torch, can read it too.
"""

from __future__ import annotations

import os

KEY_ENV = "FEDPEFT_JOB_KEY"


def job_key() -> bytes:
    """The run's signing key, from ``FEDPEFT_JOB_KEY`` (hex)."""
    raw = os.environ.get(KEY_ENV, "")
    try:
        key = bytes.fromhex(raw)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise PermissionError(f"{KEY_ENV} is not set to a hex key of at least 16 bytes; the deployment's job files are "
                              "signed with it and read only with it (run_deployment sets it for its own processes; on a "
                              "cluster, set the same secret on every machine)")
    return key
