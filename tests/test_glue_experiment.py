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
    one = load("embedded", TOY | {"num_clients": 1, "mixed_ranks": []})
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


def test_plan_adds_fedex_the_rank_sweep_the_learning_rates_and_extra_seeds_where_asked():
    s = load("embedded", {"aggregations": ["svd", "naive", "fedex"], "rank_sweep": [4, 16], "lr_study": [1e-3, 1e-4],
                          "extra_seeds": [45], "extra_tasks": []})
    specs = {spec.run_id: spec for spec in exp.run_specs(s)}
    assert len(specs) == len(exp.run_specs(s))
    fedex = [i for i in specs if "-fedex-" in i]
    assert "sst2-fedex-category-r8-s42" in fedex and "sst2-fedex-dirichlet-r8-s45" in fedex
    # extra seeds repeat the repeated comparisons only: IID and repeat_shardings, every aggregation
    assert sorted(i for i in specs if i.endswith("-s45") and "-mixed-" not in i and "-keep-" not in i) == sorted(
        f"sst2-{m}-{sh}-r8-s45" for m in ("svd", "naive", "fedex") for sh in ("iid", "dirichlet"))
    sweep = {i: spec.args for i, spec in specs.items() if "-keep-" in i}
    assert sorted(sweep) == sorted(f"sst2-svd-iid-r{r}-keep-s{seed}" for r in (4, 16) for seed in (42, 43, 44, 45))
    assert all(a["global_rank"] == a["client_rank"] for a in sweep.values())
    assert specs["sst2-svd-iid-r16-s42"].args.get("global_rank") is None  # compress 16 -> svd_rank stays as it was
    lr = [spec for spec in specs.values() if spec.kind == "lr_study"]
    assert [spec.args["seed"] for spec in lr] == [42, 43, 44] and all(spec.args["lrs"] == [1e-3, 1e-4] for spec in lr)
    with pytest.raises(ValueError, match=r"extra_seeds = \[43\] is not allowed; \[43\] already in seeds"):
        load("embedded", {"extra_seeds": [43]})
    with pytest.raises(ValueError, match="rank_sweep = \\[4\\] needs svd_rank = lora_rank"):
        load("embedded", {"rank_sweep": [4], "svd_rank": 4})


def test_the_rank_sweep_keeps_the_clients_rank_on_the_server(toy):
    s, data = toy
    run = exp.run_federated_lora(s, data, "svd", "iid", 0, client_rank=8, progress=False, global_rank=8)
    assert run.strategy.global_rank == 8 and run.strategy.client_rank == 8
    compressed = exp.run_federated_lora(s, data, "svd", "iid", 0, client_rank=8, progress=False)
    assert compressed.strategy.global_rank == s["svd_rank"] == 4


def test_fedex_in_the_glue_loop_is_exact_and_pays_for_it_in_downlink(toy):
    s, data = toy
    fedex = exp.run_federated_lora(s, data, "fedex", "iid", 0, progress=False)
    naive = exp.run_federated_lora(s, data, "naive", "iid", 0, progress=False)
    assert fedex.strategy.error_frame()["relative_error"].max() < 1e-5
    assert naive.strategy.error_frame()["relative_error"].max() > 1e-3
    down = lambda run: run.result.ledger.frame().query("direction == 'down'")["bytes"].sum()
    up = lambda run: run.result.ledger.frame().query("direction == 'up'")["bytes"].sum()
    assert up(fedex) == up(naive)  # clients send the same adapters
    residual_bytes = down(fedex) - down(naive)
    layers = lora_layer_names(fedex.result.final_state)
    assert residual_bytes > 0 and len(fedex.strategy.folded_base()) == len(layers)
    hidden = data.base_model.config.hidden_size
    # every client, every round, each adapted layer's dense hidden x hidden residual in fp32 (plus safetensors headers)
    dense = s["num_rounds"] * s["num_clients"] * len(layers) * hidden * hidden * 4
    assert dense <= residual_bytes < dense * 1.05


