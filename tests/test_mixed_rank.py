"""Clients of different LoRA ranks (fedpeft.federated.mixed_rank): the layouts, the three aggregations on known
factors, and the round loop (each client trains and sends its own rank; equal ranks reduce to naive averaging)."""

import copy

import pytest
import torch

from fedpeft.federated.lora_aggregation import LoraAggregation, LoraFactors, mean_delta, relative_error
from fedpeft.federated.mixed_rank import MixedRankLora, keep_components, pad_components


def _state(A, B, head=None):
    state = {"layer.lora_A.default.weight": A, "layer.lora_B.default.weight": B}
    return state | ({"classifier.weight": head} if head is not None else {})


def test_keeping_and_padding_components_on_a_known_adapter():
    A, B = torch.arange(12.0).reshape(3, 4), torch.arange(15.0).reshape(5, 3)
    head = torch.ones(2, 2)
    kept = keep_components(_state(A, B, head), 2)
    assert torch.equal(kept["layer.lora_A.default.weight"], A[:2]) and torch.equal(kept["layer.lora_B.default.weight"], B[:, :2])
    assert kept["classifier.weight"] is head
    padded = pad_components(kept, 4)
    assert padded["layer.lora_A.default.weight"].shape == (4, 4) and padded["layer.lora_B.default.weight"].shape == (5, 4)
    assert torch.equal(padded["layer.lora_A.default.weight"][:2], A[:2]) and not padded["layer.lora_A.default.weight"][2:].any()
    assert not padded["layer.lora_B.default.weight"][:, 2:].any()
    with pytest.raises(ValueError, match="rank 3 cannot be padded to rank 2"):
        pad_components(_state(A, B), 2)


def test_each_client_receives_its_own_components_and_svd_starts_the_extra_ones_fresh():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(4, 6, generator=g), torch.randn(5, 4, generator=g)
    svd = MixedRankLora("svd", [1, 2, 4], scaling=1.0, svd_rank=2)
    assert svd.downlink(_state(A, B), 0)["layer.lora_A.default.weight"].shape == (1, 6)
    assert svd.downlink(_state(A, B), 2)["layer.lora_A.default.weight"].shape == (2, 6)  # the common rank, not 4
    view = svd.client_view(svd.downlink(_state(A, B), 2), 2, torch.Generator().manual_seed(1))
    a, b = view["layer.lora_A.default.weight"], view["layer.lora_B.default.weight"]
    assert torch.equal(a[:2], A[:2]) and torch.equal(b[:, :2], B[:, :2])
    assert a[2:].abs().min() > 0 and a[2:].abs().max() <= 1 / 6 ** 0.5  # fresh rows, peft's kaiming bound
    assert not b[:, 2:].any()  # ... with zero B: the global delta-W is unchanged
    small = svd.client_view(svd.downlink(_state(A, B), 0), 0, torch.Generator().manual_seed(1))
    assert not small["layer.lora_A.default.weight"][1:].any() and not small["layer.lora_B.default.weight"][:, 1:].any()
    het = MixedRankLora("hetlora", [1, 2, 4], scaling=1.0)
    assert het.downlink(_state(A, B), 2)["layer.lora_A.default.weight"].shape == (4, 6)
    up = het.uplink(_state(A, B), 1)
    assert up["layer.lora_B.default.weight"].shape == (5, 2)
    assert torch.equal(het.from_uplink(up, 1)["layer.lora_B.default.weight"][:, :2], B[:, :2])
    with pytest.raises(IndexError, match="client 3 has no rank"):
        het.uplink(_state(A, B), 3)


