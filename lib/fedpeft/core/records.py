"""Result records: what one run of an experiment leaves behind, small enough to commit.

A run stage (``python -m fedpeft.experiments.runs``) writes one record per run under
``results/<profile>/<experiment>/<run id>/``; the experiment's notebook reads the records and renders figures,
tables and claims from them, so a change to a figure or a claims rule never retrains anything.

On disk a record is a folder:

- ``record.json``: the run's id and spec (its arguments), ``scalars`` (final metrics, timing in seconds, memory in
  MiB), ``meta`` (the identity digest that says which settings produced it, the parameter keys it read, the machine,
  the wall seconds of the whole stage, when it was written) and the names of its tables and arrays;
- ``<name>.csv`` per table (per-round history, the communication ledger, ...), floats written to round-trip exactly
  and every numeric column read back with the dtype it was written with;
- ``<name>.npy`` per array (a sample image, ...).

Writing goes to a hidden sibling folder first and is swapped in by rename, so a run killed while writing leaves the
previous record (or none), never half of one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedpeft.core.config import REPO_ROOT

RECORD_FILE = "record.json"
RESULTS_ENV = "FEDPEFT_RESULTS_DIR"  # a scratch results root (tests, the regeneration check)


def results_root(profile: str) -> Path:
    """``results/<profile>`` in the repository, or ``$FEDPEFT_RESULTS_DIR/<profile>`` when that is set."""
    base = Path(os.environ[RESULTS_ENV]) if os.environ.get(RESULTS_ENV) else REPO_ROOT / "results"
    return base / profile


def record_dir(profile: str, experiment: str, run_id: str) -> Path:
    return results_root(profile) / experiment / run_id


@dataclass(frozen=True)
class RunSpec:
    """One planned run: a stable id (its record's folder and DVC stage key), the arguments that make it, and its
    kind (runs of one kind share one DVC stage definition and one set of parameter keys)."""

    run_id: str
    args: dict[str, Any] = field(default_factory=dict)
    kind: str = "run"


class RecordError(RuntimeError):
    """A record is missing, damaged or was produced by other settings than the ones asked for."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def _numeric_dtypes(table: pd.DataFrame) -> dict[str, str]:
    """The float, integer and boolean columns' dtypes, so that reading a table back gives the same dtypes (a float
    column of whole numbers would otherwise come back as integers)."""
    return {str(c): str(t) for c, t in table.dtypes.items() if t.kind in "fiub"}


@dataclass
class RunRecord:
    """One run's results. ``scalars`` hold numbers and short strings; ``tables`` DataFrames; ``arrays`` numpy arrays."""

    experiment: str
    run_id: str
    spec: dict[str, Any]
    scalars: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.scalars[key]

    def write(self, folder: Path) -> Path:
        """Write the record to ``folder`` atomically (a sibling temporary folder, then renames)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".tmp-{folder.name}")
        old = folder.with_name(f".old-{folder.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            for name, table in self.tables.items():
                table.to_csv(tmp / f"{name}.csv", index=False, float_format="%.17g")
            for name, array in self.arrays.items():
                np.save(tmp / f"{name}.npy", np.asarray(array), allow_pickle=False)
            body = {"experiment": self.experiment, "run_id": self.run_id, "spec": self.spec, "scalars": self.scalars,
                    "meta": self.meta, "tables": sorted(self.tables), "arrays": sorted(self.arrays),
                    "dtypes": {name: _numeric_dtypes(table) for name, table in self.tables.items()}}
            (tmp / RECORD_FILE).write_text(json.dumps(_jsonable(body), indent=1, sort_keys=True) + "\n")
            shutil.rmtree(old, ignore_errors=True)
            if folder.exists():
                folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def read(cls, folder: Path) -> RunRecord:
        """Read a record written by :meth:`write`; :class:`RecordError` names a missing or damaged file."""
        folder = Path(folder)
        path = folder / RECORD_FILE
        if not path.is_file():
            raise RecordError(f"no result record at {path}: run its stage (make repro) or run the notebook")
        try:
            body = json.loads(path.read_text())
            if not isinstance(body, dict):
                raise ValueError(f"record.json holds a {type(body).__name__}, not an object")
            absent = [k for k in RECORD_KEYS if k not in body]
            if absent:
                raise ValueError(f"record.json lacks {absent}")
            dtypes = body.get("dtypes", {})
            tables = {name: pd.read_csv(folder / f"{name}.csv", dtype=dtypes.get(name)) for name in body["tables"]}
            arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in body["arrays"]}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise RecordError(f"the result record in {folder} is damaged ({err}); delete the folder and rerun its stage") from err
        return cls(body["experiment"], body["run_id"], body["spec"], body["scalars"], tables, arrays, body["meta"])


#: What every record.json holds.
RECORD_KEYS = ("experiment", "run_id", "spec", "scalars", "tables", "arrays", "meta")

#: Tables measured on the wire rather than computed: they vary from run to run like a timing.
VOLATILE_TABLES = {"link_bytes": "bytes counted on the Deployment Engine's shaped sockets, its polls and heartbeats "
                                 "included, so they vary with timing (message_bytes, the messages themselves, is compared)"}


def volatile(name: str) -> bool:
    """A wall time, speed or memory field, by its name's words: ``*_s`` and ``*_ms`` (seconds, milliseconds),
    ``*_per_s*`` (a rate), ``ms_per_*``, and any name with the word seconds, wall, peak, rss or overhead (a ratio of
    times)."""
    words = re.split(r"[_.]", name.lower())
    rate = any(a == "per" and b == "s" for a, b in zip(words, words[1:], strict=False))
    return words[-1] in ("s", "ms") or rate or words[0] == "ms" or bool({"seconds", "wall", "peak", "rss", "overhead"} & set(words))


def differences(old: RunRecord, new: RunRecord, ignore: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """Two records of one run compared: (what differs, what was skipped as a timing or memory field, or named in
    ``ignore``). Of the meta, the identity is compared (the digest of the run's settings: a record kept by
    ``dvc commit`` must still be current for the report stage). Used by ``benchmarks/records_unchanged.py`` (a refactor
    leaves records unchanged) and ``tests/test_resume.py`` (a killed and resumed run equals an uninterrupted one)."""
    diffs, skipped = [], []
    if old.meta.get("identity") != new.meta.get("identity"):
        diffs.append(f"identity {old.meta.get('identity')} != {new.meta.get('identity')}")
    if old.spec != new.spec:
        diffs.append(f"spec {old.spec} != {new.spec}")
    for key in sorted(set(old.scalars) | set(new.scalars)):
        if volatile(key) or key in ignore:
            skipped.append(key)
        elif old.scalars.get(key) != new.scalars.get(key):
            diffs.append(f"scalar {key}: {old.scalars.get(key)!r} != {new.scalars.get(key)!r}")
    for name in sorted(set(old.tables) | set(new.tables)):
        a, b = old.tables.get(name), new.tables.get(name)
        if a is None or b is None or list(a.columns) != list(b.columns) or len(a) != len(b):
            diffs.append(f"table {name}: shape or columns differ")
            continue
        if name in VOLATILE_TABLES:
            skipped.append(f"{name} (all: {VOLATILE_TABLES[name]})")
            continue
        for column in a.columns:
            if volatile(str(column)):
                skipped.append(f"{name}.{column}")
            elif not a[column].equals(b[column]):
                diffs.append(f"table {name}.{column} differs")
    for name in sorted(set(old.arrays) | set(new.arrays)):
        a, b = old.arrays.get(name), new.arrays.get(name)
        if a is None or b is None or not np.array_equal(a, b, equal_nan=True):
            diffs.append(f"array {name} differs")
    return diffs, skipped
