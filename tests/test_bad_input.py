"""Bad input and faults: each case gets a clear error naming the setting or the file, the value and what to do.

One row per case found by probing a fresh clone as a new user would (see the issue "Bad input and faults").
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

from fedpeft.core import config
from fedpeft.core.config import ParameterError
from fedpeft.core.integrity import CorruptDataError, DataFileError, require_data_file
from fedpeft.experiments.eurosat_fedavg_ptq import settings as eurosat

ROOT = Path(__file__).resolve().parents[1]


# --- settings ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, match", [
    ("learning_rate", float("nan"), r"eurosat_fedavg_ptq.learning_rate = nan is not allowed; it must be a finite number"),
    ("price_usd_per_mib", float("nan"), r"eurosat_fedavg_ptq.price_usd_per_mib = nan is not allowed"),
    ("dirichlet_alpha", float("inf"), r"eurosat_fedavg_ptq.dirichlet_alpha = inf is not allowed; it must be a finite number"),
    ("seeds", [0, 0], r"eurosat_fedavg_ptq.seeds = \[0, 0\] repeats \[0\]; it must be a list of distinct int"),
    ("num_rounds", -1, r"eurosat_fedavg_ptq.num_rounds = -1 is not allowed; it must be an integer in \[1"),
    ("partition", "random", r"eurosat_fedavg_ptq.partition = 'random' is not allowed; it must be one of"),
])
def test_bad_setting_names_the_key_the_value_and_what_is_allowed(key, value, match):
    with pytest.raises(ParameterError, match=match):
        eurosat.load("embedded", {key: value})


def _params_file(tmp_path, monkeypatch, text: str) -> None:
    path = tmp_path / "embedded.yaml"
    path.write_text(text)
    monkeypatch.setattr(config, "params_path", lambda profile: path)


COMMON = "common:\n  profile: embedded\n  data_root: ../shared/data\n  reports_dir: reports/embedded\n  cache_dir: .cache\n"


@pytest.mark.parametrize("body, match", [
    (COMMON + "eurosat_fedavg_ptq:\n  num_rounds: 3\n  num_rounds: 4\n", r"key 'num_rounds' is given twice \(lines 7 and 8\)"),
    (COMMON + "eurosat_fedavg_ptq:\n", r"section 'eurosat_fedavg_ptq' must be a mapping of settings, got NoneType"),
    (COMMON + "eurosat_fedavg_ptq:\n  - 1\n  - 2\n", r"section 'eurosat_fedavg_ptq' must be a mapping of settings, got list"),
    ("- common\n- eurosat_fedavg_ptq\n", r"expected a mapping of sections .* got list"),
    ("common:\neurosat_fedavg_ptq: {}\n", r"common: expected a mapping of settings, got NoneType"),
])
def test_malformed_parameter_file_is_refused_clearly(tmp_path, monkeypatch, body, match):
    _params_file(tmp_path, monkeypatch, body)
    with pytest.raises(ParameterError, match=match):
        eurosat.load("embedded")


def test_unknown_profile_in_make_lists_the_profiles():
    run = subprocess.run(["make", "-n", "repro", "PROFILE=bogus"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0
    assert "PROFILE=bogus is not a profile of this study; use one of: embedded local paper" in run.stderr


def test_unknown_strategy_and_impossible_round_settings():
    from fedpeft.federated.loop import RoundConfig
    from fedpeft.federated.strategies import build_strategy
    from fedpeft.models.lora_settings import lora_config

    with pytest.raises(ValueError, match=r"strategy = 'fedsgd' is not known; allowed: \['diloco', 'fedavg', 'fedprox'\]"):
        build_strategy("fedsgd")
    with pytest.raises(ValueError, match=r"num_rounds = -1 is not allowed; it must be an integer >= 1"):
        RoundConfig(num_rounds=-1)
    with pytest.raises(ValueError, match=r"lora rank = 9 is not allowed; it must be an integer in \[1, 8\]"):
        lora_config(nn.Sequential(nn.Linear(8, 16)), 9, 8, 0.0, ["0"])


# --- data files ----------------------------------------------------------------------------------------------------

def _data_root(tmp_path: Path, files: dict[str, bytes], manifest: bool = True, extra_line: str = "") -> Path:
    root = tmp_path / "data"
    lines = []
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
        lines.append(f"{hashlib.sha256(content).hexdigest()}  ./{rel}")
    if manifest:
        (root / "MANIFEST.sha256").write_text("\n".join(lines + [extra_line]) + "\n")
    return root


def _jpeg(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_missing_data_file_names_its_path(tmp_path):
    root = _data_root(tmp_path, {"glue/SST-2/train.tsv": b"sentence\tlabel\n"})
    with pytest.raises(DataFileError, match=r"data file not found: .*glue/SST-2/dev.tsv\. The real data sets live"):
        require_data_file(root, "glue/SST-2/dev.tsv")


def test_missing_manifest_is_an_error_that_says_how_to_skip(tmp_path, monkeypatch):
    root = _data_root(tmp_path, {"a.txt": b"x"}, manifest=False)
    with pytest.raises(DataFileError, match=r"no MANIFEST.sha256 in the data root .* set FEDPEFT_VERIFY_DATA=0"):
        require_data_file(root, "a.txt")
    monkeypatch.setenv("FEDPEFT_VERIFY_DATA", "0")
    assert require_data_file(root, "a.txt") == root / "a.txt"


def test_malformed_manifest_line_names_the_line(tmp_path):
    root = _data_root(tmp_path, {"a.txt": b"x"}, extra_line="deadbeef")
    with pytest.raises(DataFileError, match=r"MANIFEST.sha256, line 2: 'deadbeef' is not '<sha256> <path>'"):
        require_data_file(root, "a.txt")


def test_file_missing_from_the_manifest_is_not_read_unchecked(tmp_path):
    root = _data_root(tmp_path, {"a.txt": b"x"})
    (root / "b.txt").write_text("y")
    with pytest.raises(DataFileError, match=r"b.txt is not listed in .*MANIFEST.sha256"):
        require_data_file(root, "b.txt")


def _cwfid(tmp_path, corrupt_image: bytes | None = None, manifest: bool = True) -> Path:
    mask = np.zeros((32, 32, 3), np.uint8)
    mask[:16, :, 1] = 255  # crop in the top half
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, "PNG")
    files = {"cwfid/train_test_split.yaml": b"train: [1]\ntest: [2]\n"}
    for i in (1, 2):
        files[f"cwfid/images/{i:03d}_image.jpg"] = _jpeg(i)
        files[f"cwfid/annotations/{i:03d}_annotation.png"] = buf.getvalue()
    root = _data_root(tmp_path, files, manifest=manifest)
    if corrupt_image is not None:
        (root / "cwfid/images/001_image.jpg").write_bytes(corrupt_image)
    return root


def test_cwfid_files_are_checked_against_the_manifest(tmp_path):
    from fedpeft.data import weeds

    good = _jpeg(1)
    flipped = bytearray(good)
    flipped[200:216] = bytes(255 - b for b in flipped[200:216])  # 16 flipped bytes still decode as a JPEG
    root = _cwfid(tmp_path, corrupt_image=bytes(flipped))
    with pytest.raises(DataFileError, match=r"data file is corrupt: .*cwfid/images/001_image.jpg has sha256"):
        weeds.load_cwfid(root / "cwfid", 16, (2, 2), 0.01)


def test_truncated_image_names_its_path_with_checks_off(tmp_path, monkeypatch):
    from fedpeft.data import weeds

    root = _cwfid(tmp_path, corrupt_image=_jpeg(1)[:100])
    monkeypatch.setenv("FEDPEFT_VERIFY_DATA", "0")
    with pytest.raises(CorruptDataError, match=r"cannot read .*cwfid/images/001_image.jpg as an RGB image"):
        weeds.load_cwfid(root / "cwfid", 16, (2, 2), 0.01)


def test_paintings_are_checked_and_a_truncated_one_is_named(tmp_path):
    from fedpeft.training.diffusion import load_image_folder

    root = _data_root(tmp_path, {"vangogh/a.jpg": _jpeg(0), "vangogh/b.jpg": _jpeg(1)[:80]})  # b is cut off at the source
    with pytest.raises(CorruptDataError, match=r"cannot read .*vangogh/b.jpg as an RGB image"):
        load_image_folder(root / "vangogh", 16, data_root=root)
    (root / "vangogh/a.jpg").write_bytes(_jpeg(2))  # changed after the manifest was written
    with pytest.raises(DataFileError, match=r"data file is corrupt: .*vangogh/a.jpg has sha256"):
        load_image_folder(root / "vangogh", 16, data_root=root)


def test_glue_row_with_an_extra_tab_names_the_file(tmp_path):
    from fedpeft.data.glue import load_glue_tsv

    table = b"sentence\tlabel\na fine film\t1\na bad\tfilm\t0\n"
    root = _data_root(tmp_path, {"glue/SST-2/train.tsv": table})
    with pytest.raises(CorruptDataError, match=r"cannot read .*glue/SST-2/train.tsv as a tab-separated GLUE sst2 table"):
        load_glue_tsv(root, "sst2", "train")


def test_corrupt_eurosat_zip_names_the_file_with_checks_off(tmp_path):
    from fedpeft.data.eurosat import load_eurosat_zip

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("2750/Forest/Forest_1.jpg", _jpeg(0))
    root = _data_root(tmp_path, {"eurosat/EuroSAT_RGB.zip": buf.getvalue()[:-40]})
    with pytest.raises(CorruptDataError, match=r"cannot read .*EuroSAT_RGB.zip as a zip archive"):
        load_eurosat_zip(root, verify=False, progress=False)


# --- faults during a run -------------------------------------------------------------------------------------------

def _clients(tiny_images):
    from fedpeft.federated.loop import Client
    from fedpeft.federated.partition import partition

    return [Client(f"c{i}", tiny_images.subset(p)) for i, p in enumerate(partition(tiny_images.labels.numpy(), "iid", 2, seed=0))]


def test_non_finite_weights_stop_the_run_naming_round_client_and_settings(tiny_images):
    from fedpeft.federated.loop import NonFiniteError, RoundConfig, run_federated
    from fedpeft.federated.strategies import FedAvg
    from fedpeft.models.cnn import EuroSATCNN
    from fedpeft.training.image import ClassifierTrainer

    trainer = ClassifierTrainer(lr=1e6, batch_size=8, epochs=1, optimizer="sgd")
    with pytest.raises(NonFiniteError, match=r"round 1, client c0: training produced .*lr=1000000\.0"):
        run_federated(EuroSATCNN(), _clients(tiny_images), FedAvg(), trainer, RoundConfig(num_rounds=3), progress=False)


def test_diverging_server_loss_is_reported_and_a_nan_one_stops_the_run(tiny_images):
    from dataclasses import dataclass

    from fedpeft.federated.loop import NonFiniteError, RoundConfig, run_federated
    from fedpeft.federated.strategies import FedAvg
    from fedpeft.models.cnn import EuroSATCNN
    from fedpeft.training.contract import EvalResult, Trainer, TrainStats

    @dataclass
    class Exploding(Trainer):  # the server's loss grows 1000x per evaluation, then becomes NaN
        lr: float = 10.0
        losses: tuple = (1.0, 1e3, float("nan"))

        def __post_init__(self):
            self.calls = 0

        def train(self, model, data, generator, extra_loss=None, client_id="all"):
            return TrainStats(loss=1.0, examples=len(data), seconds=0.0)

        def evaluate(self, model, data):
            self.calls += 1
            return EvalResult(loss=self.losses[self.calls - 1])

    with pytest.warns(RuntimeWarning, match=r"round 1: the server's loss 1000 is over 100x its initial 1: training is diverging"), \
            pytest.raises(NonFiniteError, match=r"round 2: the server's loss is nan; the run stops here. .*lr=10.0"):
        run_federated(EuroSATCNN(), _clients(tiny_images), FedAvg(), Exploding(), RoundConfig(num_rounds=3, evaluate_clients=False),
                      server_test=tiny_images, progress=False)


def test_damaged_checkpoint_names_its_path(tiny_images, tmp_path):
    from fedpeft.federated.loop import RoundConfig, run_federated
    from fedpeft.federated.strategies import FedAvg
    from fedpeft.models.cnn import EuroSATCNN
    from fedpeft.training.image import ClassifierTrainer

    ckpt = tmp_path / "run.pt"
    trainer = ClassifierTrainer(lr=1e-3, batch_size=8, epochs=1)
    run_federated(EuroSATCNN(), _clients(tiny_images), FedAvg(), trainer, RoundConfig(num_rounds=2), checkpoint_path=ckpt,
                  stop_after_round=1, progress=False)
    ckpt.write_bytes(ckpt.read_bytes()[:500])
    with pytest.raises(ValueError, match=rf"checkpoint {ckpt} cannot be read .* Delete it to start the run afresh"):
        run_federated(EuroSATCNN(), _clients(tiny_images), FedAvg(), trainer, RoundConfig(num_rounds=2),
                      checkpoint_path=ckpt, progress=False)


def test_time_limited_eurosat_run_reports_its_rounds_and_stays_resumable(tmp_path, monkeypatch):
    from fedpeft.experiments import runs
    from fedpeft.experiments.eurosat_fedavg_ptq import report

    monkeypatch.setenv("FEDPEFT_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("FEDPEFT_RESULTS_DIR", str(tmp_path / "results"))
    settings = eurosat.load("embedded", {"time_limit_s": 1.0, "num_rounds": 2, "generated_images_per_class": 8})
    settings.cache_dir = tmp_path / "cache"
    settings.params["time_limit_s"] = 1e-6  # below the smallest allowed setting, so that the limit hits after round 1
    spec = runs.find_spec(settings, "iid-s0-r2")
    first = runs.run_and_write(settings, spec, progress=False)
    summary = report.run_summary({spec.run_id: first})
    assert first["stopped_by_time_limit"] and summary["rounds_completed"].tolist() == [1]
    acc = report.accuracy_by_partition(summary)
    assert acc[["rounds", "rounds_completed"]].values.tolist() == [[2, 1]]
    from fedpeft.reporting.claims import ClaimsLedger

    no_verdicts = ClaimsLedger("embedded", "eurosat_fedavg_ptq")
    assert "stopped at the time limit" in report.finding(settings, acc, _ptq_stub(), _comm_stub(), first, summary, no_verdicts)
    settings.params["time_limit_s"] = None
    resumed = runs.run_and_write(settings, spec, progress=False)
    assert resumed["resumed_from_round"] == 1 and resumed["rounds_completed"] == 2


def _ptq_stub():
    import pandas as pd

    return pd.DataFrame([{"method": "fp32", "drop_pct_points": 0.0, "compression": 1.0, "int8_weight_share": 0.0}])


def _comm_stub():
    import pandas as pd

    return pd.DataFrame([{"precision": "fp32", "round_mib": 1.0, "rounds": 1, "cost_usd": 5.0}])


@pytest.mark.slow
def test_failing_flower_client_surfaces_its_own_error(tiny_images, ray_cluster):
    from fedpeft.federated.flower_engine import run_flower
    from fedpeft.federated.loop import RoundConfig
    from fedpeft.federated.strategies import FedAvg
    from fedpeft.models.cnn import EuroSATCNN
    from fedpeft.training.image import ClassifierTrainer

    class Broken(ClassifierTrainer):
        def train(self, *args, **kwargs):
            raise RuntimeError("disk full on the farmer's phone")

    with pytest.raises(RuntimeError, match=r"round 1: 2 Flower client\(s\) failed; the first said: .*disk full on the farmer's phone"):
        run_flower(EuroSATCNN(), _clients(tiny_images), FedAvg(), Broken(lr=1e-3, batch_size=8, epochs=1), RoundConfig(num_rounds=1),
                   ray_address=ray_cluster.address)


# --- round two (issue "Faults and bad input, round two") -----------------------------------------------------------

def _load(experiment: str, overrides: dict):
    from fedpeft.core import registry

    return registry.get(experiment).settings.load("embedded", overrides)


@pytest.mark.parametrize("experiment, key, value, match", [
    ("weeds_qlora_federated", "fedavg_rounds", 10**9, r"weeds_qlora_federated.fedavg_rounds = 1000000000 is not allowed; it must be an integer in \[1, 10000\]"),
    ("weeds_qlora_federated", "diloco_rounds", 10**9, r"diloco_rounds = 1000000000 is not allowed; it must be an integer in \[1, 10000\]"),
    ("weeds_qlora_federated", "centralized_rounds", 10**9, r"centralized_rounds = 1000000000 is not allowed"),
    ("eurosat_fedavg_ptq", "seeds", [-1], r"eurosat_fedavg_ptq.seeds = \[-1\] is not allowed; it must be a list of distinct int \(at least 1\), each in \[0, 4294967295\]"),
    ("eurosat_fedavg_ptq", "seeds", [2**70], r"seeds = \[1180591620717411303424\] is not allowed; it must be a list of distinct int \(at least 1\), each in \[0, 4294967295\]"),
    ("glue_lora_aggregation", "grid_seed", -5, r"glue_lora_aggregation.grid_seed = -5 is not allowed; it must be an integer in \[0, 4294967295\]"),
    ("eurosat_fedavg_ptq", "torch_threads", 100000, r"torch_threads = 100000 is not allowed; it must be an integer in \[0, 1024\]"),
    ("eurosat_fedavg_ptq", "generated_images_per_class", 10**9, r"generated_images_per_class = 1000000000 is not allowed; it must be an integer in \[4, 10000\]"),
    ("weeds_qlora_federated", "step_fractions", [0.0], r"step_fractions = \[0.0\] is not allowed; it must be a list of float \(at least 1\), each in \[0.01, 1.0\]"),
    ("weeds_qlora_federated", "step_fractions", [0.1], r"step_fractions = \[0.1\] is not allowed with fedavg_local_steps = 4: a farmer with fraction 0.1 would get"),
    ("glue_lora_aggregation", "error_study_clients", [0], r"glue_lora_aggregation.error_study_clients = \[0\] is not allowed; it must be a list of int \(at least 1\), each in \[1, 1000\]"),
    ("eurosat_fedavg_ptq", "learning_rate", "1e-3", r"learning_rate = '1e-3' is not allowed; .* \(YAML read '1e-3' as text, not a number: write it as 0.001"),
])
def test_values_a_library_would_reject_are_refused_by_name(experiment, key, value, match):
    with pytest.raises((ParameterError, ValueError), match=match):
        _load(experiment, {key: value})


def test_every_numeric_setting_has_bounds_a_library_can_meet():
    from fedpeft.core import registry

    unbounded = [(e.name, key) for e in registry.experiments() for key, spec in e.settings.SCHEMA.items()
                 if (spec.item if spec.kind is list else spec.kind) in (int, float) and spec.choices is None
                 and (spec.low is None or spec.high is None)]
    assert unbounded == []


def test_two_unknown_keys_of_different_types_are_named(tmp_path, monkeypatch):
    _params_file(tmp_path, monkeypatch, COMMON + "eurosat_fedavg_ptq:\n  1: a\n  zz: b\n")
    with pytest.raises(ParameterError, match=r"eurosat_fedavg_ptq.zz: unknown setting \(value 'b'\)"):
        eurosat.load("embedded")


def test_a_look_alike_key_is_shown_escaped(tmp_path, monkeypatch):
    _params_file(tmp_path, monkeypatch, COMMON + "eurosat_fedavg_ptq:\n  l\u0435arning_rate: 0.01\n")
    with pytest.raises(ParameterError, match=r"written 'l\\u0435arning_rate': it holds non-ASCII characters"):
        eurosat.load("embedded")


@pytest.mark.parametrize("content, match", [
    (b"", r"embedded.yaml is empty; it must hold a common section"),
    (b"common:\n  profile: \xff\xfe\n", r"embedded.yaml: not UTF-8 text \(byte \d+"),
    (b"common: [\n", r"embedded.yaml: not valid YAML"),
])
def test_an_unreadable_params_file_is_named(tmp_path, monkeypatch, content, match):
    path = tmp_path / "embedded.yaml"
    path.write_bytes(content)
    monkeypatch.setattr(config, "params_path", lambda profile: path)
    with pytest.raises(ParameterError, match=match):
        eurosat.load("embedded")


def test_a_yaml_merge_key_works_and_its_keys_can_be_overridden(tmp_path, monkeypatch):
    text = (ROOT / "params" / "embedded.yaml").read_text()
    text = text.replace("eurosat_fedavg_ptq:\n", "eurosat_fedavg_ptq: &eurosat\n", 1)
    _params_file(tmp_path, monkeypatch, text + "copy:\n  <<: *eurosat\n  num_rounds: 7\n")
    raw = config.load_raw("embedded")
    assert raw["copy"]["num_rounds"] == 7 and raw["copy"]["learning_rate"] == raw["eurosat_fedavg_ptq"]["learning_rate"]


def test_a_binary_mode_manifest_line_is_read(tmp_path):
    root = _data_root(tmp_path, {"a.txt": b"x"}, manifest=False)
    (root / "MANIFEST.sha256").write_text(f"{hashlib.sha256(b'x').hexdigest()} *./a.txt\n")  # sha256sum -b
    assert require_data_file(root, "a.txt") == root / "a.txt"


@pytest.mark.parametrize("task, rows, match", [
    ("sst2", b"sentence\tlabel\na fine film\t1\na bad film\t2\n", r"SST-2/train.tsv, row 3: label '2' is not allowed for GLUE sst2; it must be an integer class id in \[0, 1\]"),
    ("sst2", b"sentence\tlabel\na fine film\t\n", r"SST-2/train.tsv, row 2: label '' is not allowed for GLUE sst2"),
    ("sst2", b"sentence\tlabel\na fine film\tyes\n", r"row 2: label 'yes' is not allowed"),
    ("stsb", b"index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tlabel\n"
             b"0\tmain\tf\t2012\t0\ts\ts\ta cat\ta dog\tNaN\n", r"STS-B/train.tsv, row 2: label 'NaN' is not allowed for GLUE stsb; it must be a finite score in \[0, 5\]"),
])
def test_a_bad_glue_label_names_the_file_and_row(tmp_path, task, rows, match):
    from fedpeft.data.glue import TSV_FILES, load_glue_tsv

    folder = TSV_FILES[task][0]
    root = _data_root(tmp_path, {f"{folder}/train.tsv": rows})
    with pytest.raises(CorruptDataError, match=match):
        load_glue_tsv(root, task, "train")


def test_a_record_without_scalars_and_a_checkpoint_that_is_a_tensor_are_named(tmp_path):
    import json

    import torch

    from fedpeft.core import checkpoints
    from fedpeft.core.records import RecordError, RunRecord

    folder = tmp_path / "run"
    RunRecord("e", "r", {}, {"x": 1}).write(folder)
    body = json.loads((folder / "record.json").read_text())
    del body["scalars"]
    (folder / "record.json").write_text(json.dumps(body))
    with pytest.raises(RecordError, match=rf"the result record in {folder} is damaged \(record.json lacks \['scalars'\]\)"):
        RunRecord.read(folder)
    torch.save(torch.zeros(2), tmp_path / "rounds.pt")
    with pytest.raises(ValueError, match=r"checkpoint .*rounds.pt holds a Tensor, not a fedpeft checkpoint"):
        checkpoints.load(tmp_path / "rounds.pt")


def test_a_checkpoint_write_that_fails_names_the_file(tmp_path, monkeypatch):
    import torch

    from fedpeft.core.files import atomic_torch_save

    def full_disk(*_):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"could not write .*rounds.pt \(RuntimeError: .*inline_container.* MiB are free on its disk"):
        atomic_torch_save({"x": 1}, tmp_path / "rounds.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_yolo_checkpoint_is_unpickled_only_when_the_manifest_vouches_for_it(tmp_path, monkeypatch):
    """A crafted .pt in the data root (it would run code on unpickling) is refused, even with checks switched off."""
    from fedpeft.core.integrity import require_trusted_file

    root = _data_root(tmp_path, {"yolo11s-cls.pt": b"genuine"})
    assert require_trusted_file(root, "yolo11s-cls.pt") == root / "yolo11s-cls.pt"
    (root / "yolo11s-cls.pt").write_bytes(b"crafted pickle")
    monkeypatch.setenv("FEDPEFT_VERIFY_DATA", "0")
    with pytest.raises(DataFileError, match=r"yolo11s-cls.pt has sha256 .* it is loaded by unpickling .* whatever FEDPEFT_VERIFY_DATA says"):
        require_trusted_file(root, "yolo11s-cls.pt")
    (root / "other.pt").write_bytes(b"x")
    with pytest.raises(DataFileError, match=r"other.pt is not listed in"):
        require_trusted_file(root, "other.pt")
