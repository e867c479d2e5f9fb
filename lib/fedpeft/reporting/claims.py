"""The claims engine: a seed's statement, the measured quantity, and a rule that can fail.

**The verdict policy** (one policy, applied in every row of every ledger; the README repeats it):

- *Two kinds of row.* A **seed claim** is something the seed report says; a **study check** is something the study
  adds (a score above chance, a partition's sanity, a comparison the seed never made: Dirichlet against IID, 20
  rounds against 10, a scale benchmark). Both are judged by the same rules; they are tabulated and tallied apart
  (:data:`KINDS`), and only seed claims count in the tally of the seed's claims.
- *Evidence has a place.* Every row names the profile and the device its evidence comes from; a profile's tally
  counts only rows whose evidence is its own (a local report may show a row judged on the committed GPU
  measurements of the ``paper`` profile: it is listed, and tallied under ``paper``).
- *fact* is only what the study's own construction makes true (:func:`fact`): a schedule the study fixed, an
  identity its code guarantees. A seed's number set against a measurement or a computation is always a verdict.
- *A replicate is a run*: a seed, a fold, or a repeat in a fresh process; never a step, a batch or a round. Every
  rule says what its n counts.
- *The design decides the interval.* Arms that share a seed, a fold or the same data are compared pairwise
  (:func:`paired_greater`, :func:`paired_less`, :func:`paired_ratio_interval`: a t interval of the per-pair
  differences); arms that share nothing by Welch's interval (:func:`greater`, :func:`less`). Direction claims
  ("federated beats centralized") are judged on the confidence interval of the mean difference.
- *A magnitude is judged as a magnitude.* "45 % faster", "halves", "0.41 MB" are judged on the number, never on
  the direction. A seed figure is matched to the precision it is stated with (:func:`stated`: "0.41 MB" covers
  0.405 to 0.415 MB, "45 %" covers 44.5 to 45.5 %) unless the seed gives a range (:func:`stated_range`).
  A number the study computes exactly (a count, a size from shapes) holds when it lies in that band
  (:func:`matches`). A number the seed measured in its single run is compared with the interval in which *one*
  run of the study falls (the 95 % prediction interval from the study's runs, :func:`one_run_matches`), never with
  the confidence interval of the study's mean; the row says whether the seed's figure lies inside it.
- *One quantity, one rule*: a quantity judged in two rows is judged by the same function with the same band.
- *Verdict words*: ``holds`` / ``does not hold`` when the interval lies wholly on one side of the threshold (or
  inside / wholly outside the band), ``inconclusive`` when it covers the threshold or there are too few runs for an
  interval, ``not testable here`` when this profile cannot measure the quantity (the row says why), ``fact`` as
  above. Every study cell carries its unit (:meth:`ClaimsLedger.add` refuses a bare number).

Intervals are two-sided Student-t intervals at 95 % unless told otherwise; ratios (speeds, bytes) are intervals of
log ratios. A score is compared with its chance (majority-class) baseline by :func:`above_chance` (several runs)
or :func:`accuracy_above_chance` (one model, the Wilson interval over its evaluation examples).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from fedpeft.core.baselines import majority_baseline, majority_score  # noqa: F401 - part of the engine's API

VERDICTS = ("holds", "does not hold", "inconclusive", "not testable here", "fact")
KINDS = ("seed claim", "study check")
#: What a "not testable here" row would need, for a reader to tell what no CPU can test from what the study has not
#: run yet: the key is the verdict's ``needs``, the value how the rule says it.
NEEDS = {
    "gpu": "a GPU",
    "seed data": "the seed's own data",
    "seed model": "the seed's own model",
    "seed machine": "the seed's own machine",
    "profile": "a larger profile (more rounds, steps, data or arms than this one runs)",
    "signal": "runs that learn (here both arms stay at chance)",
    "new arm": "an arm the study has not run yet",
}
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


def _pairs(a: Mapping[Any, float], b: Mapping[Any, float]) -> tuple[np.ndarray, np.ndarray]:
    """The values of ``a`` and ``b`` aligned on their keys (seed, fold, case); the keys must be the same."""
    if not isinstance(a, Mapping) and not isinstance(a, pd.Series) or not isinstance(b, Mapping) and not isinstance(b, pd.Series):
        raise TypeError("a paired comparison needs values keyed by what pairs them (a dict or Series: seed -> value)")
    a, b = dict(a.items()), dict(b.items())
    if set(a) != set(b):
        raise ValueError(f"paired values need the same keys on both sides; only one side has {sorted(set(a) ^ set(b), key=str)}")
    keys = sorted(a, key=str)
    return _values(a[k] for k in keys), _values(b[k] for k in keys)


def paired_difference_interval(a: Mapping[Any, float], b: Mapping[Any, float], level: float = LEVEL) -> Interval:
    """t interval of the mean of the per-pair differences a[k] - b[k] (k: the seed, fold or case both arms share)."""
    x, y = _pairs(a, b)
    return mean_interval(x - y, level)


def paired_ratio_interval(a: Mapping[Any, float], b: Mapping[Any, float], level: float = LEVEL) -> Interval:
    """Interval of the geometric mean of the per-pair ratios a[k] / b[k] (positive quantities: rates, bytes), from
    the t interval of the log ratios."""
    x, y = _pairs(a, b)
    if (x <= 0).any() or (y <= 0).any():
        raise ValueError("a ratio interval needs positive values")
    m = mean_interval(np.log(x) - np.log(y), level)
    return Interval(math.exp(m.estimate), math.exp(m.low) if m.defined else math.nan,
                    math.exp(m.high) if m.defined else math.nan, m.n, level)


def prediction_interval(values: Iterable[float], level: float = LEVEL, log: bool = False) -> Interval:
    """The interval in which one more run falls (Student-t prediction interval: mean ± t s sqrt(1 + 1/n)); on the
    log scale for positive quantities (``log``). ``estimate`` is the mean (geometric with ``log``)."""
    from scipy import stats

    v = _values(values)
    if len(v) == 0:
        raise ValueError("no measured values")
    if log:
        if (v <= 0).any():
            raise ValueError("a log-scale prediction interval needs positive values")
        v = np.log(v)
    back = math.exp if log else float
    if len(v) < 2:
        return Interval(back(float(v.mean())), math.nan, math.nan, len(v), level)
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) * math.sqrt(1 + 1 / len(v))
    return Interval(back(float(v.mean())), back(float(v.mean() - half)), back(float(v.mean() + half)), len(v), level)


@dataclass(frozen=True)
class Figure:
    """A seed's figure as a band: the values its statement covers (its stated precision, or the range it gives)."""

    value: float
    low: float
    high: float
    text: str

    def covers(self, x: float) -> bool:
        return self.low <= x <= self.high


