"""The claims engine's rules on tiny hand-made values, each flipped every way it can go."""

from __future__ import annotations

import math

import pytest

from fedpeft.reporting import claims as c


def test_mean_interval_matches_a_known_t_interval():
    m = c.mean_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, n 3: t(0.975, 2) = 4.302653, half width 4.302653 / sqrt(3)
    assert m.estimate == 2.0
    assert m.low == pytest.approx(2 - 4.302653 / math.sqrt(3), rel=1e-6)
    assert m.high == pytest.approx(2 + 4.302653 / math.sqrt(3), rel=1e-6)
    assert not c.mean_interval([5.0]).defined


def test_difference_interval_is_welch_and_needs_two_values_a_side():
    d = c.difference_interval([10.0, 11.0, 12.0], [1.0, 2.0, 3.0])
    assert d.estimate == 9.0 and d.low == pytest.approx(9 - 2.776445 * math.sqrt(2 / 3), rel=1e-5)
    assert not c.difference_interval([1.0], [2.0, 3.0]).defined
    assert c.difference_interval([1.0, 1.0], [0.0, 0.0]).side_of(0.5) == 1  # no spread: a point interval


@pytest.mark.parametrize("a, b, verdict", [
    ([0.90, 0.91, 0.92], [0.80, 0.81, 0.82], "holds"),
    ([0.80, 0.81, 0.82], [0.90, 0.91, 0.92], "does not hold"),
    ([0.80, 0.90, 0.85], [0.82, 0.88, 0.84], "inconclusive"),
    ([0.99], [0.10], "inconclusive"),  # one seed a side: no interval, never a verdict
])
def test_greater_flips_every_way(a, b, verdict):
    v = c.greater(a, b, what="svd - naive")
    assert v.verdict == verdict and "svd - naive > 0" in v.rule


def test_greater_respects_its_margin():
    a, b = [0.90, 0.91, 0.92], [0.80, 0.81, 0.82]
    assert c.greater(a, b, margin=0.05).verdict == "holds"
    assert c.greater(a, b, margin=0.2).verdict == "does not hold"


@pytest.mark.parametrize("a, b, verdict", [
    ([1.0, 1.1, 1.2], [2.0, 2.1, 2.2], "holds"),
    ([2.0, 2.1, 2.2], [1.0, 1.1, 1.2], "does not hold"),
    ([1.0, 2.0, 1.5], [1.2, 1.8, 1.4], "inconclusive"),
])
def test_less_flips_every_way(a, b, verdict):
    assert c.less(a, b).verdict == verdict


@pytest.mark.parametrize("a, b, verdict", [
    ([1.20, 1.21, 1.19, 1.22], [1.00, 1.01, 0.99, 1.00], "holds"),
    ([1.00, 1.01, 0.99, 1.00], [1.20, 1.21, 1.19, 1.22], "does not hold"),
    ([1.196, 1.4, 0.96, 1.2], [1.129, 1.28, 0.98, 1.1], "inconclusive"),  # the UNet's overlapping timings
])
def test_faster_uses_the_ratio_of_repeated_timings(a, b, verdict):
    v = c.faster(a, b)
    assert v.verdict == verdict and v.measured.endswith(")") and "x [" in v.measured


@pytest.mark.parametrize("values, verdict", [
    ([85.0, 85.3, 84.9], "holds"),
    ([70.0, 70.5, 69.8], "does not hold"),
    ([80.0, 86.0, 83.0], "inconclusive"),
    ([85.1], "holds"),
    ([75.0], "does not hold"),
])
def test_within_flips_every_way(values, verdict):
    assert c.within(values, 85.2, 1.0, what="accuracy (%)").verdict == verdict


def test_exact_fact_and_not_testable():
    assert c.exact(434_602, 434_602, "parameters").verdict == "holds"
    assert c.exact(434_601, 434_602, "parameters").verdict == "does not hold"
    assert c.exact(0.43, 0.41, "MiB", tolerance=0.05).verdict == "holds"
    assert c.fact("K r rank: 1e-16", "SVD at rank K r reproduces the mean delta-W").verdict == "fact"
    with pytest.raises(ValueError, match="must say why"):
        c.not_testable("")
    assert c.not_testable("needs a GPU").verdict == "not testable here"


@pytest.mark.parametrize("scores, verdict, label", [
    ([0.80, 0.81, 0.79], "holds", "above chance"),
    ([0.51, 0.50, 0.52], "inconclusive", "no signal"),  # at MRPC-like chance 0.5092
    ([0.30, 0.31, 0.29], "does not hold", "no signal"),
    ([0.90], "inconclusive", "no signal"),
])
def test_scores_sit_beside_their_chance_baseline(scores, verdict, label):
    chance = c.majority_baseline([1] * 509 + [0] * 491)
    assert chance == pytest.approx(0.509)
    v = c.above_chance(scores, chance)
    assert v.verdict == verdict and c.signal_label(scores, chance) == label
    assert ("no signal" in v.measured) == (label == "no signal")


