"""One object for everything an experiment's notebook writes, so a notebook holds narrative calls, not plumbing.

Each ``table`` and ``figure`` call writes its files at once (LaTeX + markdown, PNG + PDF) and is remembered in
order; ``finish`` writes the claims, the headline, the compute the runs took, the machine and versions, the flat metrics for
DVC and the per-round history, and assembles ``report.md``: what ran against the seed, what it means, the headline,
the claims, every table and figure in the notebook's order, the compute, machine and versions, the limitations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from fedpeft.core.config import Settings
from fedpeft.core.files import atomic_write_text
from fedpeft.core.profiling import machine_description
from fedpeft.reporting.claims import ClaimsLedger, tally
from fedpeft.reporting.compute import compute_summary, compute_table, machines_table
from fedpeft.reporting.outputs import (
    STUDY_PACKAGES,
    MarkdownReport,
    package_versions,
    readable,
    save_figure,
    use_study_style,
    write_csv,
    write_metrics,
    write_table,
)
from fedpeft.reporting.plots import axis_note


def _counts(counts: Mapping[str, int]) -> str:
    shown = [f"{n} {v}" for v, n in counts.items() if n]
    return ", ".join(shown) if shown else "none"


def claims_tally_text(claims: pd.DataFrame, profile: str) -> str:
    """The sentence above a report's claims table: the seed's claims tallied on this profile's evidence, and apart
    those judged on another profile's (the committed GPU measurements, say)."""
    seed = claims[claims["kind"] == "seed claim"]
    text = (f"Every claim of the seed, judged by the claims engine (`fedpeft.reporting.claims`, whose docstring states "
            f"the verdict policy) on this profile's evidence: {_counts(tally(claims, 'seed claim', profile))}.")
    for other in sorted(set(seed["evidence_profile"]) - {profile}):
        devices = "; ".join(sorted(set(seed.loc[seed["evidence_profile"] == other, "device"])))
        text += (f" Judged on the `{other}` profile's committed measurements ({devices}), tallied under `{other}`: "
                 f"{_counts(tally(claims, 'seed claim', other))}.")
    return text + " Each row's rule says what its n counts; `claims.csv` holds every row."