def stated(text: str, scale: float = 1.0) -> Figure:
    """The band a figure stated as ``text`` covers at the precision it is written with, times ``scale``: "0.41" ->
    [0.405, 0.415], "45" (for "45 %") -> [44.5, 45.5], "8,460" -> [8459.5, 8460.5], "9.4" with scale 1e6 -> [9.35e6,
    9.45e6]. Pass the figure as the seed wrote it (a string: "2.00", not ``str(2.0)``). A leading "~" or "about" adds
    nothing: the seed's precision is what it wrote. A figure the seed computed from other rounded figures: :func:`derived`."""
    m = re.fullmatch(r"\s*(?:~|about\s+)?([-+]?[\d,]*\.?\d+)\s*", text)
    if not m:
        raise ValueError(f"seed figure = {text!r} is not a number (write it as the seed states it: '0.41', '45', '8,460')")
    digits = m.group(1).replace(",", "")
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    value, half = float(digits) * scale, 0.5 * 10 ** -decimals * scale
    return Figure(value, value - half, value + half, text.strip())


def derived(text: str, *inputs: str, scale: float = 1.0) -> Figure:
    """A figure the seed computed from rounded figures of its own (``inputs``, as it wrote them): "664" MB from 400 x
    "1.66" MB covers 664 x (1 ± 0.005 / 1.66), [662, 666], wider than the last digit of "664" alone. The band is the
    wider of the figure's own precision and the relative precision its inputs carry into it."""
    own = stated(text, scale)
    rel = sum(stated(i).high / stated(i).value - 1 for i in inputs)
    half = max(own.high - own.value, abs(own.value) * rel)
    return Figure(own.value, own.value - half, own.value + half, f"{own.text} (from {', '.join(inputs)})")


