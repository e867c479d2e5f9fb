"""Compressed client updates (fedpeft.federated.compression): codecs on known tensors, their payload sizes, error
feedback's bookkeeping, and the round loop (fp32 is FedAvg; the ledger counts the encoded bytes)."""

import math

import pytest
import torch

from fedpeft.federated.compression import (
    INT8_BLOCK,
    NF4_BLOCK,
    CompressedUpdates,
    decode,
    decode_state,
    encode,
    encode_state,
)
from fedpeft.federated.ledger import serialize_state
from fedpeft.federated.strategies import FedAvg, FedProx


@pytest.mark.parametrize("codec, bytes_per_value, block, tolerance", [
    ("fp32", 4, None, 0.0), ("fp16", 2, None, 1e-3), ("int8", 1, INT8_BLOCK, 0.02), ("nf4", 0.5, NF4_BLOCK, 0.25),
])
def test_each_codec_has_its_size_and_its_error(codec, bytes_per_value, block, tolerance):
    x = torch.randn(10, 100, generator=torch.Generator().manual_seed(0))
    payload = encode(x, codec)
    data_bytes = payload["data"].numel() * payload["data"].element_size()
    assert data_bytes == math.ceil(x.numel() * bytes_per_value)
    if block is None:
        assert set(payload) == {"data"}
    else:
        assert payload["absmax"].numel() == math.ceil(x.numel() / block) and payload["absmax"].dtype == torch.float32
    y = decode(payload, codec, x.shape)
    assert y.shape == x.shape and y.dtype == torch.float32
    error = float((y - x).abs().max() / x.abs().max())
    assert error <= tolerance and (codec == "fp32") == (error == 0.0)
    # a constant block is exact in every codec: its absmax is the value itself
    ones = torch.full((NF4_BLOCK,), 0.5)
    assert torch.equal(decode(encode(ones, codec), codec, ones.shape), ones)


def test_state_codec_keeps_integer_tensors_and_refuses_a_missing_key():
    state = {"w": torch.randn(3, 4), "steps": torch.tensor([7])}
    payload = encode_state(state, "int8")
    assert set(payload) == {"w::data", "w::absmax", "steps"}
    back = decode_state(payload, "int8", state)
    assert torch.equal(back["steps"], state["steps"]) and back["w"].shape == (3, 4)
    with pytest.raises(KeyError, match="carries no 'w'"):
        decode_state({"steps": state["steps"]}, "int8", state)
    with pytest.raises(ValueError, match=r"codec = 'int2' is not allowed; it must be one of \['fp32', 'fp16', 'int8', 'nf4'\]"):
        encode(state["w"], "int2")


def test_error_feedback_loses_nothing_only_delays_it():
    """With error feedback, what the server decoded over the rounds plus the client's last residual is exactly the
    sum of the client's true deltas; without it, the quantization error stays lost."""
    g = torch.Generator().manual_seed(1)
    sent = {"w": torch.zeros(256)}
    deltas = [torch.randn(256, generator=g) * 0.1 for _ in range(4)]
    for ef in (True, False):
        strategy = CompressedUpdates(FedAvg(), "nf4", error_feedback=ef)
        received = torch.zeros(256)
        for d in deltas:
            strategy.downlink(sent, 0)
            received += strategy.from_uplink(strategy.uplink({"w": sent["w"] + d}, 0), 0)["w"]
        total = sum(deltas)
        if ef:
            assert torch.allclose(received + strategy.residuals[0]["w"], total, atol=1e-5)
        else:
            assert not strategy.residuals and float((received - total).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="cannot wrap"):
        from fedpeft.federated.mixed_rank import MixedRankLora

        CompressedUpdates(MixedRankLora("hetlora", [2, 4], 1.0), "int8")


def test_in_the_round_loop_fp32_updates_are_fedavg_and_the_ledger_counts_the_encoded_bytes(tmp_path):
    from fedpeft.data.code_corpus import TokenBlocks
    from fedpeft.federated.loop import Client, RoundConfig, exchanged_keys, run_federated
    from fedpeft.models.causal_lm import byte_level_tokenizer, tiny_opt
    from fedpeft.models.text import attach_lora
    from fedpeft.training.causal_lm import CausalLMTrainer

    torch.manual_seed(0)
    model = attach_lora(tiny_opt(byte_level_tokenizer(), 64), 4, 4, 0.0, None, seed=0, task_type="CAUSAL_LM")
    gen = torch.Generator().manual_seed(5)
    clients = [Client(str(i), TokenBlocks(torch.randint(2, 258, (4, 16), generator=gen), [])) for i in range(2)]
    test = TokenBlocks(torch.randint(2, 258, (4, 16), generator=gen), [])
    trainer = CausalLMTrainer(lr=5e-2, batch_size=2, epochs=1)
    config = RoundConfig(num_rounds=2, seed=3, exchange="trainable", evaluate_clients=False)
    run = lambda strategy, **kw: run_federated(model, clients, strategy, trainer, config, server_test=test, progress=False, **kw)
    plain = run(FedProx(0.1))
    fp32 = run(CompressedUpdates(FedProx(0.1), "fp32"))
    assert all(torch.allclose(fp32.final_state[k], v, atol=1e-6) for k, v in plain.final_state.items())
    assert fp32.history["server_loss"].tolist() == pytest.approx(plain.history["server_loss"].tolist(), rel=1e-5)
    keys = exchanged_keys(model, "trainable")
    trainable = {k: v.detach() for k, v in model.named_parameters() if k in keys}
    nf4 = CompressedUpdates(FedProx(0.1), "nf4", error_feedback=True)
    ckpt = tmp_path / "rounds.pt"
    run(CompressedUpdates(FedProx(0.1), "nf4", error_feedback=True), checkpoint_path=ckpt, stop_after_round=1)
    resumed = run(nf4, checkpoint_path=ckpt)
    whole = run(CompressedUpdates(FedProx(0.1), "nf4", error_feedback=True))
    assert all(torch.equal(resumed.final_state[k], v) for k, v in whole.final_state.items())  # residuals resume too
    up = whole.ledger.frame().query("direction == 'up'")["bytes"]
    assert set(up) == {len(serialize_state(encode_state(trainable, "nf4")))}
    down = whole.ledger.frame().query("direction == 'down'")["bytes"]
    # 4-bit values are an eighth of fp32's, but on tiny adapters the scales and the per-tensor headers weigh in
    assert set(down) == {len(serialize_state(trainable))} and down.iloc[0] / 8 < up.iloc[0] < down.iloc[0] / 2
