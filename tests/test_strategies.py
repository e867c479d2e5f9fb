import pytest
import torch
from torch import nn

from fedpeft.federated.strategies import DiLoCo, FedAvg, FedProx, build_strategy, weighted_average


def test_weighted_average_on_known_tensors():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(2)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)}
    out = weighted_average([a, b], [1, 3])
    assert torch.equal(out["w"], torch.tensor([2.5, 5.0]))  # (1*1 + 3*3)/4, (2 + 18)/4
    assert out["n"].dtype == torch.int64 and out["n"].item() == 4  # round(2/4 + 15/4 = 4.25)


def test_weighted_average_rejects_bad_weights():
    s = {"w": torch.zeros(1)}
    with pytest.raises(ValueError, match="weights"):
        weighted_average([s], [0])
    with pytest.raises(ValueError, match="weights has 1 values but there are 2 states"):
        weighted_average([s, s], [1])


def test_fedprox_term_value_and_gradient():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 3.0]]))
    global_params = {"weight": torch.tensor([[0.0, 1.0]])}
    term = FedProx(mu=0.5).proximal_term(lin, global_params)
    assert term.item() == pytest.approx(0.25 * (1 + 4))  # mu/2 * ||w - wg||^2
    term.backward()
    assert torch.allclose(lin.weight.grad, torch.tensor([[0.5, 1.0]]))  # mu * (w - wg)


def test_fedprox_skips_frozen_parameters():
    lin = nn.Linear(2, 1)
    lin.bias.requires_grad_(False)
    g = {"weight": lin.weight.detach() + 1, "bias": lin.bias.detach() + 100}
    assert FedProx(mu=2.0).proximal_term(lin, g).item() == pytest.approx(2.0)  # 2/2 * 2 elements * 1^2


def test_fedprox_mu_zero_adds_nothing():
    assert FedProx(mu=0.0).proximal_term(nn.Linear(2, 2), {}) is None


def test_diloco_outer_lr_one_no_momentum_equals_fedavg():
    g = {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0])}
    clients = [{"w": torch.tensor([2.0, 0.0]), "b": torch.tensor([1.0])}, {"w": torch.tensor([0.0, 4.0]), "b": torch.tensor([3.0])}]
    expected = FedAvg().aggregate(g, clients, [1, 1])
    got = DiLoCo(outer_lr=1.0, momentum=0.0).aggregate(g, clients, [1, 1], trainable_keys=["w", "b"])
    for k in expected:
        assert torch.allclose(got[k], expected[k])


def test_diloco_nesterov_step_on_known_tensors():
    d = DiLoCo(outer_lr=0.5, momentum=0.9, nesterov=True)
    g = {"w": torch.tensor([1.0])}
    # round 1: pseudo-gradient 1 - 0 = 1; buf = 1; update = 1 + 0.9 * 1 = 1.9; w = 1 - 0.5 * 1.9 = 0.05
    g = d.aggregate(g, [{"w": torch.tensor([0.0])}], [1])
    assert g["w"].item() == pytest.approx(0.05)
    # round 2: pseudo-gradient 0.05 - 0.05 = 0; buf = 0.9; update = 0 + 0.81; w = 0.05 - 0.405
    g = d.aggregate(g, [{"w": torch.tensor([0.05])}], [1])
    assert g["w"].item() == pytest.approx(0.05 - 0.405)


def test_diloco_buffers_are_averaged_not_stepped():
    d = DiLoCo(outer_lr=0.7, momentum=0.9)
    g = {"w": torch.tensor([1.0]), "running_mean": torch.tensor([0.0])}
    out = d.aggregate(g, [{"w": torch.tensor([0.0]), "running_mean": torch.tensor([4.0])}], [1], trainable_keys=["w"])
    assert out["running_mean"].item() == 4.0


def test_diloco_state_round_trip_resumes_momentum():
    g0 = {"w": torch.tensor([1.0])}
    first, second = [{"w": torch.tensor([0.0])}], [{"w": torch.tensor([0.3])}]
    a = DiLoCo()
    g1 = a.aggregate(g0, first, [1])
    saved = a.state_dict()
    expected = a.aggregate(g1, second, [1])
    b = DiLoCo()  # a fresh strategy, as after a restart
    b.load_state_dict(saved)
    assert torch.allclose(b.aggregate(g1, second, [1])["w"], expected["w"])
    assert not torch.allclose(DiLoCo().aggregate(g1, second, [1])["w"], expected["w"])  # momentum matters


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("fedsgd", {}, "strategy = 'fedsgd' is not known; allowed: \\['diloco', 'fedavg', 'fedprox'\\]"),
        ("fedprox", {"mu": -0.1}, "mu = -0.1 is not allowed"),
        ("diloco", {"outer_lr": 0}, "outer_lr = 0 is not allowed"),
        ("diloco", {"momentum": 1.0}, "momentum = 1.0 is not allowed"),
    ],
)
def test_bad_strategy_settings(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_strategy(name, **kwargs)
