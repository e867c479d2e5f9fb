"""Checking the real data sets against the data root's ``MANIFEST.sha256``, and naming the file in every error.

Every file the study reads from the data root goes through :func:`require_data_file`: it must exist, be listed in
the manifest and match its sha256. A missing manifest is an error too; to skip the check on purpose (a copy of the
data you changed yourself), set ``FEDPEFT_VERIFY_DATA=0``. Files that exist but cannot be decoded raise
:class:`CorruptDataError` with their path (:func:`decoding`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path

MANIFEST_NAME = "MANIFEST.sha256"
SKIP_VARIABLE = "FEDPEFT_VERIFY_DATA"

HOW_TO_GET_DATA = (
    "The real data sets live outside the repository, in the data root (default ../shared/data; see its README "
    "for sources and licences). Point the study at another copy with the FEDPEFT_DATA_ROOT environment variable "
    "or common.data_root in params/local.yaml."
)
HOW_TO_SKIP = f"To skip the checksum check on purpose, set {SKIP_VARIABLE}=0."


class DataFileError(FileNotFoundError):
    """A data file is missing, unlisted in the manifest, or does not match its recorded checksum."""


class CorruptDataError(ValueError):
    """A data file exists but cannot be read as what it should be (a truncated image, a malformed table)."""


def verification_enabled(verify: bool = True) -> bool:
    """``verify``, unless ``FEDPEFT_VERIFY_DATA=0`` turns every check off."""
    return verify and os.environ.get(SKIP_VARIABLE, "1") != "0"


def sha256_of(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _parse_manifest(manifest: Path, mtime_ns: int) -> dict[str, str]:  # noqa: ARG001 - the cache key
    entries = {}
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataFileError(f"{manifest}, line {number}: {line!r} is not '<sha256> <path>'; "
                                f"restore the manifest from the data source. {HOW_TO_SKIP}")
        # ``sha256sum -b`` marks binary mode with a ``*`` before the path: the same file
        entries[parts[1].strip().removeprefix("*").removeprefix("./")] = parts[0].lower()
    return entries


def read_manifest(data_root: Path) -> dict[str, str]:
    """Map each relative path in the manifest (without a leading ``./``) to its sha256 hex digest."""
    manifest = Path(data_root) / MANIFEST_NAME
    if not manifest.is_file():
        raise DataFileError(f"no {MANIFEST_NAME} in the data root {Path(data_root)}, so its files cannot be checked. "
                            f"{HOW_TO_GET_DATA} {HOW_TO_SKIP}")
    return _parse_manifest(manifest, manifest.stat().st_mtime_ns)


def require_data_file(data_root: Path, relative_path: str, verify: bool = True) -> Path:
    """Return ``data_root / relative_path`` after checking that it exists, is listed in the manifest and matches
    its sha256 (``verify=False`` or ``FEDPEFT_VERIFY_DATA=0``: existence only). Raises :class:`DataFileError`
    naming the path and what to do."""
    path = Path(data_root) / relative_path
    if not path.is_file():
        raise DataFileError(f"data file not found: {path}. {HOW_TO_GET_DATA}")
    if verification_enabled(verify):
        expected = read_manifest(data_root).get(relative_path)
        if expected is None:
            raise DataFileError(f"data file {path} is not listed in {Path(data_root) / MANIFEST_NAME}, so it cannot be "
                                f"checked. {HOW_TO_SKIP}")
        actual = sha256_of(path)
        if actual != expected:
            raise DataFileError(
                f"data file is corrupt: {path} has sha256 {actual}, but {Path(data_root) / MANIFEST_NAME} "
                f"records {expected}. Restore the file from its source. {HOW_TO_GET_DATA}"
            )
    return path


@contextlib.contextmanager
def decoding(path: Path | str, what: str):
    """Turn any error raised while decoding ``path`` into a :class:`CorruptDataError` that names it."""
    try:
        yield
    except (DataFileError, CorruptDataError):
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder error means the same thing here
        raise CorruptDataError(f"cannot read {path} as {what}: {type(exc).__name__}: {exc}. Restore the file from its "
                               f"source (see the data root's README).") from exc


def require_trusted_file(data_root: Path, relative_path: str) -> Path:
    """:func:`require_data_file` that always checks the manifest, ``FEDPEFT_VERIFY_DATA=0`` or not: for a file that is
    unpickled to be loaded (a YOLO ``.pt`` checkpoint: ultralytics loads it with ``weights_only=False``), where a
    swapped file would run its code, so only the file the manifest records may be read."""
    path = Path(data_root) / relative_path
    if not path.is_file():
        raise DataFileError(f"data file not found: {path}. {HOW_TO_GET_DATA}")
    expected = read_manifest(data_root).get(relative_path)
    actual = sha256_of(path)
    if expected is None or actual != expected:
        why = "is not listed in" if expected is None else f"has sha256 {actual}, but the manifest records {expected} in"
        raise DataFileError(f"{path} {why} {Path(data_root) / MANIFEST_NAME}; it is loaded by unpickling (which runs any code "
                            "the file holds), so it is read only when the manifest vouches for it, whatever "
                            f"{SKIP_VARIABLE} says. Restore the file from its source or add its line to the manifest.")
    return path
