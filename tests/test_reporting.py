import json

import matplotlib

matplotlib.use("Agg")
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from fedpeft.core.device import resolve_precision
from fedpeft.core.profiling import measure
from fedpeft.reporting.outputs import mean_spread, save_figure, write_metrics, write_table
from fedpeft.reporting.summary import collect


def test_table_written_as_booktabs_latex_and_markdown(tmp_path):
    df = pd.DataFrame({"method": ["fp32", "int8_dyn"], "accuracy %": [85.2, 84.95]})
    paths = write_table(df, tmp_path, "t", "A caption")
    tex = paths["tex"].read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"int8\_dyn" in tex and r"accuracy \%" in tex and r"\caption{A caption}" in tex
    md = paths["md"].read_text()
    assert "| method" in md and "84.95" in md


def test_metrics_are_flat_json_with_nan_as_null(tmp_path):
    path = write_metrics({"b": np.float32(1.5), "a": float("nan")}, tmp_path / "m.json")
    assert json.loads(path.read_text()) == {"a": None, "b": 1.5}


def test_figures_saved_as_png_and_pdf_without_temporary_leftovers(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    paths = save_figure(fig, tmp_path, "fig")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG" and paths["pdf"].read_bytes()[:4] == b"%PDF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.pdf", "fig.png"]


def test_mean_spread():
    assert mean_spread([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_spread([4.0]) == (4.0, 0.0)


def test_measure_reports_time_and_memory_kind():
    with measure() as m:
        block = np.ones(20_000_000)  # 160 MB
        m.items = 10
    del block
    assert m.wall_s > 0 and m.memory_kind == "cpu_peak_rss_delta"
    assert m.peak_memory_bytes > 100e6
    assert m.throughput == pytest.approx(10 / m.wall_s)


def test_resolve_precision():
    assert resolve_precision("fp32") == "fp32"
    assert resolve_precision("auto") in ("fp32", "bf16")


def _claims_csv(folder: Path, verdicts: list[str], kinds: list[str] | None = None, where: list[str] | None = None) -> None:
    pd.DataFrame({"claim": [f"c{i}" for i in range(len(verdicts))], "seed": "1", "study": "2 x", "verdict": verdicts,
                  "evidence": "acc", "evidence_file": "acc.md", "kind": kinds or ["seed claim"] * len(verdicts),
                  "evidence_profile": where or [folder.parent.name] * len(verdicts)}).to_csv(folder / "claims.csv", index=False)


def _tally_rows(text: str, heading: str) -> dict[str, list[str]]:
    part = text.split(heading, 1)[1].split("\n\n", 2)[1]
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in part.splitlines()
            if line.startswith("| exp_") or line.startswith("| all ")}


@pytest.fixture
def two_registered_experiments():
    """exp_a and exp_b in the registry (the summary reads the report folders of registered experiments only)."""
    from fedpeft.core import registry

    for name in ("exp_a", "exp_b"):
        registry.register(registry.Experiment(name=name, title=name, seed_report="none", notebook=f"{name}.ipynb",
                                              history=("round", "score"), main_score=registry.MainScore("scalar", "score", "score"),
                                              package=f"tests_{name}"))
    yield
    for name in ("exp_a", "exp_b"):
        registry.unregister(name)


@pytest.mark.usefixtures("two_registered_experiments")
def test_summary_tallies_each_experiment_and_links_claims_to_evidence(tmp_path):
    tmp_path = tmp_path / "local"
    tmp_path.mkdir()
    for name, verdicts, kinds, where in (
            ("exp_a", ["holds", "does not hold", "holds", "holds"], ["seed claim", "seed claim", "study check", "seed claim"],
             ["local", "local", "local", "paper"]),
            ("exp_b", ["inconclusive"], None, None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "headline.md").write_text(f"**headline {name}**\n")
        _claims_csv(tmp_path / name, verdicts, kinds, where)
    (tmp_path / "not_a_report").mkdir()  # a folder of no registered experiment, even with a headline, is no report
    (tmp_path / "not_a_report" / "headline.md").write_text("**stray**\n")
    text = collect(tmp_path)
    assert "## exp_a" in text and "**headline exp_b**" in text and "not_a_report" not in text and "stray" not in text
    # columns: holds, does not hold, inconclusive, not testable here, fact, claims; seed claims on local evidence only
    rows = _tally_rows(text, "**The seeds' claims**")
    assert rows["exp_a"] == ["1", "1", "0", "0", "0", "2"]
    assert rows["exp_b"] == ["0", "0", "1", "0", "0", "1"]
    assert rows["all"] == ["1", "1", "1", "0", "0", "3"]
    assert _tally_rows(text, "`paper` profile's committed measurements")["exp_a"] == ["1", "0", "0", "0", "0", "1"]
    assert _tally_rows(text, "**The study's own checks**")["exp_a"] == ["1", "0", "0", "0", "0", "1"]
    assert "[acc](exp_a/acc.md)" in text
    assert "**Compute**" not in text  # no report wrote compute.csv
    pd.DataFrame({"run": ["r1", "r2"], "device": ["CPU: X, 2 threads"] * 2, "wall_s": [1800.0, 3600.0],
                  "written_at": ["t", "t"]}).to_csv(tmp_path / "exp_a" / "compute.csv", index=False)
    pd.DataFrame({"run": ["r1"], "device": ["GPU: H100"], "wall_s": [720.0], "written_at": ["t"]}).to_csv(
        tmp_path / "exp_b" / "compute.csv", index=False)
    from fedpeft.reporting.summary import compute_per_experiment

    compute = compute_per_experiment(tmp_path).set_index("experiment")
    assert compute["run_stages"].tolist() == [2, 1, 3] and compute["wall_h"].tolist() == [1.5, 0.2, 1.7]
    assert compute.loc["all", "devices"] == "CPU: X, 2 threads; GPU: H100"
    assert "**Compute**" in collect(tmp_path)
    with pytest.raises(FileNotFoundError, match="no experiment reports"):
        collect(tmp_path / "exp_a")


def test_study_report_needs_setup_limitations_and_evidence_it_wrote(tmp_path):
    from fedpeft.core.config import load_settings
    from fedpeft.experiments.eurosat_fedavg_ptq.settings import EXPERIMENT, SCHEMA
    from fedpeft.reporting.claims import ClaimsLedger, fact
    from fedpeft.reporting.study_report import StudyReport

    settings = load_settings("embedded", EXPERIMENT, SCHEMA, None)
    settings.report_dir = tmp_path / "report"
    report = StudyReport(settings, "T", "seed.txt", "nb.ipynb")
    report.table(pd.DataFrame({"a": [1, 2, 3]}), "acc", "Accuracy")
    ledger = ClaimsLedger("embedded", EXPERIMENT)
    ledger.add("true by construction", "x", fact("3 rows", "made so"), "acc")
    args = ("finding", pd.DataFrame({"h": [1]}), ledger, {"m": 1.0}, pd.DataFrame({"round": [0]}))
    records = {"a": _Record({"stage_wall_s": 30.0, "machine": {"cpu": "X", "torch_threads": "2", "gpu": "none"}}),
               "b": _Record({"stage_wall_s": 90.0, "machine": {"cpu": "X", "gpu": "H100"}})}
    with pytest.raises(ValueError, match="set-up"):
        report.finish(*args, setup="", limitations="- none", records=records)
    ledger.add("cites a table never written", "x", fact("-", "-"), "nowhere")
    with pytest.raises(ValueError, match="nowhere"):
        report.finish(*args, setup="ran", limitations="- none", records=records)
    ledger.rows.pop()
    report.finish(*args, setup="**What** ran", limitations="- the limits", records=records)
    out = settings.report_dir
    assert (out / "setup.md").read_text().endswith("**What** ran\n")
    assert pd.read_csv(out / "claims.csv")["evidence_file"].tolist() == ["acc.md"]
    assert "[acc](acc.md)" in (out / "claims.md").read_text() and "[acc]" not in (out / "claims.tex").read_text()
    text = (out / "report.md").read_text()
    assert text.index("## What ran against the seed") < text.index("## Claims") < text.index("## Compute") < text.index("## Limitations")
    assert text.rstrip().endswith("- the limits")
    assert "2 run stages took **2.0 min**" in text
    compute = pd.read_csv(out / "compute.csv")
    assert compute["wall_s"].tolist() == [30.0, 90.0]
    assert compute["device"].tolist() == ["CPU: X, 2 threads", "GPU: H100"]
    assert "| total" in (out / "compute.md").read_text()
    machines = (out / "machine.md").read_text()
    assert "run stages" in machines and "report stage" in machines and "H100" in machines


class _Record:
    def __init__(self, meta, scalars=None):
        self.meta, self.scalars = meta, scalars or {}


def test_compute_table_reads_wall_time_and_device_from_each_record():
    from fedpeft.reporting.compute import compute_summary, compute_table

    table = compute_table({"r1": _Record({"stage_wall_s": 60.0, "machine": {"cpu": "EPYC", "torch_threads": "2", "gpu": "none"},
                                          "written_at": "2026-11-23T15:00:00+00:00"}),
                           "r2": _Record({"stage_wall_s": 120.0, "machine": {"cpu": "EPYC", "torch_threads": "2", "gpu": "none"}}),
                           "r3": _Record({}, {"resumed_from_round": 4})})
    assert table["run"].tolist() == ["r1", "r2", "r3"]
    assert table["device"].tolist() == ["CPU: EPYC, 2 threads", "CPU: EPYC, 2 threads", "not recorded"]
    assert table["wall_s"].iloc[:2].tolist() == [60.0, 120.0] and pd.isna(table["wall_s"].iloc[2])
    assert table["written_at"].tolist()[1:] == ["not recorded", "not recorded"]
    text = compute_summary(table)
    assert "3 run stages took **3.0 min**" in text and "(0.05 h" in text
    assert "CPU: EPYC, 2 threads (2 runs); not recorded (1 runs)" in text and "1 records carry no wall time" in text
    assert table["resumed_from_round"].tolist() == [0, 0, 4] and "leaves out the rounds before it: r3." in text
    assert compute_summary(compute_table({})).startswith("No run records")


def test_machines_table_lists_the_run_stages_machines_then_the_report_stage():
    from fedpeft.reporting.compute import machines_table

    amd = {"cpu": "AMD EPYC", "cpu_cores": "2", "torch_threads": "2", "memory_gib": "23.5", "gpu": "none", "cpu_bf16": "False"}
    intel = amd | {"cpu": "Intel(R) Xeon(R) Processor", "cpu_bf16": "True"}
    table = machines_table({"r1": _Record({"machine": amd}), "r2": _Record({"machine": intel}), "r3": _Record({"machine": amd}),
                            "r4": _Record({})}, report_machine=intel)
    assert table["role"].tolist() == ["run stages", "run stages", "run stages", "report stage"]
    assert table["runs"].tolist() == [2, 1, 1, 0]
    assert table["cpu"].tolist() == ["AMD EPYC", "Intel(R) Xeon(R) Processor", "not recorded", "Intel(R) Xeon(R) Processor"]
    assert table["cpu_bf16"].tolist() == ["False", "True", "not recorded", "True"]
    assert machines_table({}, report_machine=amd)["role"].tolist() == ["report stage"]


def test_lock_digest_follows_the_pins_not_the_comments(tmp_path):
    from fedpeft.reporting.outputs import lock_digest

    a, b, c = tmp_path / "a.lock", tmp_path / "b.lock", tmp_path / "c.lock"
    a.write_text("# made by uv\nnumpy==2.4.6 \\\n    --hash=sha256:aa\n    # via pandas\n")
    b.write_text("# made by another tool\n\nnumpy==2.4.6 \\\n    --hash=sha256:aa\n    # via torch\n")
    c.write_text("# made by uv\nnumpy==2.4.7 \\\n    --hash=sha256:aa\n    # via pandas\n")
    assert lock_digest(a) == lock_digest(b) != lock_digest(c)
    assert len(lock_digest(a)) == 16


def test_versions_table_says_whether_the_installed_packages_are_the_locked_ones(tmp_path, monkeypatch):
    from fedpeft.reporting import outputs

    lock = tmp_path / "requirements.lock"
    lock.write_text("Numpy==1.0.0 \\\n    --hash=sha256:aa\npandas==" + outputs.metadata.version("pandas") + "\n")
    assert outputs.locked_versions(lock) == {"numpy": "1.0.0", "pandas": outputs.metadata.version("pandas")}
    monkeypatch.setattr(outputs, "REPO_ROOT", tmp_path)
    same = outputs.package_versions(("pandas",)).set_index("package")["locked"]
    assert same["requirements.lock (sha256)"] == "installed = locked"
    differs = outputs.package_versions(("pandas", "numpy")).set_index("package")
    assert differs.loc["numpy", "locked"] == "1.0.0" != differs.loc["numpy", "version"]
    assert differs.loc["requirements.lock (sha256)", "locked"] == "installed differs from the lock"


def test_packages_installed_without_dependencies_are_pinned_by_pyproject(tmp_path, monkeypatch):
    from fedpeft.reporting import outputs

    (tmp_path / "requirements.lock").write_text("pandas==" + outputs.metadata.version("pandas") + "\n")
    (tmp_path / "pyproject.toml").write_text('[tool.fedpeft]\ninstall-without-dependencies = ["Seaborn==' +
                                             outputs.metadata.version("seaborn") + '"]\n')
    assert outputs.pinned_without_dependencies(tmp_path / "pyproject.toml") == {"seaborn": outputs.metadata.version("seaborn")}
    assert outputs.pinned_without_dependencies(tmp_path / "missing.toml") == {}
    monkeypatch.setattr(outputs, "REPO_ROOT", tmp_path)
    table = outputs.package_versions(("pandas", "seaborn")).set_index("package")["locked"]
    assert table["seaborn"] == outputs.metadata.version("seaborn")
    assert table["requirements.lock (sha256)"] == "installed = locked"


def test_table_structure_hides_trained_numbers_and_the_labels_drawn_from_them():
    """What nbval compares: another CPU kind moves the floats' last digits, and with them a label near its threshold."""
    from fedpeft.reporting.outputs import table_structure

    here = pd.DataFrame({"partition": ["iid", "dirichlet"], "runs": [3, 3], "accuracy": [0.52, float("nan")],
                         "signal": ["above chance", "no signal"]})
    elsewhere = here.assign(accuracy=[0.5199, 0.1], signal=["above chance", "above chance"])
    assert table_structure(here) == table_structure(elsewhere)
    text = table_structure(here)
    assert text.splitlines()[0] == "2 rows" and "dirichlet" in text and "above chance" not in text and "0.52" not in text
    assert table_structure(here.assign(runs=[3, 2])) != text  # counts and names are still compared exactly


@pytest.mark.parametrize("column, shown", [
    ("iid_mean_pct", "iid mean (%)"), ("total_bytes_mean", "total mean (bytes)"), ("steps_per_s", "steps/s"),
    ("test_macro_f1_std", "test macro F1 sd"), ("aggregate_ms", "aggregate (ms)"), ("label", "label"), ("seeds", "seeds"),
])
def test_headline_columns_read_as_words_with_units(column, shown):
    from fedpeft.reporting.outputs import readable_name

    assert readable_name(column) == shown


def test_headline_numbers_read_without_exponents():
    from fedpeft.reporting.outputs import readable

    table = readable(pd.DataFrame({"adapter_fp32_bytes": [19_590_000.0], "eval_loss": [2.90351], "seeds": [3], "ok": [True]}))
    assert table.columns.tolist() == ["adapter fp32 (bytes)", "eval loss", "seeds", "ok"]
    assert table.iloc[0].tolist() == ["19,590,000", "2.904", "3", True]


@pytest.mark.usefixtures("two_registered_experiments")
def test_a_diverged_run_is_flagged_in_the_summary_and_a_sound_one_is_not(tmp_path):
    """The round loop's rule (a final server loss over 100 x the initial one) read back from the records: the lr-10 run
    that ended at accuracy 0.0 is listed by name; a run whose loss fell, or rose less than 100 x, is not."""
    from fedpeft.core.records import RunRecord
    from fedpeft.reporting.summary import diverged_runs

    def history(losses, accuracy):
        return pd.DataFrame({"round": range(len(losses)), "server_loss": losses, "server_accuracy": accuracy})

    RunRecord("exp_a", "lr10", {}, {}, {"history": history([2.3, 40.0, 2400.0], [0.1, 0.0, 0.0])}).write(tmp_path / "exp_a" / "lr10")
    RunRecord("exp_a", "fine", {}, {}, {"history": history([2.3, 1.0, 0.5], [0.1, 0.6, 0.8])}).write(tmp_path / "exp_a" / "fine")
    RunRecord("exp_b", "rose", {}, {}, {"history": history([2.3, 100.0, 229.0], [0.1, 0.1, 0.1])}).write(tmp_path / "exp_b" / "rose")
    found = diverged_runs(tmp_path)
    assert found[["experiment", "run"]].values.tolist() == [["exp_a", "lr10"]]
    assert found["final_server_accuracy"].tolist() == [0.0]
    (tmp_path / "reports" / "exp_a").mkdir(parents=True)
    (tmp_path / "reports" / "exp_a" / "headline.md").write_text("**h**\n")
    text = collect(tmp_path / "reports", tmp_path)
    assert "**Diverged runs** (a final server loss over 100 times the initial one): 1; their numbers" in text
    assert "| exp_a        | lr10  |" in text
