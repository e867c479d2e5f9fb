"""The study as an offline static HTML site, one per profile: ``python -m fedpeft.experiments.site --profile P``.

Built from what the pipeline already wrote (nothing trains): ``reports/<profile>/`` (each experiment's report,
claims, headline, figures, machine and versions, executed notebook, and ``SUMMARY.md``) and the run records in
``results/<profile>/``. Pages:

- ``index.html``: the study's question, the verdict tally, the claims ledger of every experiment (sortable and
  filterable; each verdict links to its evidence on the experiment's page) and every headline table;
- ``<experiment>.html``: the report (every figure captioned with the notebook cell that drew it and the run records
  it came from), the machine and versions, then the executed notebook;
- ``<experiment>-records.html``: every run record of the experiment (its spec, scalars and tables' shapes).

Figures are copied beside the pages; styles and scripts come from ``site/`` (no request to any other host: no
CDN, no web font, notebooks rendered without MathJax or require.js). The output folder is replaced atomically.
"""

from __future__ import annotations

import argparse
import ast
import html
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pandas as pd
from markdown_it import MarkdownIt

from fedpeft.core import registry
from fedpeft.core.config import PROFILES, REPO_ROOT
from fedpeft.core.records import results_root
from fedpeft.reporting.claims import evidence_source
from fedpeft.reporting.findings import ANSWER_EXPERIMENT

ASSETS = REPO_ROOT / "site"
QUESTION = ("Federated learning, LoRA/QLoRA adapters and post-training quantization promise to make fine-tuning cheap "
            "in bandwidth and memory. Five experiment reports (the seeds) made claims about what each saves and what "
            "it costs in accuracy. This study reruns every experiment, judges every claim with the same claims "
            "engine over several seeds, and says plainly where a claim does not hold.")
VERDICT_CLASS = {"holds": "holds", "does not hold": "fails", "inconclusive": "inconclusive", "not testable here": "untestable",
                 "fact": "fact"}

_md = MarkdownIt("commonmark", {"html": True}).enable("table")  # our own reports: figures are inlined as HTML


def markdown(text: str) -> str:
    return _md.render(text)


def _page(title: str, body: str, profile: str) -> str:
    nav = " · ".join([f'<a href="index.html">Study ({profile})</a>'] + [f'<a href="{e}.html">{e}</a>' for e in registry.names()])
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<link rel=\"stylesheet\" href=\"assets/style.css\"></head>\n<body><nav>{nav}</nav><main>\n{body}\n</main>"
            f"<script src=\"assets/ledger.js\"></script></body></html>\n")


def _anchor(name: str) -> str:
    return "ev-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)


# --- the front page -----------------------------------------------------------------------------------------------

