import warnings

import pytest
import torch

from fedpeft.federated.ledger import MIB, CommunicationLedger, cost, deserialize_state, serialize_state
from fedpeft.models.cnn import EuroSATCNN
from fedpeft.models.counting import count_parameters
from fedpeft.quantization.ptq import quantize


def test_seed_cnn_has_434602_parameters():
    assert count_parameters(EuroSATCNN()) == 434_602


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = EuroSATCNN().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for bn in (m.bn1, m.bn2, m.bn3):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def inputs():
    return torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_fp32_size_is_the_real_file(model):
    q = quantize(model, "fp32")
    assert 434_602 * 4 < q.size_bytes() < 434_602 * 4 + 20_000  # parameters + BN buffers + zip overhead


def test_fp16_halves_size_and_keeps_outputs(model, inputs):
    q32, q16 = quantize(model, "fp32"), quantize(model, "fp16")
    assert 0.49 < q16.size_bytes() / q32.size_bytes() < 0.52
    with torch.no_grad():
        assert torch.allclose(q16.module(inputs.half()).float(), model(inputs), atol=2e-2)


def test_dynamic_int8_leaves_convolutions_in_float(model):
    q = quantize(model, "int8_dynamic")
    convs = 2_400 + 51_200 + 55_296  # conv weight elements
    linears = 307_200 + 16_384 + 1_280
    assert q.int8_fraction() == pytest.approx(linears / (convs + linears))
    assert any("convolutions left in fp32" in n for n in q.notes)


def test_static_int8_quantizes_convolutions_too(model, inputs):
    q = quantize(model, "int8_static", calibration=[inputs])
    assert q.int8_fraction() == 1.0
    assert q.size_bytes() < 0.3 * quantize(model, "fp32").size_bytes()
    with torch.no_grad():
        out = q.module(inputs[:5])  # another batch size than calibration
    assert out.shape == (5, 10)
    assert (out.argmax(1) == model(inputs[:5]).argmax(1)).float().mean() >= 0.6


