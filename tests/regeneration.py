"""Comparing regenerated metrics with the committed ones, within the tolerances of metric_tolerances.yaml."""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

TOLERANCES = Path(__file__).with_name("metric_tolerances.yaml")


def load_tolerances(path: Path = TOLERANCES) -> list[dict[str, Any]]:
    rules = yaml.safe_load(path.read_text())
    for rule in rules:
        kinds = {"skip", "exact", "abs", "rel"} & set(rule)
        if "match" not in rule or len(kinds) != 1:
            raise ValueError(f"{path}: rule {rule} needs 'match' and exactly one of skip, exact, abs, rel")
    return rules


def rule_for(key: str, rules: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return next((r for r in rules if fnmatch.fnmatchcase(key, r["match"])), None)


def compare_metrics(committed: Mapping[str, Any], fresh: Mapping[str, Any], rules: Sequence[Mapping[str, Any]],
                    experiment: str = "") -> list[str]:
    """One line per metric that moved beyond its tolerance, appeared, disappeared or has no rule (empty: all
    within tolerance). Each line names the metric, both values, the difference and the tolerance."""
    problems = []
    prefix = f"{experiment}: " if experiment else ""
    for key in sorted(set(committed) | set(fresh)):
        if key not in fresh:
            problems.append(f"{prefix}{key} is committed ({committed[key]!r}) but was not regenerated")
            continue
        if key not in committed:
            problems.append(f"{prefix}{key} was regenerated ({fresh[key]!r}) but is not committed")
            continue
        rule = rule_for(key, rules)
        if rule is None:
            problems.append(f"{prefix}{key} has no tolerance in {TOLERANCES.name}; add a rule for it")
            continue
        if "skip" in rule:
            continue
        old, new = committed[key], fresh[key]
        if old is None or new is None:  # NaN is written as null
            if old is not new:
                problems.append(f"{prefix}{key}: committed {old!r}, regenerated {new!r}")
            continue
        diff = abs(float(new) - float(old))
        if "exact" in rule:
            ok, allowed = new == old, "exact"
        elif "abs" in rule:
            ok, allowed = diff <= rule["abs"], f"abs {rule['abs']}"
        else:
            ok, allowed = diff <= rule["rel"] * max(abs(float(old)), 1e-12), f"rel {rule['rel']}"
        if not ok or math.isnan(diff):
            problems.append(f"{prefix}{key} moved from {old!r} to {new!r} (by {float(new) - float(old):+.4g}; allowed {allowed})")
    return problems
