"""One list of experiments: the registry. The study's five are found by their declarations, in notebook order; a
toy experiment registered from outside the package appears in the rendered pipeline, its runs are recorded, and its
report reaches the summary, the site and the paper, with no other list to edit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedpeft.core import registry
from fedpeft.core.config import REPO_ROOT
from fedpeft.core.records import RESULTS_ENV


def test_the_registry_finds_every_experiment_package_in_notebook_order():
    found = registry.experiments()
    packages = sorted(p.parent.name for p in (REPO_ROOT / "lib" / "fedpeft" / "experiments").glob("*/runs.py"))
    assert sorted(e.name for e in found) == packages and len(found) == 6
    assert [e.notebook for e in found] == sorted(e.notebook for e in found)
    for e in found:
        assert (REPO_ROOT / e.notebook).is_file() and e.name == e.settings.EXPERIMENT
        assert e.run_specs(e.load("embedded")), f"{e.name} plans no run"


def test_a_declaration_imports_only_the_registry():
    import ast

    for e in registry.experiments():
        tree = ast.parse((REPO_ROOT / "lib" / Path(*e.package.split("."), "experiment.py")).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert imported <= {"fedpeft.core.registry", "__future__"}, f"{e.name}/experiment.py imports {imported}"


def test_an_unknown_experiment_is_a_clear_error():
    with pytest.raises(ValueError, match=r"experiment = 'nope' is not an experiment of this study; experiments: \['weeds"):
        registry.get("nope")
    with pytest.raises(ValueError, match="already taken"):
        registry.register(registry.Experiment(name="lora_vs_qlora", title="t", seed_report="s", notebook="n.ipynb",
                                              history=("round", "loss"), main_score=registry.MainScore("scalar", "x", "x")))


@pytest.fixture
def toy(tmp_path, monkeypatch):
    from toy_experiment.experiment import declare

    notebook = tmp_path / "toy.ipynb"
    notebook.write_text(json.dumps({"cells": [{"cell_type": "code", "source": ["from fedpeft.reporting.claims import within\n"],
                                               "metadata": {}, "outputs": [], "execution_count": None}],
                                    "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    monkeypatch.setenv("TOY_REPORTS", str(tmp_path / "reports"))
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path / "results"))
    declared = registry.register(declare(str(notebook)))
    yield declared
    registry.unregister(declared.name)


def test_a_registered_toy_experiment_reaches_the_pipeline_summary_site_and_paper(toy, tmp_path):
    from fedpeft.experiments import paper, pipelines, site
    from fedpeft.experiments import runs as run_stages
    from fedpeft.reporting import summary

    assert registry.names()[-1] == "toy_means"  # its notebook's name sorts after the study's numbered ones
    pipeline = pipelines.render_pipeline("embedded")
    assert "  toy_means_run:\n    foreach:\n      - s0\n      - s1\n" in pipeline
    assert "            - toy_means.samples\n" in pipeline and "toy_means.seeds" not in pipeline  # a plan key is no run key
    assert "--experiment toy_means --notebook " in pipeline and "reports/${profile}/toy_means" in pipeline

    settings = toy.load("embedded")
    records = run_stages.collect(settings, progress=False)
    assert records["s0"].meta["memory_kind"] == "cpu_process_peak_rss" and records["s0"].meta["peak_memory_mib"] > 10
    assert sorted(records) == ["s0", "s1"] and all((tmp_path / "results" / "embedded" / "toy_means" / r / "record.json").is_file()
                                                   for r in records)
    toy.report.build(settings, records)
    reports = tmp_path / "reports" / "embedded"
    assert (reports / "toy_means" / "claims.csv").is_file()

    assert summary.write_verdict_figure(reports, "embedded")
    (reports / "SUMMARY.md").write_text(summary.collect(reports))
    assert "## toy_means" in (reports / "SUMMARY.md").read_text()
    built = site.build("embedded", tmp_path / "site", reports=reports)
    assert "toy_means.html" in (built / "index.html").read_text()
    assert "Toy: the mean of generated numbers" in (built / "toy_means.html").read_text()
    assert "s1" in (built / "toy_means-records.html").read_text()
    tex = paper.paper_tex("embedded", reports, tmp_path / "paper")
    assert "\\section{Toy: the mean of generated numbers}\\label{sec:toy_means}" in tex
