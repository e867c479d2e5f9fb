"""The GLUE LoRA experiment end to end at toy scale: what crosses the wire, exactness in the loop, compression."""

import pytest

from fedpeft.core.config import ParameterError
from fedpeft.experiments.glue_lora_aggregation import runs as exp
from fedpeft.experiments.glue_lora_aggregation.settings import load
from fedpeft.federated.ledger import serialize_state
from fedpeft.federated.lora_aggregation import lora_layer_names

TOY = {"train_examples": 60, "eval_examples": 30, "pretrain_examples": 40, "num_rounds": 2, "batch_size": 8,
       "lora_rank": 4, "lora_alpha": 4, "svd_rank": 4, "compress_client_rank": 8}


@pytest.fixture(scope="module")
def toy():
    s = load("embedded", TOY)
    return s, exp.prepare_task(s, "sst2", seed=0)


def test_bad_settings_name_the_setting():
    with pytest.raises(ParameterError, match="aggregations"):
        load("embedded", {"aggregations": ["flora"]})
    with pytest.raises(ValueError, match="svd_rank = 16 is above lora_rank = 8"):
        load("embedded", {"svd_rank": 16})
    with pytest.raises(ParameterError, match="num_rounds"):
        load("embedded", {"num_rounds": -1})


def test_only_adapters_and_head_cross_the_wire(toy):
    s, data = toy
    run = exp.run_federated_lora(s, data, "naive", "iid", seed=0, progress=False)
    model, _ = exp.adapter_model(s, data, "naive", 4, seed=0)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(run.result.final_state) == set(trainable)
    message = len(serialize_state({n: p.detach() for n, p in trainable.items()}))
    per_round = run.result.ledger.per_round()
    assert (per_round["total"] == 2 * s["num_clients"] * message).all()
    assert sum(p.numel() for p in run.model.parameters() if p.requires_grad) == sum(p.numel() for p in trainable.values())
    assert run.strategy.error_frame()["relative_error"].gt(0).all()  # naive is inexact once clients differ


def test_ffa_keeps_a_frozen_and_aggregates_exactly(toy):
    s, data = toy
    run = exp.run_federated_lora(s, data, "ffa", "category", seed=0, progress=False)
    assert not any(".lora_A." in k for k in run.result.final_state)
    assert run.strategy.error_frame()["relative_error"].max() < 1e-6
    assert len(run.strategy.error_frame()) == s["num_rounds"] * len(lora_layer_names(run.result.final_state))


def test_one_client_svd_at_full_rank_equals_the_clients_adapter(toy):
    s, data = toy
    one = load("embedded", TOY | {"num_clients": 1})
    svd = exp.run_federated_lora(one, data, "svd", "iid", seed=0, progress=False)
    naive = exp.run_federated_lora(one, data, "naive", "iid", seed=0, progress=False)
    assert svd.strategy.error_frame()["relative_error"].max() < 1e-5 and naive.strategy.error_frame()["relative_error"].max() == 0
    # the first round starts from the same adapter and trains the same way, so round 1 scores agree
    assert svd.result.history.loc[1, "server_score"] == pytest.approx(naive.result.history.loc[1, "server_score"])


def test_clients_train_at_rank_8_and_the_server_keeps_rank_4(toy):
    s, data = toy
    run = exp.run_federated_lora(s, data, "svd", "iid", seed=0, client_rank=8, progress=False)
    a_shapes = {v.shape[0] for k, v in run.result.final_state.items() if ".lora_A." in k}
    assert a_shapes == {4}
    assert run.result.history["server_score"].notna().all()
