"""The per-profile summary: a verdict tally, the compute behind it, and every experiment's headline table and claims (linked to their evidence).

Run by the pipeline's ``summary`` stage: ``python -m fedpeft.reporting.summary --profile embedded``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Mapping

import pandas as pd

from fedpeft.core import registry
from fedpeft.core.config import COMMON_SCHEMA, PROFILES, REPO_ROOT, load_raw, validate_section
from fedpeft.core.files import atomic_write_text
from fedpeft.core.records import results_root
from fedpeft.reporting.claims import VERDICTS
from fedpeft.reporting.claims import tally as count_verdicts


def _claims_section(exp_dir: Path, claims: pd.DataFrame) -> str:
    """The experiment's claims with each verdict linked to its evidence (relative to the summary's folder)."""
    shown = claims[["claim", "seed", "study", "verdict"]].copy()
    if "kind" in claims:
        shown.insert(0, "kind", claims["kind"].map({"seed claim": "seed", "study check": "check"}))
    if "evidence_file" in claims:
        shown["evidence"] = [f"[{e}]({exp_dir.name}/{f})" for e, f in zip(claims["evidence"], claims["evidence_file"], strict=True)]
    shown = shown.fillna("")
    return "**Claims**\n\n" + shown.to_markdown(index=False) + "\n"


def tally(claims: Mapping[str, pd.DataFrame], kind: str = "seed claim", profile: str | None = None) -> pd.DataFrame:
    """Verdict counts per experiment (rows) and in total, every verdict word of the engine a column: the rows of
    ``kind`` (the seed's claims, or the study's own checks) whose evidence is ``profile``'s own (every row when None).
    An experiment with no row of ``kind`` at all (the savings frontier has no seed report) has no row."""
    rows = []
    for name, c in claims.items():
        if "kind" in c and not (c["kind"] == kind).any():
            continue
        counts = count_verdicts(c, kind, profile)
        rows.append({"experiment": name, **counts, "claims": sum(counts.values())})
    table = pd.DataFrame(rows, columns=["experiment", *VERDICTS, "claims"])
    total = {"experiment": "all", **{c: int(table[c].sum()) for c in [*VERDICTS, "claims"]}}
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


def experiment_folders(reports_dir: Path) -> list[Path]:
    """The report folder of every registered experiment (:mod:`fedpeft.core.registry`) that exists under
    ``reports_dir``, in the registry's order; a folder of no registered experiment is not a report."""
    return [Path(reports_dir) / name for name in registry.names() if (Path(reports_dir) / name).is_dir()]


def compute_per_experiment(reports_dir: Path) -> pd.DataFrame:
    """Run stages, their total wall time (hours) and devices per experiment, from each report's ``compute.csv``
    (written by ``StudyReport.finish``); a total row last. Empty when no report has one."""
    runs = [pd.read_csv(csv, keep_default_na=False).assign(experiment=csv.parent.name)
            for csv in (d / "compute.csv" for d in experiment_folders(reports_dir)) if csv.is_file()]
    if not runs:
        return pd.DataFrame(columns=["experiment", "run_stages", "wall_h", "devices"])
    every = pd.concat(runs, ignore_index=True).assign(wall_s=lambda d: pd.to_numeric(d["wall_s"], errors="coerce"))

    def row(name: str, part: pd.DataFrame) -> dict:
        return {"experiment": name, "run_stages": len(part), "wall_h": round(float(part["wall_s"].sum()) / 3600, 2),
                "devices": "; ".join(sorted(set(part["device"])))}

    rows = [row(name, part) for name, part in every.groupby("experiment", sort=True)] + [row("all", every)]
    return pd.DataFrame(rows)


def diverged_runs(results_dir: Path) -> pd.DataFrame:
    """Every run whose server loss ended over ``DIVERGENCE_FACTOR`` times its round-0 loss (the round loop's own
    divergence rule, which also warns while the run trains), from the ``history`` tables of the records under
    ``results_dir`` (``results/<profile>``): experiment, run, the two losses and the last server accuracy."""
    from fedpeft.core.records import RecordError, RunRecord
    from fedpeft.federated.loop import DIVERGENCE_FACTOR

    rows = []
    for name in registry.names():
        for folder in sorted(p for p in (Path(results_dir) / name).glob("*") if (p / "record.json").is_file()):
            try:
                history = RunRecord.read(folder).tables.get("history")
            except RecordError:
                continue
            if history is None or "server_loss" not in history or history.empty:
                continue
            start, end = float(history["server_loss"].iloc[0]), float(history["server_loss"].iloc[-1])
            if start > 0 and end > DIVERGENCE_FACTOR * start:
                rows.append({"experiment": name, "run": folder.name, "initial_server_loss": start, "final_server_loss": end,
                             "final_server_accuracy": history["server_accuracy"].iloc[-1] if "server_accuracy" in history else None})
    return pd.DataFrame(rows, columns=["experiment", "run", "initial_server_loss", "final_server_loss", "final_server_accuracy"])