def stated_range(low: float, high: float, text: str) -> Figure:
    """A seed figure given as a range (``low`` to ``high``), covering it whole."""
    if not low <= high:
        raise ValueError(f"a stated range needs low <= high, got {low} and {high}")
    return Figure((low + high) / 2, low, high, text)


@dataclass(frozen=True)
class Verdict:
    """A verdict word, the measured text (with its unit), the rule, the interval it rests on and the threshold or
    the seed figure's value the interval was set against (``target``; None where there is none)."""

    verdict: str
    measured: str
    rule: str
    interval: Interval | None = None
    target: float | None = None
    needs: str = ""  # a key of NEEDS, for "not testable here" only

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict = {self.verdict!r} is not allowed; it must be one of {list(VERDICTS)}")
        if (self.verdict == "not testable here") != bool(self.needs) or (self.needs and self.needs not in NEEDS):
            raise ValueError(f"needs = {self.needs!r} is not allowed for verdict {self.verdict!r}: a 'not testable here' "
                             f"verdict says what it needs, one of {list(NEEDS)}; other verdicts leave it empty")


def _from_side(side: int, expect: int) -> str:
    if side == 0:
        return "inconclusive"
    return "holds" if side == expect else "does not hold"


def _n(interval: Interval, n_counts: str) -> str:
    return f"n = {interval.n} {n_counts}"


def greater(a: Sequence[float], b: Sequence[float], margin: float = 0.0, what: str = "a - b", fmt: str = "{:.4g}",
            unit: str = "", n_counts: str = "seeds a side") -> Verdict:
    """Unpaired arms (nothing shared between them): holds when the whole Welch interval of mean(a) - mean(b) is above
    ``margin``; does not hold when it is wholly below; inconclusive otherwise (one run a side included). Arms that
    share seeds, folds or data are compared with :func:`paired_greater`."""
    d = difference_interval(a, b)
    rule = f"{what} > {fmt.format(margin)}{unit} ({100 * d.level:.0f} % Welch interval, unpaired; {_n(d, n_counts)})"
    return replace(Verdict(_from_side(d.side_of(margin), +1), d.text(fmt, unit), rule, d), target=margin)


def less(a: Sequence[float], b: Sequence[float], margin: float = 0.0, what: str = "a - b", fmt: str = "{:.4g}",
         unit: str = "", n_counts: str = "seeds a side") -> Verdict:
    """Unpaired arms: holds when the whole Welch interval of mean(a) - mean(b) is below ``-margin``."""
    d = difference_interval(a, b)
    rule = f"{what} < {fmt.format(-margin if margin else 0.0)}{unit} ({100 * d.level:.0f} % Welch interval, unpaired; {_n(d, n_counts)})"
    return replace(Verdict(_from_side(d.side_of(-margin), -1), d.text(fmt, unit), rule, d), target=-margin)


def paired_greater(a: Mapping[Any, float], b: Mapping[Any, float], margin: float = 0.0, what: str = "a - b",
                   fmt: str = "{:.4g}", unit: str = "", n_counts: str = "seeds") -> Verdict:
    """Arms that share seeds, folds or data (``a`` and ``b`` keyed by what they share): holds when the whole t interval
    of the mean per-pair difference a[k] - b[k] is above ``margin``, does not hold when wholly below, inconclusive
    otherwise (one pair included)."""
    d = paired_difference_interval(a, b)
    rule = f"{what} > {fmt.format(margin)}{unit} ({100 * d.level:.0f} % paired t interval; {_n(d, n_counts)})"
    return replace(Verdict(_from_side(d.side_of(margin), +1), d.text(fmt, unit), rule, d), target=margin)


def paired_less(a: Mapping[Any, float], b: Mapping[Any, float], margin: float = 0.0, what: str = "a - b",
                fmt: str = "{:.4g}", unit: str = "", n_counts: str = "seeds") -> Verdict:
    """Paired arms: holds when the whole t interval of the mean per-pair difference is below ``-margin``."""
    d = paired_difference_interval(a, b)
    rule = f"{what} < {fmt.format(-margin if margin else 0.0)}{unit} ({100 * d.level:.0f} % paired t interval; {_n(d, n_counts)})"
    return replace(Verdict(_from_side(d.side_of(-margin), -1), d.text(fmt, unit), rule, d), target=-margin)


