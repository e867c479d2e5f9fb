"""Loading and validating the study's parameters.

Each profile has one file, ``params/<profile>.yaml``, with one section per experiment. A section is validated
against a schema when it is loaded: an unknown key, a wrong type or a value out of range raises
:class:`ParameterError` naming the key, the value and what is allowed, before any work starts.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

PROFILES = ("embedded", "local", "paper")
DEFAULT_PROFILE = "embedded"

#: The repository's root.
REPO_ROOT = Path(__file__).resolve().parents[3]  # lib/fedpeft/core/config.py -> the repository


class ParameterError(ValueError):
    """A parameter is unknown, of the wrong type, or out of its allowed range."""


@dataclass(frozen=True)
class Spec:
    """What one parameter may hold.

    ``kind`` is a Python type (``int``, ``float``, ``str``, ``bool``) or ``list`` with ``item`` giving the
    element type. ``choices`` restricts values (or list elements); ``low``/``high`` bound numbers (inclusive);
    ``nullable`` allows ``None``; ``unique`` forbids repeated list elements (seeds). Numbers must be finite: NaN
    and infinities are refused whatever the bounds.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    choices: Sequence[Any] | None = None
    item: type | None = None
    nullable: bool = False
    min_items: int = 0
    unique: bool = False
    doc: str = ""

    def allowed(self) -> str:
        if self.choices is not None:
            what = f"one of {list(self.choices)}"
        elif self.kind is list:
            what = f"a list of {'distinct ' if self.unique else ''}{self.item.__name__}" + (
                f" (at least {self.min_items})" if self.min_items else "")
        else:
            what = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}.get(self.kind, self.kind.__name__)
        if self.low is not None or self.high is not None:
            lo = "-inf" if self.low is None else self.low
            hi = "inf" if self.high is None else self.high
            what += f"{', each' if self.kind is list else ''} in [{lo}, {hi}]"
        if self.nullable:
            what += " or null"
        return what


#: Seeds every generator of the study accepts (numpy's legacy seeding stops at 2**32 - 1; a negative seed is refused).
SEED_LOW, SEED_HIGH = 0, 2**32 - 1
#: torch threads a run may ask for (0: torch's default, one per core); libgomp fails far below 100,000.
MAX_TORCH_THREADS = 1024


def seed_spec(doc: str = "") -> Spec:
    return Spec(int, low=SEED_LOW, high=SEED_HIGH, doc=doc)


def seeds_spec(doc: str = "") -> Spec:
    """A list of distinct seeds, at least one."""
    return Spec(list, item=int, unique=True, min_items=1, low=SEED_LOW, high=SEED_HIGH, doc=doc)


def threads_spec() -> Spec:
    return Spec(int, low=0, high=MAX_TORCH_THREADS, doc="torch's intra-op threads; 0: torch's default (one per core)")


def _escaped(key: Any) -> str:
    """For a key with non-ASCII characters (a Cyrillic е prints like an e), how it is written, escaped."""
    return "" if str(key).isascii() else f" (written {ascii(key)}: it holds non-ASCII characters)"


def _number_as_text(value: Any, spec: Spec) -> str:
    """A hint when YAML read a number as text (YAML 1.1 reads ``1e-3`` as a string: it wants ``1.0e-3``)."""
    if spec.kind in (int, float) or (spec.kind is list and spec.item in (int, float)):
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str):
                try:
                    number = float(v)
                except ValueError:
                    continue
                return (f" (YAML read {v!r} as text, not a number: write it as {number!r}, or with a dot before the "
                        "exponent, such as 1.0e-3)")
    return ""


