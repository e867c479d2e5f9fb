"""A deployment round taken apart: the critical farmer is the one whose training ended last, its parts add up to the
measured round, farmers without stamps (dropped) are left out, and the report's words follow the numbers."""

from __future__ import annotations

import pandas as pd
import pytest

from fedpeft.experiments.weeds_qlora_federated import report
from fedpeft.federated.deployment.timing import PARTS, client_timing, round_parts


def _client_history() -> pd.DataFrame:
    # round 1: farmer_1 ends training last (t = 112); farmer_2 was dropped (no stamps); round 2: farmer_0 last
    return pd.DataFrame([
        {"round": 1, "client": "farmer_0", "reported": True, "process_start_t": 101.0, "app_enter_t": 104.0, "train_start_t": 105.0, "train_end_t": 108.0},
        {"round": 1, "client": "farmer_1", "reported": True, "process_start_t": 103.0, "app_enter_t": 107.5, "train_start_t": 108.0, "train_end_t": 112.0},
        {"round": 1, "client": "farmer_2", "reported": False, "process_start_t": None, "app_enter_t": None, "train_start_t": None, "train_end_t": None},
        {"round": 2, "client": "farmer_0", "reported": True, "process_start_t": 204.0, "app_enter_t": 210.0, "train_start_t": 210.5, "train_end_t": 215.0},
        {"round": 2, "client": "farmer_1", "reported": True, "process_start_t": 202.0, "app_enter_t": 205.0, "train_start_t": 205.5, "train_end_t": 209.0},
    ])


def _history() -> pd.DataFrame:
    return pd.DataFrame({"round": [0, 1, 2], "round_s": [1.0, 20.0, 22.0], "sent_t": [None, 100.0, 200.0],
                         "received_t": [None, 115.0, 219.0], "simulated_no_latency_s": [None, 4.5, 5.0]})


def test_client_timing_keeps_stamped_replies_only():
    timing = client_timing(_client_history())
    assert list(timing["client"]) == ["farmer_0", "farmer_1", "farmer_0", "farmer_1"]
    assert client_timing(pd.DataFrame({"round": [1], "client": ["a"], "train_s": [1.0]})).empty  # simulation engines


def test_round_parts_follow_the_last_farmer_and_add_up_to_the_round():
    parts = round_parts(_history()[lambda h: h["round"] >= 1], client_timing(_client_history()))
    assert list(parts["client"]) == ["farmer_1", "farmer_0"]
    first = parts.iloc[0]
    assert (first["pickup_s"], first["startup_s"], first["load_s"], first["train_s"], first["return_s"]) == (3.0, 4.5, 0.5, 4.0, 3.0)
    assert first["server_s"] == pytest.approx(20.0 - 15.0)
    assert parts[list(PARTS)].sum(axis=1).tolist() == pytest.approx(parts["round_s"].tolist())
    assert parts["clock_ok"].tolist() == [True, True]


def test_a_round_the_wall_clock_stepped_under_is_marked_and_left_out_of_the_means():
    """Round 2's stamps span 19 s; if the server's monotonic clock saw a 12 s round, the wall clock stepped by 7 s
    (the server part would be -7 s): the round is marked and the summary averages round 1 alone, and says so."""
    history = _history().assign(round_s=[1.0, 20.0, 12.0])
    parts = round_parts(history[history["round"] >= 1], client_timing(_client_history()))
    assert parts["clock_ok"].tolist() == [True, False] and parts["server_s"].iloc[1] == pytest.approx(-7.0)

    class _Stepped:
        scalars = {"label": "x deployment", "seed": 0, "engine": "deployment"}
        tables = {"history": history.assign(simulated_no_latency_s=[None, 4.5, 5.0]), "client_timing": client_timing(_client_history())}

    summary = report.parts_summary(report.deployment_parts({"a": _Stepped()}))
    row = summary.iloc[0]
    assert row["rounds"] == 1 and row["clock_stepped"] == 1 and row["round_s"] == pytest.approx(20.0)
    assert "1 rounds and 1 left out: the wall clock the stamps read stepped" in report.parts_text(summary)


def test_round_parts_refuses_a_history_without_stamps():
    with pytest.raises(ValueError, match="sent_t"):
        round_parts(pd.DataFrame({"round": [1], "round_s": [2.0]}), client_timing(_client_history()))


class _Record:
    def __init__(self, seed: int) -> None:
        self.scalars = {"engine": "deployment", "label": "diloco deployment", "seed": seed, "machine_cores": 2,
                        "startup_s": 2.0, "wall_s": 40.0}
        cpu = pd.DataFrame({"process": ["superlink", "supernode-0", "supernode-0", "supernode-1", "supernode-1"],
                            "program": ["flower-superlink", "flower-supernode", "flower-superexec (exited children)",
                                        "flower-supernode", "flower-superexec (exited children)"],
                            "cpu_s": [2.0, 1.0, 30.0 + 10 * seed, 3.0, 30.0]})
        self.tables = {"history": _history(), "client_timing": client_timing(_client_history()), "cpu_seconds": cpu}