def faster(a_rates: Sequence[float], b_rates: Sequence[float], what: str = "rate a / rate b", n_counts: str = "runs a side") -> Verdict:
    """A direction claim on speed, unpaired: holds when the interval of the ratio of mean rates is wholly above 1.
    Each value is one run's rate (a replicate is a run, never a timed step)."""
    r = ratio_interval(a_rates, b_rates)
    return replace(Verdict(_from_side(r.side_of(1.0), +1), r.text("{:.3g}", "x"),
                   f"{what} > 1x ({100 * r.level:.0f} % Welch interval of log rates; {_n(r, n_counts)})", r), target=1.0)


def paired_faster(a_rates: Mapping[Any, float], b_rates: Mapping[Any, float], what: str = "rate a / rate b",
                  n_counts: str = "runs") -> Verdict:
    """A direction claim on speed where each run of ``a`` has a partner in ``b`` (same seed, same process): holds
    when the interval of the geometric mean of the per-pair ratios is wholly above 1."""
    r = paired_ratio_interval(a_rates, b_rates)
    return replace(Verdict(_from_side(r.side_of(1.0), +1), r.text("{:.3g}", "x"),
                   f"{what} > 1x ({100 * r.level:.0f} % paired t interval of log ratios; {_n(r, n_counts)})", r), target=1.0)


def within(values: Sequence[float], target: float, tolerance: float, what: str = "value", fmt: str = "{:.4g}",
           unit: str = "", n_counts: str = "seeds") -> Verdict:
    """Holds when the t interval of the mean lies inside target ± tolerance; does not hold when it lies wholly
    outside; inconclusive when it straddles an edge or there is one value."""
    m = mean_interval(values)
    lo, hi = target - tolerance, target + tolerance
    rule = (f"{what} within {fmt.format(target)} ± {fmt.format(tolerance).lstrip('+')}{unit} ({100 * m.level:.0f} % t interval; "
            f"{_n(m, n_counts)})")  # a signed format ("{:+.2f}") shows the target's sign, not the tolerance's
    if not m.defined:
        return replace(Verdict("inconclusive", m.text(fmt, unit), rule, m), target=target)
    if lo <= m.low and m.high <= hi:
        verdict = "holds"
    elif m.high < lo or m.low > hi:
        verdict = "does not hold"
    else:
        verdict = "inconclusive"
    return replace(Verdict(verdict, m.text(fmt, unit), rule, m), target=target)


def matches(measured: float, figure: Figure, what: str = "value", fmt: str = "{:.4g}", unit: str = "") -> Verdict:
    """A seed figure against a number the study computes exactly (a count, a size from shapes, bytes serialized):
    holds when it lies in the figure's band (its stated precision or range), else does not hold."""
    if measured is None or math.isnan(measured):
        raise ValueError(f"{what}: the measured value is missing (NaN); a claim needs it")
    band = f"[{fmt.format(figure.low)}, {fmt.format(figure.high)}]{unit}"
    return replace(Verdict("holds" if figure.covers(measured) else "does not hold", f"{fmt.format(measured)}{unit}",
                   f"{what} in the seed's {figure.text} as stated: {band} (computed exactly)",
                   Interval(float(measured), float(measured), float(measured), 1)), target=figure.value)


def exact(measured: int, claimed: int, what: str = "value", unit: str = "") -> Verdict:
    """A count computed exactly against the count claimed: holds when they are equal."""
    return Verdict("holds" if measured == claimed else "does not hold", f"{measured:,}{unit}",
                   f"{what} = {claimed:,}{unit} (exact count)")


def at_most(measured: float, limit: float, what: str = "value", fmt: str = "{:.4g}", unit: str = "") -> Verdict:
    """A bound on a number computed exactly (a count, a share of parameters): holds when ``measured <= limit``."""
    return Verdict("holds" if measured <= limit else "does not hold", f"{fmt.format(measured)}{unit}",
                   f"{what} <= {fmt.format(limit)}{unit} (computed exactly)")