def _clients(ranks, rank=4, out_f=7, in_f=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    states = []
    for r in ranks:
        A, B = torch.zeros(rank, in_f), torch.zeros(out_f, rank)
        A[:r], B[:, :r] = torch.randn(r, in_f, generator=g), torch.randn(out_f, r, generator=g)
        states.append(_state(A, B, torch.full((2, 2), float(r))))
    return states


def test_the_three_aggregations_on_known_clients():
    states, weights = _clients([1, 2, 4]), [1, 1, 2]
    w = torch.tensor(weights, dtype=torch.float64) / 4
    factors = [LoraFactors(s["layer.lora_A.default.weight"], s["layer.lora_B.default.weight"], 0.5) for s in states]
    target = mean_delta(factors, weights)
    glob = _clients([4])[0]
    het = MixedRankLora("hetlora", [1, 2, 4], scaling=0.5).aggregate(glob, states, weights)
    mean_a = sum(wi * s["layer.lora_A.default.weight"].double() for wi, s in zip(w, states, strict=True))
    assert torch.allclose(het["layer.lora_A.default.weight"].double(), mean_a, atol=1e-6)
    assert torch.allclose(het["classifier.weight"], torch.tensor(2.75).expand(2, 2))  # (1 + 2 + 2 * 4) / 4
    u, sv, vh = torch.linalg.svd(target)
    for method, rank in (("flexlora", 4), ("svd", 2)):
        strategy = MixedRankLora(method, [1, 2, 4], scaling=0.5, svd_rank=2)
        out = strategy.aggregate(glob, states, weights)
        a, b = out["layer.lora_A.default.weight"], out["layer.lora_B.default.weight"]
        assert a.shape == (4, 6) and not a[rank:].any() and not b[:, rank:].any()
        best = (u[:, :rank] * sv[:rank]) @ vh[:rank]  # Eckart-Young: the best rank-`rank` approximation
        assert torch.allclose(0.5 * b.double() @ a.double(), best, atol=1e-5)
        error = strategy.error_frame()["relative_error"].iloc[0]
        assert error == pytest.approx(relative_error(target, best), abs=1e-6)
        assert error == pytest.approx(float(sv[rank:].norm() / sv.norm()), abs=1e-6)
    naive_error = MixedRankLora("hetlora", [1, 2, 4], scaling=0.5)
    naive_error.aggregate(glob, states, weights)
    assert naive_error.error_frame()["relative_error"].iloc[0] > 0.1  # zero-padding is not the mean delta-W


def test_settings_are_checked():
    with pytest.raises(ValueError, match="mixed_rank_aggregations: 'naive' is not allowed"):
        MixedRankLora("naive", [4, 8], 1.0)
    with pytest.raises(ValueError, match=r"mixed_ranks \(client_ranks\) = \[4, 0\] is not allowed"):
        MixedRankLora("hetlora", [4, 0], 1.0)
    with pytest.raises(ValueError, match=r"svd_rank = 16 is not allowed with client ranks \[4, 8\]"):
        MixedRankLora("svd", [4, 8], 1.0, svd_rank=16)


def _loop_setup(rank=4):
    from fedpeft.data.code_corpus import TokenBlocks
    from fedpeft.models.causal_lm import byte_level_tokenizer, tiny_opt
    from fedpeft.models.text import attach_lora
    from fedpeft.training.causal_lm import CausalLMTrainer

    torch.manual_seed(0)
    model = attach_lora(tiny_opt(byte_level_tokenizer(), 64), rank, rank, 0.0, None, seed=0, task_type="CAUSAL_LM")
    gen = torch.Generator().manual_seed(5)
    clients = [TokenBlocks(torch.randint(2, 258, (4, 16), generator=gen), []) for _ in range(3)]
    test = TokenBlocks(torch.randint(2, 258, (4, 16), generator=gen), [])
    return model, clients, test, CausalLMTrainer(lr=5e-2, batch_size=2, epochs=1)


def test_a_client_trains_only_its_own_components():
    from fedpeft.federated.loop import Client, client_update, exchanged_keys

    model, data, _, trainer = _loop_setup()
    strategy = MixedRankLora("hetlora", [1, 2, 4], scaling=1.0)
    glob = {k: v.detach().clone() for k, v in model.state_dict().items() if k in exchanged_keys(model, "trainable")}
    new, _ = client_update(copy.deepcopy(model), strategy.downlink(glob, 0), Client("1", data[0]), 0, 1, strategy, trainer, seed=3)
    a_keys = [k for k in new if ".lora_A" in k]
    assert a_keys and all(new[k].shape[0] == 4 for k in a_keys)
    for ka in a_keys:
        kb = ka.replace(".lora_A", ".lora_B")
        assert not new[ka][1:].any() and not new[kb][:, 1:].any()  # components 2-4 never left zero
        assert new[kb][:, 0].abs().max() > 0  # the client's own component trained


def test_mixed_ranks_in_the_round_loop_send_each_clients_rank_and_equal_ranks_are_naive_averaging():
    from fedpeft.federated.engines import run_rounds
    from fedpeft.federated.ledger import serialize_state
    from fedpeft.federated.loop import Client, RoundConfig, run_federated

    model, data, test, trainer = _loop_setup()
    clients = [Client(str(i + 1), d) for i, d in enumerate(data)]
    config = RoundConfig(num_rounds=2, seed=3, exchange="trainable", evaluate_clients=False)
    strategy = MixedRankLora("flexlora", [1, 2, 4], scaling=1.0)
    result = run_federated(model, clients, strategy, trainer, config, server_test=test, progress=False)
    up = result.ledger.frame().query("direction == 'up' and round == 1").set_index("client")["bytes"]
    assert up.to_dict() == {str(i + 1): len(serialize_state(keep_components({k: v for k, v in model.named_parameters() if v.requires_grad}, r)))
                            for i, r in enumerate([1, 2, 4])}
    assert up["1"] < up["2"] < up["3"]
    assert len(strategy.error_frame()) == 2 * 4  # 2 rounds x 4 adapted layers
    with pytest.raises(ValueError, match="sends each client its own message"):
        run_rounds("flower", model, clients, strategy, trainer, config)

    # every client at the same rank: HetLoRA's zero-padding is naive averaging, to the bit
    het = run_federated(model, clients, MixedRankLora("hetlora", [4, 4, 4], scaling=1.0), trainer, config, server_test=test, progress=False)
    naive = run_federated(model, clients, LoraAggregation("naive", 4, 4), trainer, config, server_test=test, progress=False)
    assert all(torch.equal(het.final_state[k], naive.final_state[k]) for k in naive.final_state)
    assert het.ledger.frame()["bytes"].tolist() == naive.ledger.frame()["bytes"].tolist()
    assert het.history["server_loss"].tolist() == naive.history["server_loss"].tolist()


def test_svd_to_a_common_rank_resumes_to_the_same_result_and_flower_refuses_it(tmp_path):
    from fedpeft.federated.flower_bridge import RoundLog, fedpeft_strategy_class
    from fedpeft.federated.loop import Client, RoundConfig, run_federated

    model, data, test, trainer = _loop_setup()
    clients = [Client(str(i + 1), d) for i, d in enumerate(data)]
    config = RoundConfig(num_rounds=3, seed=3, exchange="trainable", evaluate_clients=False)
    make = lambda: MixedRankLora("svd", [1, 2, 4], scaling=1.0, svd_rank=2)  # the rank-4 client draws 2 fresh rows
    whole_strategy = make()
    whole = run_federated(model, clients, whole_strategy, trainer, config, server_test=test, progress=False)
    a_keys = [k for k in whole.final_state if ".lora_A" in k]
    assert all(not whole.final_state[k][2:].any() and whole.final_state[k][:2].abs().max() > 0 for k in a_keys)
    ckpt = tmp_path / "rounds.pt"
    run_federated(model, clients, make(), trainer, config, server_test=test, progress=False, checkpoint_path=ckpt, stop_after_round=1)
    strategy = make()
    resumed = run_federated(model, clients, strategy, trainer, config, server_test=test, progress=False, checkpoint_path=ckpt)
    assert resumed.resumed_from_round == 1
    assert all(torch.equal(resumed.final_state[k], v) for k, v in whole.final_state.items())
    assert resumed.ledger.frame().equals(whole.ledger.frame())
    assert strategy.error_frame().equals(whole_strategy.error_frame())
    assert resumed.history["server_loss"].tolist() == whole.history["server_loss"].tolist()
    with pytest.raises(ValueError, match="sends each client its own message .* use engine 'inprocess'"):
        fedpeft_strategy_class(strategy, clients, [], lambda record: {}, RoundLog())
