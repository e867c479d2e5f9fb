"""The claims engine: a seed's statement, the measured quantity, and a rule that can fail.

A rule is a pure function of measured values (one per seed, or one per repeated timing) that returns a
:class:`Verdict`:

- ``holds`` / ``does not hold``: the interval of the measured quantity lies wholly on one side of the threshold;
- ``inconclusive``: the interval covers the threshold, or there are too few values for an interval (one seed);
- ``not testable here``: the quantity cannot be measured in this profile (say why, with :func:`not_testable`);
- ``fact``: a statement true by construction (an exact count, a size computed from shapes), reported as a fact and
  not as a verdict on the seed (:func:`fact`).

Intervals are two-sided Student-t intervals of a mean (:func:`mean_interval`) or of a difference of means (Welch,
:func:`difference_interval`), at 95 % unless told otherwise; ratios of speeds compare log rates
(:func:`ratio_interval`). A score is compared with its chance (majority-class) baseline by :func:`above_chance`,
which labels a result whose interval reaches chance as ``no signal``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from fedpeft.core.baselines import majority_baseline, majority_score  # noqa: F401 - part of the engine's API

VERDICTS = ("holds", "does not hold", "inconclusive", "not testable here", "fact")
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval of ``estimate`` from ``n`` values (``low``/``high`` NaN when n < 2)."""

    estimate: float
    low: float
    high: float
    n: int
    level: float = LEVEL

    @property
    def defined(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    def side_of(self, threshold: float) -> int:
        """+1 when the interval lies wholly above ``threshold``, -1 wholly below, 0 when it covers it or is undefined."""
        if not self.defined:
            return 0
        if self.low > threshold:
            return 1
        if self.high < threshold:
            return -1
        return 0

    def text(self, fmt: str = "{:.4g}", unit: str = "") -> str:
        if not self.defined:
            return f"{fmt.format(self.estimate)}{unit} (n={self.n}: no interval)"
        return f"{fmt.format(self.estimate)}{unit} [{fmt.format(self.low)}, {fmt.format(self.high)}] ({100 * self.level:.0f} %, n={self.n})"


def _values(values: Iterable[float]) -> np.ndarray:
    v = np.asarray(list(values), dtype=float)
    if np.isnan(v).any():
        raise ValueError(f"measured values = {v.tolist()} contain NaN; a claim needs every seed's value")
    return v


def mean_interval(values: Iterable[float], level: float = LEVEL) -> Interval:
    """Student-t interval of the mean of ``values`` (one per seed or repeated measurement)."""
    from scipy import stats

    v = _values(values)
    if len(v) == 0:
        raise ValueError("no measured values")
    if len(v) < 2:
        return Interval(float(v.mean()), math.nan, math.nan, len(v), level)
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return Interval(float(v.mean()), float(v.mean() - half), float(v.mean() + half), len(v), level)


def difference_interval(a: Iterable[float], b: Iterable[float], level: float = LEVEL) -> Interval:
    """Welch interval of mean(a) - mean(b); undefined when either side has fewer than 2 values."""
    from scipy import stats

    a, b = _values(a), _values(b)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("a comparison needs values on both sides")
    diff = float(a.mean() - b.mean())
    n = min(len(a), len(b))
    if len(a) < 2 or len(b) < 2:
        return Interval(diff, math.nan, math.nan, n, level)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(diff, diff, diff, n, level)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + level / 2, dof) * se
    return Interval(diff, diff - half, diff + half, n, level)


def ratio_interval(a: Iterable[float], b: Iterable[float], level: float = LEVEL) -> Interval:
    """Interval of mean(a) / mean(b) for positive quantities (rates, bytes), from the Welch interval of their logs."""
    a, b = _values(a), _values(b)
    if (a <= 0).any() or (b <= 0).any():
        raise ValueError("a ratio interval needs positive values")
    d = difference_interval(np.log(a), np.log(b), level)
    return Interval(float(a.mean() / b.mean()), math.exp(d.low) if d.defined else math.nan,
                    math.exp(d.high) if d.defined else math.nan, d.n, level)


@dataclass(frozen=True)
class Verdict:
    verdict: str
    measured: str
    rule: str
    interval: Interval | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict = {self.verdict!r} is not allowed; it must be one of {list(VERDICTS)}")