def one_run_matches(values: Sequence[float], figure: Figure, what: str = "value", fmt: str = "{:.4g}", unit: str = "",
                    n_counts: str = "seeds", log: bool = False) -> Verdict:
    """A figure the seed measured in its single run against the study's runs: holds when the figure's band meets the
    95 % prediction interval of one study run (the seed's run is one the study could have made), does not hold
    when it lies wholly outside, inconclusive with fewer than 2 runs. ``log`` for positive quantities (ratios)."""
    p = prediction_interval(values, log=log)
    rule = (f"the seed's {what} ({figure.text}: [{fmt.format(figure.low)}, {fmt.format(figure.high)}]{unit}) inside the "
            f"{100 * p.level:.0f} % prediction interval of one study run ({_n(p, n_counts)})")
    if not p.defined:
        return replace(Verdict("inconclusive", p.text(fmt, unit).replace("no interval", "no prediction interval"), rule, p), target=figure.value)
    inside = figure.high >= p.low and figure.low <= p.high
    shown = (f"{fmt.format(p.estimate)}{unit}, one run in [{fmt.format(p.low)}, {fmt.format(p.high)}]{unit} "
             f"({_n(p, n_counts)}); the seed's {figure.text} {'inside' if inside else 'outside'}")
    return replace(Verdict("holds" if inside else "does not hold", shown, rule, p), target=figure.value)


def _one_run_contrast(a: Sequence[float], b: Sequence[float], figure: Figure, what: str, fmt: str, unit: str,
                      n_counts: str, log: bool) -> Verdict:
    from scipy import stats

    xa, xb = _values(a), _values(b)
    if log and ((xa <= 0).any() or (xb <= 0).any()):
        raise ValueError("a ratio needs positive values")
    la, lb = (np.log(xa), np.log(xb)) if log else (xa, xb)
    back = math.exp if log else float
    est = back(float(la.mean() - lb.mean()))
    n = min(len(la), len(lb))
    kind = "ratio" if log else "difference"
    rule = (f"the seed's {what} ({figure.text}: [{fmt.format(figure.low)}, {fmt.format(figure.high)}]{unit}) inside the "
            f"{100 * LEVEL:.0f} % prediction interval of one run's {kind} (n = {len(la)} and {len(lb)} {n_counts}, unpaired)")
    if len(la) < 2 or len(lb) < 2:
        return replace(Verdict("inconclusive", f"{fmt.format(est)}{unit} (too few runs for an interval)", rule,
                       Interval(est, math.nan, math.nan, n)), target=figure.value)
    va, vb = la.var(ddof=1) * (1 + 1 / len(la)), lb.var(ddof=1) * (1 + 1 / len(lb))
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(la) - 1) + vb**2 / (len(lb) - 1)) if se > 0 else 1.0
    half = stats.t.ppf(0.5 + LEVEL / 2, dof) * se
    centre = float(la.mean() - lb.mean())
    i = Interval(est, back(centre - half), back(centre + half), n)
    inside = figure.high >= i.low and figure.low <= i.high
    return replace(Verdict("holds" if inside else "does not hold",
                   f"{fmt.format(est)}{unit}, one run's {kind} in [{fmt.format(i.low)}, {fmt.format(i.high)}]{unit}; the seed's "
                   f"{figure.text} {'inside' if inside else 'outside'}", rule, i), target=figure.value)


def one_run_ratio_matches(a: Sequence[float], b: Sequence[float], figure: Figure, what: str = "a / b",
                          n_counts: str = "runs a side") -> Verdict:
    """A ratio the seed measured from one run of each arm (a speed-up) against the study's unpaired runs of the two
    arms: holds when the figure's band meets the 95 % prediction interval of the ratio of one new run of ``a`` to one
    new run of ``b`` (log scale, Welch-Satterthwaite degrees of freedom), does not hold when it lies wholly outside,
    inconclusive with fewer than 2 runs a side. Each value is one run's (a replicate is a run)."""
    return _one_run_contrast(a, b, figure, what, "{:.3g}", "x", n_counts, log=True)


