"""What each technique saves and what it costs, on one yardstick: pure functions from a table of runs (one row per
technique and seed: total bytes both ways, and a score in points) to the savings table and the Pareto frontier.

A technique's saving is the baseline's mean total bytes over its own (``x``, a ratio of means: every run of one
technique sends the same bytes up to rounding); its cost is the paired difference of scores against the baseline,
seed by seed (the arms share their clients, data and seeds), with its 95 % t interval, judged by the claims engine
as non-inferiority: it *holds* that the technique costs at most ``margin`` points when the whole interval lies
above ``-margin``. The sentence reads the interval: "no measurable cost" when it covers 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedpeft.reporting.claims import Verdict, paired_difference_interval, paired_greater

COLUMNS = ("technique", "seed", "total_bytes", "score")


def _check(runs: pd.DataFrame) -> None:
    missing = [c for c in COLUMNS if c not in runs]
    if missing:
        raise ValueError(f"the runs table lacks {missing}; it needs one row per technique and seed with {list(COLUMNS)}")


def pareto_front(points: pd.DataFrame, cost: str, value: str) -> pd.Series:
    """True for every point that no other point dominates (another with ``cost`` <= and ``value`` >=, one of them
    strictly): the frontier of cheaper-and-better."""
    c, v = points[cost].to_numpy(float), points[value].to_numpy(float)
    dominated = [bool(np.any((c <= c[i]) & (v >= v[i]) & ((c < c[i]) | (v > v[i])))) for i in range(len(points))]
    return pd.Series(~np.array(dominated, dtype=bool), index=points.index, name="on_frontier")


def cost_sentence(saved_x: float, verdict: Verdict, margin: float) -> str:
    """"saves 48x at -0.40 [-0.90, +0.10] points: no measurable cost" (the interval read against 0 and the margin)."""
    d = verdict.interval
    if d is None or not d.defined:
        return f"saves {saved_x:.3g}x at {verdict.measured}: one seed, no interval"
    if d.low > 0:
        reading = "a measurable gain"
    elif d.high < 0:
        points = f"{margin:g} point{'' if margin == 1 else 's'}"
        reading = {"holds": f"a measurable cost, at most {points}",
                   "does not hold": f"a measurable cost, more than {points}"}.get(verdict.verdict,
                                                                               f"a measurable cost, possibly over {points}")
    else:
        reading = "no measurable cost" + ("" if verdict.verdict == "holds" else
                                          f" (nor is it surely under {margin:g} point{'' if margin == 1 else 's'})")
    return f"saves {saved_x:.3g}x at {verdict.measured}: {reading}"


def savings_table(runs: pd.DataFrame, baseline: str, margin: float = 1.0) -> pd.DataFrame:
    """One row per technique: mean total bytes (MiB), bytes saved against ``baseline`` (x), the paired score
    difference (points, estimate and 95 % interval over the seeds both ran), the non-inferiority verdict at
    ``margin`` points, the sentence, and whether it lies on the Pareto frontier of (mean bytes, mean score). The
    verdicts themselves, for a claims ledger, are in ``table.attrs["verdicts"]`` (technique -> Verdict)."""
    _check(runs)
    if baseline not in set(runs["technique"]):
        raise ValueError(f"baseline = {baseline!r} has no runs; techniques: {sorted(set(runs['technique']))}")
    base = runs[runs["technique"] == baseline].set_index("seed")
    rows, verdicts = [], {}
    for technique, g in runs.groupby("technique", sort=False):
        arm = g.set_index("seed")
        saved = float(base["total_bytes"].mean() / arm["total_bytes"].mean())
        shared = arm.index.intersection(base.index)  # a seed only one arm ran has no pair
        a, b = arm.loc[shared, "score"], base.loc[shared, "score"]
        verdict = paired_greater(a, b, -margin, f"{technique} - {baseline} score", "{:+.2f}", " points", "seeds, paired")
        d = paired_difference_interval(a, b)
        verdicts[technique] = verdict
        rows.append({"technique": technique, "seeds": d.n, "total_MiB": arm["total_bytes"].mean() / 2**20,
                     "score_mean": arm["score"].mean(), "saved_x": saved, "cost_points": d.estimate, "cost_low": d.low,
                     "cost_high": d.high, "verdict": verdict.verdict if technique != baseline else "baseline",
                     "reading": cost_sentence(saved, verdict, margin) if technique != baseline else "the baseline"})
    table = pd.DataFrame(rows)
    table["on_frontier"] = pareto_front(table, "total_MiB", "score_mean").to_numpy()
    table.attrs["verdicts"] = verdicts
    return table
