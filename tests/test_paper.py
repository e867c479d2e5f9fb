"""The paper: markdown of the reports turned into LaTeX correctly, one section per experiment with its headline and
figures, the whole claims ledger; and, where Debian's TeX Live is installed, a PDF built offline from the committed
embedded reports."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest

from fedpeft.core.config import REPO_ROOT
from fedpeft.experiments import paper
from fedpeft.experiments.site import EXPERIMENTS


def test_latex_escaping_and_inline_markdown():
    assert paper.latex_escape("50 % of $3 & x_1 #2") == r"50 \% of \$3 \& x\_1 \#2"
    assert paper.inline("**Data** uses `yolo11n_cls` and *random* [weights](a.md)") == \
        r"\textbf{Data} uses \texttt{yolo11n\_cls} and \emph{random} weights"
    assert paper.inline("3 * 4 * 5") == "3 * 4 * 5"  # a lone asterisk is not emphasis


def test_markdown_paragraphs_and_lists():
    md = "First line\ncontinues.\n\n- one\n  wrapped\n- two\n\n| a | b |\n|---|---|\n\n![fig](x.png)\nLast."
    assert paper.markdown_to_latex(md) == ("First line continues.\n\n\\begin{itemize}\n\\item one wrapped\n\\item two\n"
                                           "\\end{itemize}\n\nLast.")


def test_the_paper_has_every_experiment_and_every_claim(tmp_path):
    reports = REPO_ROOT / "reports" / "embedded"
    tex = paper.paper_tex("embedded", reports, tmp_path)
    claims = pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False) for f in sorted(reports.glob("*/claims.csv"))])
    assert all(f"\\label{{sec:{e}}}" in tex for e in EXPERIMENTS)
    ledger = tex[tex.index("\\section{The claims ledger}"):tex.index("\\section{The study's own checks}")]
    checks = tex[tex.index("\\section{The study's own checks}"):]
    kinds = claims["kind"].value_counts()
    # a header row, then one row per claim (its rule and where its evidence comes from included)
    assert len(re.findall(r"\\\\$", ledger, flags=re.M)) == kinds["seed claim"] + 1
    assert len(re.findall(r"\\\\$", checks, flags=re.M)) == kinds["study check"] + 1
    assert "rule & evidence from" in ledger
    figures = re.findall(r"\\includegraphics\[[^]]*\]\{([^}]+)\}", tex)
    assert figures and all((tmp_path / f).is_file() for f in figures)
    assert tex.count("\\begin{table}[H]") >= len(EXPERIMENTS)  # the tally and each headline
    assert tex.count("\\subsection*{Compute}") == len(EXPERIMENTS)  # each report's run-stage wall time and device


@pytest.mark.skipif(shutil.which("latexmk") is None, reason="Debian's TeX Live is not installed (`make paper-deps`)")
def test_the_embedded_paper_builds_offline(tmp_path):
    pdf = paper.build("embedded", tmp_path / "src", tmp_path / "paper.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 50_000
    log = (tmp_path / "src" / "paper.log").read_text(errors="replace")
    assert "Output written on paper.pdf" in log and "LaTeX Warning: Reference" not in log