def one_run_difference_matches(a: Sequence[float], b: Sequence[float], figure: Figure, what: str = "a - b",
                               fmt: str = "{:+.3g}", unit: str = "", n_counts: str = "runs a side") -> Verdict:
    """As :func:`one_run_ratio_matches` for a difference the seed measured from one run of each arm (a memory gap),
    on the linear scale."""
    return _one_run_contrast(a, b, figure, what, fmt, unit, n_counts, log=False)


def beyond_one_run(value: float, values: Sequence[float], what: str = "value", fmt: str = "{:.4g}", unit: str = "",
                   n_counts: str = "seeds") -> Verdict:
    """One run of a new arm (``value``) against the runs of a reference arm (``values``): holds when it lies above
    the 95 % prediction interval of one reference run, does not hold when below it, inconclusive inside it or with
    fewer than 2 reference runs."""
    p = prediction_interval(values)
    rule = (f"{what} above the {100 * p.level:.0f} % prediction interval of one reference run ({_n(p, n_counts)} of the "
            "reference; one run of the new arm)")
    shown = f"{fmt.format(value)}{unit} against one reference run in " + (
        f"[{fmt.format(p.low)}, {fmt.format(p.high)}]{unit}" if p.defined else "no interval (one run)")
    side = 0 if not p.defined else 1 if value > p.high else -1 if value < p.low else 0
    return Verdict(_from_side(side, +1), shown, rule, p)


def spread_matches(values: Sequence[float], figure: Figure, seed_runs: int, what: str = "sd between runs",
                   fmt: str = "{:.3g}", unit: str = "", n_counts: str = "seeds") -> Verdict:
    """A spread the seed reports (the sd of its ``seed_runs`` runs) against the study's runs: under one common sd, the
    seed's sample sd falls within s_study sqrt(F(2.5 %; seed_runs - 1, n - 1)) to s_study sqrt(F(97.5 %; ...)). Holds
    when the figure's band meets that interval, does not hold when it lies wholly outside, inconclusive with fewer
    than 2 runs on either side."""
    from scipy import stats

    v = _values(values)
    k_seed, k = seed_runs - 1, len(v) - 1
    rule = (f"the seed's {what} ({figure.text}, {seed_runs} runs) inside the {100 * LEVEL:.0f} % interval of a {seed_runs}-run "
            f"sd under the study's spread (F interval; {_n(Interval(math.nan, math.nan, math.nan, len(v)), n_counts)})")
    if k < 1 or k_seed < 1:
        return replace(Verdict("inconclusive", f"fewer than 2 runs: no spread{unit}", rule, Interval(math.nan, math.nan, math.nan, len(v))), target=figure.value)
    sd = float(v.std(ddof=1))
    i = Interval(sd, sd * math.sqrt(stats.f.ppf(0.5 - LEVEL / 2, k_seed, k)), sd * math.sqrt(stats.f.ppf(0.5 + LEVEL / 2, k_seed, k)),
                 len(v))
    inside = figure.high >= i.low and figure.low <= i.high
    return replace(Verdict("holds" if inside else "does not hold",
                   f"sd {fmt.format(sd)}{unit}; a {seed_runs}-run sd in [{fmt.format(i.low)}, {fmt.format(i.high)}]{unit}; "
                   f"the seed's {figure.text} {'inside' if inside else 'outside'}", rule, i), target=figure.value)


def fact(measured: str, why: str) -> Verdict:
    """A statement the study's own construction makes true (a schedule it fixed, an identity its code guarantees):
    a fact, not a verdict on the seed. A seed's number against a measurement is never a fact."""
    return Verdict("fact", measured, f"true by construction: {why}")


def not_testable(why: str, measured: str = "not measured", *, needs: str) -> Verdict:
    """A claim this profile cannot judge: ``why``, and what it ``needs`` (a key of :data:`NEEDS`: a GPU, the seed's
    own data, model or machine, a larger profile, runs that learn, or an arm the study has not run yet)."""
    if not why:
        raise ValueError("a 'not testable here' verdict must say why")
    if needs not in NEEDS:
        raise ValueError(f"needs = {needs!r} is not allowed; it must be one of {list(NEEDS)}")
    return Verdict("not testable here", measured, f"needs {NEEDS[needs]}: {why}", needs=needs)