def collect(reports_dir: Path, results_dir: Path | None = None) -> str:
    """Markdown gathering every experiment folder's headline and claims (``headline.md``, ``claims.csv``) under
    ``reports_dir``, with a verdict tally per experiment and each claim linked to its evidence."""
    sections = []
    claims: dict[str, pd.DataFrame] = {}
    for exp_dir in experiment_folders(reports_dir):
        headline = exp_dir / "headline.md"
        if not headline.is_file():
            continue
        part = [f"## {exp_dir.name}\n", f"Full report: [{exp_dir.name}/report.md]({exp_dir.name}/report.md)\n"]
        part.append(headline.read_text())
        csv = exp_dir / "claims.csv"
        if csv.is_file():
            claims[exp_dir.name] = pd.read_csv(csv, keep_default_na=False)
            part.append(_claims_section(exp_dir, claims[exp_dir.name]))
        sections.append("\n".join(part))
    if not sections:
        raise FileNotFoundError(f"no experiment reports (headline.md) under {reports_dir}; run the pipeline first")
    profile = Path(reports_dir).name
    from fedpeft.reporting.findings import findings_markdown

    found = findings_markdown(profile, reports_dir)
    figure = "\n![The seeds' claims by verdict, per experiment](verdicts.png)\n" if (Path(reports_dir) / "verdicts.png").is_file() else ""
    head = (f"# Study summary: profile `{profile}`\n\n## What the study found\n\n{found}{figure}\n## Every verdict\n\n"
            f"{len(sections)} experiments. Every claim of every seed report is judged "
            "by the claims engine (`fedpeft.reporting.claims`; its docstring and the README state the verdict policy): *holds* "
            "or *does not hold* only when the interval lies wholly on one side of the claim's threshold (or inside / outside "
            "the band of a stated figure), *inconclusive* when it covers it or there are too few runs, *not testable here* "
            "when this profile cannot measure it (the row says why), *fact* for what the study's own construction makes "
            "true.\n\n**The seeds' claims**, judged on this profile's own evidence:\n\n"
            + tally(claims, "seed claim", profile).to_markdown(index=False) + "\n")
    others = sorted({p for c in claims.values() for p in c.get("evidence_profile", pd.Series(dtype=str))} - {profile})
    for other in others:
        head += (f"\nSeed claims these reports judge on the `{other}` profile's committed measurements (tallied there, not "
                 "here):\n\n" + tally(claims, "seed claim", other).to_markdown(index=False) + "\n")
    head += ("\n**The study's own checks** (what the study adds: scores above chance, partition sanity, comparisons the "
             "seeds did not make), judged by the same engine and tallied apart:\n\n"
             + tally(claims, "study check", profile).to_markdown(index=False) + "\n")
    compute = compute_per_experiment(reports_dir)
    if not compute.empty:
        head += ("\n**Compute**: wall time of every run stage behind the reports (hours; the reports' *Compute* sections give "
                 "each run's), and the devices they ran on.\n\n" + compute.to_markdown(index=False) + "\n")
    if results_dir is not None:
        from fedpeft.federated.loop import DIVERGENCE_FACTOR

        diverged = diverged_runs(results_dir)
        head += (f"\n**Diverged runs** (a final server loss over {DIVERGENCE_FACTOR:g} times the initial one): "
                 + ("none.\n" if diverged.empty else f"{len(diverged)}; their numbers are not a finding of their method.\n\n"
                    + diverged.to_markdown(index=False) + "\n"))
    return head + "\n" + "\n\n".join(sections)


def claims_by_experiment(reports_dir: Path) -> dict[str, pd.DataFrame]:
    """Every experiment's ``claims.csv`` under ``reports_dir``."""
    return {d.name: pd.read_csv(d / "claims.csv", keep_default_na=False) for d in experiment_folders(reports_dir)
            if (d / "claims.csv").is_file()}


def write_verdict_figure(reports_dir: Path, profile: str) -> bool:
    """``verdicts.png`` / ``.pdf``: the seeds' claims per experiment by verdict, on this profile's evidence. False
    when no report has claims yet."""
    from fedpeft.reporting import plots
    from fedpeft.reporting.outputs import save_figure, use_study_style

    claims = claims_by_experiment(reports_dir)
    if not claims:
        return False
    use_study_style()
    save_figure(plots.verdict_overview(tally(claims, "seed claim", profile)), Path(reports_dir), "verdicts")
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", choices=PROFILES, default="embedded")
    args = parser.parse_args(argv)
    common = validate_section("common", load_raw(args.profile).get("common", {}), COMMON_SCHEMA)
    reports_dir = REPO_ROOT / common["reports_dir"]
    write_verdict_figure(reports_dir, args.profile)
    atomic_write_text(reports_dir / "SUMMARY.md", collect(reports_dir, results_root(args.profile)))
    print(f"wrote {reports_dir / 'SUMMARY.md'}")


if __name__ == "__main__":
    main()
