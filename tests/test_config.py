import pytest

from fedpeft.core.config import ParameterError, Spec, load_settings, validate_section
from fedpeft.experiments.eurosat_fedavg_ptq import settings as exp

SCHEMA = {
    "rounds": Spec(int, low=1),
    "lr": Spec(float, low=0.0, high=1.0),
    "strategy": Spec(str, choices=("fedavg", "fedprox")),
    "seeds": Spec(list, item=int, min_items=1),
    "limit": Spec(float, low=1.0, nullable=True),
}
GOOD = {"rounds": 3, "lr": 0.1, "strategy": "fedavg", "seeds": [0, 1], "limit": None}


def test_valid_section_passes_and_ints_become_floats():
    out = validate_section("x", dict(GOOD, lr=1), SCHEMA)
    assert out["lr"] == 1.0 and isinstance(out["lr"], float)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rounds": -2}, "x.rounds = -2 is not allowed; it must be an integer in \\[1, inf\\]"),
        ({"rounds": 2.5}, "x.rounds = 2.5 is not allowed"),
        ({"rounds": True}, "x.rounds = True is not allowed"),
        ({"strategy": "fedsgd"}, "x.strategy = 'fedsgd' is not allowed; it must be one of \\['fedavg', 'fedprox'\\]"),
        ({"lr": 3.0}, "x.lr = 3.0 is not allowed; it must be a finite number in \\[0.0, 1.0\\]"),
        ({"seeds": []}, "x.seeds = \\[\\] is not allowed; it must be a list of int \\(at least 1\\)"),
        ({"seeds": [0, "a"]}, "x.seeds = \\[0, 'a'\\] is not allowed"),
        ({"limit": 0.5}, "x.limit = 0.5 is not allowed"),
        ({"rounds": None}, "x.rounds = None is not allowed"),
        ({"epochs": 2}, "x.epochs: unknown setting \\(value 2\\); allowed keys"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(change, message):
    with pytest.raises(ParameterError, match=message):
        validate_section("x", dict(GOOD, **change), SCHEMA)


def test_missing_key_is_named():
    values = dict(GOOD)
    del values["lr"]
    with pytest.raises(ParameterError, match="x.lr: missing; it must be a finite number"):
        validate_section("x", values, SCHEMA)


@pytest.mark.parametrize("profile", ["embedded", "local", "paper"])
def test_every_profile_file_validates(profile):
    s = exp.load(profile)
    assert s.profile == profile
    assert s.report_dir.name == exp.EXPERIMENT and s.report_dir.parent.name == profile
    assert s.metrics_path.parent.parent == s.report_dir.parent


def test_profiles_keep_results_apart():
    dirs = {exp.load(p).report_dir for p in ("embedded", "local", "paper")}
    assert len(dirs) == 3


def test_overrides_are_validated():
    with pytest.raises(ParameterError, match="eurosat_fedavg_ptq.num_rounds = -1 is not allowed"):
        exp.load("embedded", {"num_rounds": -1})
    with pytest.raises(ParameterError, match="unknown setting"):
        exp.load("embedded", {"rounds": 3})
    assert exp.load("embedded", {"num_rounds": 7})["num_rounds"] == 7


def test_unknown_profile():
    with pytest.raises(ParameterError, match="profile = 'laptop' is not allowed"):
        load_settings("laptop", exp.EXPERIMENT, exp.SCHEMA)


def test_environment_overrides_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDPEFT_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("FEDPEFT_REPORTS_DIR", str(tmp_path / "reports"))
    s = exp.load("local")
    assert s.data_root == tmp_path / "data"
    assert s.report_dir == tmp_path / "reports" / exp.EXPERIMENT


def test_a_notebook_run_by_hand_never_rewrites_the_committed_reports(monkeypatch):
    from fedpeft.core.config import HAND_RUN_REPORTS, REPO_ROOT

    monkeypatch.delenv("FEDPEFT_REPORTS_DIR", raising=False)
    s = exp.load("local")
    assert s.report_dir == HAND_RUN_REPORTS / "local" / exp.EXPERIMENT
    assert s.report_dir.relative_to(REPO_ROOT).parts[0] == "build"  # git-ignored