def test_int8_quantization_raises_none_of_the_known_library_warnings(model, inputs):
    """torch.ao's deprecation notices and the pt2e quantizer's max-pool note are filtered where quantize triggers them;
    a warning raised inside the same block still shows (the filters are scoped to those messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize(model, "int8_dynamic")
        quantize(model, "int8_static", calibration=[inputs])
        warnings.warn("a real warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a real warning"]


def test_quantize_leaves_the_model_untouched(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantize(model, "fp16")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_quantization_inputs(model):
    with pytest.raises(ValueError, match="method = 'int4' is not known"):
        quantize(model, "int4")
    with pytest.raises(ValueError, match="int8_static needs calibration"):
        quantize(model, "int8_static")


def test_serialization_round_trip_and_transport_precision():
    state = {"w": torch.randn(100, 10), "n": torch.tensor(3)}
    b32, b16 = serialize_state(state), serialize_state(state, "fp16")
    back = deserialize_state(b16, like=state)
    assert back["w"].dtype == torch.float32 and back["n"].item() == 3
    assert torch.allclose(back["w"], state["w"], atol=1e-2)
    assert torch.equal(deserialize_state(b32)["w"], state["w"])
    assert len(b32) - len(b16) == 100 * 10 * 2
    with pytest.raises(ValueError, match="transport = 'int3'"):
        serialize_state(state, "int3")


def test_ledger_totals_and_cost():
    ledger = CommunicationLedger()
    for rnd in (1, 2):
        for c in ("a", "b"):
            ledger.record(rnd, c, "down", 100)
            ledger.record(rnd, c, "up", 50)
    per_round = ledger.per_round()
    assert per_round["down"].tolist() == [200, 200] and per_round["up"].tolist() == [100, 100]
    assert per_round["cumulative"].tolist() == [300, 600] and ledger.total_bytes() == 600
    assert cost(2 * MIB, 5.0) == 10.0
    with pytest.raises(ValueError, match="direction = 'sideways'"):
        ledger.record(1, "a", "sideways", 1)
    restored = CommunicationLedger.from_state_dict(ledger.state_dict())
    assert restored.total_bytes() == 600


def test_qat_graph_has_every_buffer_shaped_and_leaves_batchnorm_alone(model, inputs):
    """prepare_qat initialises the observers with one pass on BatchNorm's running statistics: no empty buffer is left
    (client states average from the first round), the float model is untouched and no BatchNorm statistic moves."""
    from fedpeft.quantization.qat import prepare_qat

    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = prepare_qat(model, inputs)
    state = prepared.state_dict()
    assert not [k for k, v in state.items() if v.numel() == 0]
    assert any(k.endswith(".scale") for k in state) and any(k.endswith(".min_val") for k in state)
    for name in ("bn1.running_mean", "bn1.running_var", "bn3.running_var"):
        assert torch.equal(state[f"graph.{name}"], before[name])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not prepared.training


def test_a_copied_qat_model_trains_batchnorm_and_evaluates_without_moving_its_ranges(model, inputs):
    """The round loop trains a deep copy: on it, .train() must use batch statistics (BatchNorm's running mean moves)
    and let the observers learn; .eval() must leave both the BatchNorm statistics and the activation ranges alone."""
    import copy

    from fedpeft.quantization.qat import prepare_qat

    work = copy.deepcopy(prepare_qat(model, inputs))
    ranges = lambda m: {k: v.clone() for k, v in m.state_dict().items() if k.endswith(("min_val", "max_val"))}  # noqa: E731
    stats = lambda m: {k: v.clone() for k, v in m.state_dict().items() if k.endswith("running_mean")}  # noqa: E731
    r0, s0 = ranges(work), stats(work)
    work.eval()
    with torch.no_grad():
        work(3 * inputs)
    assert all(torch.equal(v, r0[k]) for k, v in ranges(work).items())
    assert all(torch.equal(v, s0[k]) for k, v in stats(work).items())
    work.train()
    work(3 * inputs)
    assert any(not torch.equal(v, s0[k]) for k, v in stats(work).items())
    assert any(not torch.equal(v, r0[k]) for k, v in ranges(work).items())


def test_qat_trains_converts_to_the_same_int8_scheme_and_averages(model, inputs):
    """One training step changes the fake-quantized weights; the converted model stores every weight in int8 at the
    size of post-training static int8 (the same scheme) and predicts as the fake-quantized graph does; the mean of
    two client states, integer observer flags included, loads back into the model (FedAvg of QAT clients)."""
    from fedpeft.federated.strategies import build_strategy
    from fedpeft.quantization.qat import convert_qat, prepare_qat

    prepared = prepare_qat(model, inputs)
    start = {k: v.clone() for k, v in prepared.state_dict().items()}
    prepared.train()
    opt = torch.optim.SGD([p for p in prepared.parameters() if p.requires_grad], lr=0.01)
    loss = torch.nn.functional.cross_entropy(prepared(inputs), torch.arange(16) % 10)
    loss.backward()
    opt.step()
    trained = {k: v.clone() for k, v in prepared.state_dict().items()}
    assert not torch.equal(trained["graph.conv1.weight"], start["graph.conv1.weight"])
    q = convert_qat(prepared)
    assert q.method == "int8_qat" and q.int8_fraction() == 1.0
    assert q.size_bytes() == quantize(model, "int8_static", calibration=[inputs]).size_bytes()
    prepared.eval()
    with torch.no_grad():
        fake, real = prepared(inputs), q.module(inputs)
    assert (fake.argmax(1) == real.argmax(1)).float().mean() >= 0.9
    mean = build_strategy("fedavg").aggregate(start, [start, trained], [1, 1], None)
    prepared.load_state_dict(mean)
    after = prepared.state_dict()
    assert torch.allclose(after["graph.conv1.weight"], (start["graph.conv1.weight"] + trained["graph.conv1.weight"]) / 2)
    flags = [k for k in after if k.endswith("observer_enabled")]
    assert flags and all(after[k].dtype == torch.int64 and after[k].item() in (0, 1) for k in flags)