def test_one_accuracy_with_its_evaluation_examples_is_labelled_on_its_wilson_interval():
    # percent in, as for several seeds: 40/80 correct is far above 10 % chance; 10/80 (12.5 % [6.9, 21.5]) is not
    assert c.signal_label([50.0], 10.0, eval_examples=80) == "above chance"
    assert c.signal_label([12.5], 10.0, eval_examples=80) == "no signal"
    assert c.signal_label([50.0], 10.0) == "no signal"  # one score and no examples: no interval
    assert c.signal_label([80.0, 81.0, 79.0], 10.0, eval_examples=80) == "above chance"  # seeds: the t interval


def test_wilson_interval_of_a_proportion_matches_its_formula():
    # Wilson (1927): centre (k + z^2/2) / (n + z^2), half-width z sqrt(k(n-k)/n + z^2/4) / (n + z^2)
    k, n, z = 450, 872, 1.959963984540054
    centre, half = (k + z**2 / 2) / (n + z**2), z * math.sqrt(k * (n - k) / n + z**2 / 4) / (n + z**2)
    m = c.proportion_interval(k, n)
    assert (m.estimate, m.n) == (k / n, n)
    assert m.low == pytest.approx(centre - half, abs=1e-9) and m.high == pytest.approx(centre + half, abs=1e-9)


@pytest.mark.parametrize("correct, verdict", [
    (721, "holds"),          # 82.7 % against 50.9 %: far outside the evaluation set's sampling error
    (453, "inconclusive"),   # 51.95 %: 1 point above chance, inside the +-3.3 point interval of 872 examples
    (300, "does not hold"),  # 34.4 %: surely below
])
def test_one_models_accuracy_is_judged_with_its_evaluation_sets_sampling_error(correct, verdict):
    v = c.accuracy_above_chance(correct / 872, 444 / 872, 872)
    assert v.verdict == verdict
    assert ("no signal" in v.measured) == (verdict != "holds")
    assert "872 examples" in v.measured and "Wilson" in v.rule


def test_an_accuracy_that_is_no_count_of_the_examples_is_refused():
    with pytest.raises(ValueError, match="not a count out of eval_examples = 872"):
        c.accuracy_above_chance(0.5001, 0.5, 872)
    with pytest.raises(ValueError, match="trials = 0"):
        c.proportion_interval(0, 0)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="contain NaN"):
        c.mean_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="positive values"):
        c.ratio_interval([1.0, -1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="verdict = 'maybe' is not allowed"):
        c.Verdict("maybe", "x", "y")
    ledger = c.ClaimsLedger("embedded", "eurosat_fedavg_ptq")
    with pytest.raises(ValueError, match="has no evidence"):
        ledger.add("CNN parameters", "434,602", c.exact(1, 1), evidence="")


def test_ledger_rows_carry_verdict_rule_and_evidence():
    ledger = c.ClaimsLedger("embedded", "eurosat_fedavg_ptq")
    ledger.add("CNN parameters", "434,602", c.exact(434_602, 434_602, "parameters"), evidence="accuracy.md")
    ledger.add("FP16 is faster", "20-30 %", c.not_testable("FP16 kernels are not faster on this CPU"), evidence="speed.md")
    frame = ledger.frame()
    assert frame["verdict"].tolist() == ["holds", "not testable here"]
    assert set(frame["verdict"]) <= set(c.VERDICTS) and frame["evidence"].str.len().gt(0).all()
    assert list(frame.columns[:7]) == ["claim", "seed", "study", "verdict", "rule", "evidence", "note"]


def test_at_most_and_positive_flip_each_way():
    assert c.at_most(0.47, 1.0, "share").verdict == "holds"
    assert c.at_most(9.15, 1.0, "share").verdict == "does not hold"
    assert c.positive([0.3, 0.4, 0.5]).verdict == "holds"
    assert c.positive([-0.5, -0.4, -0.3]).verdict == "does not hold"
    assert c.positive([-0.5, 0.4, 0.1]).verdict == "inconclusive"
    assert c.positive([0.5]).verdict == "inconclusive"  # one seed: no interval


def test_exact_formats_and_tolerates():
    v = c.exact(1.6676, 1.66, "size (MiB)", 0.02 * 1.66, "{:.3f} MiB")
    assert v.verdict == "holds" and v.measured == "1.668 MiB" and "± 0.0332" in v.rule
    assert c.exact(0.740, 0.52, "size", 0.02 * 0.52).verdict == "does not hold"


def test_chance_baselines_of_constant_predictors():
    from sklearn.metrics import f1_score

    from fedpeft.core.baselines import majority_baseline, majority_score
    from fedpeft.data.glue import chance_metrics

    labels = [1, 1, 1, 0]  # MRPC-like: always "paraphrase" has F1 2 * 0.75 / 1.75
    assert majority_baseline(labels) == 0.75
    assert majority_score(labels, lambda y, p: f1_score(y, p, average="macro")) == pytest.approx((2 * 0.75 / 1.75) / 2)
    assert chance_metrics("mrpc", labels) == pytest.approx({"f1": 2 * 0.75 / 1.75, "accuracy": 0.75})
    assert chance_metrics("stsb", [0.5, 4.0, 2.0]) == {"pearson": 0.0, "spearman": 0.0}
    with pytest.raises(ValueError, match="no labels"):
        majority_baseline([])
