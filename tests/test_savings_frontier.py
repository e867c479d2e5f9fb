"""The savings frontier: its plan (one axis at a time, every seed), the client's memory from known tensors, one point
end to end at toy scale (bytes the ledger counts, DiLoCo's rounds), and the report's builders on hand-made tables
that flip each verdict."""

import pandas as pd
import pytest
import torch
from torch import nn

from fedpeft.core.config import ParameterError
from fedpeft.experiments.savings_frontier import report, runs
from fedpeft.experiments.savings_frontier.settings import load


def _ids(overrides=None):
    return [spec.run_id for spec in runs.run_specs(load("embedded", overrides))]


def test_plan_varies_one_axis_at_a_time_over_every_seed():
    ids = _ids()
    points = sorted({i.rsplit("-s", 1)[0] for i in ids})
    assert len(ids) == len(set(ids)) == 2 * len(points)  # every point on both seeds, the base point once
    cnn = [p for p in points if p.startswith("eurosat-")]
    assert cnn == ["eurosat-full-fp32-diloco2-iid", "eurosat-full-fp32-every-dirichlet", "eurosat-full-fp32-every-iid",
                   "eurosat-full-int8ef-every-iid", "eurosat-full-nf4ef-every-dirichlet", "eurosat-full-nf4ef-every-iid"]
    assert {s.kind for s in runs.run_specs(load("embedded"))} == {"point", "cnn_point"}
    points = [p for p in points if p not in cnn]
    assert points == sorted([
        "sst2-lora-naive-fp32-every-iid", "sst2-full-fp32-every-iid", "sst2-full-int8ef-every-iid",
        "sst2-lora-svd-fp32-every-iid", "sst2-lora-ffa-fp32-every-iid", "sst2-lora-fedex-fp32-every-iid",
        "sst2-lora-naive-fp16-every-iid", "sst2-lora-naive-fp16ef-every-iid", "sst2-lora-naive-int8-every-iid", "sst2-lora-naive-int8ef-every-iid",
        "sst2-lora-naive-nf4-every-iid", "sst2-lora-naive-nf4ef-every-iid", "sst2-lora-naive-fp32-diloco1-iid",
        "sst2-lora-naive-fp32-diloco2-iid", "sst2-lora-naive-fp32-every-dirichlet", "sst2-full-fp32-every-dirichlet",
        "sst2-qlora-naive-fp32-every-iid"])
    plan = {s.run_id: s.args for s in runs.run_specs(load("embedded"))}
    assert plan["sst2-lora-naive-int8ef-every-iid-s43"] == {
        "task": "sst2", "model": "lora", "aggregation": "naive", "codec": "int8", "error_feedback": True, "sync_interval": 0,
        "sharding": "iid", "seed": 43}
    bare = _ids({"aggregations": [], "full_model": False, "full_model_codecs": [], "codecs": [], "sync_intervals": [],
                 "skewed_points": [], "qlora": False, "cnn_points": False})
    assert bare == ["sst2-lora-naive-fp32-every-iid-s42", "sst2-lora-naive-fp32-every-iid-s43"]


def test_bad_settings_name_the_setting_and_what_is_allowed():
    with pytest.raises(ValueError, match=r"sync_intervals = \[1, 3\] holds \[3\], which do not divide num_rounds = 2"):
        load("embedded", {"sync_intervals": [1, 3]})
    with pytest.raises(ValueError, match="needs base_aggregation = 'naive'"):
        load("embedded", {"base_aggregation": "svd"})
    with pytest.raises(ValueError, match="full_model = false"):
        load("embedded", {"full_model": False})
    with pytest.raises(ParameterError, match="codecs"):
        load("embedded", {"codecs": ["int4"]})
    with pytest.raises(ValueError, match=r"cnn_sync_intervals = \[3\] holds \[3\], which do not divide cnn_rounds = 2"):
        load("embedded", {"cnn_sync_intervals": [3]})


