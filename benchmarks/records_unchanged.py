"""Does a refactor leave the run records unchanged? Run a sample of run stages with the code of an older commit and
with today's, on this machine, each into its own scratch results and cache folders, and compare the records.

    python benchmarks/records_unchanged.py --old <commit> --profile embedded --sample kinds
    python benchmarks/records_unchanged.py --old <commit> --profile local --runs code_lm_fedprox:lora-iid-mu0.1-n3-s0-r4

``--sample kinds`` takes, for every experiment and every kind of run stage, its planned run with the shortest
committed wall time (``stage_wall_s`` of its committed record); ``--runs`` adds runs that take other code paths
within a kind (another scenario, engine or arm). A refactor stales every run stage it reaches (DVC
hashes the source); when this check finds each sampled record identical, the stages can be recorded with
``dvc commit`` instead of rerun for hours. Both sides run on this machine, so a trained number must match exactly:
the committed records may come from another CPU, whose kernels give other floats.

What may differ: wall times, speeds and peak memory (:func:`volatile` says which fields, by their names; the output
lists every field it skipped; they live in :mod:`fedpeft.core.records`) and the record's ``meta`` (machine,
written_at, params_read). Everything else (spec, scalars, every table cell, every array) must be equal. The result
is printed as a markdown table and, with ``--out``, written there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from fedpeft.core import registry
from fedpeft.core.config import REPO_ROOT, load_raw
from fedpeft.core.records import RESULTS_ENV, RecordError, RunRecord, differences, record_dir


def sample_kinds(profile: str) -> list[tuple[str, str]]:
    """Per experiment and run kind, the planned run whose committed record took the least wall time (plan order when
    none is committed); setup kinds first, since other runs of an experiment may read what they cache."""
    def wall(experiment: str, run_id: str) -> float:
        try:
            return float(RunRecord.read(record_dir(profile, experiment, run_id)).meta.get("stage_wall_s", 1e9))
        except RecordError:
            return 1e9

    chosen = []
    for declared in registry.experiments():
        specs = declared.run_specs(declared.load(profile))
        for kind in sorted(dict.fromkeys(s.kind for s in specs), key=lambda k: k != "setup"):
            cheapest = min((s for s in specs if s.kind == kind), key=lambda s: wall(declared.name, s.run_id))  # noqa: B023
            chosen.append((declared.name, cheapest.run_id))
    return chosen


def run(repo: Path, profile: str, experiment: str, run_id: str, results: Path, cache: Path, data_root: Path) -> float:
    env = os.environ | {RESULTS_ENV: str(results), "FEDPEFT_CACHE_DIR": str(cache), "FEDPEFT_DATA_ROOT": str(data_root),
                        "PYTHONPATH": str(repo / "lib"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fedpeft.experiments.runs", "--profile", profile, "--experiment", experiment,
                    "--run", run_id, "--no-progress"], cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the commit before the refactor")
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--sample", choices=("kinds",), help="every experiment's cheapest run of each kind")
    parser.add_argument("--runs", nargs="*", default=[], help="experiment:run_id pairs")
    parser.add_argument("--skip", nargs="*", default=[], help="experiment:run_id pairs to leave out of the sample")
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "fedpeft-records-check",
                        help="scratch folder (outside the repository: a worktree inside it would add pipelines to DVC's view)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare-only", action="store_true", help="compare the records already in the scratch folder")
    args = parser.parse_args()
    pairs = sample_kinds(args.profile) if args.sample else []
    pairs += [tuple(p.split(":", 1)) for p in args.runs]
    pairs = [p for p in pairs if f"{p[0]}:{p[1]}" not in args.skip]
    if not pairs:
        raise SystemExit("nothing to check: give --sample kinds or --runs experiment:run_id ...")
    old_tree = args.scratch / "old-code"
    if not old_tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), args.old], cwd=REPO_ROOT, check=True)
    else:  # a worktree left by an earlier check: move it to the commit asked for
        subprocess.run(["git", "checkout", "--quiet", "--detach", args.old], cwd=old_tree, check=True)
    if not args.compare_only:  # fresh results and caches: no cached preparation or checkpoint of an earlier check
        for side in ("old", "new"):
            shutil.rmtree(args.scratch / side / "results" / args.profile, ignore_errors=True)
            shutil.rmtree(args.scratch / side / f"cache-{args.profile}", ignore_errors=True)
    common = load_raw(args.profile)["common"]
    data_root = Path(os.environ.get("FEDPEFT_DATA_ROOT") or (REPO_ROOT / common["data_root"])).resolve()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    old_rev = subprocess.run(["git", "rev-parse", "--short", args.old], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    rows = []
    for experiment, run_id in pairs:
        walls = {"old": float("nan"), "new": float("nan")}
        for side, repo in () if args.compare_only else (("old", old_tree), ("new", REPO_ROOT)):  # back to back: interleaved
            walls[side] = run(repo, args.profile, experiment, run_id, args.scratch / side / "results",
                              args.scratch / side / f"cache-{args.profile}", data_root)
        old = RunRecord.read(args.scratch / "old" / "results" / args.profile / experiment / run_id)
        new = RunRecord.read(args.scratch / "new" / "results" / args.profile / experiment / run_id)
        diffs, skipped = differences(old, new)
        rows.append({"experiment": experiment, "run": run_id, "identical": "yes" if not diffs else "NO",
                     "differences": "; ".join(diffs[:5]), "timing or memory fields skipped": ", ".join(skipped) or "none",
                     "old wall (s)": round(walls["old"], 1), "new wall (s)": round(walls["new"], 1)})
        print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    text = (f"# Records unchanged by the refactor ({args.profile})\n\nOld code {old_rev}, new code {head} (plus the working "
            f"tree), both on this machine, each run into its own scratch results and cache. {int((table['identical'] == 'yes').sum())} "
            f"of {len(table)} sampled records identical.\n\n" + table.to_markdown(index=False) + "\n")
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
