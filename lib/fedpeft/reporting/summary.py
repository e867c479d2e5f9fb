"""The per-profile summary: every experiment's headline table and claims table in one markdown file.

Run by the pipeline's ``summary`` stage: ``python -m fedpeft.reporting.summary --profile embedded``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from fedpeft.core.config import COMMON_SCHEMA, PROFILES, REPO_ROOT, load_raw, validate_section
from fedpeft.core.files import atomic_write_text


def collect(reports_dir: Path) -> str:
    """Markdown gathering ``headline.md`` and ``claims.md`` of every experiment folder under ``reports_dir``."""
    sections = []
    verdicts: list[pd.Series] = []
    for exp_dir in sorted(p for p in Path(reports_dir).iterdir() if p.is_dir()):
        headline, claims = exp_dir / "headline.md", exp_dir / "claims.md"
        if not headline.is_file():
            continue
        part = [f"## {exp_dir.name}\n", f"Full report: [{exp_dir.name}/report.md]({exp_dir.name}/report.md)\n"]
        part.append(headline.read_text())
        if claims.is_file():
            part.append(claims.read_text())
        csv = exp_dir / "claims.csv"
        if csv.is_file():
            verdicts.append(pd.read_csv(csv)["verdict"])
        sections.append("\n".join(part))
    if not sections:
        raise FileNotFoundError(f"no experiment reports (headline.md) under {reports_dir}; run the pipeline first")
    counts = pd.concat(verdicts).value_counts() if verdicts else pd.Series(dtype=int)
    tally = ", ".join(f"{n} {v}" for v, n in counts.items())
    profile = Path(reports_dir).name
    head = f"# Study summary: profile `{profile}`\n\nClaims checked: {tally}.\n"
    return head + "\n" + "\n\n".join(sections)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", choices=PROFILES, default="embedded")
    args = parser.parse_args(argv)
    common = validate_section("common", load_raw(args.profile).get("common", {}), COMMON_SCHEMA)
    reports_dir = REPO_ROOT / common["reports_dir"]
    atomic_write_text(reports_dir / "SUMMARY.md", collect(reports_dir))
    print(f"wrote {reports_dir / 'SUMMARY.md'}")


if __name__ == "__main__":
    main()
