"""The environment lock (requirements.lock): the stamp tying it to pyproject.toml, and reading its pins.

``python tools/lockfile.py --stamp requirements.lock`` writes the stamp line after ``make lock`` has resolved it (with
the system's Python, before the environment exists: this file uses the standard library only).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
STAMP = "# pyproject-dependencies-sha256: "


def pyproject_dependencies(path: Path = ROOT / "pyproject.toml") -> dict[str, list[str]]:
    data = tomllib.loads(path.read_text())
    return {"dependencies": sorted(data["project"]["dependencies"]),
            "dev": sorted(data["project"]["optional-dependencies"]["dev"]),
            "install-without-dependencies": sorted(data["tool"]["fedpeft"]["install-without-dependencies"])}


def dependencies_digest(path: Path = ROOT / "pyproject.toml") -> str:
    """sha256 of pyproject's dependency lists, the dev extra's included (order-free): what the lock was resolved from."""
    return hashlib.sha256(json.dumps(pyproject_dependencies(path), sort_keys=True).encode()).hexdigest()


def stamp(lock: Path) -> None:
    lines = [line for line in lock.read_text().splitlines() if not line.startswith(STAMP)]
    header = [
        "# The study's environment, every package pinned with its hashes (Linux x86-64, Python 3.11).",
        "# Made by `make lock` from pyproject.toml; `make env` installs it with pip --require-hashes.",
        STAMP + dependencies_digest(),
    ]
    lines = [line for line in lines if line not in header[:2]]
    lock.write_text("\n".join(header + lines) + "\n")


def read_stamp(lock: Path = LOCK) -> str | None:
    return next((line[len(STAMP):].strip() for line in lock.read_text().splitlines() if line.startswith(STAMP)), None)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(lock: Path = LOCK) -> dict[str, str]:
    """``{normalized name: version}`` of every pin in the lock."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", lock.read_text(), flags=re.M)
    return {normalize(name): version for name, version in pins}


if __name__ == "__main__":
    if sys.argv[1:2] != ["--stamp"] or len(sys.argv) != 3:
        sys.exit("usage: python tools/lockfile.py --stamp requirements.lock")
    stamp(Path(sys.argv[2]))
