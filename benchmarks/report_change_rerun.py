"""What `make repro` reruns, and how long it takes, after a report-side change (a measurement, not a test).

In a throw-away git worktree of the committed HEAD (so the checkout you work in is never touched), it changes one
thing that only an experiment's report reads, lists the stages DVC then calls stale, and times `make repro` for the
profile (`dvc repro` with the Makefile's offline settings). Two kinds of change:

- ``--change param``: a report-only parameter (the experiment's ``REPORT_KEYS``, e.g. a price) is multiplied by 2;
- ``--change code``: a comment is appended to the experiment's ``report.py`` (what editing a table or a claims rule
  does to the pipeline).

With ``--forced`` it also times a forced regeneration of the whole profile (``dvc repro -f``). Writes
``reports/benchmarks/report_change_rerun.md`` (one row per call, appended). The worktree must start clean: commit
and regenerate first.

    .venv/bin/python benchmarks/report_change_rerun.py --profile embedded --experiment eurosat_fedavg_ptq --change param
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from fedpeft.core import registry
from fedpeft.core.config import REPO_ROOT
from fedpeft.core.profiling import machine_description
from fedpeft.reporting.outputs import MarkdownReport

OUT = REPO_ROOT / "reports" / "benchmarks" / "report_change_rerun.md"
ROWS = REPO_ROOT / "reports" / "benchmarks" / "report_change_rerun.csv"


def pipeline(profile: str) -> str:
    return "dvc.yaml" if profile == "embedded" else f"pipelines/{profile}/dvc.yaml"


def stale_stages(worktree: Path, profile: str, env: dict) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", pipeline(profile)], cwd=worktree, env=env,
                         capture_output=True, text=True, check=True).stdout
    return sorted(json.loads(out or "{}"))


def change_param(worktree: Path, profile: str, experiment: str) -> str:
    keys = sorted(registry.get(experiment).report_keys)
    if not keys:
        raise SystemExit(f"{experiment} has no report-only parameter; use --change code")
    path = worktree / "params" / f"{profile}.yaml"
    text = path.read_text()
    section = re.search(rf"^{experiment}:\n((?:[ ]+.*\n|\n)*)", text, flags=re.M)
    line = re.search(rf"^(  {keys[0]}: )(\S+)$", section.group(1), flags=re.M)
    old = line.group(2)
    new = int(old) * 2 if old.lstrip("-").isdigit() else float(old) * 2
    start = section.start(1) + line.start()
    path.write_text(text[:start] + f"  {keys[0]}: {new}" + text[section.start(1) + line.end():])
    return f"{experiment}.{keys[0]}: {line.group(2)} -> {new}"


def change_code(worktree: Path, experiment: str) -> str:
    path = worktree / "lib" / "fedpeft" / "experiments" / experiment / "report.py"
    path.write_text(path.read_text() + "\n# benchmark: a report-side edit\n")
    return f"comment appended to experiments/{experiment}/report.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--experiment", required=True, choices=registry.names())
    parser.add_argument("--change", choices=("param", "code"), default="param")
    parser.add_argument("--forced", action="store_true", help="also time a forced regeneration of the whole profile")
    args = parser.parse_args()
    venv = Path(sys.executable).parent.parent
    env = os.environ | {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1",
                        "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false", "DVC_NO_ANALYTICS": "1", "RAY_USAGE_STATS_ENABLED": "0",
                        "FLWR_TELEMETRY_ENABLED": "0", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    worktree = Path(tempfile.mkdtemp(prefix="fedpeft-bench-")) / "wt"
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), "HEAD"], cwd=REPO_ROOT, check=True, capture_output=True)
    try:
        env["PYTHONPATH"] = str(worktree / "lib")  # the worktree's library and parameters, not this checkout's
        before = stale_stages(worktree, args.profile, env)
        if before:
            raise SystemExit(f"the committed {args.profile} pipeline is not clean ({before[:5]}...): commit and regenerate first")
        what = change_param(worktree, args.profile, args.experiment) if args.change == "param" else change_code(worktree, args.experiment)
        stale = stale_stages(worktree, args.profile, env)
        # `dvc repro` with the Makefile's offline settings; not `make repro`, whose env step would reinstall the
        # project from the worktree into this environment
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dvc", "repro", pipeline(args.profile)], cwd=worktree, env=env, check=True,
                       capture_output=True)
        seconds = time.perf_counter() - start
        row = {"profile": args.profile, "change": what, "stages_rerun": ", ".join(stale), "repro_s": round(seconds, 1)}
        if args.forced:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dvc", "repro", "-f", pipeline(args.profile)], cwd=worktree, env=env, check=True,
                           capture_output=True)
            row["forced_regeneration_s"] = round(time.perf_counter() - start, 1)
        print(row)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO_ROOT, capture_output=True)
    rows = pd.concat([pd.read_csv(ROWS), pd.DataFrame([row])], ignore_index=True) if ROWS.is_file() else pd.DataFrame([row])
    ROWS.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(ROWS, index=False)
    report = MarkdownReport("Report-side changes: what reruns and how long it takes")
    report.text(__doc__.split("\n\n")[1])
    report.table(rows, "One row per measurement (seconds of wall time on the machine below)")
    report.table(pd.DataFrame([machine_description()]), "Machine")
    report.write(OUT)


if __name__ == "__main__":
    main()