def test_the_learning_rate_study_trains_each_arm_at_each_rate(toy):
    s, data = toy
    spec = exp.RunSpec("sst2-lr-study-s0", {"task": "sst2", "seed": 0, "lrs": [1e-3, 1e-5]}, "lr_study")
    table = exp._lr_study_record(s, spec, data, progress=False).tables["lr_study"]
    assert table[["baseline", "lr"]].values.tolist() == [["centralized LoRA", 1e-3], ["centralized LoRA", 1e-5],
                                                         ["full fine-tuning", 1e-3], ["full fine-tuning", 1e-5]]
    assert table["trainable_params"].iloc[2] > 10 * table["trainable_params"].iloc[0]


def test_plan_runs_clients_of_different_ranks_with_each_aggregation_over_every_seed():
    s = load("embedded", {"mixed_ranks": [2, 4, 8], "mixed_rank_aggregations": ["svd", "flexlora"], "extra_seeds": [45]})
    mixed = {spec.run_id: spec for spec in exp.run_specs(s) if spec.kind == "mixed_rank"}
    assert sorted(mixed) == sorted(f"sst2-{m}-iid-mixed-r2-4-8-s{seed}" for m in ("svd", "flexlora") for seed in (42, 43, 44, 45))
    assert all(spec.args["client_ranks"] == [2, 4, 8] for spec in mixed.values())
    assert not [spec for spec in exp.run_specs(load("embedded", {"mixed_ranks": []})) if spec.kind == "mixed_rank"]
    with pytest.raises(ValueError, match=r"mixed_ranks = \[4, 8\] gives 2 ranks for num_clients = 3"):
        load("embedded", {"mixed_ranks": [4, 8]})
    with pytest.raises(ParameterError, match="mixed_rank_aggregations"):
        load("embedded", {"mixed_rank_aggregations": ["naive"]})
    with pytest.raises(ValueError, match=r"svd_rank = 8 is above the largest of mixed_ranks = \[2, 4, 4\]"):
        load("embedded", {"mixed_ranks": [2, 4, 4]})


def test_a_mixed_rank_run_records_each_clients_own_traffic_and_the_aggregation_error(toy):
    s, data = toy
    spec = exp.RunSpec("sst2-flexlora-iid-mixed-r2-4-8-s0", {"task": "sst2", "method": "flexlora", "sharding": "iid", "seed": 0,
                                                              "client_ranks": [2, 4, 8]}, "mixed_rank")
    record = exp._mixed_rank_record(s, spec, data, progress=False)
    traffic = record.tables["traffic_by_client"]
    assert traffic["rank"].tolist() == [2, 4, 8]
    assert traffic["up_bytes"].is_monotonic_increasing and traffic["down_bytes"].is_monotonic_increasing
    assert record["global_rank"] == 8 and len(record.tables["mixed_history"]) == s["num_rounds"] + 1
    errors = record.tables["mixed_errors"]
    assert len(errors) == s["num_rounds"] * 2 * data.base_model.config.num_hidden_layers  # query and value per layer
    assert errors["relative_error"].between(0, 1).all()


def test_a_text_client_of_rank_2_trains_two_components_of_its_rank_8_model(toy):
    from fedpeft.federated.loop import Client, client_update
    from fedpeft.federated.mixed_rank import MixedRankLora

    s, data = toy
    model, alpha = exp.adapter_model(s, data, "hetlora", 8, seed=0)
    strategy = MixedRankLora("hetlora", [2, 4, 8], alpha / 8)
    glob = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    new, _ = client_update(model, strategy.downlink(glob, 0), Client("1", data.train.subset(range(20))), 0, 1, strategy,
                           exp.make_trainer(s, data), seed=0)
    pairs = [(k, k.replace(".lora_A", ".lora_B")) for k in new if ".lora_A" in k]
    assert pairs and all(new[a].shape[0] == 8 for a, _ in pairs)
    assert all(not new[a][2:].any() and not new[b][:, 2:].any() for a, b in pairs)  # AdamW leaves zero components at zero
    assert any(new[b][:, :2].abs().max() > 0 for _, b in pairs)
