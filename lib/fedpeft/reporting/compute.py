"""What the runs behind a report cost: wall time per run stage and in total, the device each ran on, and the machines.

Read from the records' provenance (``meta.stage_wall_s``, ``meta.machine``, ``meta.written_at``, written by
``fedpeft.experiments.runs.execute``), so the numbers are the run stages' own, not the report stage's.
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

NOT_RECORDED = "not recorded"


def run_device(machine: Mapping[str, Any] | None) -> str:
    """The device a run trained on, in words: the GPU's name, or the CPU's with its torch threads."""
    if not machine:
        return NOT_RECORDED
    gpu = str(machine.get("gpu", "none"))
    if gpu and gpu != "none":
        return f"GPU: {gpu}"
    return f"CPU: {machine.get('cpu', '?')}, {machine.get('torch_threads', '?')} threads"


def compute_table(records: Mapping[str, Any]) -> pd.DataFrame:
    """One row per run record: ``run``, ``device``, ``wall_s`` (seconds the run stage took, end to end),
    ``written_at`` (UTC) and ``resumed_from_round`` (0 unless the stage resumed a killed run from its checkpoint, in
    which case ``wall_s`` covers only the rounds after it), in the records' order. ``records``: run id -> record with
    a ``meta`` dict (and ``scalars``)."""
    rows = []
    for run_id, record in records.items():
        meta = getattr(record, "meta", {}) or {}
        wall = meta.get("stage_wall_s")
        resumed = (getattr(record, "scalars", {}) or {}).get("resumed_from_round", 0)
        rows.append({"run": run_id, "device": run_device(meta.get("machine")),
                     "wall_s": float(wall) if wall is not None else float("nan"),
                     "written_at": meta.get("written_at", NOT_RECORDED), "resumed_from_round": int(resumed or 0)})
    return pd.DataFrame(rows, columns=["run", "device", "wall_s", "written_at", "resumed_from_round"])


def compute_summary(table: pd.DataFrame) -> str:
    """One sentence: how many runs, their total wall time (minutes and hours), and on which devices."""
    if table.empty:
        return "No run records: this report ran no separate run stages."
    total_s = float(table["wall_s"].sum(skipna=True))
    missing = int(table["wall_s"].isna().sum())
    devices = "; ".join(f"{d} ({n} runs)" for d, n in table["device"].value_counts(sort=False).items())
    text = (f"{len(table)} run stages took **{total_s / 60:.1f} min** of wall time in total ({total_s / 3600:.2f} h; "
            f"longest {table['wall_s'].max():.0f} s, median {table['wall_s'].median():.0f} s), on {devices}.")
    if missing:
        text += f" {missing} records carry no wall time (written before it was recorded)."
    resumed = table.loc[table["resumed_from_round"] > 0, "run"].tolist()
    if resumed:
        text += (f" Resumed from a checkpoint after an interruption, so their wall time leaves out the rounds before it: "
                 f"{', '.join(resumed)}.")
    return text


MACHINE_COLUMNS = ["cpu", "cpu_cores", "torch_threads", "memory_gib", "gpu", "cpu_bf16"]


def machines_table(records: Mapping[str, Any], report_machine: Mapping[str, Any]) -> pd.DataFrame:
    """The machines behind a report: one row per distinct machine of the run records (``role`` "run stages",
    ``runs`` how many records it wrote, first seen first), then the machine of the report stage itself (``role``
    "report stage", which trains nothing). Trained numbers depend on the CPU kind (AVX2 against AVX-512 kernels), so
    a reader needs the first rows, not the last."""
    seen: dict[tuple, dict[str, Any]] = {}
    for record in records.values():
        machine = (getattr(record, "meta", {}) or {}).get("machine") or {}
        row = {c: str(machine.get(c, NOT_RECORDED)) for c in MACHINE_COLUMNS}
        key = tuple(row.values())
        seen.setdefault(key, {"role": "run stages", "runs": 0, **row})["runs"] += 1
    report = {"role": "report stage", "runs": 0, **{c: str(report_machine.get(c, NOT_RECORDED)) for c in MACHINE_COLUMNS}}
    return pd.DataFrame([*seen.values(), report], columns=["role", "runs", *MACHINE_COLUMNS])
