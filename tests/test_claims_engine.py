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
    ([85.1], "inconclusive"),  # one run: no interval, never a verdict
    ([75.0], "inconclusive"),
])
def test_within_flips_every_way(values, verdict):
    assert c.within(values, 85.2, 1.0, what="accuracy (%)").verdict == verdict


def test_within_prints_the_tolerance_unsigned_under_a_signed_format():
    assert "within -0.50 ± 0.50 points" in c.within([-0.4, -0.6, -0.5], -0.5, 0.5, "PTQ - QAT", "{:+.2f}", " points").rule


def test_exact_fact_and_not_testable():
    assert c.exact(434_602, 434_602, "parameters").verdict == "holds"
    assert c.exact(434_601, 434_602, "parameters").verdict == "does not hold"
    assert c.fact("K r rank: 1e-16", "SVD at rank K r reproduces the mean delta-W").verdict == "fact"
    with pytest.raises(ValueError, match="must say why"):
        c.not_testable("", needs="gpu")
    gpu = c.not_testable("a timing of the seed's GPU", needs="gpu")
    assert gpu.verdict == "not testable here" and gpu.needs == "gpu"
    assert gpu.rule == "needs a GPU: a timing of the seed's GPU"
    with pytest.raises(ValueError, match=r"needs = 'time' is not allowed; it must be one of \['gpu', 'seed data'"):
        c.not_testable("later", needs="time")
    with pytest.raises(ValueError, match="a 'not testable here' verdict says what it needs"):
        c.Verdict("not testable here", "not measured", "why")
    with pytest.raises(ValueError, match="other verdicts leave it empty"):
        c.Verdict("holds", "1 %", "rule", needs="gpu")
    ledger = c.ClaimsLedger("local", "x")
    ledger.add("A GPU claim", "fast", gpu, "speed")
    ledger.add("A counted claim", "2", c.exact(2, 2, "parameters", " parameters"), "setup")
    assert ledger.frame()["needs"].tolist() == ["gpu", ""]


def test_an_inconclusive_row_on_fewer_than_five_seeds_says_why():
    ledger = c.ClaimsLedger("local", "x", few_seeds="three folds")
    paired = lambda a, b: c.paired_greater(dict(enumerate(a)), dict(enumerate(b)), 0.0, "a - b", "{:+.2f}", " points", "seeds, paired")
    unsure = paired([1.0, 2.0, 3.0], [1.5, 1.0, 3.2])
    sure = paired([2.0, 3.0, 4.0], [1.0, 1.9, 3.1])
    five = paired([1.0, 2.0, 3.0, 1.0, 2.0], [1.5, 1.0, 3.2, 1.2, 1.9])
    assert (unsure.verdict, sure.verdict, five.verdict) == ("inconclusive", "holds", "inconclusive")
    for claim, verdict in (("unsure", unsure), ("sure", sure), ("five", five)):
        ledger.add(claim, "x", verdict, "table", note="paired")
    assert ledger.frame()["note"].tolist() == ["paired; 3 seeds, not 5: three folds", "paired", "paired"]
    plain = c.ClaimsLedger("local", "x")
    plain.add("unsure", "x", unsure, "table")
    assert plain.frame()["note"].tolist() == [""]


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
        ledger.add("CNN parameters", "434,602", c.exact(1, 1, unit=" parameters"), evidence="")


def test_ledger_rows_carry_verdict_rule_and_evidence():
    ledger = c.ClaimsLedger("embedded", "eurosat_fedavg_ptq")
    ledger.add("CNN parameters", "434,602", c.exact(434_602, 434_602, "parameters", " parameters"), evidence="accuracy.md")
    ledger.add("FP16 is faster", "20-30 %", c.not_testable("FP16 kernels are not faster on this CPU", needs="gpu"), evidence="speed.md")
    frame = ledger.frame()
    assert frame["verdict"].tolist() == ["holds", "not testable here"]
    assert set(frame["verdict"]) <= set(c.VERDICTS) and frame["evidence"].str.len().gt(0).all()
    assert list(frame.columns[:10]) == ["claim", "seed", "study", "verdict", "rule", "evidence", "note", "kind",
                                        "evidence_profile", "device"]
    assert frame["kind"].tolist() == ["seed claim", "seed claim"] and (frame["evidence_profile"] == "embedded").all()