def test_each_task_s_points_depend_on_their_own_settings_only():
    """A change to the CNN's settings leaves the text points' records valid, and the other way round (KIND_KEYS)."""
    from fedpeft.experiments.runs import identity
    from fedpeft.experiments.savings_frontier.settings import data_files

    def ids(overrides):
        s = load("embedded", overrides)
        return {spec.run_id: identity(s, spec) for spec in runs.run_specs(s)}

    base, cnn_changed, text_changed = ids({}), ids({"cnn_learning_rate": 0.01}), ids({"learning_rate": 0.01})
    for rid in base:
        is_cnn = rid.startswith("eurosat-")
        assert (base[rid] == cnn_changed[rid]) != is_cnn and (base[rid] == text_changed[rid]) == is_cnn, rid
    assert data_files(load("local", {"cnn_points": True})) == ["glue/SST-2/train.tsv", "glue/SST-2/dev.tsv", "eurosat/EuroSAT_RGB.zip"]
    # the zip stays in the lock while the CNN's points are off, so that turning them on leaves the text points' stages
    assert data_files(load("local", {"cnn_points": False})) == data_files(load("local", {"cnn_points": True}))
    assert data_files(load("local", {"cnn_source": "generated"})) == ["glue/SST-2/train.tsv", "glue/SST-2/dev.tsv"]


def test_client_memory_counts_frozen_weights_as_stored_and_sixteen_bytes_per_trainable_value():
    model = nn.Sequential(nn.Linear(128, 64), nn.Linear(64, 2))
    model[0].requires_grad_(False)
    fp32 = runs.client_state_bytes(model)
    assert fp32 == {"frozen_bytes": (128 * 64 + 64) * 4, "trainable_state_bytes": (64 * 2 + 2) * 16,
                    "client_state_bytes": (128 * 64 + 64) * 4 + (64 * 2 + 2) * 16}
    from fedpeft.quantization.nf4 import nf4_bytes, quantize_linear_layers

    quantize_linear_layers(model, skip=("1",))
    nf4 = runs.client_state_bytes(model)
    assert nf4["trainable_state_bytes"] == fp32["trainable_state_bytes"]
    # the packed codes with bitsandbytes' double-quantized statistics and code books, plus the fp32 bias
    assert nf4["frozen_bytes"] == nf4_bytes(128 * 64, double_quant=True) + 64 * 4 < fp32["frozen_bytes"] / 5


@pytest.fixture(scope="module")
def toy():
    s = load("embedded", {"train_examples": 60, "eval_examples": 30, "pretrain_examples": 40, "num_rounds": 2,
                          "batch_size": 8, "seeds": [0]})
    return s, runs.prepare_task(s, "sst2", seed=0)


def _run(s, data, run_id):
    spec = next(x for x in runs.run_specs(s) if x.run_id == run_id)
    return runs._point_record(s, spec, data, progress=False)


