"""Regenerated embedded metrics match the committed ones within declared tolerances.

``make nbval`` re-executes the embedded notebooks into a scratch folder and then runs this file with
``FEDPEFT_FRESH_REPORTS`` pointing there; in a plain ``pytest tests`` run only the checks of the comparison itself run.
"""

import json
import os
from pathlib import Path

import pytest

from regeneration import compare_metrics, load_tolerances, rule_for

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "reports" / "embedded" / "metrics"
RULES = load_tolerances()


def test_every_committed_metric_has_a_tolerance():
    missing = [f"{p.stem}: {k}" for p in sorted(COMMITTED.glob("*.json")) for k in json.loads(p.read_text())
               if rule_for(k, RULES) is None]
    assert not missing, f"metrics without a rule in metric_tolerances.yaml: {missing}"


def test_comparison_names_the_metric_that_moved_and_by_how_much():
    committed = json.loads((COMMITTED / "eurosat_fedavg_ptq.json").read_text())
    assert compare_metrics(committed, dict(committed), RULES) == []
    perturbed = dict(committed)
    key = next(k for k in committed if k.endswith("_accuracy_mean_pct"))
    perturbed[key] = committed[key] + 10.5
    perturbed["ptq_fp16_size_bytes"] = committed["ptq_fp16_size_bytes"] + 1
    perturbed["run_wall_s_mean"] = committed["run_wall_s_mean"] * 3  # timings are never compared
    problems = compare_metrics(committed, perturbed, RULES, "eurosat")
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"eurosat: {key} moved from") and "+10.5" in problems[0] and "abs 10.0" in problems[0]
    assert "ptq_fp16_size_bytes moved" in problems[1] and "exact" in problems[1]
    within = dict(committed, **{key: committed[key] + 9.5})
    assert compare_metrics(committed, within, RULES) == []


def test_comparison_flags_missing_new_and_undeclared_metrics():
    rules = [{"match": "*_loss", "rel": 0.01}]
    problems = compare_metrics({"a_loss": 1.0, "gone_loss": 2.0}, {"a_loss": 1.005, "new_loss": 1.0, "odd": 3}, rules)
    assert problems == ["gone_loss is committed (2.0) but was not regenerated",
                        "new_loss was regenerated (1.0) but is not committed",
                        "odd was regenerated (3) but is not committed"]
    assert compare_metrics({"odd": 1}, {"odd": 1}, rules) == ["odd has no tolerance in metric_tolerances.yaml; add a rule for it"]
    assert compare_metrics({"a_loss": 1.0}, {"a_loss": 1.02}, rules)[0].startswith("a_loss moved from 1.0 to 1.02")


@pytest.mark.skipif("FEDPEFT_FRESH_REPORTS" not in os.environ,
                    reason="needs regenerated reports: make nbval runs this after re-executing the notebooks")
def test_regenerated_metrics_match_the_committed_ones():
    fresh_dir = Path(os.environ["FEDPEFT_FRESH_REPORTS"]) / "metrics"  # FEDPEFT_REPORTS_DIR of the nbval run
    committed = sorted(COMMITTED.glob("*.json"))
    assert committed, f"no committed metrics in {COMMITTED}"
    problems = []
    for path in committed:
        fresh = fresh_dir / path.name
        if not fresh.is_file():
            problems.append(f"{path.stem}: not regenerated ({fresh} is missing)")
            continue
        problems += compare_metrics(json.loads(path.read_text()), json.loads(fresh.read_text()), RULES, path.stem)
    assert not problems, "\n".join(problems)