def above_chance(scores: Sequence[float], chance: float, what: str = "score", fmt: str = "{:.4g}", unit: str = "",
                 n_counts: str = "seeds") -> Verdict:
    """A score over runs against its chance (majority-class) baseline: holds when the whole t interval is above
    chance; ``does not hold`` when below; inconclusive ("no signal") when it reaches chance."""
    m = mean_interval(scores)
    rule = f"{what} above the chance baseline {fmt.format(chance)}{unit} ({100 * m.level:.0f} % t interval; {_n(m, n_counts)})"
    if not m.defined:
        return replace(Verdict("inconclusive", m.text(fmt, unit) + "; no signal", rule, m), target=chance)
    verdict = _from_side(m.side_of(chance), +1)
    return replace(Verdict(verdict, m.text(fmt, unit) + ("; no signal" if verdict != "holds" else ""), rule, m), target=chance)


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


def positive(values: Sequence[float], what: str = "value", fmt: str = "{:.4g}", unit: str = "", n_counts: str = "seeds") -> Verdict:
    """Holds when the t interval of the mean of ``values`` (one per run) is wholly above 0, does not hold when wholly
    below, inconclusive otherwise (one value included)."""
    m = mean_interval(values)
    return replace(Verdict(_from_side(m.side_of(0.0), +1), m.text(fmt, unit),
                   f"{what} > 0{unit} ({100 * m.level:.0f} % t interval; {_n(m, n_counts)})", m), target=0.0)


def below(values: Sequence[float], limit: float, what: str = "value", fmt: str = "{:.4g}", unit: str = "",
          n_counts: str = "seeds") -> Verdict:
    """Holds when the t interval of the mean of ``values`` (one per run) lies wholly below ``limit``, does not hold
    when wholly above, inconclusive otherwise (one value included)."""
    m = mean_interval(values)
    return replace(Verdict(_from_side(m.side_of(limit), -1), m.text(fmt, unit),
                   f"{what} < {fmt.format(limit)}{unit} ({100 * m.level:.0f} % t interval; {_n(m, n_counts)})", m), target=limit)


def signal_label(scores: Sequence[float], chance: float, eval_examples: int | None = None) -> str:
    """``above chance`` or ``no signal`` for scores against the chance baseline, both in percent. Several scores (one
    per run): their t interval. One score with ``eval_examples``: an accuracy over that many evaluation examples,
    judged on its Wilson interval (:func:`accuracy_above_chance`; one model has no spread over seeds). One score
    without: ``no signal``."""
    scores = list(scores)
    if len(scores) == 1 and eval_examples:
        verdict = accuracy_above_chance(scores[0] / 100, chance / 100, eval_examples)
    else:
        verdict = above_chance(scores, chance)
    return "above chance" if verdict.verdict == "holds" else "no signal"


def says(verdict: Verdict, holds: str, fails: str, unsure: str, untestable: str = "") -> str:
    """The sentence of a finding that follows ``verdict``: ``holds`` when it holds (or is a fact), ``fails`` when it
    does not hold, ``unsure`` when inconclusive, ``untestable`` (or nothing) when not testable here. Each may use
    ``{measured}``, the verdict's measured text."""
    text = {"holds": holds, "fact": holds, "does not hold": fails, "inconclusive": unsure,
            "not testable here": untestable}[verdict.verdict]
    return text.format(measured=verdict.measured)


#: Seeds a comparison runs before an inconclusive verdict needs no further reason (issue: five seeds where an interval
#: still covers its threshold after three).
FULL_SEEDS = 5
_SEEDS_IN_RULE = re.compile(r"n = (\d+) seeds")
_BARE_NUMBER = re.compile(r"[-+~]?[\d.,]+(?:e[-+]?\d+)?")


