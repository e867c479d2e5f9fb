"""Result records and run stages: exact round trips, atomic writes, declared parameters, stale records."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedpeft.core import registry
from fedpeft.core.records import RecordError, RunRecord, RunSpec, record_dir
from fedpeft.experiments import runs
from fedpeft.experiments.eurosat_fedavg_ptq import settings as eurosat

ROOT = Path(__file__).resolve().parents[1]
TINY = {"generated_images_per_class": 6, "num_rounds": 1, "seeds": [0], "compare_partitions": [], "local_epochs": 1,
        "ptq_methods": ["fp32"], "calibration_images": 8, "qat_rounds": 0}


@pytest.fixture(autouse=True)
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDPEFT_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.delenv(runs.RECORDS_ONLY_ENV, raising=False)
    return tmp_path / "results"


def _tiny(tmp_path, **overrides):
    s = eurosat.load("embedded", TINY | overrides)
    s.cache_dir = tmp_path / "cache"
    return s


def test_record_round_trips_floats_tables_and_arrays_exactly(tmp_path):
    table = pd.DataFrame({"round": [0, 1], "loss": [1 / 3, math.pi], "name": ["a", "b"], "epochs": [3.0, 4.0],
                          "done": [True, False]})
    rec = RunRecord("exp", "r1", {"seed": 0}, {"acc": 0.1 + 0.2, "ok": True, "nan": float("nan")}, {"history": table},
                    {"image": np.arange(6, dtype=np.uint8).reshape(2, 3)}, {"identity": "x"})
    back = RunRecord.read(rec.write(tmp_path / "r1"))
    assert back.scalars["acc"] == 0.1 + 0.2 and back.scalars["ok"] is True and math.isnan(back.scalars["nan"])
    pd.testing.assert_frame_equal(back.tables["history"], table)
    assert (back.arrays["image"] == rec.arrays["image"]).all() and back.arrays["image"].dtype == np.uint8
    assert back.spec == {"seed": 0} and back.meta == {"identity": "x"}


def test_a_failed_write_leaves_the_previous_record(tmp_path):
    folder = RunRecord("exp", "r1", {}, {"acc": 1.0}).write(tmp_path / "r1")

    class Unwritable(pd.DataFrame):
        def to_csv(self, *args, **kwargs):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        RunRecord("exp", "r1", {}, {"acc": 2.0}, {"history": Unwritable({"a": [1]})}).write(folder)
    assert RunRecord.read(folder)["acc"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1"]  # no temporary folder left behind


def test_missing_and_damaged_records_are_named(tmp_path):
    with pytest.raises(RecordError, match=r"no result record at .*r9.*record.json"):
        RunRecord.read(tmp_path / "r9")
    folder = RunRecord("exp", "r1", {}, {}, {"history": pd.DataFrame({"a": [1]})}).write(tmp_path / "r1")
    (folder / "history.csv").unlink()
    with pytest.raises(RecordError, match=r"damaged .*delete the folder and rerun its stage"):
        RunRecord.read(folder)


def test_run_ids_are_unique_and_stable():
    for profile in ("embedded", "local", "paper"):
        s = eurosat.load(profile)
        ids = [spec.run_id for spec in runs.runs_module(eurosat.EXPERIMENT).run_specs(s)]
        assert len(ids) == len(set(ids)) and ids[0] == f"{s['partition']}-s{s['seeds'][0]}-r{s['num_rounds']}"


def test_unknown_run_and_experiment_are_refused_with_the_allowed_values():
    s = eurosat.load("embedded")
    with pytest.raises(ValueError, match=r"--run 'iid-s9-r3' is not in the embedded plan .*planned runs: \['iid-s0-r3'"):
        runs.find_spec(s, "iid-s9-r3")
    with pytest.raises(ValueError, match=r"experiment = 'nope' is not an experiment of this study; experiments: \['weeds"):
        runs.runs_module("nope")


def test_identity_covers_run_keys_but_not_plan_or_report_keys():
    s = eurosat.load("embedded")
    spec = runs.find_spec(s, "iid-s0-r3")
    base = runs.identity(s, spec)
    assert runs.identity(eurosat.load("embedded", {"learning_rate": 0.01}), spec) != base
    assert runs.identity(eurosat.load("embedded", {"price_usd_per_mib": 1.0}), spec) == base  # report key
    assert runs.identity(eurosat.load("embedded", {"seeds": [0, 1, 2]}), spec) == base  # plan key
    assert runs.identity(s, RunSpec(spec.run_id, spec.args | {"seed": 5})) != base


def test_a_run_that_reads_a_report_key_is_refused(tmp_path, monkeypatch):
    module = runs.runs_module(eurosat.EXPERIMENT)

    def sneaky(s, spec, progress):  # noqa: ARG001
        return RunRecord(eurosat.EXPERIMENT, spec.run_id, spec.args, {"price": s.params["price_usd_per_mib"]})

    monkeypatch.setattr(module, "execute", sneaky)
    s = _tiny(tmp_path)
    with pytest.raises(RuntimeError, match=r"read \['price_usd_per_mib'\], declared as plan or report keys"):
        runs.execute(s, runs.find_spec(s, "iid-s0-r1"))


def test_collect_runs_missing_records_reuses_fresh_ones_and_reruns_stale_ones(tmp_path, capsys):
    s = _tiny(tmp_path)
    first = runs.collect(s, progress=False)
    assert list(first) == ["iid-s0-r1"] and "running (no result record" in capsys.readouterr().out
    written = (record_dir("embedded", eurosat.EXPERIMENT, "iid-s0-r1") / "record.json").stat().st_mtime_ns
    again = runs.collect(s, progress=False)
    assert again["iid-s0-r1"].meta["identity"] == first["iid-s0-r1"].meta["identity"]
    assert (record_dir("embedded", eurosat.EXPERIMENT, "iid-s0-r1") / "record.json").stat().st_mtime_ns == written
    cheaper = _tiny(tmp_path, price_usd_per_mib=0.5)  # a report key: nothing reruns
    runs.collect(cheaper, progress=False)
    assert "running" not in capsys.readouterr().out
    changed = _tiny(tmp_path, learning_rate=0.01)
    runs.collect(changed, progress=False)
    assert "iid-s0-r1: running (its record was made with other settings)" in capsys.readouterr().out


def test_the_report_stage_never_trains_a_missing_record(tmp_path, monkeypatch):
    monkeypatch.setenv(runs.RECORDS_ONLY_ENV, "1")
    with pytest.raises(RecordError, match=r"run iid-s0-r1: no result record .*\(dvc repro eurosat_fedavg_ptq_run@iid-s0-r1\)"):
        runs.collect(_tiny(tmp_path), progress=False)


@pytest.mark.slow
def test_a_killed_run_stage_keeps_the_committed_record_and_its_rerun_resumes(results, tmp_path):
    """Kill the run stage mid-run: the previous record stays whole; the rerun resumes from the checkpoint."""
    env = os.environ | {"FEDPEFT_RESULTS_DIR": str(results), "FEDPEFT_CACHE_DIR": str(tmp_path / "cache"),
                        "PYTHONPATH": str(ROOT / "lib")}
    s = eurosat.load("embedded")
    s.cache_dir = tmp_path / "cache"
    folder = record_dir("embedded", eurosat.EXPERIMENT, "iid-s1-r3")
    RunRecord(eurosat.EXPERIMENT, "iid-s1-r3", {}, {"marker": "committed"}, meta={"identity": "old"}).write(folder)
    ckpt = runs.run_checkpoints(s, runs.find_spec(s, "iid-s1-r3")).path("rounds")
    ckpt.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "fedpeft.experiments.runs", "--profile", "embedded", "--experiment", eurosat.EXPERIMENT,
           "--run", "iid-s1-r3", "--no-progress"]
    child = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and child.poll() is None:
        time.sleep(0.05)
    assert ckpt.exists(), "the run wrote no checkpoint before it ended"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert RunRecord.read(folder)["marker"] == "committed"
    assert not list(folder.parent.glob(".tmp-*"))
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert "record written" in done.stdout
    record = RunRecord.read(folder)
    assert record["rounds_completed"] == 3 and record["resumed_from_round"] >= 1
    assert record.meta["identity"] == runs.identity(s, runs.find_spec(s, "iid-s1-r3"))


@pytest.mark.parametrize("experiment", registry.names())
def test_committed_embedded_records_are_the_current_plan_and_settings(experiment, monkeypatch):
    """Every planned embedded run has a committed record made with today's settings (else `make repro` would not
    be a no-op on a fresh clone), and each record read only the keys its stage declares."""
    monkeypatch.delenv("FEDPEFT_RESULTS_DIR", raising=False)
    s = registry.get(experiment).load("embedded")
    for spec in registry.get(experiment).run_specs(s):
        record = RunRecord.read(record_dir("embedded", experiment, spec.run_id))
        assert record.meta["identity"] == runs.identity(s, spec), f"{experiment} {spec.run_id}: stale record"
        assert set(record.meta["params_read"]) <= set(runs.run_keys(experiment, s.params, spec.kind))


def test_a_reused_preparation_looks_fresh_to_the_run():
    """runs.reused_in_process: the same settings and arguments reuse the first result, with the keys it read marked
    read and the random state it left; other settings or arguments compute it again."""
    from fedpeft.core.config import Settings

    calls = []

    @runs.reused_in_process
    def prepare(s, seed, scale=1.0):
        calls.append(seed)
        torch.manual_seed(seed)
        return torch.randn(3) * s["scale_by"] * scale

    def settings(**params):
        return Settings("embedded", "toy", runs.TrackedParams({"scale_by": 2.0, "unused": 0} | params), Path("data"),
                        Path("reports"), Path("cache"))

    first_settings = settings()
    first = prepare(first_settings, 7)
    after_first = torch.rand(2)  # what a run draws next
    torch.manual_seed(123)  # a later run moves the global state on
    again_settings = settings()
    assert prepare(again_settings, 7) is first and calls == [7]
    assert again_settings.params.read == first_settings.params.read == {"scale_by"}
    assert torch.equal(torch.rand(2), after_first)

    assert prepare(settings(scale_by=3.0), 7) is not first and calls == [7, 7]
    assert prepare(settings(scale_by=3.0), 8) is not None and calls == [7, 7, 8]
    assert prepare(settings(scale_by=3.0), 8, scale=0.5) is not None and calls == [7, 7, 8, 8]