def test_at_most_and_positive_flip_each_way():
    assert c.at_most(0.47, 1.0, "share").verdict == "holds"
    assert c.at_most(9.15, 1.0, "share").verdict == "does not hold"
    assert c.positive([0.3, 0.4, 0.5]).verdict == "holds"
    assert c.positive([-0.5, -0.4, -0.3]).verdict == "does not hold"
    assert c.positive([-0.5, 0.4, 0.1]).verdict == "inconclusive"
    assert c.positive([0.5]).verdict == "inconclusive"  # one seed: no interval


def test_below_flips_each_way_on_the_limit():
    assert c.below([1.4, 1.5, 1.6], 2.0).verdict == "holds"
    assert c.below([2.4, 2.5, 2.6], 2.0).verdict == "does not hold"
    assert c.below([1.0, 2.0, 3.0], 2.0).verdict == "inconclusive"  # the interval covers the limit
    assert c.below([1.5], 2.0).verdict == "inconclusive"  # one run: no interval
    v = c.below([1.4, 1.5, 1.6], 2.0, "measured / modelled", "{:.2f}", "x")
    assert v.target == 2.0 and v.rule.startswith("measured / modelled < 2.00x (95 % t interval")


def test_a_computed_number_is_matched_to_the_precision_the_seed_states():
    # "1.66" covers [1.655, 1.665]: the CNN's saved 1.668 MiB is outside, its parameters x 4 bytes (1.658) inside
    v = c.matches(1.6676, c.stated("1.66"), "saved size", "{:.3f}", " MiB")
    assert v.verdict == "does not hold" and v.measured == "1.668 MiB" and "[1.655, 1.665] MiB" in v.rule
    assert c.matches(1_738_408 / 2**20, c.stated("1.66"), "size").verdict == "holds"
    assert c.matches(12.0, c.stated_range(10, 15, "10-15"), "checkpoint").verdict == "holds"


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


# --- the verdict policy: designs, magnitudes, kinds, units ------------------------------------------------------

@pytest.mark.parametrize("text, scale, low, high", [
    ("0.41", 1.0, 0.405, 0.415),
    ("45", 1.0, 44.5, 45.5),
    ("8,460", 1.0, 8459.5, 8460.5),
    ("~9.4", 1e6, 9.35e6, 9.45e6),
    ("-0.25", 1.0, -0.255, -0.245),
])
def test_a_stated_figure_covers_its_last_digit(text, scale, low, high):
    f = c.stated(text, scale)
    assert f.low == pytest.approx(low) and f.high == pytest.approx(high)
    with pytest.raises(ValueError, match="seed figure = 'about half' is not a number"):
        c.stated("about half")
    with pytest.raises(ValueError, match="low <= high"):
        c.stated_range(2.0, 1.0, "2-1")


def test_pairing_decides_what_welch_cannot():
    # the fold moves both arms: unpaired, the spread of the folds hides a constant +0.02 gain; paired, it is clear
    a = {0: 0.62, 1: 0.82, 2: 0.72}
    b = {0: 0.60, 1: 0.80, 2: 0.70}
    assert c.greater(list(a.values()), list(b.values())).verdict == "inconclusive"
    v = c.paired_greater(a, b, 0.0, "fedavg - centralized F1", "{:+.3f}", " F1", "seeds, paired by fold")
    assert v.verdict == "holds" and v.interval.n == 3 and "paired t interval; n = 3 seeds, paired by fold" in v.rule
    assert c.paired_less(b, a).verdict == "holds" and c.paired_greater(b, a).verdict == "does not hold"
    assert c.paired_greater({0: 0.9}, {0: 0.1}).verdict == "inconclusive"  # one pair: no interval


def test_paired_differences_match_a_known_t_interval():
    d = c.paired_difference_interval({"s0": 3.0, "s1": 5.0, "s2": 4.0}, {"s0": 1.0, "s1": 2.0, "s2": 3.0})
    # differences 2, 3, 1: mean 2, sd 1, t(0.975, 2) = 4.302653
    assert d.estimate == 2.0 and d.low == pytest.approx(2 - 4.302653 / math.sqrt(3), rel=1e-6)


def test_paired_values_must_share_their_keys():
    with pytest.raises(ValueError, match="only one side has"):
        c.paired_difference_interval({0: 1.0, 1: 2.0}, {0: 1.0, 2: 2.0})
    with pytest.raises(TypeError, match="keyed by what pairs them"):
        c.paired_difference_interval([1.0, 2.0], [1.0, 2.0])