@dataclass
class ClaimsLedger:
    """Every claim of one experiment's seed and every check the study adds: the statement, the seed's figure, the
    verdict and its evidence, the kind of row (:data:`KINDS`) and where its evidence comes from (profile, device).

    ``device`` is the device of this profile's runs (filled in from the run records by the report when None)."""

    profile: str
    experiment: str
    device: str | None = None
    rows: list[dict] = field(default_factory=list)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    #: Why this profile runs fewer than :data:`FULL_SEEDS` seeds; added to the note of every inconclusive row judged
    #: on fewer (an interval that covers its threshold, from few seeds, must say why there are not more).
    few_seeds: str = ""

    def add(self, claim: str, seed_figure: str, verdict: Verdict, evidence: str, note: str = "", kind: str = "seed claim",
            evidence_profile: str | None = None, device: str | None = None, key: str | None = None,
            few_seeds: str | None = None) -> Verdict:
        """Add a row and return its verdict. ``key``: a short name under which the verdict is kept in
        :attr:`verdicts`, so a finding is written from it. ``evidence_profile`` and ``device``: where the evidence comes
        from when it is not this profile's runs (the committed GPU measurements of the ``paper`` profile, say).
        ``few_seeds``: this row's reason for fewer than :data:`FULL_SEEDS` seeds (default: the ledger's)."""
        if not evidence:
            raise ValueError(f"claim {claim!r} has no evidence (a table, figure or record it is judged on)")
        if kind not in KINDS:
            raise ValueError(f"claim {claim!r}: kind = {kind!r} is not allowed; it must be one of {list(KINDS)}")
        head = re.split(r" \[| \(|;|, ", verdict.measured, maxsplit=1)[0].strip()
        if _BARE_NUMBER.fullmatch(head):
            raise ValueError(f"claim {claim!r}: the study's cell {verdict.measured!r} is a bare number; give its unit "
                             "(MiB, MB, %, points, nats, x, parameters, seeds ...)")
        seeds = _SEEDS_IN_RULE.search(verdict.rule)
        reason = few_seeds or self.few_seeds
        if verdict.verdict == "inconclusive" and seeds and int(seeds.group(1)) < FULL_SEEDS and reason:
            n = int(seeds.group(1))
            note = (f"{note}; " if note else "") + f"{n} seed{'s' if n != 1 else ''}, not {FULL_SEEDS}: {reason}"
        self.rows.append({"claim": claim, "seed": seed_figure, "study": verdict.measured, "verdict": verdict.verdict,
                          "rule": verdict.rule, "evidence": evidence, "note": note, "kind": kind,
                          "evidence_profile": evidence_profile or self.profile, "device": device or self.device or "",
                          "key": key or "", "needs": verdict.needs,
                          "estimate": verdict.interval.estimate if verdict.interval is not None else math.nan,
                          "target": verdict.target if verdict.target is not None else math.nan})
        if key is not None:
            if key in self.verdicts:
                raise ValueError(f"claim {claim!r}: key = {key!r} is already used by another row")
            self.verdicts[key] = verdict
        return verdict

    def check(self, claim: str, verdict: Verdict, evidence: str, note: str = "", seed_figure: str = "not claimed",
              **where: str | None) -> Verdict:
        """Add one of the study's own checks (judged like a claim, tallied apart); ``where``: ``evidence_profile``,
        ``device``, ``key`` as for :meth:`add`."""
        return self.add(claim, seed_figure, verdict, evidence, note, kind="study check", **where)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["claim", "seed", "study", "verdict", "rule", "evidence", "note", "kind",
                                                "evidence_profile", "device", "key", "needs", "estimate", "target"]).assign(
            profile=self.profile, experiment=self.experiment)


def evidence_source(row: Mapping[str, Any]) -> str:
    """Where a ledger row's evidence comes from, for a reader: its profile and device ("local, CPU: AMD EPYC, 2
    threads"); empty parts left out."""
    return ", ".join(str(row.get(k, "")) for k in ("evidence_profile", "device") if str(row.get(k, "")) not in ("", "nan"))


def tally(claims: pd.DataFrame, kind: str = "seed claim", profile: str | None = None) -> dict[str, int]:
    """Verdict counts of the rows of ``kind`` (whose evidence is ``profile``'s own, when given), every verdict word."""
    if "kind" in claims:
        rows = claims[claims["kind"] == kind]
    else:  # a ledger written before rows had kinds: every row is a seed claim
        rows = claims if kind == "seed claim" else claims.iloc[0:0]
    if profile is not None and "evidence_profile" in rows:
        rows = rows[rows["evidence_profile"] == profile]
    return {v: int((rows["verdict"] == v).sum()) for v in VERDICTS}