def _from_side(side: int, expect: int) -> str:
    if side == 0:
        return "inconclusive"
    return "holds" if side == expect else "does not hold"


def greater(a: Sequence[float], b: Sequence[float], margin: float = 0.0, what: str = "a - b", fmt: str = "{:.4g}") -> Verdict:
    """Holds when the whole interval of mean(a) - mean(b) is above ``margin``; does not hold when it is wholly
    below; inconclusive otherwise (including one seed a side)."""
    d = difference_interval(a, b)
    rule = f"{what} > {margin:g} over every seed ({100 * d.level:.0f} % Welch interval)"
    return Verdict(_from_side(d.side_of(margin), +1), d.text(fmt), rule, d)


def less(a: Sequence[float], b: Sequence[float], margin: float = 0.0, what: str = "a - b", fmt: str = "{:.4g}") -> Verdict:
    """Holds when the whole interval of mean(a) - mean(b) is below ``-margin``."""
    d = difference_interval(a, b)
    rule = f"{what} < {-margin:g} over every seed ({100 * d.level:.0f} % Welch interval)"
    return Verdict(_from_side(d.side_of(-margin), -1), d.text(fmt), rule, d)


def faster(a_rates: Sequence[float], b_rates: Sequence[float], what: str = "rate a / rate b") -> Verdict:
    """Speed claims: holds when the interval of the ratio of mean rates (repeated timings) is wholly above 1."""
    r = ratio_interval(a_rates, b_rates)
    return Verdict(_from_side(r.side_of(1.0), +1), r.text("{:.3g}", "x"), f"{what} > 1 over repeated timings", r)


def within(values: Sequence[float], target: float, tolerance: float, what: str = "value", fmt: str = "{:.4g}") -> Verdict:
    """Holds when the interval of the mean lies inside target ± tolerance; does not hold when it lies wholly outside;
    inconclusive when it straddles an edge. With one value, that value is judged against the band."""
    m = mean_interval(values)
    lo, hi = target - tolerance, target + tolerance
    rule = f"{what} within {fmt.format(target)} ± {fmt.format(tolerance)}"
    if not m.defined:
        verdict = "holds" if lo <= m.estimate <= hi else "does not hold"
        return Verdict(verdict, m.text(fmt), rule + " (one value: no interval)", m)
    if lo <= m.low and m.high <= hi:
        verdict = "holds"
    elif m.high < lo or m.low > hi:
        verdict = "does not hold"
    else:
        verdict = "inconclusive"
    return Verdict(verdict, m.text(fmt), rule, m)


def exact(measured: float | int, claimed: float | int, what: str = "value", tolerance: float = 0.0, fmt: str | None = None) -> Verdict:
    """A claimed figure checked against a number computed exactly (a count, a size): holds when they agree within
    ``tolerance`` (absolute), else does not hold."""
    ok = abs(measured - claimed) <= tolerance
    shown = fmt.format(measured) if fmt else (f"{measured:,}" if isinstance(measured, int) else f"{measured:.6g}")
    return Verdict("holds" if ok else "does not hold", shown,
                   f"{what} = {claimed} (exact{'' if tolerance == 0 else f', ± {tolerance:g}'})")


def at_most(measured: float, limit: float, what: str = "value", fmt: str = "{:.4g}") -> Verdict:
    """A bound on a number computed exactly (a count, a share of parameters): holds when ``measured <= limit``."""
    return Verdict("holds" if measured <= limit else "does not hold", fmt.format(measured), f"{what} <= {fmt.format(limit)} (exact)")


def fact(measured: str, why: str) -> Verdict:
    """A statement true by construction: a fact, not a verdict on the seed."""
    return Verdict("fact", measured, f"true by construction: {why}")


def not_testable(why: str, measured: str = "not measured") -> Verdict:
    if not why:
        raise ValueError("a 'not testable here' verdict must say why")
    return Verdict("not testable here", measured, why)