@dataclass
class StudyReport:
    """The report of one experiment in one profile, written under ``settings.report_dir``."""

    settings: Settings
    title: str
    seed_report: str  # the seed's file name under ../shared/seeds
    notebook: str  # the notebook's path in the repository
    packages: Iterable[str] = STUDY_PACKAGES
    _sections: list[tuple[str, Any, str, str]] = field(default_factory=list, repr=False)
    _files: dict[str, str] = field(default_factory=dict, repr=False)  # evidence name -> file in the report folder

    def __post_init__(self) -> None:
        self.out = Path(self.settings.report_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        use_study_style()

    def table(self, df: pd.DataFrame, name: str, caption: str, float_format: str = "{:.4g}") -> pd.DataFrame:
        """Write ``<name>.tex`` and ``<name>.md``, add the table to the report; returns ``df`` for display."""
        shown = df.reset_index() if df.index.name is not None or df.index.nlevels > 1 else df
        write_table(shown, self.out, name, caption, float_format)
        self._sections.append(("table", shown, caption, float_format))
        self._files[name] = f"{name}.md"
        return df

    def figure(self, fig, name: str, caption: str) -> None:
        """Save ``<name>.png`` and ``<name>.pdf`` and add the figure to the report; a caption says where a y-axis does
        not start at zero (:func:`fedpeft.reporting.plots.axis_note`)."""
        note = axis_note(fig)
        caption = f"{caption.rstrip('.')}. {note}" if note else caption
        save_figure(fig, self.out, name)
        self._sections.append(("figure", f"{name}.png", caption, ""))
        self._files[name] = f"{name}.png"

    def csv(self, df: pd.DataFrame, name: str) -> pd.DataFrame:
        """Write ``<name>.csv`` beside the report (raw records a reader may want to re-plot)."""
        write_csv(df, self.out / f"{name}.csv")
        self._files[name] = f"{name}.csv"
        return df

    def finish(self, finding: str, headline: pd.DataFrame, claims: ClaimsLedger, metrics: Mapping[str, Any],
               history: pd.DataFrame, setup: str, limitations: str, records: Mapping[str, Any]) -> str:
        """Write claims, headline, compute, machine, versions, metrics, history and ``report.md``; return the finding.

        ``setup``: what ran against the seed (model, data, examples, steps or epochs, lr, rounds, clients, seeds), as
        markdown; it opens the report and is also written to ``setup.md``, the evidence of the set-up claims.
        ``limitations``: the notebook's limitations, as markdown; they end the report.
        ``records``: the run records the report was made from (run id -> record); their stage wall time (seconds)
        and device are written to ``compute.md`` / ``compute.tex`` / ``compute.csv``.
        """
        if not setup.strip() or not limitations.strip():
            raise ValueError("a report needs its set-up (what ran against the seed) and its limitations")
        profile = self.settings.profile
        claims_df = claims.frame()
        files = {**self._files, "setup": "setup.md", "compute": "compute.md"}
        missing = sorted(set(claims_df["evidence"]) - set(files))
        if missing:
            raise ValueError(f"claims cite evidence {missing} that this report does not write; it writes {sorted(files)}")
        atomic_write_text(self.out / "setup.md", f"# What ran: {self.title} ({profile})\n\n{setup.strip()}\n")
        claims_df["evidence_file"] = claims_df["evidence"].map(files)
        compute = compute_table(records)
        devices = "; ".join(sorted(set(compute["device"]))) if len(compute) else ""
        claims_df["device"] = claims_df["device"].replace("", devices)
        write_csv(claims_df, self.out / "claims.csv")
        tables = {}
        for kind, name, what in (("seed claim", "claims", f"Claims of the seed of {self.title}"),
                                 ("study check", "checks", f"The study's own checks of {self.title}")):
            part = claims_df[claims_df["kind"] == kind]
            plain = part[["claim", "seed", "study", "verdict", "rule", "evidence_profile"]].rename(columns={"evidence_profile": "evidence from"})
            shown = part[["claim", "seed", "study", "verdict", "rule"]].assign(
                evidence=[f"[{e}]({f}) ({p}, {d})" for e, f, p, d in
                          zip(part["evidence"], part["evidence_file"], part["evidence_profile"], part["device"], strict=True)],
                note=part["note"])
            write_table(plain, self.out, name, f"{what} ({profile} profile)", formats=("tex",))
            write_table(shown, self.out, name, f"{what} ({profile} profile)", formats=("md",))
            tables[kind] = shown
        shown_headline = readable(headline)
        write_table(shown_headline, self.out, "headline", f"{self.title} ({profile}): headline", "{:.4g}")
        compute_text = compute_summary(compute)
        total = pd.DataFrame([{"run": "total", "device": "", "wall_s": compute["wall_s"].sum(), "written_at": "",
                               "resumed_from_round": ""}])
        shown_compute = pd.concat([compute, total], ignore_index=True) if len(compute) else compute
        write_table(shown_compute, self.out, "compute", f"{self.title} ({profile}): wall time (s) of each run stage", "{:.0f}")
        write_csv(compute, self.out / "compute.csv")
        machine = machines_table(records, machine_description())
        versions = package_versions(self.packages)
        write_table(machine, self.out, "machine", "Machines of the run stages that produced these numbers, and of the report stage")
        write_table(versions, self.out, "versions", "Package versions")
        write_metrics(metrics, self.settings.metrics_path)
        write_csv(history, self.settings.history_path)

        report = MarkdownReport(f"{self.title} ({profile} profile)")
        report.text(f"Seed report: `{self.seed_report}`. Notebook: `{self.notebook}` (executed copy beside this file).")
        seeded = len(tables["seed claim"]) > 0  # the savings frontier asks the study's own question: checks only
        report.heading("What ran against the seed" if seeded else "What ran")
        report.text(setup)
        report.heading("What this means")
        report.text(finding)
        report.table(shown_headline, "Headline")
        if seeded:
            report.heading("Claims")
            report.text(claims_tally_text(claims_df, profile))
            report.table(tables["seed claim"], "Claims of the seed")
        if len(tables["study check"]):
            report.heading("The study's own checks")
            report.text("What the study adds to the seed's claims (a score above chance, a partition's sanity, comparisons "
                        "the seed did not make), judged by the same engine and tallied apart: "
                        + _counts(tally(claims_df, "study check", profile)) + ".")
            report.table(tables["study check"], "The study's own checks")
        report.heading("Results")
        for kind, item, caption, float_format in self._sections:
            if kind == "table":
                report.table(item, caption, float_format)
            else:
                report.figure(item, caption)
        report.heading("Compute, machine and versions")
        report.text(compute_text)
        report.table(shown_compute, "Wall time of each run stage (s) and the device it ran on", "{:.0f}")
        report.table(machine, "Machines of the run stages and of the report stage")
        report.table(versions, "Versions")
        report.heading("Limitations")
        report.text(limitations)
        report.write(self.out / "report.md")
        return finding
