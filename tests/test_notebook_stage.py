"""A notebook stage never loses the committed outputs: it writes aside and swaps in on success only, and a kill
ends papermill and its kernel."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from fedpeft.core import registry
from fedpeft.reporting.notebook_stage import run_stage, swap_in

EXPERIMENT = "toy"


def _notebook(tmp_path: Path, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "embedded"\nprogress = True')
    params.metadata["tags"] = ["parameters"]
    code = ("import os, pathlib, time\n"
            "root = pathlib.Path(os.environ['FEDPEFT_REPORTS_DIR'])\n"
            f"(root / '{EXPERIMENT}').mkdir(parents=True, exist_ok=True)\n"
            f"(root / '{EXPERIMENT}' / 'report.md').write_text('new')\n"
            "(root / 'metrics').mkdir(exist_ok=True)\n"
            f"(root / 'metrics' / '{EXPERIMENT}.json').write_text('{{\"x\": 2}}')\n" + body)
    nb.cells = [params, nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "toy.ipynb"
    nbformat.write(nb, path)
    return path


def _committed(tmp_path: Path) -> Path:
    root = tmp_path / "reports"
    (root / EXPERIMENT).mkdir(parents=True)
    (root / EXPERIMENT / "report.md").write_text("committed")
    (root / "metrics").mkdir()
    (root / "metrics" / f"{EXPERIMENT}.json").write_text('{"x": 1}')
    return root


def _listing(root: Path) -> list[str]:
    """What the reports folder holds, but the stage's lock file (kept: removing a lock file races with its next user)."""
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".lock-"))


def test_success_swaps_the_new_outputs_in(tmp_path):
    root = _committed(tmp_path)
    assert run_stage(_notebook(tmp_path, ""), "embedded", EXPERIMENT, root) == 0
    assert (root / EXPERIMENT / "report.md").read_text() == "new"
    assert (root / EXPERIMENT / "toy.ipynb").is_file()  # the executed notebook beside its report
    assert (root / "metrics" / f"{EXPERIMENT}.json").read_text() == '{"x": 2}'
    assert _listing(root) == ["metrics", EXPERIMENT]  # no staging or old folder left


def test_a_failing_notebook_leaves_the_committed_outputs(tmp_path):
    root = _committed(tmp_path)
    assert run_stage(_notebook(tmp_path, "raise RuntimeError('boom')"), "embedded", EXPERIMENT, root) != 0
    assert (root / EXPERIMENT / "report.md").read_text() == "committed"
    assert (root / "metrics" / f"{EXPERIMENT}.json").read_text() == '{"x": 1}'
    assert _listing(root) == ["metrics", EXPERIMENT]


def test_swap_replaces_a_whole_folder(tmp_path):
    root, staging = tmp_path / "reports", tmp_path / "staging"
    (root / EXPERIMENT).mkdir(parents=True)
    (root / EXPERIMENT / "stale.png").write_text("old figure")
    (staging / EXPERIMENT).mkdir(parents=True)
    (staging / EXPERIMENT / "report.md").write_text("new")
    swap_in(staging, root, EXPERIMENT)
    assert [p.name for p in (root / EXPERIMENT).iterdir()] == ["report.md"]  # nothing of the old run survives


