"""The study's experiments, found in one place: each experiment package declares one :class:`Experiment` in its
``experiment.py``, and every part of the study that loops over experiments (the pipeline renderer, the run stage,
the report stages, the summary, the site, the paper, the command line and the parametrised tests) asks this
registry. There is no other list of experiments.

An experiment is a package ``fedpeft.experiments.<name>`` (or any importable package, for an experiment registered
from elsewhere, such as a test's toy experiment) with

- ``experiment.py``: ``EXPERIMENT = Experiment(...)``, what the study needs to know of it (below);
- ``settings.py``: ``SCHEMA``, ``load(profile)`` and the plan, report and kind keys (see :mod:`fedpeft.experiments.runs`);
- ``runs.py``: ``run_specs(settings)`` and ``execute(settings, spec, progress)`` (one DVC run stage per spec);
- ``report.py``: tables, figures, claims and the conclusion, from records only (``INPUTS``: extra files it reads).

The registry imports an experiment's ``experiment.py`` only, never its runs or report, so listing experiments is
cheap, and the run stages' dependencies (read from the imports in the source) do not include any declaration: a new
title reruns no run stage (the report, summary and site stages, which print it, list the declarations). A
declaration imports nothing but this module (a test checks), so it cannot pull a layer into another.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

#: Where the study's own experiment packages are (found by their ``experiment.py``; imported by name, never statically,
#: so that this lowest layer does not import the experiments).
EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"

_REGISTERED: dict[str, Experiment] = {}


@dataclass(frozen=True)
class MainScore:
    """Where a run's main score is in its record: a scalar (``where="scalar"``) or the last value of a column of one
    of its tables (``where`` = the table's name), with a label (and unit) and a factor to show it with (100 for a
    fraction shown in %)."""

    where: str
    key: str
    label: str
    scale: float = 1.0


@dataclass(frozen=True)
class Experiment:
    """One experiment of the study.

    ``name`` is its package's last part, its section in ``params/<profile>.yaml`` and its folder in ``results/`` and
    ``reports/``. ``notebook`` (repository-relative) is its report notebook; the study orders experiments by it.
    ``history`` is the (x, y) of the per-round table the report stage writes for ``dvc plots``. ``package`` is the
    importable package holding its settings, runs and report modules (default ``fedpeft.experiments.<name>``).
    ``packages``: the distributions beyond the study's common ones whose versions its report lists."""

    name: str
    title: str
    seed_report: str
    notebook: str
    history: tuple[str, str]
    main_score: MainScore
    packages: tuple[str, ...] = ()
    package: str = ""

    def __post_init__(self) -> None:
        if not self.package:
            object.__setattr__(self, "package", f"fedpeft.experiments.{self.name}")

    def module(self, part: str) -> ModuleType:
        """The experiment's ``settings``, ``runs`` or ``report`` module."""
        return importlib.import_module(f"{self.package}.{part}")

    @cached_property
    def settings(self) -> ModuleType:
        return self.module("settings")

    @cached_property
    def runs(self) -> ModuleType:
        return self.module("runs")

    @cached_property
    def report(self) -> ModuleType:
        return self.module("report")

    def load(self, profile: str):
        """The experiment's settings in ``profile`` (:func:`fedpeft.core.config.load_settings` through its schema)."""
        return self.settings.load(profile)

    def run_specs(self, settings) -> list:
        return self.runs.run_specs(settings)

    @property
    def plan_keys(self) -> frozenset[str]:
        return frozenset(self.settings.PLAN_KEYS)

    @property
    def report_keys(self) -> frozenset[str]:
        return frozenset(self.settings.REPORT_KEYS)

    @property
    def kind_keys(self) -> dict[str, frozenset[str]]:
        return {k: frozenset(v) for k, v in getattr(self.settings, "KIND_KEYS", {}).items()}

    def data_files(self, settings: Any) -> list[str]:
        """The data-root files its runs read under ``settings`` (``settings.data_files``; none when it declares
        nothing): manifest paths, a trailing ``/`` for a whole folder. Their manifest lines make the run stages'
        data lock (:mod:`fedpeft.experiments.data_lock`)."""
        found = getattr(self.settings, "data_files", None)
        return list(found(settings)) if found is not None else []

    @property
    def report_inputs(self) -> tuple[str, ...]:
        """Files beside the records that its report reads (``report.INPUTS``): report-stage dependencies."""
        return tuple(getattr(self.report, "INPUTS", ()))


def register(experiment: Experiment) -> Experiment:
    """Add an experiment declared outside ``fedpeft.experiments`` (a test's toy experiment, a user's own package);
    :func:`unregister` takes it out again."""
    if experiment.name in _discovered() and _discovered()[experiment.name] is not experiment:
        raise ValueError(f"experiment name {experiment.name!r} is already taken by {_discovered()[experiment.name].package}")
    _REGISTERED[experiment.name] = experiment
    return experiment


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


_DISCOVERED: dict[str, Experiment] = {}


def _discovered() -> dict[str, Experiment]:
    """The experiments of this package: every ``fedpeft/experiments/<name>/experiment.py``."""
    if not _DISCOVERED:
        for path in sorted(EXPERIMENTS_DIR.glob("*/experiment.py")):
            declared = importlib.import_module(f"fedpeft.experiments.{path.parent.name}.experiment").EXPERIMENT
            if declared.name != path.parent.name:
                raise ValueError(f"{path} declares name={declared.name!r}; it must be its package's name {path.parent.name!r}")
            _DISCOVERED[declared.name] = declared
    return _DISCOVERED


def experiments() -> list[Experiment]:
    """Every experiment, in the order of their notebooks (``01_...`` first)."""
    return sorted({**_discovered(), **_REGISTERED}.values(), key=lambda e: (Path(e.notebook).name, e.name))


def names() -> list[str]:
    return [e.name for e in experiments()]


def get(name: str) -> Experiment:
    """The experiment called ``name``; a clear error naming the ones there are."""
    found = {e.name: e for e in experiments()}
    if name not in found:
        raise ValueError(f"experiment = {name!r} is not an experiment of this study; experiments: {list(found)}")
    return found[name]
