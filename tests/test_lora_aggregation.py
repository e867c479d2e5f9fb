"""LoRA aggregation: exactness of each method on hand-made factors, the round-loop strategy, and the merge."""


import copy

import numpy as np
import pytest
import torch

from fedpeft.federated import lora_aggregation as lora
from fedpeft.federated.lora_aggregation import LoraAggregation, LoraFactors, aggregate, mean_delta, relative_error
from fedpeft.federated.partition import save_shard_manifests


def _factors(count=3, rank=2, out_f=10, in_f=12, scaling=0.5, seed=0, shared_a=None):
    g = torch.Generator().manual_seed(seed)
    return [
        LoraFactors(shared_a if shared_a is not None else torch.randn(rank, in_f, generator=g, dtype=torch.float64),
                    torch.randn(out_f, rank, generator=g, dtype=torch.float64), scaling)
        for _ in range(count)
    ]


def test_naive_average_differs_from_the_mean_delta_but_equals_it_for_identical_clients():
    fs = _factors()
    w = [1.0, 2.0, 3.0]
    naive = aggregate("naive", fs, w)
    assert relative_error(mean_delta(fs, w), naive.delta()) > 0.1
    same = [fs[0]] * 3
    assert relative_error(mean_delta(same, w), aggregate("naive", same, w).delta()) < 1e-12


def test_naive_average_on_a_known_example():
    a1, a2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    b1, b2 = torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [1.0]])
    fs = [LoraFactors(a1, b1, 1.0), LoraFactors(a2, b2, 1.0)]
    # true mean of B_i A_i = 0.5 * I; naive: mean(B) @ mean(A) = 0.25 * ones
    torch.testing.assert_close(mean_delta(fs).float(), 0.5 * torch.eye(2))
    torch.testing.assert_close(aggregate("naive", fs).delta().float(), 0.25 * torch.ones(2, 2))


@pytest.mark.parametrize("k,r", [(2, 2), (3, 2), (4, 1)])
def test_svd_is_exact_when_its_rank_reaches_the_sum_of_client_ranks(k, r):
    fs = _factors(count=k, rank=r)
    w = list(range(1, k + 1))
    merged = aggregate("svd", fs, w, svd_rank=k * r, scaling=2.0)
    assert merged.rank == k * r and merged.scaling == 2.0
    assert relative_error(mean_delta(fs, w), merged.delta()) < 1e-10


def test_svd_truncation_error_is_the_eckart_young_optimum():
    fs = _factors(count=3, rank=2)
    target = mean_delta(fs)
    s = torch.linalg.svdvals(target)
    for q in (1, 2, 4):
        merged = aggregate("svd", fs, None, svd_rank=q)
        expected = float(torch.sqrt((s[q:] ** 2).sum()) / torch.sqrt((s ** 2).sum()))
        assert relative_error(target, merged.delta()) == pytest.approx(expected, rel=1e-8)


def test_svd_rank_above_the_layer_is_refused():
    fs = _factors(out_f=10, in_f=12)
    with pytest.raises(ValueError, match=r"svd_rank = 11 .*10 x 12 layer.*\[1, 10\]"):
        aggregate("svd", fs, None, svd_rank=11)
    with pytest.raises(ValueError, match="svd_rank = 0"):
        aggregate("svd", fs, None, svd_rank=0)


def test_frozen_a_and_stacking_are_exact():
    shared = torch.randn(2, 12, dtype=torch.float64)
    fs = _factors(shared_a=shared)
    w = [3.0, 1.0, 1.0]
    ffa = aggregate("ffa", fs, w)
    assert torch.equal(ffa.A, shared)
    assert relative_error(mean_delta(fs, w), ffa.delta()) < 1e-12
    other = _factors(seed=5)
    flora = aggregate("flora", other, w)
    assert flora.rank == 6
    assert relative_error(mean_delta(other, w), flora.delta()) < 1e-12
    with pytest.raises(ValueError, match="same frozen A"):
        aggregate("ffa", other, w)


