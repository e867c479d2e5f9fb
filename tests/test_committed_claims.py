"""The committed reports: every claims table holds only the engine's verdict words, each row with its rule and an
evidence file that exists beside it; every report opens with what ran and ends with its limitations; each
profile's summary tallies every experiment."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from fedpeft.core import registry
from fedpeft.core.config import REPO_ROOT
from fedpeft.reporting.claims import KINDS, VERDICTS

REPORT_DIRS = sorted(p.parent for p in (REPO_ROOT / "reports").glob("*/*/claims.csv"))


def test_there_are_committed_claims_tables():
    assert {p.parent.name for p in REPORT_DIRS} >= {"embedded"}
    assert sorted(p.name for p in REPORT_DIRS if p.parent.name == "embedded") == sorted(registry.names())


@pytest.mark.parametrize("folder", REPORT_DIRS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_claims_table_uses_engine_verdicts_with_rule_and_evidence(folder: Path):
    claims = pd.read_csv(folder / "claims.csv", keep_default_na=False)
    assert len(claims) > 0
    bad = sorted(set(claims["verdict"]) - set(VERDICTS))
    assert not bad, f"{folder}: verdict words {bad} are not the engine's {list(VERDICTS)}"
    for col in ("claim", "seed", "study", "rule", "evidence", "evidence_file"):
        empty = claims.loc[claims[col].astype(str).str.strip() == "", "claim"].tolist()
        assert not empty, f"{folder}: rows without {col}: {empty}"
    missing = [f for f in claims["evidence_file"] if not (folder / f).is_file()]
    assert not missing, f"{folder}: evidence files missing: {missing}"
    assert (claims["profile"] == folder.parent.name).all() and (claims["experiment"] == folder.name).all()
    own_question = registry.get(folder.name).seed_report.startswith("none")  # the savings frontier: checks only
    assert set(claims["kind"]) <= set(KINDS) and ((claims["kind"] == "seed claim").any() or own_question)
    assert claims["evidence_profile"].isin(["embedded", "local", "paper"]).all() and (claims["device"].str.len() > 0).all()


@pytest.mark.parametrize("folder", REPORT_DIRS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_study_cell_carries_its_unit(folder: Path):
    claims = pd.read_csv(folder / "claims.csv", keep_default_na=False)
    bare = [s for s in claims["study"] if re.fullmatch(r"[-+~]?[\d.,]+(?:e[-+]?\d+)?", re.split(r" \[| \(|;|, ", s, maxsplit=1)[0].strip())]
    assert not bare, f"{folder}: study cells without a unit: {bare}"


@pytest.mark.parametrize("folder", REPORT_DIRS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_report_opens_with_what_ran_and_ends_with_limitations(folder: Path):
    text = (folder / "report.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    own_question = registry.get(folder.name).seed_report.startswith("none")  # no seed to run against
    assert headings[0] == ("## What ran" if own_question else "## What ran against the seed")
    assert headings[-1] == "## Limitations"


def _table_after(text: str, marker: str) -> list[str]:
    """The rows of the first markdown table after the line starting with `marker`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(marker))
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    assert table, f"no table after {marker!r}"
    return table


@pytest.mark.parametrize("profile", sorted({p.parent.name for p in REPORT_DIRS}))
def test_summary_tallies_every_experiment(profile: str):
    text = (REPO_ROOT / "reports" / profile / "SUMMARY.md").read_text()
    seed_rows = _table_after(text, "**The seeds' claims**")
    check_rows = _table_after(text, "**The study's own checks**")
    for folder in (p for p in REPORT_DIRS if p.parent.name == profile):
        claims = pd.read_csv(folder / "claims.csv", keep_default_na=False)
        for rows, kind in ((seed_rows, "seed claim"), (check_rows, "study check")):
            own = claims[(claims["kind"] == kind) & (claims["evidence_profile"] == profile)]
            row = next((line for line in rows if line.startswith(f"| {folder.name} ")), None)
            if own.empty and row is None:
                continue  # an experiment with none of this kind is left out of its tally
            assert row is not None, f"{profile} {kind} tally has no row for {folder.name}"
            assert row.rstrip().endswith(f" {len(own)} |"), f"{profile} {kind} tally of {folder.name} does not count its {len(own)} rows"
