"""The offline study site: built from the committed embedded reports, every local link and anchor resolves, the claims
ledger holds every claim, and headless Chromium (Debian's package, installed by `make site-deps` where possible)
renders the front page and an experiment page with no request leaving the machine."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from fedpeft.core.config import REPO_ROOT
from fedpeft.experiments import site

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
                  "--host-resolver-rules=MAP * ~NOTFOUND"]  # nothing could reach another host even if a page asked


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return site.build("embedded", tmp_path_factory.mktemp("site") / "embedded")


def test_every_link_and_anchor_resolves_and_nothing_is_fetched_from_elsewhere(built):
    assert site.link_problems(built) == []
    pages = {p.name for p in built.glob("*.html")}
    assert {"index.html", *(f"{e}.html" for e in site.registry.names()), *(f"{e}-records.html" for e in site.registry.names())} <= pages


def test_the_checker_finds_a_broken_link_and_a_remote_resource(tmp_path):
    (tmp_path / "index.html").write_text('<a href="missing.html">x</a><a href="#nowhere">y</a>'
                                         '<img src="https://cdn.example.org/x.png"><link rel="stylesheet" href="http://a.b/c.css">')
    problems = site.link_problems(tmp_path)
    assert len(problems) == 4 and any("missing file" in p for p in problems) and any("missing anchor" in p for p in problems)
    assert sum("another host" in p for p in problems) == 2


def test_the_ledger_holds_every_claim_with_its_verdict_linked_to_evidence(built):
    claims = pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False)
                        for f in sorted((REPO_ROOT / "reports" / "embedded").glob("*/claims.csv"))])
    page = (built / "index.html").read_text()
    assert page.index('<figure id="frontier">') < page.index("<h2>Verdicts</h2>")  # the study's answer comes first
    assert (built / "assets" / "frontier.png").is_file() and (built / "assets" / "frontier_cnn.png").is_file()
    assert page.index('<figure id="frontier">') < page.index('<figure id="frontier_cnn">') < page.index("<h2>Verdicts</h2>")
    rows = re.findall(r'<tr data-verdict="([^"]+)" data-experiment="([^"]+)">', page)
    assert len(rows) == len(claims)
    assert sorted(v for v, _ in rows) == sorted(claims["verdict"])
    links = re.findall(r'<td class="verdict [a-z]+"><a href="([^"]+)">', page)
    assert len(links) == len(claims) and all("#ev-" in link for link in links)


def test_figures_are_captioned_with_their_cell_and_records(built):
    page = (built / "weeds_qlora_federated.html").read_text()
    captions = re.findall(r'<span class="provenance">Drawn by (notebook cell \[\d+\]|the notebook) of', page)
    assert captions and all(c.startswith("notebook cell [") for c in captions)
    assert 'href="weeds_qlora_federated-records.html"' in page


def _chromium() -> str:
    for name in ("chromium", "chromium-headless-shell", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    done = subprocess.run(["make", "-C", str(REPO_ROOT), "site-deps"], capture_output=True, text=True)
    for name in ("chromium", "chromium-headless-shell"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip(f"headless Chromium is not installed and `make site-deps` could not install it: {done.stderr.strip()[-300:]}")


def page_requests(net_log: Path) -> list[str]:
    """URLs to other hosts that the page asked for, from Chromium's net log: requests whose network isolation key is
    the page's file:// origin (the browser's own background requests carry none)."""
    found: set[str] = set()
    for event in json.loads(net_log.read_text())["events"]:
        text = json.dumps(event.get("params", {}))
        if "file://" in text:
            found |= set(re.findall(r'(?:https?|wss?|ftp)://[^\s"<>]+', text))
    return sorted(found)


def _render(chromium: str, page: Path, out: Path, net_log: Path) -> None:
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--log-net-log={net_log}", "--window-size=1280,1800",
                    f"--screenshot={out}", page.as_uri()], check=True, capture_output=True, timeout=120)


def test_chromium_renders_the_pages_without_any_outside_request(built, tmp_path):
    chromium = _chromium()
    control = tmp_path / "control.html"  # the request check must be able to fail
    control.write_text('<img src="http://example.invalid/x.png">')
    _render(chromium, control, tmp_path / "control.png", tmp_path / "control.json")
    assert "http://example.invalid/x.png" in page_requests(tmp_path / "control.json")

    for name in ("index.html", "weeds_qlora_federated.html"):
        shot, log = tmp_path / f"{name}.png", tmp_path / f"{name}.json"
        _render(chromium, built / name, shot, log)
        assert page_requests(log) == [], name
        image = Image.open(shot).convert("L")
        assert image.size == (1280, 1800)
        low, high = image.getextrema()
        assert high - low > 100, f"{name} rendered blank"
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, "--dump-dom", (built / "index.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    rows = len(re.findall(r'<tr data-verdict=', dom))
    assert f'<span id="ledger-count">{rows} of {rows} claims</span>' in dom  # the ledger's script ran


def test_the_records_page_indexes_every_run_with_its_main_score_and_file(tmp_path):
    from fedpeft.experiments import site

    page = site.records_html("embedded", "eurosat_fedavg_ptq", tmp_path)
    runs = site.record_ids("embedded", "eurosat_fedavg_ptq")
    for run_id in runs:
        assert f'<a href="#{run_id}">{run_id}</a>' in page
        assert (tmp_path / "data" / "records" / "eurosat_fedavg_ptq" / run_id / "record.json").is_file()
    first = __import__("json").loads((site.results_root("embedded") / "eurosat_fedavg_ptq" / runs[0] / "record.json").read_text())
    assert f"{100 * first['scalars']['server_accuracy']:.4g}" in page and "test accuracy (%)" in page
    assert site.main_score("embedded", "glue_lora_aggregation", "no-such-run", {}) is None