def test_weights_must_match_the_adapters():
    fs = _factors()
    with pytest.raises(ValueError, match="weights has 2 values but there are 3 states"):
        aggregate("naive", fs, [1.0, 2.0])
    with pytest.raises(ValueError, match="must be finite, >= 0"):
        aggregate("naive", fs, [1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="aggregation = 'mean' is not known"):
        aggregate("mean", fs)


def test_merge_weights_come_from_manifest_sample_counts(tmp_path):
    parts = [np.arange(0, 10), np.arange(10, 40), np.arange(40, 100)]
    save_shard_manifests(tmp_path, parts, np.zeros(100, dtype=int), {"mode": "test"})
    paths = [tmp_path / f"client_{i}.json" for i in (1, 2, 3)]
    weights, source = lora.merge_weights(3, manifests=paths)
    assert weights == pytest.approx([0.1, 0.3, 0.6]) and source == "manifest sample counts"
    assert lora.merge_weights(2)[0] == [0.5, 0.5]
    with pytest.raises(ValueError, match="not both"):
        lora.merge_weights(3, weights=[1, 1, 1], manifests=paths)
    with pytest.raises(ValueError, match="2 shard manifests for 3 adapters"):
        lora.merge_weights(3, manifests=paths[:2])


def _state(fs, head=None, frozen_a=False):
    s = {}
    for i, f in enumerate(fs):
        if not frozen_a:
            s[f"layer{i}.lora_A.default.weight"] = f.A.float()
        s[f"layer{i}.lora_B.default.weight"] = f.B.float()
    if head is not None:
        s["classifier.weight"] = head
    return s


def test_strategy_records_errors_and_averages_the_head():
    clients = [_state(_factors(count=2, seed=c, scaling=1.0), head=torch.full((2, 3), float(c))) for c in range(3)]
    naive = LoraAggregation("naive", client_rank=2, client_alpha=2)
    out = naive.aggregate(clients[0], clients, [1, 1, 2])
    torch.testing.assert_close(out["classifier.weight"], torch.full((2, 3), (0 + 1 + 4) / 4))
    errors = naive.error_frame()
    assert list(errors["round"]) == [1, 1] and (errors["relative_error"] > 0.05).all()
    svd = LoraAggregation("svd", client_rank=2, client_alpha=2, global_rank=2, global_alpha=2)
    svd.aggregate(clients[0], clients, [1, 1, 2])
    assert (svd.error_frame()["relative_error"] < errors["relative_error"]).all()  # SVD is the best rank-2 fit


def test_ffa_strategy_is_exact_with_the_frozen_a():
    shared = torch.randn(2, 12, dtype=torch.float64)
    per_client = [_factors(count=1, shared_a=shared, seed=c, scaling=1.0) for c in range(3)]
    frozen = {"layer0.lora_A.default.weight": shared.float()}
    ffa = LoraAggregation("ffa", client_rank=2, client_alpha=2, frozen=frozen)
    clients = [_state(f, frozen_a=True) for f in per_client]
    out = ffa.aggregate(clients[0], clients, [1, 2, 3])
    assert set(out) == {"layer0.lora_B.default.weight"}
    assert ffa.error_frame()["relative_error"].max() < 1e-6


def test_strategy_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="flora.*not allowed in the round loop"):
        LoraAggregation("flora", 8, 8)
    with pytest.raises(ValueError, match="svd_rank = 16 is above the clients' rank 8"):
        LoraAggregation("svd", 8, 8, global_rank=16)
    with pytest.raises(ValueError, match="only 'svd' can compress"):
        LoraAggregation("naive", 16, 16, global_rank=8)
    with pytest.raises(ValueError, match="needs the frozen A"):
        LoraAggregation("ffa", 8, 8)


def test_expanding_a_compressed_global_adapter_keeps_its_delta():
    g = _factors(count=1, rank=2, scaling=1.0)[0]
    strategy = LoraAggregation("svd", client_rank=4, client_alpha=8, global_rank=2, global_alpha=2)  # s_c 2, s_g 1
    state = _state([g])
    for generator in (None, torch.Generator().manual_seed(0)):
        big = strategy.expand_for_model(state, generator)
        A, B = big["layer0.lora_A.default.weight"], big["layer0.lora_B.default.weight"]
        assert A.shape == (4, 12) and B.shape == (10, 4)
        assert torch.count_nonzero(B[:, 2:]) == 0
        torch.testing.assert_close((2.0 * B.double() @ A.double()), g.delta(), rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(big["layer0.lora_A.default.weight"][2:]) > 0  # new directions can learn


# --- FedEx-LoRA --------------------------------------------------------------------------------------------------------

def test_fedex_residual_on_a_known_example_makes_the_average_exact():
    a1, a2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    b1, b2 = torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [1.0]])
    fs = [LoraFactors(a1, b1, 2.0), LoraFactors(a2, b2, 2.0)]
    # mean(B A) = 0.5 I, mean(B) mean(A) = 0.25 ones: the residual is scaling x their difference
    residual = lora.fedex_residual(fs)
    torch.testing.assert_close(residual, 2.0 * (0.5 * torch.eye(2, dtype=torch.float64) - 0.25 * torch.ones(2, 2, dtype=torch.float64)))
    torch.testing.assert_close(aggregate("fedex", fs).delta() + residual, mean_delta(fs))


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 3.0]])
def test_fedex_frozen_weight_plus_adapter_is_the_true_mean_delta(weights):
    fs = _factors(count=3, rank=2, scaling=0.5)
    w0 = torch.randn(10, 12, dtype=torch.float64)
    naive = aggregate("fedex", fs, weights)
    global_weight = w0 + lora.fedex_residual(fs, weights) + naive.delta()
    assert relative_error(w0 + mean_delta(fs, weights), global_weight) < 1e-12
    assert relative_error(mean_delta(fs, weights), naive.delta()) > 0.1  # without the residual: naive's error
    with pytest.raises(ValueError, match="equal ranks and scalings"):
        lora.fedex_residual([fs[0], LoraFactors(fs[1].A, fs[1].B, 1.0)])


