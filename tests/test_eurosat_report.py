"""EuroSAT report helpers on hand-made run summaries (no training)."""

import pandas as pd
import pytest

from fedpeft.experiments.eurosat_fedavg_ptq import report


def _runs(partition, rounds, accuracies, seeds=None, chance=0.1, test_images=80):
    seeds = seeds if seeds is not None else list(range(len(accuracies)))
    return pd.DataFrame({"partition": partition, "rounds": rounds, "seed": seeds, "server_accuracy": accuracies,
                         "chance_accuracy": chance, "test_images": test_images})


def test_one_run_is_judged_on_its_test_images():
    # 40/80 correct: Wilson interval about [39.3, 60.7] %, far above 10 % chance
    assert report.partition_signal(_runs("iid", 20, [0.5])) == "above chance"
    # 10/80 correct: 12.5 % [6.9, 21.5] covers the 10 % chance rate
    assert report.partition_signal(_runs("iid", 20, [0.125])) == "no signal"


def test_seeds_are_judged_on_their_spread():
    assert report.partition_signal(_runs("iid", 3, [0.80, 0.82, 0.81])) == "above chance"
    assert report.partition_signal(_runs("iid", 3, [0.05, 0.30, 0.08])) == "no signal"


def test_partitions_and_rounds_say_what_their_verdicts_say():
    from fedpeft.reporting.claims import ClaimsLedger, paired_greater, paired_less

    s = report.load("embedded", {"extra_rounds": 20, "num_rounds": 3, "partition": "iid", "compare_partitions": ["dirichlet"],
                                 "dirichlet_alpha": 0.3})
    summary = pd.concat([_runs("iid", 3, [0.80, 0.82, 0.84]), _runs("dirichlet", 3, [0.70, 0.74, 0.72]),
                         _runs("iid", 20, [0.90])], ignore_index=True)
    ledger = ClaimsLedger("embedded", "eurosat_fedavg_ptq")
    iid, skew = {0: 80.0, 1: 82.0, 2: 84.0}, {0: 70.0, 1: 74.0, 2: 72.0}
    ledger.check("skew", paired_less(skew, iid, 0.0, "dirichlet - iid", "{:+.2f}", " points"), "accuracy", key="dirichlet_lowers")
    ledger.check("rounds", paired_greater({0: 90.0}, {0: 80.0}, 0.0, "20 - 3 rounds", "{:+.2f}", " points"), "accuracy",
                 key="more_rounds")
    text = report.partitions_and_rounds(s, summary, ledger)
    # differences -10, -8, -12 points: mean -10, t interval 2 +- 4.303 * 2 / sqrt(3)
    assert ("Dirichlet(0.3) label skew lowers the final accuracy against iid shards by -10.00 points [-14.97, -5.03] "
            "(95 %, n=3) (72.00 % against 82.00 %, paired by seed).") in text
    assert "Whether 20 rounds beat 3 is undecided (1 seed: 90.00 % against 80.00 %" in text


def test_partitions_and_rounds_is_empty_without_comparisons():
    from fedpeft.reporting.claims import ClaimsLedger

    s = report.load("embedded", {"extra_rounds": 0, "compare_partitions": []})
    summary = _runs(s.params["partition"], s.params["num_rounds"], [0.8, 0.9])
    assert report.partitions_and_rounds(s, summary, ClaimsLedger("embedded", "eurosat_fedavg_ptq")) == ""


@pytest.mark.parametrize("accuracy", [0.5, 0.125])
def test_one_run_needs_a_count_out_of_its_test_images(accuracy):
    with pytest.raises(ValueError, match="not a count"):
        report.partition_signal(_runs("iid", 20, [accuracy + 0.001]))