def claims_ledger(reports: Path) -> pd.DataFrame:
    """Every experiment's ``claims.csv``, one table."""
    frames = [pd.read_csv(reports / e / "claims.csv", dtype=str, keep_default_na=False)
              for e in registry.names() if (reports / e / "claims.csv").is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def tally_tables(ledger: pd.DataFrame, profile: str) -> str:
    """The verdict tallies as HTML: the seeds' claims on this profile's evidence, those judged on another profile's
    evidence, and the study's own checks, each a table (experiments as rows, verdicts as columns)."""
    from fedpeft.reporting.summary import tally

    claims = {e: g for e, g in ledger.groupby("experiment", sort=True)}
    others = sorted(set(ledger.get("evidence_profile", pd.Series(dtype=str))) - {profile, ""})
    parts = [("The seeds' claims, on this profile's evidence", tally(claims, "seed claim", profile))]
    parts += [(f"Seed claims judged on the {o} profile's committed measurements (tallied there)", tally(claims, "seed claim", o))
              for o in others]
    parts.append(("The study's own checks", tally(claims, "study check", profile)))
    return "".join(f"<h3>{html.escape(title)}</h3>" + t.to_html(classes="tally", border=0, index=False) for title, t in parts)


def ledger_html(ledger: pd.DataFrame) -> str:
    """The claims table with a text filter, verdict and experiment selectors and sortable headers (site/ledger.js)."""
    if ledger.empty:
        return "<p>No claims have been judged in this profile yet.</p>"
    options = lambda values: "".join(f"<option>{html.escape(v)}</option>" for v in sorted(set(values)))  # noqa: E731
    rows = []
    for _, r in ledger.iterrows():
        target = f'{r["experiment"]}.html#{_anchor(r["evidence"])}'
        rows.append(f'<tr data-verdict="{html.escape(r["verdict"])}" data-experiment="{html.escape(r["experiment"])}">'
                    f'<td>{html.escape(r["experiment"])}</td><td class="verdict {VERDICT_CLASS.get(r["verdict"], "")}">'
                    f'<a href="{target}">{html.escape(r["verdict"])}</a></td><td>{html.escape(r["claim"])}</td>'
                    f'<td>{html.escape(r["seed"])}</td><td>{html.escape(r["study"])}</td><td>{html.escape(r["rule"])}</td>'
                    f'<td>{html.escape(r.get("kind", "seed claim"))}</td><td>{html.escape(evidence_source(r))}</td>'
                    f'<td>{html.escape(r["note"])}</td></tr>')
    # the verdict comes right after the experiment, so a narrow screen (400 px) shows it without scrolling
    head = "".join(f'<th data-sort="{i}">{h}</th>' for i, h in
                   enumerate(["experiment", "verdict", "claim", "seed says", "study measured", "rule", "kind", "evidence from",
                              "note"]))
    return (f'<div class="filters"><input id="ledger-text" type="search" placeholder="filter claims">'
            f'<select id="ledger-verdict"><option value="">every verdict</option>{options(ledger["verdict"])}</select>'
            f'<select id="ledger-experiment"><option value="">every experiment</option>{options(ledger["experiment"])}</select>'
            f' <span id="ledger-count"></span></div>'
            f'<table id="ledger"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def front_page(profile: str, reports: Path) -> str:
    ledger = claims_ledger(reports)
    tally = tally_tables(ledger, profile) if not ledger.empty else ""
    from fedpeft.reporting.findings import findings_markdown

    # the findings' links point at the report files; on the site each experiment has its own page
    findings_html = re.sub(r'href="([a-z_0-9]+)/report\.md"', r'href="\1.html"', markdown(findings_markdown(profile, reports)))
    figure = ('<figure id="verdicts"><img src="assets/verdicts.png" alt="The seeds\' claims by verdict, per experiment">'
              "<figcaption>The seeds' claims by verdict, per experiment, on this profile's evidence.</figcaption></figure>"
              if (reports / "verdicts.png").is_file() else "")
    answer = reports / ANSWER_EXPERIMENT
    if (answer / "frontier.png").is_file():  # the study's answer across techniques, first
        figure = (f'<figure id="frontier"><img src="assets/frontier.png" alt="The savings frontier"><figcaption>'
                  f'{html.escape(registry.get(ANSWER_EXPERIMENT).title)}: accuracy against total traffic (log axis), one marker '
                  'per technique with the paired interval of its cost against the full model; the line joins the Pareto '
                  f'frontier (<a href="{ANSWER_EXPERIMENT}.html">the experiment</a>; its table is under Headlines).'
                  '</figcaption></figure>'
                  + ('<figure id="frontier_cnn"><img src="assets/frontier_cnn.png" alt="The savings frontier of the EuroSAT CNN">'
                     "<figcaption>The same yardstick for full-model updates: the EuroSAT CNN's test accuracy against total "
                     "traffic, each technique against the CNN's own full model.</figcaption></figure>"
                     if (answer / "frontier_cnn.png").is_file() else "") + figure)
    heads = []
    for e in registry.names():
        headline = reports / e / "headline.md"
        if headline.is_file():
            heads.append(f'<h3><a href="{e}.html">{e}</a></h3>' + markdown(headline.read_text()))
        else:
            heads.append(f"<h3>{e}</h3><p>Not run in this profile yet.</p>")
    body = (f"<h1>What do federated learning, LoRA/QLoRA and quantization really save?</h1><p>{html.escape(QUESTION)}</p>"
            f"<p>Profile <code>{profile}</code>. Verdicts: <em>holds</em> / <em>does not hold</em> only when the interval "
            "lies wholly on one side of the claim's threshold (or inside / outside the band of a figure the seed states), "
            "<em>inconclusive</em> when it covers it or there are too few runs, <em>not testable here</em> when this profile "
            "cannot measure it, <em>fact</em> when the study's own construction makes it true. The seeds' claims and the "
            "study's own checks are tallied apart; each row names the profile and device of its evidence.</p>"
            f"<h2>What the study found</h2>{findings_html}{figure}"
            f"<h2>Verdicts</h2>{tally}<h2>Every claim</h2>{ledger_html(ledger)}<h2>Headlines</h2>{''.join(heads)}")
    return _page(f"fedpeft study ({profile})", body, profile)


# --- experiment pages -----------------------------------------------------------------------------------------------

def figure_cells(notebook: nbformat.NotebookNode) -> dict[str, int]:
    """Figure name -> execution count of the code cell whose ``report.figure(fig, "<name>", ...)`` call wrote it."""
    cells = {}
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:  # a cell with IPython magics: not one of the study's figure cells
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "figure"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "report" and len(node.args) > 1
                    and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
                cells[node.args[1].value] = cell.get("execution_count")
    return cells


def record_ids(profile: str, experiment: str) -> list[str]:
    """The run ids of the experiment's plan in this profile whose records exist."""
    declared = registry.get(experiment)
    return [spec.run_id for spec in declared.run_specs(declared.load(profile))
            if (results_root(profile) / experiment / spec.run_id / "record.json").is_file()]


def report_html(experiment: str, folder: Path, out: Path, notebook: nbformat.NotebookNode | None) -> str:
    """``report.md`` as HTML: figures copied beside the pages and captioned with their cell and records, evidence
    links pointed at anchors on this page (each table's markdown is inlined under its anchor)."""
    text = (folder / "report.md").read_text()
    cells = figure_cells(notebook) if notebook is not None else {}
    records_page = f"{experiment}-records.html"

    def figure(match: re.Match) -> str:
        caption, png = match.group(1), match.group(2)
        name = Path(png).stem
        target = f"figures/{experiment}/{png}"
        (out / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / png, out / target)
        cell = cells.get(name)
        where = f"notebook cell [{cell}]" if cell is not None else "the notebook"
        return (f'\n\n<figure id="{_anchor(name)}"><img src="{target}" alt="{html.escape(caption)}"><figcaption>'
                f'{html.escape(caption)} <span class="provenance">Drawn by {where} of <code>{notebook_name(folder)}</code> '
                f'from the <a href="{records_page}">run records of {experiment}</a>.</span></figcaption></figure>\n\n')

    # the figure and the italic caption line under it become one <figure> with one caption
    text = re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)(?:\n\n\*[^\n]*\*)?", figure, text)
    body = markdown(text)
    # one verdict style everywhere: the reports' claims tables get the front page's verdict colours
    verdicts = "|".join(re.escape(v) for v in VERDICT_CLASS)
    body = re.sub(rf"<td>({verdicts})</td>", lambda m: f'<td class="verdict {VERDICT_CLASS[m.group(1)]}"><span>{m.group(1)}</span></td>', body)
    # evidence links: "name.md" -> the inlined table below; "name.png" -> the figure's anchor
    body = re.sub(r'href="([A-Za-z0-9_]+)\.(md|csv|png)"', lambda m: f'href="#{_anchor(m.group(1))}"', body)
    tables = []
    for md in sorted(folder.glob("*.md")):
        if md.name in ("report.md", "claims.md", "checks.md", "headline.md"):
            continue
        tables.append(f'<section id="{_anchor(md.stem)}" class="evidence"><h3>{md.stem}</h3>{markdown(md.read_text())}</section>')
    for csv in sorted(folder.glob("*.csv")):
        if not (folder / f"{csv.stem}.md").is_file() and not (folder / f"{csv.stem}.png").is_file():
            target = f"data/{experiment}/{csv.name}"
            (out / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(csv, out / target)
            tables.append(f'<section id="{_anchor(csv.stem)}" class="evidence"><h3>{csv.stem}</h3>'
                          f'<p>Raw table: <a href="{target}">{csv.name}</a>.</p></section>')
    return body + "<h2>Evidence: every table this report wrote</h2>" + "".join(tables)


def notebook_name(folder: Path) -> str:
    found = sorted(folder.glob("*.ipynb"))
    return found[0].name if found else "(no executed notebook)"


def notebook_html(notebook: nbformat.NotebookNode) -> str:
    """The executed notebook without any script: nbconvert's ``basic`` template (no MathJax, no require.js)."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="basic", exclude_input_prompt=False)
    body, _ = exporter.from_notebook_node(notebook)
    return re.sub(r"<script\b.*?</script>", "", body, flags=re.S)


def main_score(profile: str, experiment: str, run_id: str, rec: dict) -> float | None:
    """A run's main score (the experiment's declared ``main_score``), or None for a run without one (a set-up record)."""
    score = registry.get(experiment).main_score
    where, name, scale = score.where, score.key, score.scale
    if where == "scalar":
        value = rec.get("scalars", {}).get(name)
    else:
        table = results_root(profile) / experiment / run_id / f"{where}.csv"
        column = pd.read_csv(table).get(name, pd.Series(dtype=float)).dropna() if table.is_file() else pd.Series(dtype=float)
        value = float(column.iloc[-1]) if len(column) else None
    return None if value is None else scale * float(value)


def records_html(profile: str, experiment: str, out: Path | None = None) -> str:
    """Every run record of ``experiment``: an index (run, main score, wall time, a link to the record's file, copied
    beside the page when ``out`` is given), then each record's spec and scalars."""
    rows, index = [], []
    label = registry.get(experiment).main_score.label
    for run_id in record_ids(profile, experiment):
        path = results_root(profile) / experiment / run_id / "record.json"
        rec = json.loads(path.read_text())
        score = main_score(profile, experiment, run_id, rec)
        link = ""
        if out is not None:
            target = Path("data") / "records" / experiment / run_id / "record.json"
            (out / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out / target)
            link = f'<a href="{target.as_posix()}">record.json</a>'
        index.append({"run": f'<a href="#{html.escape(run_id)}">{html.escape(run_id)}</a>', label: "" if score is None else f"{score:.4g}",
                      "wall (s)": f"{rec.get('meta', {}).get('stage_wall_s', float('nan')):.0f}", "file": link})
        scalars = {k: v for k, v in rec.get("scalars", {}).items() if not isinstance(v, (list, dict))}
        meta = rec.get("meta", {})
        scalars |= {f"meta: {k}": meta[k] for k in ("stage_wall_s", "peak_memory_mib", "memory_kind", "written_at", "identity")
                   if k in meta}
        rows.append(f'<section id="{html.escape(run_id)}"><h3>{html.escape(run_id)}</h3><p><code>results/{profile}/{experiment}/'
                    f'{html.escape(run_id)}/record.json</code>; tables: {", ".join(rec.get("tables", [])) or "none"}</p>'
                    f'<p>spec: <code>{html.escape(json.dumps(rec.get("spec", {})))}</code></p>'
                    f'{pd.Series(scalars, dtype=object).to_frame("value").to_html(border=0)}</section>')
    table = pd.DataFrame(index).to_html(border=0, index=False, escape=False) if index else ""
    return f"<h1>Run records of {experiment} ({profile})</h1><p>{len(rows)} records.</p>{table}" + "".join(rows)


def experiment_page(profile: str, experiment: str, reports: Path, out: Path) -> str:
    folder = reports / experiment
    if not (folder / "report.md").is_file():
        return _page(experiment, f"<h1>{experiment}</h1><p>Its report has not been written in this profile yet.</p>", profile)
    found = sorted(folder.glob("*.ipynb"))
    notebook = nbformat.read(found[0], as_version=4) if found else None
    body = report_html(experiment, folder, out, notebook)
    if notebook is not None:
        body += f'<h2 id="notebook">The executed notebook ({found[0].name})</h2><div class="notebook">{notebook_html(notebook)}</div>'
    return _page(experiment, body, profile)


# --- checks -------------------------------------------------------------------------------------------------------

class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)
            if name in ("href", "src") and value:
                self.links.append((tag, name, value))


