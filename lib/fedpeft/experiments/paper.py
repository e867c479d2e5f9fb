"""The study as a LaTeX paper (PDF), one per profile: ``python -m fedpeft.experiments.paper --profile P``.

Assembled from what the report stages already wrote (nothing trains): each experiment's set-up, finding, compute and
limitations (``report.md``), its headline table (``headline.tex``, booktabs) and its figures (the PDF beside each PNG),
the claims of every experiment as one ledger (``claims.csv``), and the verdict tally. The sources go to
``build/paper/<profile>/`` (``paper.tex`` and copies of the tables and figures), are built offline with Debian's TeX Live
(``latexmk -pdf``), and the PDF is copied to ``reports/<profile>/paper.pdf``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from datetime import date
from pathlib import Path

import pandas as pd

from fedpeft.core import registry
from fedpeft.core.config import PROFILES, REPO_ROOT
from fedpeft.experiments.site import QUESTION, claims_ledger
from fedpeft.reporting.claims import evidence_source
from fedpeft.reporting.findings import ANSWER_EXPERIMENT

METHODS = r"""
Every experiment is a parameterised notebook that imports the study's helper library (\texttt{fedpeft}); a DVC pipeline
runs each planned run as its own stage, writing a result record, and then the notebook, which reads the records and
writes the tables, figures and claims. Three profiles run the same code: \texttt{embedded} (generated data and tiny
models, minutes on a laptop CPU: it tests the plumbing), \texttt{local} (real data sets at CPU scale: the findings)
and \texttt{paper} (the seeds' own models and data, on a GPU).

Every claim of a seed report is judged by one claims engine. A comparison takes a 95\,\% Welch interval over every seed
of both arms; a speed claim a ratio interval over every timed step; an exact figure is compared within a stated
tolerance. The verdict is \emph{holds} or \emph{does not hold} only when the interval lies wholly on one side of the
claim's threshold, \emph{inconclusive} when it covers it, \emph{not testable here} when the profile cannot measure the
quantity (the row says why), and \emph{fact} when true by construction. Scores stand beside their chance baselines.
"""


def latex_escape(text: str) -> str:
    out = []
    for ch in text:
        out.append({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
                    ">": r"\textgreater{}"}.get(ch, ch))
    return "".join(out)


def inline(text: str) -> str:
    """One line of the reports' markdown as LaTeX: code, bold, emphasis and links (their text)."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(r"\texttt{" + latex_escape(part[1:-1]) + "}")
            continue
        part = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", part)
        part = latex_escape(part)
        part = re.sub(r"\*\*(.+?)\*\*", r"\\textbf{\1}", part)
        part = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"\\emph{\1}", part)
        out.append(part)
    return "".join(out)


def markdown_to_latex(md: str) -> str:
    """Paragraphs and ``-`` lists of the reports' markdown (tables and images are placed separately, so skipped)."""
    blocks, items, para = [], [], []

    def flush() -> None:
        if para:
            blocks.append(inline(" ".join(para)))
            para.clear()
        if items:
            blocks.append("\\begin{itemize}\n" + "\n".join(r"\item " + inline(i) for i in items) + "\n\\end{itemize}")
            items.clear()

    for line in md.splitlines():
        s = line.strip()
        if not s or s.startswith("|") or s.startswith("![") or re.fullmatch(r"\*\*[^*]+\*\*", s):
            flush()  # tables, images and a table's bold title line are placed separately
        elif s.startswith("- "):
            if para:
                flush()
            items.append(s[2:])
        elif line.startswith("  ") and items:
            items[-1] += " " + s
        elif s.startswith("#"):
            flush()
        else:
            if items:
                flush()
            para.append(s)
    flush()
    return "\n\n".join(blocks)


def report_sections(report_md: str) -> dict[str, str]:
    """``## `` sections of a report, by heading."""
    sections, current = {}, None
    for line in report_md.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