def _type_ok(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check_scalar(value: Any, kind: type, spec: Spec) -> bool:
    if not _type_ok(value, kind):
        return False
    if kind is float and not math.isfinite(value):  # NaN would pass every range check below
        return False
    if spec.choices is not None and value not in spec.choices:
        return False
    if spec.low is not None and value < spec.low:
        return False
    return not (spec.high is not None and value > spec.high)


def validate_section(section: str, values: Mapping[str, Any], schema: Mapping[str, Spec]) -> dict[str, Any]:
    """Check ``values`` against ``schema`` and return a plain dict; raise :class:`ParameterError` otherwise.

    Every key of the schema is required, so that each profile file states its settings in full.
    """
    if not isinstance(values, Mapping):
        raise ParameterError(f"{section}: expected a mapping of settings, got {type(values).__name__}")
    unknown = sorted(set(values) - set(schema), key=repr)  # keys of different types (an int and a str) sort by repr
    if unknown:
        raise ParameterError(
            f"{section}.{unknown[0]}: unknown setting{_escaped(unknown[0])} (value {values[unknown[0]]!r}); allowed keys: "
            f"{sorted(schema)}"
        )
    missing = sorted(set(schema) - set(values))
    if missing:
        raise ParameterError(f"{section}.{missing[0]}: missing; it must be {schema[missing[0]].allowed()}")
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        value = values[key]
        name = f"{section}.{key}"
        if value is None:
            if not spec.nullable:
                raise ParameterError(f"{name} = None is not allowed; it must be {spec.allowed()}")
        elif spec.kind is list:
            ok = isinstance(value, list) and len(value) >= spec.min_items
            ok = ok and all(_check_scalar(v, spec.item, spec) for v in value)
            if ok and spec.unique and len(set(value)) != len(value):
                repeated = sorted({v for v in value if value.count(v) > 1})
                raise ParameterError(f"{name} = {value!r} repeats {repeated}; it must be {spec.allowed()} "
                                     "(a repeated seed would count one run twice)")
            if not ok:
                raise ParameterError(f"{name} = {value!r} is not allowed; it must be {spec.allowed()}{_number_as_text(value, spec)}")
            value = [float(v) if spec.item is float else v for v in value]
        elif not _check_scalar(value, spec.kind, spec):
            raise ParameterError(f"{name} = {value!r} is not allowed; it must be {spec.allowed()}{_number_as_text(value, spec)}")
        elif spec.kind is float:
            value = float(value)
        out[key] = value
    return out


COMMON_SCHEMA: dict[str, Spec] = {
    "profile": Spec(str, choices=PROFILES, doc="which profile this file describes"),
    "data_root": Spec(str, doc="folder of the real data sets (local profile), relative to the repository root"),
    "reports_dir": Spec(str, doc="where this profile's results go, relative to the repository root"),
    "cache_dir": Spec(str, doc="scratch folder for decoded data and checkpoints (ignored by git)"),
}


def params_path(profile: str) -> Path:
    if profile not in PROFILES:
        raise ParameterError(f"profile = {profile!r} is not allowed; it must be one of {list(PROFILES)}")
    return REPO_ROOT / "params" / f"{profile}.yaml"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would silently keep the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *anchor``: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ParameterError(f"{self.name}: key {key!r} is given twice (lines {seen[key] + 1} and "
                                     f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)  # SafeLoader's: merges ``<<`` keys, then builds the dict


def load_raw(profile: str) -> dict[str, Any]:
    path = params_path(profile)
    if not path.is_file():
        raise FileNotFoundError(f"parameters file for profile {profile!r} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ParameterError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save the parameters file as UTF-8") from err
    loader = _UniqueKeyLoader(text)
    loader.name = str(path)
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as err:
        raise ParameterError(f"{path}: not valid YAML ({err})") from err
    finally:
        loader.dispose()
    if raw is None:
        raise ParameterError(f"{path} is empty; it must hold a common section and one section per experiment")
    if not isinstance(raw, dict):
        raise ParameterError(f"{path}: expected a mapping of sections (common, one per experiment), got {type(raw).__name__}")
    return raw


@dataclass
class Settings:
    """The validated settings of one experiment under one profile, with resolved paths."""

    profile: str
    experiment: str
    params: dict[str, Any]
    data_root: Path
    report_dir: Path
    cache_dir: Path
    common: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.params[key]

    @property
    def metrics_path(self) -> Path:
        """Flat metrics for ``dvc metrics``: ``<reports>/metrics/<experiment>.json`` (DVC forbids a metrics file
        inside a directory output, so it sits beside the experiment's folder)."""
        return self.report_dir.parent / "metrics" / f"{self.experiment}.json"

    @property
    def history_path(self) -> Path:
        """Per-round history for ``dvc plots``: ``<reports>/plots/<experiment>_history.csv``."""
        return self.report_dir.parent / "plots" / f"{self.experiment}_history.csv"


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (REPO_ROOT / p).resolve()


#: Where a notebook run by hand writes its report (git ignores build/); the pipeline writes to reports/<profile>.
HAND_RUN_REPORTS = REPO_ROOT / "build" / "notebook-runs"


def load_settings(profile: str, experiment: str, schema: Mapping[str, Spec], overrides: Mapping[str, Any] | None = None) -> Settings:
    """Load ``params/<profile>.yaml``, validate its ``common`` and ``experiment`` sections, apply ``overrides``.

    Environment variables adjust paths without editing the file: ``FEDPEFT_DATA_ROOT`` (the data root),
    ``FEDPEFT_REPORTS_DIR`` (where the reports go: the pipeline's report stages set it to a staging folder beside
    ``common.reports_dir``, the nbval check to a scratch folder; without it, as in a notebook run by hand, reports go
    to :data:`HAND_RUN_REPORTS`/<profile>, which git ignores) and ``FEDPEFT_CACHE_DIR`` (a scratch cache:
    checkpoints, decoded data, cached features).
    """
    raw = load_raw(profile)
    common = validate_section("common", raw.get("common", {}), COMMON_SCHEMA)
    if common["profile"] != profile:
        raise ParameterError(f"common.profile = {common['profile']!r} in {params_path(profile)} does not match the profile {profile!r}")
    if experiment not in raw:
        raise ParameterError(f"{params_path(profile)} has no section {experiment!r}; sections: {sorted(raw)}")
    if not isinstance(raw[experiment], Mapping):
        raise ParameterError(f"{params_path(profile)}: section {experiment!r} must be a mapping of settings, "
                             f"got {type(raw[experiment]).__name__} ({raw[experiment]!r})")
    values = dict(raw[experiment])
    for key, value in (overrides or {}).items():
        if key not in schema:
            raise ParameterError(f"{experiment}.{key}: unknown setting (value {value!r}); allowed keys: {sorted(schema)}")
        values[key] = value
    params = validate_section(experiment, values, schema)
    data_root = _resolve(os.environ.get("FEDPEFT_DATA_ROOT", common["data_root"]))
    # The pipeline (notebook_stage, nbval, regenerate) always names where reports go; a notebook run by hand
    # (JupyterLab, nbconvert) writes to a git-ignored scratch folder, so it never rewrites the committed reports.
    reports_root = _resolve(os.environ.get("FEDPEFT_REPORTS_DIR", HAND_RUN_REPORTS / Path(common["reports_dir"]).name))
    return Settings(
        profile=profile,
        experiment=experiment,
        params=params,
        data_root=data_root,
        report_dir=reports_root / experiment,
        cache_dir=_resolve(os.environ.get("FEDPEFT_CACHE_DIR", common["cache_dir"])),
        common=common,
    )