def link_problems(site: Path) -> list[str]:
    """Every broken local link or anchor, and every resource that would be fetched from another host (a ``src`` or a
    stylesheet with a scheme other than ``data:``). Links to other hosts in ``<a>`` are allowed (a reader follows them
    by choice); there are none today."""
    pages = {p.relative_to(site).as_posix(): p for p in site.rglob("*.html")}
    parsed = {}
    for rel, path in pages.items():
        parser = _Links()
        parser.feed(path.read_text())
        parsed[rel] = parser
    problems = []
    for rel, parser in parsed.items():
        for tag, attr, value in parser.links:
            scheme = re.match(r"^([a-z][a-z0-9+.-]*):", value)
            if scheme:
                if scheme.group(1) != "data" and (attr == "src" or tag == "link"):
                    problems.append(f"{rel}: <{tag} {attr}={value!r}> would be fetched from another host")
                continue
            target, _, anchor = value.partition("#")
            target_rel = (Path(rel).parent / target).as_posix() if target else rel
            if target and not (site / target_rel).is_file():
                problems.append(f"{rel}: {attr}={value!r} points to a missing file")
            elif anchor and target_rel in parsed and anchor not in parsed[target_rel].ids:
                problems.append(f"{rel}: {attr}={value!r} points to a missing anchor")
    return problems


