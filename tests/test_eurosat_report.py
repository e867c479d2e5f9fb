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


def _fp32_run(seed, fp32, static, losses):
    from fedpeft.core.records import RunRecord

    ptq = pd.DataFrame({"method": ["fp32", "int8_static"], "accuracy_pct": [fp32, static]})
    history = pd.DataFrame({"round": range(len(losses)), "server_loss": losses, "server_accuracy": 0.5})
    return RunRecord("eurosat_fedavg_ptq", f"iid-s{seed}-r3", {"seed": seed, "rounds": 3, "ptq": True},
                     {"seed": seed, "rounds": 3, "precision": "fp32"}, {"ptq": ptq, "history": history})


def _qat_run(seed, qat, losses, last_accuracy, finished=True):
    from fedpeft.core.records import RunRecord

    history = pd.DataFrame({"round": [0, 1, 2, 3], "phase": ["fp32"] * 3 + ["qat"], "server_loss": losses,
                            "server_accuracy": [0.1, 0.3, 0.4, last_accuracy]})
    tables = {"history": history}
    if finished:
        tables["qat"] = pd.DataFrame({"method": ["int8_qat"], "accuracy_pct": [qat], "size_bytes": [448_659]})
    return RunRecord("eurosat_fedavg_ptq", f"iid-s{seed}-r3-qat1", {"seed": seed, "rounds": 3, "ptq": False, "qat_rounds": 1},
                     {"seed": seed, "rounds": 3, "qat_rounds": 1, "wall_s": 60.0}, tables)


def test_qat_comparison_pairs_each_qat_arm_with_its_own_seeds_fp32_run():
    records = {"a": _fp32_run(0, 80.0, 79.5, [2.3, 2.0, 1.9, 1.8]), "b": _fp32_run(1, 82.0, 81.0, [2.3, 2.1, 1.7, 1.6]),
               "c": _qat_run(0, 80.5, [2.3, 2.0, 1.9, 1.7], 0.81), "d": _qat_run(1, 81.5, [2.3, 2.1, 1.75, 1.6], 0.8),
               "e": _qat_run(7, 90.0, [2.3, 2.0, 1.9, 1.7], 0.9),  # no FP32 run of seed 7: left out
               "f": _qat_run(1, 0.0, [2.3, 2.1, 1.75, 1.6], 0.8, finished=False)}  # stopped by the time limit
    t = report.qat_comparison(records).set_index("seed")
    assert list(t.index) == [0, 1] and t.attrs["unfinished"] == ["f"]
    assert t.loc[0, "qat_minus_ptq_points"] == pytest.approx(1.0) and t.loc[1, "qat_minus_ptq_points"] == pytest.approx(0.5)
    assert t.loc[1, "qat_minus_fp32_points"] == pytest.approx(-0.5)
    assert t.loc[0, "qat_fake_quant_pct"] == pytest.approx(81.0) and t.loc[0, "fp32_arm_precision"] == "fp32"
    # float rounds 1-2 against the FP32 run's: identical for seed 0, 0.05 apart at round 2 for seed 1
    assert t.loc[0, "float_rounds_loss_diff"] == 0.0 and t.loc[1, "float_rounds_loss_diff"] == pytest.approx(0.05)
    assert report.qat_comparison({"a": records["a"]}).empty
    # the QAT runs are no FP32 runs: not in the summary's rows, nor among the quantized runs, whether finished or not
    assert [r.run_id for r in report.ptq_runs(records)] == ["iid-s0-r3", "iid-s1-r3"]
    assert [report.arm(r) for r in records.values()] == ["fp32", "fp32", "qat1", "qat1", "qat1", "qat1"]


@pytest.mark.parametrize(("gain", "verdict", "start"), [
    ([0.5, 0.6, 0.45], "holds", "As the seed expects"),       # PTQ 0.5 points below QAT on every seed: slightly less
    ([3.0, 3.2, 2.9], "does not hold", "Post-training quantization is not"),  # 3 points below: more than slightly
    ([-0.5, -0.6, -0.45], "does not hold", "Post-training quantization is not"),  # PTQ above QAT
    ([0.2, -0.5, 0.9], "inconclusive", "Whether"),
])
def test_ptq_below_qat_is_judged_on_its_magnitude(gain, verdict, start):
    ptq = [80.0, 81.0, 79.8]
    table = pd.DataFrame({"seed": [0, 1, 2], "rounds": 10, "qat_rounds": 2, "fp32_pct": [80.2, 81.0, 79.9],
                          "ptq_int8_static_pct": ptq, "qat_int8_pct": [a + g for a, g in zip(ptq, gain, strict=True)]})
    v = report.ptq_below_qat(table)
    assert v.verdict == verdict
    text = report.qat_sentence(table, v)
    assert text.startswith(start) and "the last 2 of 10 rounds" in text and "0 to 1 point below" in text
    assert f"QAT {sum(ptq) / 3 + sum(gain) / 3:.2f} %" in text
    every = report.qat_sentence(table.assign(qat_rounds=10), v)
    assert "every round with int8 fake quantization" in every


def test_the_qat_arms_history_says_which_rounds_were_fake_quantized():
    from fedpeft.experiments.eurosat_fedavg_ptq.runs import _with_phases
    from fedpeft.federated.ledger import CommunicationLedger
    from fedpeft.federated.loop import FederatedResult

    result = FederatedResult(pd.DataFrame({"round": range(5)}), pd.DataFrame(), CommunicationLedger(), {}, 1.0, False, 0)
    assert _with_phases(result, 4, 1).history["phase"].tolist() == ["fp32"] * 4 + ["qat"]
    assert _with_phases(result, 4, 4).history["phase"].tolist() == ["fp32"] + ["qat"] * 4  # round 0: the initial model


def test_qat_arm_is_planned_over_every_main_seed_and_checked_against_num_rounds():
    from fedpeft.experiments.eurosat_fedavg_ptq import runs

    s = report.load("embedded", {"num_rounds": 3, "qat_rounds": 1, "seeds": [0, 1], "compare_partitions": [], "extra_rounds": 0})
    specs = {spec.run_id: spec.args for spec in runs.run_specs(s)}
    assert specs == {"iid-s0-r3": {"partition": "iid", "seed": 0, "rounds": 3, "ptq": True},
                     "iid-s1-r3": {"partition": "iid", "seed": 1, "rounds": 3, "ptq": True},
                     "iid-s0-r3-qat1": {"partition": "iid", "seed": 0, "rounds": 3, "ptq": False, "qat_rounds": 1},
                     "iid-s1-r3-qat1": {"partition": "iid", "seed": 1, "rounds": 3, "ptq": False, "qat_rounds": 1}}
    assert not [i for i in (spec.run_id for spec in runs.run_specs(report.load("embedded", {"qat_rounds": 0}))) if "qat" in i]
    with pytest.raises(ValueError, match=r"qat_rounds = 4 is not allowed with num_rounds = 3; it must be between 0"):
        runs.run_specs(report.load("embedded", {"num_rounds": 3, "qat_rounds": 4}))
