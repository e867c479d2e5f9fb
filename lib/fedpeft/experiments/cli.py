"""The study from the command line: ``python -m fedpeft <command>``.

    python -m fedpeft experiments                                  # every experiment, its seed and notebook
    python -m fedpeft runs weeds_qlora_federated --profile local    # every planned run and its record's state
    python -m fedpeft claims eurosat_fedavg_ptq --profile local     # every claim and check with its verdict
    python -m fedpeft claim eurosat_fedavg_ptq 5 --profile local    # one claim: figures, verdict, rule, evidence
    python -m fedpeft run eurosat_fedavg_ptq iid-s0-r10 --profile embedded   # run one planned run, write its record

States of a run's record: ``recorded`` (made with the profile's current settings), ``stale`` (made with other
settings: the report would run it again), ``missing``, or ``damaged`` (it cannot be read).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from fedpeft.core import registry
from fedpeft.core.config import PROFILES, REPO_ROOT
from fedpeft.core.records import RecordError, RunRecord, record_dir
from fedpeft.experiments import runs


def experiments() -> pd.DataFrame:
    """Every registered experiment: name, title, seed report and notebook (:mod:`fedpeft.core.registry`)."""
    return pd.DataFrame([{"experiment": e.name, "title": e.title, "seed": e.seed_report, "notebook": e.notebook}
                         for e in registry.experiments()])


def run_states(experiment: str, profile: str) -> pd.DataFrame:
    """Every planned run of ``experiment`` in ``profile`` with its record's state and, when recorded, its wall time."""
    declared = registry.get(experiment)
    settings = declared.load(profile)
    rows = []
    for spec in declared.run_specs(settings):
        folder = record_dir(profile, experiment, spec.run_id)
        try:
            record = RunRecord.read(folder)
            state = "recorded" if record.meta.get("identity") == runs.identity(settings, spec) else "stale"
            wall = record.meta.get("stage_wall_s")
        except RecordError as err:
            state, wall = ("missing" if not (folder / "record.json").is_file() else f"damaged: {err}"), None
        rows.append({"run": spec.run_id, "kind": spec.kind, "state": state, "wall_s": wall, "record": str(folder.relative_to(REPO_ROOT) if folder.is_relative_to(REPO_ROOT) else folder)})
    return pd.DataFrame(rows)


def claims(experiment: str, profile: str) -> pd.DataFrame:
    """The experiment's committed ledger (``reports/<profile>/<experiment>/claims.csv``)."""
    path = REPO_ROOT / "reports" / profile / experiment / "claims.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path.relative_to(REPO_ROOT)} does not exist: run the profile's pipeline first "
                                f"(make repro PROFILE={profile})")
    return pd.read_csv(path, keep_default_na=False)


def claim_text(experiment: str, profile: str, which: str) -> str:
    """One claim (by row number or key) with the seed's and the study's figures, the verdict, the rule and the path
    of its evidence."""
    ledger = claims(experiment, profile)
    if which.isdigit() and int(which) < len(ledger):
        row = ledger.iloc[int(which)]
    elif "key" in ledger and (ledger["key"] == which).any():
        row = ledger[ledger["key"] == which].iloc[0]
    else:
        raise SystemExit(f"claim = {which!r} is not a row number (0 to {len(ledger) - 1}) or a key of {experiment}'s "
                         f"ledger; keys: {sorted(k for k in ledger.get('key', []) if k)}")
    evidence = Path("reports") / profile / experiment / row["evidence_file"]
    return "\n".join([f"{row['claim']}  [{row['kind']}]", f"  seed says:      {row['seed']}", f"  study measured: {row['study']}",
                      f"  verdict:        {row['verdict']}", f"  rule:           {row['rule']}",
                      f"  evidence:       {evidence} ({row['evidence_profile']}, {row['device']})"]
                     + ([f"  note:           {row['note']}"] if row["note"] else []))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedpeft", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("experiments", help="list the experiments")
    names = registry.names()
    for command, more in (("runs", ()), ("claims", ()), ("claim", ("which",)), ("run", ("run_id",))):
        p = sub.add_parser(command)
        p.add_argument("experiment", choices=names)
        for arg in more:
            p.add_argument(arg)
        p.add_argument("--profile", choices=PROFILES, default="embedded")
    args = parser.parse_args(argv)
    with pd.option_context("display.width", 200, "display.max_colwidth", 80, "display.max_rows", 500):
        if args.command == "experiments":
            print(experiments().to_string(index=False))
        elif args.command == "runs":
            table = run_states(args.experiment, args.profile)
            print(table.to_string(index=False))
            print(f"\n{(table['state'] == 'recorded').sum()} of {len(table)} runs recorded with the current settings")
        elif args.command == "claims":
            print(claims(args.experiment, args.profile)[["kind", "claim", "verdict", "study"]].to_string())
        elif args.command == "claim":
            print(claim_text(args.experiment, args.profile, args.which))
        else:
            runs.main(["--profile", args.profile, "--experiment", args.experiment, "--run", args.run_id])


if __name__ == "__main__":
    main(sys.argv[1:])