def test_the_prediction_interval_of_one_run_is_wider_than_the_mean_s():
    values = [1.0, 2.0, 3.0]
    p, m = c.prediction_interval(values), c.mean_interval(values)
    assert p.low == pytest.approx(2 - 4.302653 * math.sqrt(1 + 1 / 3), rel=1e-6)
    assert p.low < m.low and p.high > m.high
    lp = c.prediction_interval([1.0, 2.0, 4.0], log=True)
    assert lp.estimate == pytest.approx(2.0) and lp.low > 0


@pytest.mark.parametrize("values, figure, verdict", [
    ([82.0, 85.0, 84.0], "85.20", "holds"),          # the seed's single run is one the study could make
    ([80.0, 80.2, 80.1], "85.20", "does not hold"),  # far outside one run's interval
    ([84.0], "85.20", "inconclusive"),               # one run: no interval
])
def test_a_seeds_single_run_is_compared_with_one_run_not_with_the_mean(values, figure, verdict):
    v = c.one_run_matches(values, c.stated(figure), "test accuracy", "{:.2f}", " %")
    assert v.verdict == verdict and "prediction interval of one study run" in v.rule
    if verdict != "inconclusive":
        assert v.measured.endswith(("inside", "outside")) and " %" in v.measured


def test_a_magnitude_claim_is_judged_on_its_magnitude_not_its_direction():
    # LoRA 1.66x faster than QLoRA in every run: faster, yes; 45 % faster, no
    lora, qlora = [0.70, 0.68, 0.69], [0.42, 0.41, 0.415]
    assert c.faster(lora, qlora).verdict == "holds"
    v = c.one_run_ratio_matches(lora, qlora, c.stated("1.45"), "LoRA / QLoRA steps/s")
    assert v.verdict == "does not hold" and v.measured.startswith("1.66x, one run's ratio in") and "outside" in v.measured
    assert c.one_run_ratio_matches(lora, [0.48, 0.47, 0.475], c.stated("1.45")).verdict == "holds"
    assert c.one_run_ratio_matches([0.7], qlora, c.stated("1.45")).verdict == "inconclusive"


def test_a_new_single_run_is_placed_against_the_reference_runs():
    cold = [80.0, 80.5, 79.8]
    assert c.beyond_one_run(86.0, cold).verdict == "holds"
    assert c.beyond_one_run(70.0, cold).verdict == "does not hold"
    assert c.beyond_one_run(80.3, cold).verdict == "inconclusive"
    assert c.beyond_one_run(86.0, [80.0]).verdict == "inconclusive"


def test_spreads_between_runs_are_compared_as_spreads():
    from scipy import stats

    noisy, steady = [0.409, 0.500, 0.318], [0.50, 0.51, 0.505]
    assert c.spread_matches(noisy, c.stated("0.091"), seed_runs=3).verdict == "holds"
    v = c.spread_matches(steady, c.stated("0.091"), seed_runs=3)
    # sd 0.005: a 3-run sd under it lies below 0.005 sqrt(F(0.975; 2, 2)) = 0.005 sqrt(39) = 0.031, so 0.091 is outside
    assert v.verdict == "does not hold" and v.interval.high == pytest.approx(0.005 * math.sqrt(stats.f.ppf(0.975, 2, 2)))
    assert c.spread_matches([0.5], c.stated("0.091"), seed_runs=3).verdict == "inconclusive"


def test_a_derived_figure_carries_the_precision_of_its_inputs():
    f = c.derived("664", "1.66")  # 400 x 1.66 MB: 1.66 is +-0.005, so 664 is +-2.0
    assert f.low == pytest.approx(662.0) and f.high == pytest.approx(666.0)
    assert c.matches(664.51, f, "MiB").verdict == "holds" and c.matches(664.51, c.stated("664"), "MiB").verdict == "does not hold"
    assert c.derived("0.41", "1.66").high == pytest.approx(0.415)  # its own last digit is the wider band
    with pytest.raises(ValueError, match="missing"):
        c.matches(float("nan"), f, "MiB")


def test_a_seeds_single_difference_is_placed_against_unpaired_runs():
    qlora, lora = [7.78, 7.78, 7.78], [11.27, 11.27, 11.27]
    v = c.one_run_difference_matches(qlora, lora, c.stated_range(-0.32, -0.30, "-0.31"), "QLoRA - LoRA", "{:+.3f}", " GB")
    assert v.verdict == "does not hold" and v.measured.startswith("-3.490 GB, one run's difference in [-3.490, -3.490] GB")
    assert c.one_run_difference_matches([7.4, 7.5], [7.7, 7.8], c.stated_range(-0.32, -0.30, "-0.31")).verdict == "holds"