def above_chance(scores: Sequence[float], chance: float, what: str = "score", fmt: str = "{:.4g}") -> Verdict:
    """A score over seeds against its chance (majority-class) baseline: holds when the whole interval is above
    chance; ``does not hold`` when below; inconclusive ("no signal") when it reaches chance."""
    m = mean_interval(scores)
    rule = f"{what} above the chance baseline {fmt.format(chance)}"
    if not m.defined:
        return Verdict("inconclusive", m.text(fmt) + "; no signal", rule + " (one seed: no interval)", m)
    verdict = _from_side(m.side_of(chance), +1)
    return Verdict(verdict, m.text(fmt) + ("; no signal" if verdict != "holds" else ""), rule, m)


def proportion_interval(successes: int, trials: int, level: float = LEVEL) -> Interval:
    """Wilson interval of a proportion: one model's accuracy over ``trials`` evaluation examples. It measures the
    sampling error of the evaluation set, the only spread a single trained model has."""
    from scipy import stats

    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"successes = {successes}, trials = {trials}: need 0 <= successes <= trials and trials >= 1")
    ci = stats.binomtest(successes, trials).proportion_ci(confidence_level=level, method="wilson")
    return Interval(successes / trials, float(ci.low), float(ci.high), trials, level)


def accuracy_above_chance(accuracy: float, chance: float, eval_examples: int, what: str = "accuracy") -> Verdict:
    """One model's accuracy (a fraction) against the majority-class rate, with the evaluation set's sampling error:
    holds when the Wilson interval over ``eval_examples`` lies above chance, does not hold when below, inconclusive
    ("no signal") when it reaches chance. Use it where there is one trained model and no seeds to spread over."""
    correct = round(accuracy * eval_examples)
    if abs(correct - accuracy * eval_examples) > 1e-6 * eval_examples:
        raise ValueError(f"accuracy = {accuracy} is not a count out of eval_examples = {eval_examples}")
    m = proportion_interval(correct, eval_examples)
    pct = Interval(100 * m.estimate, 100 * m.low, 100 * m.high, m.n, m.level)
    verdict = _from_side(pct.side_of(100 * chance), +1)
    rule = (f"{what} above the chance baseline {100 * chance:.2f} %: {100 * m.level:.0f} % Wilson interval over the "
            f"{eval_examples} evaluation examples (one model, no seeds)")
    return Verdict(verdict, pct.text("{:.2f}", " %").replace(f"n={m.n}", f"{m.n} examples")
                   + ("; no signal" if verdict != "holds" else ""), rule, pct)


def positive(values: Sequence[float], what: str = "value", fmt: str = "{:.4g}") -> Verdict:
    """Holds when the interval of the mean of ``values`` (one per seed) is wholly above 0, does not hold when wholly
    below, inconclusive otherwise (one value included)."""
    m = mean_interval(values)
    return Verdict(_from_side(m.side_of(0.0), +1), m.text(fmt), f"{what} > 0 over every seed ({100 * m.level:.0f} % t interval)", m)


def signal_label(scores: Sequence[float], chance: float, eval_examples: int | None = None) -> str:
    """``above chance`` or ``no signal`` for scores against the chance baseline, both in percent. Several scores (one
    per seed): their t interval. One score with ``eval_examples``: an accuracy over that many evaluation examples,
    judged on its Wilson interval (:func:`accuracy_above_chance`; one model has no spread over seeds). One score
    without: ``no signal``."""
    scores = list(scores)
    if len(scores) == 1 and eval_examples:
        verdict = accuracy_above_chance(scores[0] / 100, chance / 100, eval_examples)
    else:
        verdict = above_chance(scores, chance)
    return "above chance" if verdict.verdict == "holds" else "no signal"


@dataclass
class ClaimsLedger:
    """Every claim of one experiment's seed: its statement, the seed's figure, the verdict and its evidence."""

    profile: str
    experiment: str
    rows: list[dict] = field(default_factory=list)

    def add(self, claim: str, seed_figure: str, verdict: Verdict, evidence: str, note: str = "") -> None:
        if not evidence:
            raise ValueError(f"claim {claim!r} has no evidence (a table, figure or record it is judged on)")
        self.rows.append({"claim": claim, "seed": seed_figure, "study": verdict.measured, "verdict": verdict.verdict,
                          "rule": verdict.rule, "evidence": evidence, "note": note})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["claim", "seed", "study", "verdict", "rule", "evidence", "note"]).assign(
            profile=self.profile, experiment=self.experiment)
