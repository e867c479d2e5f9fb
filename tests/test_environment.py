"""One source of truth for dependencies, and the pipeline files kept in step."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_dependencies_are_pinned_in_pyproject():
    from lockfile import pyproject_dependencies

    lists = pyproject_dependencies()
    assert lists["dependencies"] and lists["dev"], "pyproject.toml lists no dependencies or no dev extra"
    unpinned = [d for deps in lists.values() for d in deps if not re.search(r"==\d", d)]
    assert not unpinned, f"unpinned dependencies: {unpinned}"


def test_development_tools_are_an_extra_the_library_never_imports():
    from lockfile import normalize, pyproject_dependencies

    lists = pyproject_dependencies()
    name = lambda r: normalize(re.match(r"[A-Za-z0-9._-]+", r).group())  # noqa: E731
    dev = {name(r) for r in lists["dev"]}
    assert {"pytest", "nbval", "ruff"} <= dev and not dev & {name(r) for r in lists["dependencies"]}
    imports = [p for p in (ROOT / "lib").rglob("*.py") if re.search(r"^\s*(import|from) (pytest|nbval|ruff)\b", p.read_text(), re.M)]
    assert not imports, f"the library imports a development tool, which `pip install .` does not give: {imports}"


def test_environment_yml_installs_the_lock_and_pins_nothing_else():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == ["--require-hashes", "-r requirements.lock"], "environment.yml must install requirements.lock, nothing else"
    assert sorted(conda) == ["pip", "python=3.11"]


def test_lock_was_made_from_the_current_pyproject():
    from lockfile import dependencies_digest, read_stamp

    assert read_stamp() == dependencies_digest(), (
        "pyproject.toml's dependencies changed since requirements.lock was made; run `make lock` and commit both")


def test_lock_pins_every_direct_dependency_at_its_pyproject_version():
    from lockfile import locked_versions, normalize, pyproject_dependencies

    locked = locked_versions()
    for requirement in pyproject_dependencies()["dependencies"] + pyproject_dependencies()["dev"]:
        name, version = re.match(r"([A-Za-z0-9._-]+)(?:\[[^]]*\])?==([^\s;]+)", requirement).groups()
        assert locked.get(normalize(name)) == version, f"{requirement} is locked at {locked.get(normalize(name))}"


def test_environment_holds_exactly_the_locked_versions():
    """Every package installed here is in the lock at the same version (the project itself and the packages
    installed without dependencies aside), so a number in a report comes from the locked set."""
    import sysconfig
    from importlib import metadata

    from lockfile import locked_versions, normalize, pyproject_dependencies

    site = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    locked = locked_versions()
    outside = {"fedpeft", "pip"} | {normalize(r.split("==")[0]) for r in pyproject_dependencies()["install-without-dependencies"]}
    drift = {}
    for dist in metadata.distributions():
        if Path(str(dist.locate_file(""))).resolve() not in site:
            continue  # vendored inside another package (Ray puts its own psutil on sys.path)
        name = normalize(dist.metadata["Name"])
        if name not in outside and locked.get(name) != dist.version:
            drift[name] = (dist.version, locked.get(name))
    assert not drift, f"installed (version, locked version) that differ: {drift}; rebuild the environment with `make env`"


def test_pipelines_are_rendered_from_the_run_plans_and_module_imports():
    from fedpeft.experiments.pipelines import PIPELINES, render_pipeline

    for profile, rel in PIPELINES.items():
        assert (ROOT / rel).read_text() == render_pipeline(profile), (
            f"{rel} differs from its rendering from params/{profile}.yaml and the imports: run `make pipelines`")


def test_run_stages_never_reach_the_reporting_layer():
    from fedpeft.core import registry
    from fedpeft.experiments.pipelines import run_stage_dependencies

    assert registry.names()
    for experiment in registry.names():
        deps = run_stage_dependencies(experiment)
        assert not [d for d in deps if "/reporting/" in d or d.endswith("/report.py")], (
            f"{experiment}'s run stages reach report code, so a figure or claims change would retrain: {deps}")
        assert f"lib/fedpeft/experiments/{experiment}/runs.py" in deps


def test_every_notebook_has_a_stage_and_a_parameters_cell():
    import nbformat

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    deps = {d for s in stages.values() for d in s.get("deps", s.get("do", {}).get("deps", []))}
    for nb_path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert f"notebooks/{nb_path.name}" in deps, f"{nb_path.name} has no stage in dvc.yaml"
        nb = nbformat.read(nb_path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and "profile" in tagged[0].source


def test_each_stage_depends_on_every_module_its_notebook_and_command_reach():
    from fedpeft.experiments.pipelines import stage_dependencies

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        if "foreach" in stage:
            continue  # run stages: checked by the rendering test
        missing = sorted(stage_dependencies(stage) - set(stage["deps"]))
        assert not missing, f"stage {name} does not list {missing}, which its notebook or command reaches"


def test_module_closure_follows_relative_imports():
    from fedpeft.experiments.pipelines import closure

    files = {p.name for p in closure({"fedpeft.experiments.code_lm_fedprox.runs"})}
    assert {"runs.py", "settings.py", "code_corpus.py", "causal_lm.py", "loop.py", "ledger.py", "contract.py"} <= files
    assert "ptq.py" not in files and "eurosat.py" not in files  # the round loop no longer reaches the EuroSAT loader