def test_fedex_strategy_hands_the_residual_to_the_loop_once_and_keeps_the_sum():
    clients = [_state(_factors(count=2, seed=c, scaling=1.0)) for c in range(3)]
    fedex = LoraAggregation("fedex", client_rank=2, client_alpha=2)
    assert fedex.folds_base_weights and not LoraAggregation("naive", 2, 2).folds_base_weights
    fedex.aggregate(clients[0], clients, [1, 1, 2])
    assert fedex.error_frame()["relative_error"].max() < 1e-6  # float32 states: exact to rounding
    first = fedex.base_delta()
    assert sorted(first) == ["layer0.base_layer.weight", "layer1.base_layer.weight"]
    assert first["layer0.base_layer.weight"].shape == (10, 12)
    assert fedex.base_delta() is None  # handed over once
    fedex.aggregate(clients[0], clients[::-1], [2, 1, 1])
    second = fedex.base_delta()
    torch.testing.assert_close(fedex.folded_base()["layer1.base_layer.weight"],
                               first["layer1.base_layer.weight"] + second["layer1.base_layer.weight"])
    resumed = LoraAggregation("fedex", client_rank=2, client_alpha=2)
    resumed.load_state_dict(fedex.state_dict())
    assert resumed.folded_base().keys() == fedex.folded_base().keys()
    assert "folded" not in LoraAggregation("naive", 2, 2).state_dict()


def test_fedex_in_the_round_loop_folds_the_residual_into_the_model_and_the_ledger():
    from fedpeft.data.code_corpus import TokenBlocks
    from fedpeft.federated.engines import run_rounds
    from fedpeft.federated.ledger import serialize_state
    from fedpeft.federated.loop import Client, RoundConfig, run_federated
    from fedpeft.models.causal_lm import byte_level_tokenizer, tiny_opt
    from fedpeft.models.text import attach_lora
    from fedpeft.training.causal_lm import CausalLMTrainer

    torch.manual_seed(0)
    model = attach_lora(tiny_opt(byte_level_tokenizer(), 64), 4, 8, 0.0, None, seed=0, task_type="CAUSAL_LM")
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(5)
    clients = [Client(f"c{i}", TokenBlocks(torch.randint(2, 258, (4, 16), generator=gen), [])) for i in range(2)]
    test = TokenBlocks(torch.randint(2, 258, (4, 16), generator=gen), [])
    strategy = LoraAggregation("fedex", client_rank=4, client_alpha=8)
    trainer = CausalLMTrainer(lr=5e-2, batch_size=2, epochs=1)
    config = RoundConfig(num_rounds=2, seed=3, exchange="trainable", evaluate_clients=False)
    result = run_federated(model, clients, strategy, trainer, config, server_test=test, progress=False)
    assert strategy.error_frame()["relative_error"].max() < 1e-5
    folded = strategy.folded_base()
    assert len(folded) == 4 and all(k.endswith(".base_layer.weight") for k in folded)  # 2 layers x (q, v)
    assert max(float(v.abs().max()) for v in folded.values()) > 0  # the clients differed: there was a residual
    # the server evaluated frozen weights + residuals + the averaged adapters
    check = copy.deepcopy(model)
    check.load_state_dict(base | result.final_state | {k: base[k] + v for k, v in folded.items()})
    assert trainer.evaluate(check, test)["loss"] == pytest.approx(result.history["server_loss"].iloc[-1], rel=1e-6)
    # every client receives each round's residual: counted as downlink beside the adapters
    ledger = result.ledger.frame()
    extra = ledger[ledger["payload"] == "folded into frozen weights"]
    assert len(extra) == 2 * 2 and (extra["direction"] == "down").all()
    assert set(extra["bytes"]) == {len(serialize_state({k: torch.zeros_like(v) for k, v in folded.items()}))}
    with pytest.raises(ValueError, match="engine = 'flower' is not allowed with LoRA-fedex"):
        run_rounds("flower", model, clients, strategy, trainer, config)