@pytest.mark.slow
@pytest.mark.parametrize("how", ["stage terminated", "parent killed"])
def test_killing_the_stage_ends_papermill_and_its_kernel_and_keeps_the_outputs(tmp_path, how):
    """``stage terminated``: DVC (or Ctrl-C) signals the stage; ``parent killed``: DVC itself dies with SIGKILL."""
    root = _committed(tmp_path)
    marker = tmp_path / "kernel_started"
    notebook = _notebook(tmp_path, f"pathlib.Path({str(marker)!r}).write_text(str(os.getpid()))\ntime.sleep(600)")
    stage_cmd = [sys.executable, "-m", "fedpeft.reporting.notebook_stage", "--profile", "embedded", "--experiment",
                 EXPERIMENT, "--notebook", str(notebook), "--reports-root", str(root)]
    if how == "parent killed":  # a stand-in for DVC: a process whose only job is to run the stage
        parent = subprocess.Popen([sys.executable, "-c", f"import subprocess; subprocess.run({stage_cmd!r})"])
    else:
        parent = subprocess.Popen(stage_cmd, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not marker.is_file() and time.time() < deadline:
        time.sleep(0.5)
    assert marker.is_file(), "the notebook's kernel never started"
    kernel = psutil.Process(int(marker.read_text()))
    tree = psutil.Process(parent.pid).children(recursive=True)
    assert kernel.pid in {p.pid for p in tree}
    if how == "parent killed":
        parent.kill()
        parent.wait(timeout=10)
    else:
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
        assert b"the committed outputs" in parent.stderr.read()
    _, alive = psutil.wait_procs(tree, timeout=60)
    assert not alive, f"left running after the stage was killed: {[p.pid for p in alive]}"
    assert (root / EXPERIMENT / "report.md").read_text() == "committed"
    assert (root / "metrics" / f"{EXPERIMENT}.json").read_text() == '{"x": 1}'
    assert _listing(root) == ["metrics", EXPERIMENT]


@pytest.mark.slow
def test_two_report_stages_of_one_experiment_at_once_lose_nothing(tmp_path):
    """The second stage (``make regenerate`` while ``make repro`` runs) stops at once, naming the first, and touches
    nothing; the first finishes and swaps its outputs in whole."""
    root = _committed(tmp_path)
    marker = tmp_path / "kernel_started"
    notebook = _notebook(tmp_path, f"pathlib.Path({str(marker)!r}).write_text('x')\ntime.sleep(4)")
    stage_cmd = [sys.executable, "-m", "fedpeft.reporting.notebook_stage", "--profile", "embedded", "--experiment",
                 EXPERIMENT, "--notebook", str(notebook), "--reports-root", str(root)]
    first = subprocess.Popen(stage_cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not marker.is_file() and time.time() < deadline:
        time.sleep(0.2)
    assert marker.is_file(), "the first stage's kernel never started"
    second = subprocess.run(stage_cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 75
    assert f"another report stage of this experiment is running on {root} (process {first.pid})" in second.stderr
    assert "unchanged" not in second.stderr
    assert (root / EXPERIMENT / "report.md").read_text() == "committed"  # the first is still running
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert (root / EXPERIMENT / "report.md").read_text() == "new"
    assert (root / "metrics" / f"{EXPERIMENT}.json").read_text() == '{"x": 2}'
    assert _listing(root) == ["metrics", EXPERIMENT]


def test_the_executed_notebook_names_no_folder_of_the_machine(tmp_path):
    """papermill's output_path names where the notebook is, not the staging folder of the machine that ran it."""
    import nbformat

    root = _committed(tmp_path)
    assert run_stage(_notebook(tmp_path, ""), "embedded", EXPERIMENT, root) == 0
    executed = nbformat.read(root / EXPERIMENT / "toy.ipynb", as_version=4)
    assert executed.metadata["papermill"]["output_path"] == "toy.ipynb"  # outside the repository: the file name alone


@pytest.mark.parametrize("profile", ["embedded", "local"])
def test_committed_notebooks_carry_no_absolute_path(profile):
    root = Path(__file__).resolve().parents[1]
    for notebook in sorted((root / "reports" / profile).glob("*/*.ipynb")):
        text = notebook.read_text()
        assert str(root) not in text and "/.staging-" not in text, f"{notebook.relative_to(root)} names a folder of the machine"


def test_a_killed_stage_s_staging_folder_is_cleared_by_the_next(tmp_path):
    root = _committed(tmp_path)
    (root / f".staging-{EXPERIMENT}-abc123" / EXPERIMENT).mkdir(parents=True)  # what a SIGKILLed stage leaves
    assert run_stage(_notebook(tmp_path, ""), "embedded", EXPERIMENT, root) == 0
    assert _listing(root) == ["metrics", EXPERIMENT]


def test_report_stages_lists_every_experiment_notebook_of_a_pipeline():
    from fedpeft.reporting.notebook_stage import report_stages

    root = Path(__file__).resolve().parents[1]
    stages = report_stages(root / "dvc.yaml")
    notebooks = sorted(p.name for p in (root / "notebooks").glob("*.ipynb"))
    assert sorted(nb.name for _, nb in stages) == notebooks
    assert [e for e, _ in stages] == registry.names()


def test_an_interrupted_regenerate_says_what_it_swapped_in(tmp_path, monkeypatch, capsys):
    """The first experiment's records and reports are swapped in, the second fails: the message names the first and
    says that dvc.lock does not record it yet."""
    from fedpeft.reporting import notebook_stage

    results = tmp_path / "results" / "embedded"
    results.mkdir(parents=True)
    monkeypatch.setattr(notebook_stage, "report_stages", lambda pipeline: [("first", Path("a.ipynb")), ("second", Path("b.ipynb"))])

    def fake_stage(_notebook, profile, experiment, _reports_root, results_dir=None):
        (results_dir / profile / experiment).mkdir(parents=True)
        return 0 if experiment == "first" else 1

    monkeypatch.setattr(notebook_stage, "run_stage", fake_stage)
    assert notebook_stage.regenerate("embedded", tmp_path / "reports", results) == 1
    assert (results / "first").is_dir() and not (results / "second").exists()
    err = capsys.readouterr().err
    assert "make regenerate stopped (second failed) after first: their records and reports are the new ones, but " \
           "dvc.lock does not record them yet" in err
