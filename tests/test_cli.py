"""``python -m fedpeft``: the experiments, each planned run's record state, the claims and one claim's evidence."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedpeft.experiments import cli


def test_experiments_lists_every_experiment_with_its_seed_and_notebook():
    table = cli.experiments().set_index("experiment")
    assert sorted(table.index) == sorted(cli.registry.names()) and len(table) == 6
    assert table.loc["eurosat_fedavg_ptq", "notebook"] == "notebooks/04_eurosat_fedavg_ptq.ipynb"


def test_run_states_tell_recorded_from_missing_and_stale(tmp_path, monkeypatch):
    states = cli.run_states("eurosat_fedavg_ptq", "embedded")
    assert len(states) > 0 and (states["state"] == "recorded").all()  # the committed embedded records
    monkeypatch.setenv("FEDPEFT_RESULTS_DIR", str(tmp_path))
    assert (cli.run_states("eurosat_fedavg_ptq", "embedded")["state"] == "missing").all()


def test_one_claim_shows_its_figures_rule_and_evidence():
    text = cli.claim_text("eurosat_fedavg_ptq", "local", "fp32_accuracy")
    assert "seed says:      85.20 % (one run)" in text and "verdict:" in text and "reports/local/eurosat_fedavg_ptq/accuracy.md" in text
    with pytest.raises(SystemExit, match="is not a row number"):
        cli.claim_text("eurosat_fedavg_ptq", "local", "no_such_key")


def test_the_module_runs_as_a_command():
    out = subprocess.run([sys.executable, "-m", "fedpeft", "claims", "glue_lora_aggregation", "--profile", "local"],
                         capture_output=True, text=True, check=True).stdout
    assert "study check" in out and "holds" in out