def test_a_finding_sentence_follows_its_verdict():
    sentences = ("beats it ({measured})", "loses ({measured})", "cannot tell ({measured})", "")
    assert c.says(c.paired_greater({0: 2.0, 1: 3.0, 2: 2.5}, {0: 1.0, 1: 2.0, 2: 1.4}), *sentences) == "beats it (1.033 [0.8899, 1.177] (95 %, n=3))"
    assert c.says(c.paired_greater({0: 1.0, 1: 2.0, 2: 1.4}, {0: 2.0, 1: 3.0, 2: 2.5}), *sentences).startswith("loses")
    assert c.says(c.paired_greater({0: 1.0, 1: 3.0, 2: 2.0}, {0: 2.0, 1: 2.0, 2: 2.1}), *sentences).startswith("cannot tell")
    assert c.says(c.not_testable("a GPU timing", needs="gpu"), *sentences) == ""


def test_the_ledger_keeps_seed_claims_and_study_checks_apart_with_their_evidence():
    ledger = c.ClaimsLedger("local", "lora_vs_qlora", device="cpu")
    ledger.add("LoRA is 45 % faster", "45 %", c.one_run_ratio_matches([0.7, 0.69, 0.71], [0.42, 0.41, 0.43], c.stated("1.45")),
               "gpu_measurements", evidence_profile="paper", device="NVIDIA H100", key="gpu_speed")
    ledger.add("adapter 83.1 MB", "83.1 MB", c.matches(83.07, c.stated("83.1"), "size", "{:.2f}", " MB"), "paper_adapters")
    ledger.check("LoRA learns", c.positive([0.3, 0.4, 0.5], "loss drop", "{:.2f}", " nats"), "lm_runs")
    frame = ledger.frame()
    assert frame["kind"].tolist() == ["seed claim", "seed claim", "study check"]
    assert frame["evidence_profile"].tolist() == ["paper", "local", "local"]
    assert frame["device"].tolist() == ["NVIDIA H100", "cpu", "cpu"]
    assert ledger.verdicts["gpu_speed"].verdict == "does not hold"
    assert c.tally(frame, "seed claim", "local") == {"holds": 1, "does not hold": 0, "inconclusive": 0, "not testable here": 0, "fact": 0}
    assert c.tally(frame, "seed claim", "paper")["does not hold"] == 1
    assert c.tally(frame, "study check", "local")["holds"] == 1
    with pytest.raises(ValueError, match="key = 'gpu_speed' is already used"):
        ledger.add("again", "x", c.fact("x", "y"), "setup", key="gpu_speed")
    with pytest.raises(ValueError, match="kind = 'opinion' is not allowed"):
        ledger.add("x", "x", c.fact("x", "y"), "setup", kind="opinion")


@pytest.mark.parametrize("measured", ["0.1884", "5,128", "+0.002 [-0.039, +0.042] (95 %, n=3)", "1.2e+07"])
def test_a_study_cell_without_its_unit_is_refused(measured):
    ledger = c.ClaimsLedger("local", "code_lm_fedprox")
    with pytest.raises(ValueError, match="is a bare number; give its unit"):
        ledger.add("x", "y", c.Verdict("holds", measured, "rule"), "setup")


def test_a_study_cell_with_its_unit_is_kept():
    ledger = c.ClaimsLedger("local", "code_lm_fedprox")
    for measured in ("0.1884x", "5,128 parameters", "+0.002 F1 [-0.039, +0.042] (95 %, n=3)", "3 of 3 seeds", "not measured"):
        ledger.add("x", "y", c.Verdict("holds", measured, "rule"), "setup")
    assert len(ledger.frame()) == 5


def test_evidence_source_names_profile_and_device_and_drops_empty_parts():
    import pandas as pd

    from fedpeft.reporting.claims import evidence_source

    assert evidence_source({"evidence_profile": "paper", "device": "NVIDIA H100"}) == "paper, NVIDIA H100"
    assert evidence_source({"evidence_profile": "local", "device": ""}) == "local"
    assert evidence_source(pd.Series({"evidence_profile": "local", "device": float("nan")})) == "local"