def test_summary_and_words_follow_the_parts():
    parts = report.deployment_parts({"a": _Record(0), "b": _Record(1)})
    assert len(parts) == 4 and set(parts["seed"]) == {0, 1}
    summary = report.parts_summary(parts)
    row = summary.iloc[0]
    assert row["seeds"] == 2 and row["rounds"] == 4
    assert row["round_s"] == pytest.approx(21.0) and row["modelled_no_latency_s"] == pytest.approx(4.75)
    assert sum(row[f"{p.removesuffix('_s')}_pct"] for p in PARTS) == pytest.approx(100.0)
    text = report.parts_text(summary, poll_s=0.1)
    # means: start-up 5.25 > training 4.25 > server 4.0 > pickup = return 3.5 > load 0.5; all but training: 16.75 s
    assert text.index("start-up (Python, torch, Flower, the app) 5.25 s (25 %)") < text.index("local training 4.25 s") \
        < text.index("server (aggregation, evaluation) 4.00 s") < text.index("loading the job and state 0.50 s")
    assert "16.75 s" in text and "every 0.1 s" in text
    assert "cannot be taken apart" in report.parts_text(pd.DataFrame())
    resident = report.parts_text(summary.assign(label=summary["label"] + " resident"))
    assert "ClientApp start-up (Python, Flower, the forwarding app) 5.25 s" in resident
    assert "handing the message to the resident client 0.50 s" in resident and "torch" not in resident


def test_cpu_per_round_sums_programs_over_processes_and_divides_by_rounds():
    cpu = report.cpu_per_round({"a": _Record(0), "b": _Record(1)})
    by_program = cpu.set_index("program")["cpu_s_per_round"]
    # two rounds; ClientApps (60 and 70 CPU-s over the two SuperNodes) -> 30 and 35 per round, mean 32.5
    assert by_program.to_dict() == {"flower-superexec (exited children)": 32.5, "flower-supernode": 2.0, "flower-superlink": 1.0}
    assert cpu["machine_cpu_s_per_round"].tolist() == [42.0] * 3  # 2 cores x (2 + 40 s) / 2 rounds
    text = report.parts_text(report.parts_summary(report.deployment_parts({"a": _Record(0)})), cpu=cpu)
    assert "used 35.5 CPU-seconds of the 42.0 the machine had (ClientApps and ServerApp, exited 32.5, SuperNodes 2.0, SuperLink 1.0)" in text


def test_measured_words_name_each_seeds_protocol():
    rounds = pd.DataFrame({"label": "d", "seed": [0, 0, 1, 1, 2, 2], "round": [1, 2] * 3, "measured_s": [10.0] * 6,
                           "modelled_s": [2.0] * 6, "modelled_no_latency_s": [1.0] * 6, "shaped": True,
                           "tls": [True, True, False, False, False, False]})
    mixed = report.measured_text(report.measured_summary(rounds), pd.DataFrame())
    assert "TLS with registered SuperNode keys in 1 of 3 seeds, plain HTTP in the others" in mixed and "10.0x" in mixed
    assert "(3 seeds, 6 rounds, TLS with" in report.measured_text(report.measured_summary(rounds.assign(tls=True)), pd.DataFrame())
    assert "plain HTTP)" in report.measured_text(report.measured_summary(rounds.assign(tls=False)), pd.DataFrame())


def test_scale_words_give_the_growth_exponent_and_each_engine_against_in_process():
    scale = pd.DataFrame({"engine": ["inprocess", "inprocess", "flower", "flower", "flower-before"],
                          "farmers": [50, 500, 50, 500, 50], "s_per_round": [1.0, 10.0, 1.0, 100.0, 4.0],
                          "peak_mib": [1000.0, 1100.0, 4000.0, 5000.0, 4800.0],
                          "farmer_data_mib": [10.0, 100.0, 10.0, 100.0, 10.0]})
    text = report.scale_text(scale)
    assert "`inprocess`, 50 -> 500 farmers: 10.0x the seconds per round for 10x the farmers (time grows as farmers^1.00)" in text
    assert "(time grows as farmers^2.00); peak memory +1,000 MiB for +90 MiB" in text
    assert "At 500 farmers `flower` took 100.00 s per round, 10.00x" in text
    assert "At 50 farmers `flower-before` took 4.00 s per round, 4.00x" in text
    assert "`flower-before`, 50 -> 50" not in text  # one setting: no growth sentence