#: At most this many value columns per printed table (beside the key columns, repeated in each part).
VALUE_COLUMNS_PER_TABLE = 5
#: A header cell wraps onto a new line after about this many characters.
HEADER_WRAP = 12


def parse_tabular(tex: str) -> tuple[str, list[str], list[list[str]]]:
    """The caption, header cells and body rows of a one-tabular booktabs table as pandas' ``to_latex`` writes it."""
    caption = re.search(r"\\caption\{(.*)\}", tex)
    body = tex[tex.index(r"\midrule") + len(r"\midrule"):tex.index(r"\bottomrule")]
    head = tex[tex.index(r"\toprule") + len(r"\toprule"):tex.index(r"\midrule")]
    split = lambda line: [c.strip() for c in re.split(r"(?<!\\)&", line.strip().removesuffix(r"\\").strip())]  # noqa: E731
    rows = [split(line) for line in body.strip().splitlines() if line.strip()]
    return (caption.group(1) if caption else ""), split(head), rows


def is_number(cell: str) -> bool:
    return re.fullmatch(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?", cell.replace(r"\%", "").strip()) is not None


def wrap_header(cell: str, width: int = HEADER_WRAP) -> str:
    """A header cell broken at spaces into lines of about ``width`` characters (``\\makecell``), so a narrow numeric
    column does not take the width of its name."""
    lines: list[str] = []
    for word in cell.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return r"\makecell[br]{" + r" \\ ".join(lines) + "}" if len(lines) > 1 else cell


def fit_table(tex: str, per_table: int = VALUE_COLUMNS_PER_TABLE, caption: str | None = None) -> str:
    """A headline table set for the page: numbers right-aligned, headers wrapped, and a table wider than
    ``per_table`` value columns split into parts that each repeat the key columns (the leading columns of words,
    such as the arm or the method), so no table is shrunk below the text size. ``adjustbox`` scales a part down
    only where it would still overflow the text width."""
    found, header, rows = parse_tabular(tex)
    caption = found if caption is None else caption
    keys = 0
    while keys < len(header) - 1 and rows and not any(is_number(r[keys]) for r in rows if len(r) > keys and r[keys]):
        keys += 1
    keys = max(keys, 1)
    values = list(range(keys, len(header)))
    chunks = [values[i:i + per_table] for i in range(0, len(values), per_table)] or [[]]
    if len(chunks) > 1 and len(chunks[-1]) < 2:  # no part of one column: share the columns out evenly instead
        size = -(-len(values) // (len(chunks) - 1))
        chunks = [values[i:i + size] for i in range(0, len(values), size)]
    out = []
    for n, chunk in enumerate(chunks, start=1):
        columns = list(range(keys)) + chunk
        spec = "l" * keys + "r" * len(chunk)
        part = f" (part {n} of {len(chunks)})" if len(chunks) > 1 else ""
        lines = [" & ".join(wrap_header(header[c]) for c in columns) + r" \\", r"\midrule"]
        lines += [" & ".join(r[c] if c < len(r) else "" for c in columns) + r" \\" for r in rows]
        out.append(f"\\begin{{table}}[H]\n\\centering\\small\n\\caption{{{caption}{part}}}\n"
                   f"\\begin{{adjustbox}}{{max width=\\linewidth}}\n\\begin{{tabular}}{{{spec}}}\n\\toprule\n"
                   + "\n".join(lines) + "\n\\bottomrule\n\\end{tabular}\n\\end{adjustbox}\n\\end{table}")
    return "\n".join(out) + "\n"


def ledger_longtable(ledger: pd.DataFrame) -> str:
    """The ledger one experiment at a time: each row with its claim, the seed's figure, the study's (with its unit),
    the verdict and the rule it was judged by. Where the evidence comes from (profile, device) is said once per
    experiment, and on a row only where it differs (a GPU row beside CPU rows)."""
    column = lambda width: f">{{\\raggedright\\arraybackslash}}p{{{width}\\linewidth}}"  # noqa: E731
    spec = "".join(column(w) for w in (0.25, 0.11, 0.19, 0.1, 0.23))
    head = r"claim & seed says & study measured & verdict & rule \\"
    out = []
    for experiment, rows in ledger.groupby("experiment", sort=False):
        evidence = rows.apply(evidence_source, axis=1)
        usual = evidence.mode().iloc[0] if not evidence.empty else ""
        body = []
        for (_, r), where in zip(rows.iterrows(), evidence, strict=True):
            rule = inline(str(r["rule"])) + (f" \\emph{{(evidence: {inline(where)})}}" if where != usual else "")
            verdict = r"\mbox{" + inline(str(r["verdict"])) + "}" if len(str(r["verdict"])) <= 14 else inline(str(r["verdict"]))
            body.append(" & ".join([inline(str(r["claim"])), inline(str(r["seed"])), inline(str(r["study"])), verdict, rule])
                        + r" \\")
        title = registry.get(str(experiment)).title
        out.append(f"\\subsection*{{{latex_escape(title)}}}\nEvidence: {inline(usual) or 'not recorded'}.\n\n"
                   f"{{\\scriptsize\n\\begin{{longtable}}{{{spec}}}\n\\toprule\n{head}\n\\midrule\n\\endhead\n"
                   + "\n".join(body) + "\n\\bottomrule\n\\end{longtable}}\n")
    return "\n".join(out)


def figure_width(png: Path) -> float:
    """The printed width of a figure, as a fraction of the text width, from its shape: a wide multi-panel figure gets
    the full width (its panels stay readable at print size), a single plot about two thirds."""
    if not png.is_file():
        return 0.72
    from PIL import Image

    with Image.open(png) as image:
        aspect = image.width / image.height
    return 1.0 if aspect >= 2.2 else 0.85 if aspect >= 1.6 else 0.68


def experiment_section(experiment: str, folder: Path, build: Path) -> str:
    title = registry.get(experiment).title
    if not (folder / "report.md").is_file():
        return f"\\section{{{latex_escape(title)}}}\nNot run in this profile yet.\n"
    sections = report_sections((folder / "report.md").read_text())
    out = [f"\\section{{{latex_escape(title)}}}\\label{{sec:{experiment}}}"]
    ran = "What ran against the seed" if "What ran against the seed" in sections else "What ran"
    out += [f"\\subsection*{{{ran}}}", markdown_to_latex(sections.get(ran, ""))]
    out += [r"\subsection*{What this means}", markdown_to_latex(sections.get("What this means", ""))]
    if (folder / "headline.tex").is_file():
        out.append(fit_table((folder / "headline.tex").read_text()))
    target = build / "figures" / experiment
    target.mkdir(parents=True, exist_ok=True)
    for caption, png in re.findall(r"!\[([^\]]*)\]\(([^)]+)\.png\)", (folder / "report.md").read_text()):
        pdf = folder / f"{png}.pdf"
        if "random base weights" in caption:  # a sample of a model with random weights shows noise: not a result
            continue
        if pdf.is_file():
            shutil.copyfile(pdf, target / pdf.name)
            out.append(f"\\begin{{figure}}[H]\\centering\\includegraphics[width={figure_width(folder / f'{png}.png')}\\linewidth]{{"
                       f"figures/{experiment}/{pdf.name}}}\\caption{{{inline(caption)}}}\\end{{figure}}")
    compute = sections.get("Compute, machine and versions", "").strip().split("\n\n")[0]
    if compute and not compute.startswith("|"):
        out += [r"\subsection*{Compute}", markdown_to_latex(compute)]
    limitations = sections.get("Limitations", "")
    if limitations.strip():
        out += [r"\subsection*{Limitations}", markdown_to_latex(limitations)]
    return "\n\n".join(out) + "\n"


def paper_tex(profile: str, reports: Path, build: Path) -> str:
    ledger = claims_ledger(reports)
    tally = ""
    if not ledger.empty:
        from fedpeft.reporting.summary import tally as tally_table

        if "kind" not in ledger:
            ledger = ledger.assign(kind="seed claim", evidence_profile=profile, device="")
        by_experiment = {e: g for e, g in ledger.groupby("experiment", sort=True)}
        for kind, title in (("seed claim", "The seeds' claims on this profile's evidence"), ("study check", "The study's own checks")):
            t = tally_table(by_experiment, kind, profile)
            t.columns = [latex_escape(str(c)) for c in t.columns]
            body = t.map(lambda v: latex_escape(str(v))).style.hide(axis="index").to_latex(hrules=True)
            tally += fit_table(body, per_table=len(t.columns), caption=f"Verdicts per experiment: {latex_escape(title)}")
    from fedpeft.reporting.findings import findings_markdown

    found = markdown_to_latex(findings_markdown(profile, reports))
    if (reports / "verdicts.pdf").is_file():
        (build / "figures").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(reports / "verdicts.pdf", build / "figures" / "verdicts.pdf")
        found += ("\n\\begin{figure}[H]\\centering\\includegraphics[width=0.8\\linewidth]{figures/verdicts.pdf}"
                  "\\caption{The seeds' claims by verdict, per experiment, on this profile's evidence.}\\end{figure}\n")
    found += answer_figure(reports, build)
    profile_note = {"embedded": "generated data and tiny models: it tests the plumbing, its numbers are not findings",
                    "local": "real data at CPU scale: the study's findings",
                    "paper": "the seeds' own models and data"}[profile]
    parts = [r"""\documentclass[10pt]{article}
\usepackage[a4paper,margin=2cm]{geometry}
\usepackage[T1]{fontenc}
\usepackage{lmodern}
\usepackage{booktabs,longtable,graphicx,float,array,makecell,adjustbox}
\usepackage[hidelinks]{hyperref}
\title{What do federated learning, LoRA/QLoRA and quantization really save?\\\large Profile \texttt{""" + profile + r"""}}
\author{The fedpeft study}
\date{""" + date.today().isoformat() + r"""}
\begin{document}
\maketitle
\begin{abstract}
""" + latex_escape(QUESTION) + f" This paper is the \\texttt{{{profile}}} profile: {latex_escape(profile_note)}." + r"""
\end{abstract}
\section*{What the study found}
""" + found + "\n\\section{Question}\n" + latex_escape(QUESTION) + "\n\\section{Methods}\n" + METHODS + "\n" + tally]
    parts += [experiment_section(e, reports / e, build) for e in registry.names()]
    parts.append(discussion_and_conclusion(profile, reports, ledger))
    if not ledger.empty:
        parts.append("\\section{The claims ledger}\nEvery claim of every seed report with its verdict, the rule it was judged by "
                     "and where its evidence comes from (profile, device); the experiment's \\texttt{claims.csv} holds the same rows.\n\n"
                     + ledger_longtable(ledger[ledger["kind"] == "seed claim"])
                     + "\\section{The study's own checks}\nWhat the study adds to the seeds' claims, judged by the same engine and "
                     "tallied apart.\n\n" + ledger_longtable(ledger[ledger["kind"] == "study check"]))
    parts.append(REFERENCES)
    parts.append("\\end{document}\n")
    return "\n".join(parts)


def answer_figure(reports: Path, build: Path) -> str:
    """The savings frontier's figures and savings tables (from its report, when this profile has one), for the opening
    section: what each technique saves against the full model and what it costs, on the text task and, when it ran,
    on the EuroSAT CNN."""
    folder = reports / ANSWER_EXPERIMENT
    if not (folder / "frontier.pdf").is_file() or not (folder / "report.md").is_file():
        return ""
    (build / "figures").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / "frontier.pdf", build / "figures" / "frontier.pdf")
    out = ("\n\\begin{figure}[H]\\centering\\includegraphics[width=0.8\\linewidth]{figures/frontier.pdf}"
           f"\\caption{{{latex_escape(registry.get(ANSWER_EXPERIMENT).title)}: accuracy against total traffic (log axis), one "
           "marker per technique with the paired interval of its cost against the full model; the line joins the Pareto "
           "frontier (Section~\\ref{sec:savings_frontier}).}\\end{figure}\n")
    if (folder / "headline.tex").is_file():
        out += fit_table((folder / "headline.tex").read_text(), caption="What each technique saves against the full model (x) "
                         "and what it costs in accuracy (points, paired by seed)")
    if (folder / "frontier_cnn.pdf").is_file():  # the second task: the EuroSAT CNN's full-model updates
        shutil.copyfile(folder / "frontier_cnn.pdf", build / "figures" / "frontier_cnn.pdf")
        out += ("\n\\begin{figure}[H]\\centering\\includegraphics[width=0.8\\linewidth]{figures/frontier_cnn.pdf}"
                "\\caption{The same yardstick for full-model updates: the EuroSAT CNN's test accuracy against total traffic, "
                "each technique against the CNN's own full model sent in fp32 every round.}\\end{figure}\n")
        if (folder / "savings_cnn.tex").is_file():
            out += fit_table((folder / "savings_cnn.tex").read_text(), caption="What each technique saves against the EuroSAT "
                             "CNN's full model (x) and what it costs in accuracy (points, paired by seed)")
    return out


def discussion_and_conclusion(profile: str, reports: Path, ledger: pd.DataFrame) -> str:
    """The discussion across experiments and the conclusion, written from the ledgers: per experiment how its seed's
    claims fared on this profile's evidence, then the findings that answer the study's question."""
    from fedpeft.reporting.claims import tally
    from fedpeft.reporting.findings import findings

    if ledger.empty:
        return "\\section{Discussion across experiments}\nNo claims have been judged in this profile yet.\n"
    lines = []
    seeded = ledger[ledger["experiment"].isin(ledger.loc[ledger["kind"] == "seed claim", "experiment"])]
    for experiment, rows in seeded.groupby("experiment", sort=False):
        counts = tally(rows, "seed claim", profile)
        judged = counts["holds"] + counts["does not hold"] + counts["inconclusive"]
        lines.append(f"\\item \\textbf{{{latex_escape(registry.get(experiment).title)}}}: of its seed's {sum(counts.values())} claims judged on "
                     f"this profile's evidence, {judged} could be measured here: {counts['holds']} hold, {counts['does not hold']} do "
                     f"not hold and {counts['inconclusive']} are inconclusive; {counts['not testable here']} cannot be tested at "
                     f"this scale and {counts['fact']} are facts of construction.")
    total = tally(ledger, "seed claim", profile)
    found = findings(reports)
    conclusion = (f"Across the {seeded['experiment'].nunique()} seed reports, {total['does not hold']} of the "
                  f"{total['holds'] + total['does not hold'] + total['inconclusive']} claims this profile could measure do not "
                  f"hold and {total['inconclusive']} cannot be decided with the study's runs. ")
    if found:
        conclusion += ("On the study's question, what each technique saves and what it costs, the verdicts say: "
                       + " ".join(inline(text) for _, _, text in found))
    return ("\\section{Discussion across experiments}\nHow the seeds' claims fared, experiment by experiment (the ledger below "
            "gives every row with its rule):\n\\begin{itemize}\n" + "\n".join(lines) + "\n\\end{itemize}\n"
            "\\section{Conclusion}\n" + conclusion + "\n")


#: The works the study reproduces, the methods it uses and the tools it is built with.
REFERENCES = r"""\begin{thebibliography}{99}
\bibitem{seeds} The five seed reports, \texttt{../shared/seeds/} (TaniFi weeds with QLoRA across farmers; federated LoRA of
OPT-350m with FedProx; LoRA vs QLoRA on Gemma-2-2B and SD 1.5; EuroSAT FedAvg with post-training quantization; federated
LoRA aggregation on GLUE).
\bibitem{fedavg} H. B. McMahan, E. Moore, D. Ramage, S. Hampson, B. Agüera y Arcas. Communication-efficient learning of deep
networks from decentralized data. AISTATS, 2017.
\bibitem{fedprox} T. Li, A. K. Sahu, M. Zaheer, M. Sanjabi, A. Talwalkar, V. Smith. Federated optimization in heterogeneous
networks. MLSys, 2020.
\bibitem{diloco} A. Douillard et al. DiLoCo: distributed low-communication training of language models. arXiv:2311.08105, 2023.
\bibitem{lora} E. J. Hu et al. LoRA: low-rank adaptation of large language models. ICLR, 2022.
\bibitem{qlora} T. Dettmers, A. Pagnoni, A. Holtzman, L. Zettlemoyer. QLoRA: efficient finetuning of quantized LLMs. NeurIPS, 2023.
\bibitem{ffa} Y. Sun, Z. Li, Y. Li, B. Ding. Improving LoRA in privacy-preserving federated learning (FFA-LoRA). ICLR, 2024.
\bibitem{flora} Z. Wang et al. FLoRA: federated fine-tuning large language models with heterogeneous low-rank adaptations.
NeurIPS, 2024.
\bibitem{flower} D. J. Beutel et al. Flower: a friendly federated learning research framework. arXiv:2007.14390, 2020.
\bibitem{peft} S. Mangrulkar et al. PEFT: state-of-the-art parameter-efficient fine-tuning methods. Hugging Face, 2022.
\bibitem{bnb} T. Dettmers et al. bitsandbytes: k-bit quantization for PyTorch. 2022.
\bibitem{dvc} DVC: data version control. Iterative, \url{https://dvc.org}.
\bibitem{papermill} papermill: parameterize and execute Jupyter notebooks. nteract, \url{https://papermill.readthedocs.io}.
\end{thebibliography}
"""


def build(profile: str, build_dir: Path | None = None, pdf: Path | None = None) -> Path:
    """Write the sources to ``build_dir`` (default ``build/paper/<profile>/``), build the PDF with latexmk and copy it
    to ``pdf`` (default ``reports/<profile>/paper.pdf``); returns that path."""
    if profile not in PROFILES:
        raise ValueError(f"profile = {profile!r} is not a profile of this study; use one of {list(PROFILES)}")
    if shutil.which("latexmk") is None:
        raise FileNotFoundError("latexmk is not installed; `make paper-deps` installs Debian's TeX Live packages")
    reports = REPO_ROOT / "reports" / profile
    build_dir = Path(build_dir) if build_dir is not None else REPO_ROOT / "build" / "paper" / profile
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    (build_dir / "paper.tex").write_text(paper_tex(profile, reports, build_dir))
    done = subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=build_dir,
                          capture_output=True, text=True)
    if done.returncode != 0:
        log = (build_dir / "paper.log").read_text(errors="replace") if (build_dir / "paper.log").is_file() else done.stdout
        errors = [line for line in log.splitlines() if line.startswith("!")]
        raise RuntimeError(f"latexmk failed on {build_dir / 'paper.tex'}: {errors[:5] or log[-2000:]}")
    out = Path(pdf) if pdf is not None else reports / "paper.pdf"
    shutil.copyfile(build_dir / "paper.pdf", out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the study's paper (PDF) for one profile from its reports.")
    parser.add_argument("--profile", default="embedded", choices=list(PROFILES))
    print(f"paper written to {build(parser.parse_args().profile)}")


if __name__ == "__main__":
    main()
