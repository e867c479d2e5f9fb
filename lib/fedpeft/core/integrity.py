"""Checking the real data sets against the data root's ``MANIFEST.sha256``."""

from __future__ import annotations

import hashlib
from pathlib import Path

MANIFEST_NAME = "MANIFEST.sha256"

HOW_TO_GET_DATA = (
    "The real data sets live outside the repository, in the data root (default ../shared/data; see its README "
    "for sources and licences). Point the study at another copy with the FEDPEFT_DATA_ROOT environment variable "
    "or common.data_root in params/local.yaml."
)


class DataFileError(FileNotFoundError):
    """A data file is missing or does not match its recorded checksum."""


def sha256_of(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(data_root: Path) -> dict[str, str]:
    """Map each relative path in the manifest (without a leading ``./``) to its sha256 hex digest."""
    manifest = Path(data_root) / MANIFEST_NAME
    if not manifest.is_file():
        return {}
    entries = {}
    for line in manifest.read_text().splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            entries[rel.strip().removeprefix("./")] = digest
    return entries


def require_data_file(data_root: Path, relative_path: str, verify: bool = True) -> Path:
    """Return ``data_root / relative_path`` after checking that it exists and matches the manifest.

    Raises :class:`DataFileError` naming the path looked at and how to get the data. Files that the manifest
    does not list are only checked for existence.
    """
    path = Path(data_root) / relative_path
    if not path.is_file():
        raise DataFileError(f"data file not found: {path}. {HOW_TO_GET_DATA}")
    if verify:
        expected = read_manifest(data_root).get(relative_path)
        if expected is not None:
            actual = sha256_of(path)
            if actual != expected:
                raise DataFileError(
                    f"data file is corrupt: {path} has sha256 {actual}, but {Path(data_root) / MANIFEST_NAME} "
                    f"records {expected}. Restore the file from its source. {HOW_TO_GET_DATA}"
                )
    return path