# --- the build ----------------------------------------------------------------------------------------------------

def build(profile: str, out: Path | None = None, reports: Path | None = None) -> Path:
    """Build the site of ``profile`` from its reports (default ``reports/<profile>``) into ``out`` (default
    ``build/site/<profile>``), replacing it atomically."""
    if profile not in PROFILES:
        raise ValueError(f"profile = {profile!r} is not a profile of this study; use one of {list(PROFILES)}")
    reports = Path(reports) if reports is not None else REPO_ROOT / "reports" / profile
    if not (reports / "SUMMARY.md").is_file():
        raise FileNotFoundError(f"{reports / 'SUMMARY.md'} is missing: run the profile's pipeline first (make repro PROFILE={profile})")
    out = Path(out) if out is not None else REPO_ROOT / "build" / "site" / profile
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "assets").mkdir(parents=True)
    try:
        for asset in ("style.css", "ledger.js"):
            shutil.copyfile(ASSETS / asset, staging / "assets" / asset)
        if (reports / "verdicts.png").is_file():
            shutil.copyfile(reports / "verdicts.png", staging / "assets" / "verdicts.png")
        for name in ("frontier.png", "frontier_cnn.png"):
            if (reports / ANSWER_EXPERIMENT / name).is_file():
                shutil.copyfile(reports / ANSWER_EXPERIMENT / name, staging / "assets" / name)
        (staging / "index.html").write_text(front_page(profile, reports))
        for e in registry.names():
            (staging / f"{e}.html").write_text(experiment_page(profile, e, reports, staging))
            (staging / f"{e}-records.html").write_text(_page(f"{e}: run records", records_html(profile, e, staging), profile))
        problems = link_problems(staging)
        if problems:
            raise RuntimeError(f"the site of {profile} has {len(problems)} broken or outside links:\n" + "\n".join(problems[:20]))
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the study's offline static HTML site for one profile.")
    parser.add_argument("--profile", default="embedded", choices=list(PROFILES))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    print(f"site written to {build(args.profile, args.out)}")


if __name__ == "__main__":
    main()
