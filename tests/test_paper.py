"""The paper: markdown of the reports turned into LaTeX correctly, one section per experiment with its headline and
figures, the whole claims ledger; and, where Debian's TeX Live is installed, a PDF built offline from the committed
embedded reports."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest

from fedpeft.core import registry
from fedpeft.core.config import REPO_ROOT
from fedpeft.experiments import paper


def test_latex_escaping_and_inline_markdown():
    assert paper.latex_escape("50 % of $3 & x_1 #2") == r"50 \% of \$3 \& x\_1 \#2"
    assert paper.inline("**Data** uses `yolo11n_cls` and *random* [weights](a.md)") == \
        r"\textbf{Data} uses \texttt{yolo11n\_cls} and \emph{random} weights"
    assert paper.inline("3 * 4 * 5") == "3 * 4 * 5"  # a lone asterisk is not emphasis


def test_markdown_paragraphs_and_lists():
    md = "First line\ncontinues.\n\n- one\n  wrapped\n- two\n\n| a | b |\n|---|---|\n\n![fig](x.png)\nLast."
    assert paper.markdown_to_latex(md) == ("First line continues.\n\n\\begin{itemize}\n\\item one wrapped\n\\item two\n"
                                           "\\end{itemize}\n\nLast.")


def test_a_wide_table_is_split_into_parts_that_repeat_its_key_columns():
    header = ["model", "arm"] + [f"value {i} (MiB)" for i in range(7)]
    rows = [["lm", "lora"] + [str(i) for i in range(7)], ["lm", "qlora"] + [f"{i}.5" for i in range(7)]]
    tex = ("\\begin{table}[htbp]\n\\caption{Speed}\n\\begin{tabular}{lllllllll}\n\\toprule\n" + " & ".join(header)
           + " \\\\\n\\midrule\n" + "\n".join(" & ".join(r) + " \\\\" for r in rows) + "\n\\bottomrule\n\\end{tabular}\n\\end{table}\n")
    out = paper.fit_table(tex, per_table=5)
    assert out.count("\\begin{tabular}{llrrrrr}") == 1 and out.count("\\begin{tabular}{llrr}") == 1
    assert "Speed (part 1 of 2)" in out and "Speed (part 2 of 2)" in out
    assert out.count("lm & qlora & ") == 2 and "lm & qlora & 5.5 & 6.5 \\\\" in out  # each part keeps its rows' keys
    assert "\\makecell[br]{value 6 \\\\ (MiB)}" in out  # a long header wraps
    assert paper.fit_table(tex, per_table=7).count("\\begin{tabular}") == 1


def test_the_paper_has_every_experiment_and_every_claim(tmp_path):
    reports = REPO_ROOT / "reports" / "embedded"
    tex = paper.paper_tex("embedded", reports, tmp_path)
    claims = pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False) for f in sorted(reports.glob("*/claims.csv"))])
    assert all(f"\\label{{sec:{e}}}" in tex for e in registry.names())
    ledger = tex[tex.index("\\section{The claims ledger}"):tex.index("\\section{The study's own checks}")]
    checks = tex[tex.index("\\section{The study's own checks}"):]
    # per experiment a header row, then one row per claim with its verdict and rule; the evidence said once above it
    for part, kind in ((ledger, "seed claim"), (checks, "study check")):
        rows = claims[claims["kind"] == kind]
        assert len(re.findall(r"\\\\$", part, flags=re.M)) == len(rows) + rows["experiment"].nunique()
        assert part.count("verdict & rule") == part.count("Evidence: ") == rows["experiment"].nunique()
    found = tex[tex.index("\\section*{What the study found}"):tex.index("\\section{Question}")]
    assert "figures/frontier.pdf" in found and "What each technique saves" in found  # the study's answer opens it
    assert "figures/frontier_cnn.pdf" in found and "saves against the EuroSAT CNN's full model" in found  # both tasks
    figures = re.findall(r"\\includegraphics\[[^]]*\]\{([^}]+)\}", tex)
    assert figures and all((tmp_path / f).is_file() for f in figures)
    assert tex.count("\\begin{table}[H]") >= len(registry.names())  # the tally and each headline
    assert tex.count("\\subsection*{Compute}") == len(registry.names())  # each report's run-stage wall time and device


@pytest.mark.skipif(shutil.which("latexmk") is None, reason="Debian's TeX Live is not installed (`make paper-deps`)")
def test_the_embedded_paper_builds_offline(tmp_path):
    pdf = paper.build("embedded", tmp_path / "src", tmp_path / "paper.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 50_000
    log = (tmp_path / "src" / "paper.log").read_text(errors="replace")
    assert "Output written on paper.pdf" in log and "LaTeX Warning: Reference" not in log