def test_codecs_shrink_the_uplink_and_diloco_syncs_less_often(toy):
    s, data = toy
    base = _run(s, data, "sst2-lora-naive-fp32-every-iid-s0")
    nf4 = _run(s, data, "sst2-lora-naive-nf4ef-every-iid-s0")
    diloco = _run(s, data, "sst2-lora-naive-fp32-diloco2-iid-s0")
    assert base["up_bytes"] == base["down_bytes"]  # fp32 both ways: the same adapters and head
    assert nf4["down_bytes"] == base["down_bytes"] and 2 * nf4["up_bytes"] < base["up_bytes"] / 2  # > 4x smaller
    assert (diloco["rounds_completed"], diloco["total_bytes"]) == (1, base["total_bytes"] // 2)
    assert diloco["local_epochs_per_round"] == 2 * base["local_epochs_per_round"]
    assert "DiLoCo" in diloco["strategy"] and "nf4 updates and error feedback" in nf4["strategy"]
    # 20 examples a client, batches of 8: FedAvg 2 rounds x ceil(20 / 8) = 6 steps, DiLoCo 1 x ceil(40 / 8) = 5
    assert (report.local_steps(base, 8), report.local_steps(diloco, 8)) == (6, 5)
    # a compressing client keeps what it received, and with error feedback its residual: 4 + 4 bytes a trainable value
    assert report.client_memory_bytes(nf4) == nf4["client_state_bytes"] + 8 * nf4["trainable"]
    assert report.client_memory_bytes(base) == base["client_state_bytes"]


def _runs_table(cost_of_lora: list[float]) -> pd.DataFrame:
    rows = []
    for seed, (full, lora) in enumerate(zip([80.0, 82.0, 81.0], cost_of_lora, strict=True)):
        rows += [{"technique": "full model", "sharding": "iid", "seed": seed, "score": full, "total_bytes": 48 * 2**20,
                  "client_state_bytes": 300 * 2**20, "rounds": 5, "wall_s": 60.0},
                 {"technique": "LoRA naive", "sharding": "iid", "seed": seed, "score": full + lora, "total_bytes": 2**20,
                  "client_state_bytes": 100 * 2**20, "rounds": 5},
                 {"technique": "LoRA naive int8", "sharding": "iid", "seed": seed, "score": full + lora - 2.0,
                  "total_bytes": 2**19, "client_state_bytes": 100 * 2**20, "rounds": 5},
                 {"technique": "LoRA naive int8 + EF", "sharding": "iid", "seed": seed, "score": full + lora - 0.1 * seed,
                  "total_bytes": 2**19, "client_state_bytes": 100 * 2**20, "rounds": 5},
                 {"technique": "QLoRA naive", "sharding": "iid", "seed": seed, "score": full + lora, "total_bytes": 2**20,
                  "client_state_bytes": 40 * 2**20, "rounds": 5}]
    return pd.DataFrame(rows).assign(wall_s=60.0, local_steps=126)


@pytest.mark.parametrize(("cost", "verdict"), [([-0.1, 0.1, 0.0], "holds"), ([-3.0, -2.5, -2.8], "does not hold"),
                                              ([-3.0, 1.0, -0.5], "inconclusive")])
def test_each_technique_is_judged_on_its_paired_cost_against_the_full_model(cost, verdict):
    s = load("embedded")
    table = report.savings(_runs_table(cost), "iid", margin=1.0)
    row = table.set_index("technique").loc["LoRA naive"]
    assert row["saved_x"] == pytest.approx(48.0) and row["client_state_MiB"] == pytest.approx(100.0)
    ledger = report.build_claims(s, _runs_table(cost), table)
    assert ledger.verdicts["cost:LoRA naive"].verdict == verdict
    row = ledger.frame().set_index("key").loc["cost:LoRA naive"]
    assert row["claim"] == "LoRA naive saves 48x of the full model's traffic at a cost of at most 1 point"
    assert row["note"].endswith("3 seeds, not 5: every point runs on the same 3 seeds (15 runs, 0.2 h of training here); "
                                "more seeds for every point did not fit the budget") == (verdict == "inconclusive")
    assert ledger.verdicts["ef:LoRA naive int8"].verdict == "holds"  # EF gains about 2 points on every seed
    assert (ledger.verdicts["memory_lora"].verdict, ledger.verdicts["memory_qlora"].verdict) == ("holds", "holds")
    assert ledger.verdicts["memory_qlora"].measured == "40.0 MiB"
    text = report.finding(s, table, ledger)
    assert "LoRA naive saves 48x" in text and "The full model sent in fp32 every round moves 48.0 MiB" in text
    assert "A client's model state: full model 300.0 MiB, LoRA naive 100.0 MiB, QLoRA naive 40.0 MiB." in text
    bigger = _runs_table(cost).assign(client_state_bytes=lambda t: t["client_state_bytes"].where(t["technique"] != "QLoRA naive", 120 * 2**20))
    assert report.build_claims(s, bigger, report.savings(bigger, "iid", 1.0)).verdicts["memory_qlora"].verdict == "does not hold"
    assert report.savings(_runs_table(cost), "dirichlet", 1.0) is None  # no full-model run there: no table
    assert list(table["technique"])[0] == "full model"  # most traffic first


def test_technique_names_say_what_how_and_how_often():
    assert report.technique({"model": "full", "aggregation": "fedavg", "codec": "fp32", "error_feedback": False, "sync_interval": 0}) == "full model"
    assert report.technique({"model": "qlora", "aggregation": "naive", "codec": "nf4", "error_feedback": True, "sync_interval": 0}) == "QLoRA naive nf4 + EF"
    assert report.technique({"model": "lora", "aggregation": "naive", "codec": "fp32", "error_feedback": False, "sync_interval": 3}) == "LoRA naive DiLoCo H=3"


def test_error_feedback_keeps_the_residual_a_quantized_update_dropped():
    from fedpeft.federated.compression import CompressedUpdates
    from fedpeft.federated.strategies import FedAvg

    strategy = CompressedUpdates(FedAvg(), "int8", error_feedback=True)
    sent = {"w": torch.zeros(300)}
    strategy.downlink(sent, 0)
    trained = {"w": torch.linspace(-1, 1, 300) ** 3}
    received = strategy.from_uplink(strategy.uplink(trained, 0), 0)
    assert torch.allclose(received["w"] + strategy.residuals[0]["w"], trained["w"], atol=1e-6)


def test_a_cnn_point_sends_the_whole_model_and_its_codec_shrinks_the_uplink():
    """EuroSAT CNN points end to end on generated images: the whole state travels (every parameter and BatchNorm
    buffer, fp32 both ways, exactly the serialized state each message), NF4 + EF shrinks the uplink ~6x while the
    BatchNorm statistics stay fp32 (no negative variance), DiLoCo at H = 2 syncs half as often with twice the epochs
    a round, and the points of one seed start from the same CNN and shards (their round-0 scores are equal)."""
    from fedpeft.federated.ledger import serialize_state
    from fedpeft.models.cnn import EuroSATCNN

    s = load("embedded", {"cnn_images_per_class": 8, "seeds": [0]})
    specs = {x.run_id: x for x in runs.run_specs(s)}
    base = runs.execute(s, specs["eurosat-full-fp32-every-iid-s0"], progress=False)
    nf4 = runs.execute(s, specs["eurosat-full-nf4ef-every-iid-s0"], progress=False)
    diloco = runs.execute(s, specs["eurosat-full-fp32-diloco2-iid-s0"], progress=False)
    assert base["trainable"] == base["total"] == 434_602 and base["train_examples"] == 64 and base["eval_examples"] == 16
    message = len(serialize_state(EuroSATCNN().state_dict()))
    assert base["up_bytes"] == base["down_bytes"] == message * 3 * 2  # 3 clients x 2 rounds
    assert nf4["down_bytes"] == base["down_bytes"] and 5.5 < base["up_bytes"] / nf4["up_bytes"] < 7.5
    assert nf4["strategy"].endswith("(6 state tensors in fp32)")  # running mean and variance of the 3 BatchNorms
    assert (diloco["rounds_completed"], diloco["total_bytes"]) == (1, base["total_bytes"] // 2)
    # the image trainer takes epochs x ceil(examples / batch) steps: 2 rounds x 1 x ceil(22 / 32), 1 round x 2 x 1
    largest = int(base.tables["shards"]["examples"].max())
    assert report.local_steps(base, 10_000) == 2 * -(-largest // 32) and report.local_steps(diloco, 10_000) == 2 * -(-largest // 32)
    h = {r: x.tables["history"] for r, x in (("base", base), ("nf4", nf4), ("diloco", diloco))}
    assert h["base"]["server_score"].equals(h["base"]["server_accuracy"])
    assert h["base"]["server_loss"].iloc[0] == h["nf4"]["server_loss"].iloc[0] == h["diloco"]["server_loss"].iloc[0]
    assert base.tables["shards"].equals(nf4.tables["shards"])
    with pytest.raises(ValueError, match="cnn_pool_images = 1000 is not allowed: there are 64 images"):
        runs.cnn_images(load("embedded", {"cnn_images_per_class": 8, "cnn_pool_images": 1000}), progress=False)


def test_batchnorm_statistics_sent_exactly_come_back_exactly():
    """A variance that falls in a 4-bit block with larger values can decode below zero; keys in ``exact`` travel in
    fp32 and come back bit for bit, the others are still quantized."""
    from fedpeft.federated.compression import decode_state, encode_state

    delta = {"w": torch.linspace(-1.0, 1.0, 128), "bn.running_var": torch.tensor([-0.65] + [0.9] * 63)}
    like = {k: v.clone() for k, v in delta.items()}
    back = decode_state(encode_state(delta, "nf4", frozenset({"bn.running_var"})), "nf4", like, frozenset({"bn.running_var"}))
    assert torch.equal(back["bn.running_var"], delta["bn.running_var"]) and not torch.equal(back["w"], delta["w"])
    lossy = decode_state(encode_state(delta, "nf4"), "nf4", like)
    assert not torch.equal(lossy["bn.running_var"], delta["bn.running_var"])


def _cnn_rows(cost):
    rows = []
    for seed, (full, c) in enumerate(zip([60.0, 62.0, 61.0], cost, strict=True)):
        rows += [{"technique": "CNN full model", "task": "eurosat", "sharding": "iid", "seed": seed, "score": full,
                  "total_bytes": 20 * 2**20, "client_state_bytes": 7 * 2**20, "rounds": 6, "local_steps": 120},
                 {"technique": "CNN full model int8 + EF", "task": "eurosat", "sharding": "iid", "seed": seed, "score": full + c,
                  "total_bytes": 12 * 2**20, "client_state_bytes": 10 * 2**20, "rounds": 6, "local_steps": 120},
                 {"technique": "CNN full model int8", "task": "eurosat", "sharding": "iid", "seed": seed, "score": full + c - 3.0,
                  "total_bytes": 12 * 2**20, "client_state_bytes": 8 * 2**20, "rounds": 6, "local_steps": 120}]
    return pd.DataFrame(rows).assign(wall_s=30.0)


@pytest.mark.parametrize(("cost", "verdict"), [([-0.1, 0.1, 0.0], "holds"), ([-3.0, -2.5, -2.8], "does not hold")])
def test_the_cnn_s_techniques_are_judged_against_the_cnn_s_own_full_model(cost, verdict):
    s = load("embedded")
    both = pd.concat([_runs_table([-0.1, 0.1, 0.0]).assign(task="sst2"), _cnn_rows(cost)], ignore_index=True)
    text, cnn = report.savings(both, "iid", 1.0), report.savings(both, "iid", 1.0, task="eurosat")
    assert "CNN full model" not in set(text["technique"]) and set(cnn["technique"]) == {
        "CNN full model", "CNN full model int8 + EF", "CNN full model int8"}
    assert cnn.set_index("technique").loc["CNN full model int8 + EF", "saved_x"] == pytest.approx(20 / 12)
    skewed = _cnn_rows(cost).assign(sharding="dirichlet")
    both = pd.concat([both, skewed], ignore_index=True)
    cnn_skewed = report.savings(both, "dirichlet", 1.0, task="eurosat")
    ledger = report.build_claims(s, both, text, None, cnn, cnn_skewed)
    assert ledger.verdicts["skew:CNN full model int8 + EF"].verdict == verdict
    assert ledger.verdicts["cost:CNN full model int8 + EF"].verdict == verdict
    assert ledger.verdicts["cost:LoRA naive"].verdict == "holds"  # the text task's verdicts are its own
    assert ledger.verdicts["ef:CNN full model int8"].verdict == "holds"  # EF gains 3 points on every seed
    row = ledger.frame().set_index("key").loc["cost:CNN full model int8 + EF"]
    assert row["evidence"] == "savings_cnn" and row["claim"].startswith("CNN full model int8 + EF saves 1.67x of the CNN full model's")
    words = report.finding(s, text, ledger, None, cnn, cnn_skewed)
    assert "On the EuroSAT CNN (3 clients, full-model updates), its full model sent in fp32 every round moves 20.0 MiB" in words
    assert "CNN full model int8 + EF saves 1.67x" in words
    # each task's error feedback in its own part: the CNN's after the CNN is introduced
    assert words.index("On the EuroSAT CNN") < words.index("CNN full model int8 gains")
    assert words.index("LoRA naive int8 gains") < words.index("On the EuroSAT CNN")
    assert "On Dirichlet label skew: CNN full model int8 + EF saves 1.67x" in words
    setup = report.describe(s, both)
    assert "5 techniques, 3 seeds (0, 1, 2), 15 runs; Dirichlet" in setup and setup.endswith("3 techniques, 3 seeds, 18 runs.")  # per task
    assert report.savings(_cnn_rows(cost), "iid", 1.0) is None  # no text-task full model in a CNN-only table

