"""One object for everything an experiment's notebook writes, so a notebook holds narrative calls, not plumbing.

Each ``table`` and ``figure`` call writes its files at once (LaTeX + markdown, PNG + PDF) and is remembered in
order; ``finish`` writes the claims, the headline, the machine and versions, the flat metrics for DVC and the
per-round history, and assembles ``report.md``: what ran against the seed, what it means, the headline, every
table and figure in the notebook's order, the claims, the limitations, the machine and versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from fedpeft.core.config import Settings
from fedpeft.core.profiling import machine_description
from fedpeft.reporting.outputs import (
    STUDY_PACKAGES,
    ClaimsTable,
    MarkdownReport,
    package_versions,
    save_figure,
    use_study_style,
    write_csv,
    write_metrics,
    write_table,
)


@dataclass
class StudyReport:
    """The report of one experiment in one profile, written under ``settings.report_dir``."""

    settings: Settings
    title: str
    seed_report: str  # the seed's file name under ../shared/seeds
    notebook: str  # the notebook's path in the repository
    packages: Iterable[str] = STUDY_PACKAGES
    _sections: list[tuple[str, Any, str, str]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.out = Path(self.settings.report_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        use_study_style()

    def table(self, df: pd.DataFrame, name: str, caption: str, float_format: str = "{:.4g}") -> pd.DataFrame:
        """Write ``<name>.tex`` and ``<name>.md``, add the table to the report; returns ``df`` for display."""
        shown = df.reset_index() if df.index.name is not None or df.index.nlevels > 1 else df
        write_table(shown, self.out, name, caption, float_format)
        self._sections.append(("table", shown, caption, float_format))
        return df

    def figure(self, fig, name: str, caption: str) -> None:
        """Save ``<name>.png`` and ``<name>.pdf`` and add the figure to the report."""
        save_figure(fig, self.out, name)
        self._sections.append(("figure", f"{name}.png", caption, ""))

    def csv(self, df: pd.DataFrame, name: str) -> pd.DataFrame:
        """Write ``<name>.csv`` beside the report (raw records a reader may want to re-plot)."""
        write_csv(df, self.out / f"{name}.csv")
        return df

    def finish(self, finding: str, headline: pd.DataFrame, claims: ClaimsTable, metrics: Mapping[str, Any],
               history: pd.DataFrame, setup: str = "", limitations: str = "") -> str:
        """Write claims, headline, machine, versions, metrics, history and ``report.md``; return the finding.

        ``setup``: what ran against the seed (model, data, steps, rounds, clients, seeds), as markdown;
        ``limitations``: the notebook's limitations, as markdown.
        """
        profile = self.settings.profile
        claims_df = claims.frame()
        write_table(claims_df, self.out, "claims", f"Claims of {self.title} checked ({profile} profile)")
        write_csv(claims_df, self.out / "claims.csv")
        write_table(headline, self.out, "headline", f"{self.title} ({profile}): headline", "{:.4g}")
        machine = pd.DataFrame([machine_description()])
        versions = package_versions(self.packages)
        write_table(machine, self.out, "machine", "Machine that produced these numbers")
        write_table(versions, self.out, "versions", "Package versions")
        write_metrics(metrics, self.settings.metrics_path)
        write_csv(history, self.settings.history_path)

        report = MarkdownReport(f"{self.title} ({profile} profile)")
        report.text(f"Seed report: `{self.seed_report}`. Notebook: `{self.notebook}` (executed copy beside this file).")
        if setup:
            report.heading("What ran")
            report.text(setup)
        report.heading("What this means")
        report.text(finding)
        report.table(headline, "Headline")
        report.heading("Results")
        for kind, item, caption, float_format in self._sections:
            if kind == "table":
                report.table(item, caption, float_format)
            else:
                report.figure(item, caption)
        report.heading("Claims")
        report.table(claims_df, "Claims checked")
        if limitations:
            report.heading("Limitations")
            report.text(limitations)
        report.heading("Machine and versions")
        report.table(machine, "Machine")
        report.table(versions, "Versions")
        report.write(self.out / "report.md")
        return finding
