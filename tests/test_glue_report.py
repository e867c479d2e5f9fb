"""GLUE report rules on 3-row tables: single-model verdicts and the "still rising" note."""

from __future__ import annotations

import pandas as pd
import pytest

from fedpeft.experiments.glue_lora_aggregation import report as exp


def test_one_accuracy_model_is_judged_on_its_evaluation_set_and_other_metrics_stay_inconclusive():
    assert exp.one_model_learns("sst2", 721 / 872, 444 / 872, 872, "score").verdict == "holds"
    assert exp.one_model_learns("sst2", 453 / 872, 444 / 872, 872, "score").verdict == "inconclusive"
    # MRPC's headline metric is F1: no interval from one model, so no verdict either way
    v = exp.one_model_learns("mrpc", 0.90, 0.81, 408, "score")
    assert v.verdict == "inconclusive" and "no interval" in v.measured


def _scores(gains: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"task": "stsb", "sharding": "iid", "method": "svd", "client_rank": 8, "seed": [44, 42, 43],
                         "score": [0.74, 0.24, 0.59], "last_round_gain": gains})


def test_still_rising_counts_the_seeds_whose_score_rose_in_the_last_round():
    note = exp.still_rising(_scores([0.21, 0.12, -0.02]), "stsb", 8)
    assert "per seed 24.0, 59.0, 74.0" in note  # sorted by seed
    assert "in 2 of 3 seeds" in note and "(mean +10.3 points)" in note


@pytest.mark.parametrize("rank, task", [(16, "stsb"), (8, "mrpc")])
def test_still_rising_says_nothing_without_matching_runs(rank, task):
    assert exp.still_rising(_scores([0.1, 0.1, 0.1]), task, rank) == ""


def test_extra_task_sentences_give_each_aggregation_over_seeds_with_its_signal():
    scores = pd.DataFrame({"task": "stsb", "sharding": "iid", "method": ["svd"] * 3 + ["naive"] * 3, "client_rank": 8,
                           "seed": [42, 43, 44] * 2, "score": [0.78, 0.79, 0.77, 0.05, -0.02, 0.03], "chance_score": 0.0})
    (sentence,) = exp.extra_task_sentences(scores, ["stsb", "mrpc"], 8)  # no mrpc runs: no sentence
    assert sentence == ("On stsb (pearson in %, IID, 3 seeds; chance 0.00): svd 78.00 ± 1.00 (above chance), "
                        "naive 2.00 ± 3.61 (no signal).")
    assert exp.extra_task_sentences(scores, ["stsb"], 16) == []
