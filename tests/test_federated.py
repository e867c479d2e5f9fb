import numpy as np
import pytest
import torch

from fedpeft.data.eurosat import random_split
from fedpeft.federated.ledger import serialize_state
from fedpeft.federated.loop import Client, RoundConfig, run_federated, sample_clients
from fedpeft.federated.partition import partition
from fedpeft.federated.strategies import DiLoCo, FedAvg, FedProx
from fedpeft.models.cnn import EuroSATCNN
from fedpeft.training.image import ClassifierTrainer


def make_clients(images, n=2):
    parts = partition(images.labels.numpy(), "iid", n, seed=0)
    clients = []
    for i, p in enumerate(parts):
        tr, te = random_split(len(p), 0.25, seed=i)
        clients.append(Client(f"c{i}", images.subset(p[tr]), images.subset(p[te])))
    return clients


def run(images, strategy, rounds=2, **kw):
    torch.manual_seed(0)
    trainer = ClassifierTrainer(lr=1e-3, batch_size=8, epochs=1)
    return run_federated(EuroSATCNN(), make_clients(images), strategy, trainer, RoundConfig(num_rounds=rounds, **kw),
                         server_test=images, progress=False)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def test_fedprox_mu_zero_equals_fedavg(tiny_images):
    assert_same_state(run(tiny_images, FedProx(mu=0.0)).final_state, run(tiny_images, FedAvg()).final_state)


def test_fedprox_positive_mu_differs(tiny_images):
    a, b = run(tiny_images, FedProx(mu=10.0)).final_state, run(tiny_images, FedAvg()).final_state
    assert not torch.allclose(a["fc1.weight"], b["fc1.weight"])


def test_diloco_lr1_no_momentum_equals_fedavg(tiny_images):
    # One round: g - 1 * (g - avg) equals avg up to float32 rounding (~1e-10 here). Over further rounds Adam's
    # first steps (about lr * sign(grad)) amplify such rounding, so the identity is checked where it is exact.
    diloco = run(tiny_images, DiLoCo(outer_lr=1.0, momentum=0.0), rounds=1).final_state
    assert_same_state(diloco, run(tiny_images, FedAvg(), rounds=1).final_state)


def test_history_has_round_zero_and_every_round(tiny_images):
    res = run(tiny_images, FedAvg(), rounds=3)
    assert res.history["round"].tolist() == [0, 1, 2, 3]
    assert {"server_accuracy", "server_loss", "client_accuracy", "train_loss", "train_s", "eval_s"} <= set(res.history)
    assert res.history["server_accuracy"].between(0, 1).all()
    per_client = res.client_history.dropna(subset=["test_accuracy"])
    assert sorted(per_client["client"].unique()) == ["c0", "c1"]


def test_ledger_bytes_equal_serialized_messages(tiny_images):
    res = run(tiny_images, FedAvg(), rounds=2)
    expected = len(serialize_state(EuroSATCNN().state_dict()))
    df = res.ledger.frame()
    assert len(df) == 2 * 2 * 2  # rounds x clients x directions
    assert (df["bytes"] == expected).all()
    per_round = res.ledger.per_round()
    assert per_round["total"].tolist() == [4 * expected, 4 * expected]
    assert per_round["cumulative"].iloc[-1] == res.ledger.total_bytes() == 8 * expected


def test_fp16_transport_halves_float_bytes(tiny_images):
    fp32 = run(tiny_images, FedAvg(), rounds=1).ledger.total_bytes()
    fp16 = run(tiny_images, FedAvg(), rounds=1, transport="fp16").ledger.total_bytes()
    assert 0.49 < fp16 / fp32 < 0.51


def test_resume_after_interruption_gives_same_result(tiny_images, tmp_path):
    ckpt = tmp_path / "run.pt"
    torch.manual_seed(0)
    trainer = ClassifierTrainer(lr=1e-3, batch_size=8, epochs=1)
    clients = make_clients(tiny_images)
    model = EuroSATCNN()
    cfg = RoundConfig(num_rounds=3)
    whole = run_federated(model, clients, DiLoCo(), trainer, cfg, server_test=tiny_images, progress=False)
    part = run_federated(model, clients, DiLoCo(), trainer, cfg, server_test=tiny_images, progress=False,
                         checkpoint_path=ckpt, stop_after_round=1)
    assert part.rounds_completed == 1 and ckpt.is_file()
    resumed = run_federated(model, clients, DiLoCo(), trainer, cfg, server_test=tiny_images, progress=False,
                            checkpoint_path=ckpt)
    assert resumed.resumed_from_round == 1
    assert_same_state(resumed.final_state, whole.final_state)
    assert resumed.history["round"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(resumed.history["server_accuracy"], whole.history["server_accuracy"])
    assert len(resumed.ledger.rows) == len(whole.ledger.rows)


@pytest.mark.parametrize("change, part", [
    ("strategy", "strategy"),
    ("lr", "trainer settings"),
    ("data", "data"),
    ("code", "code"),
])
def test_checkpoint_of_a_changed_run_restarts_saying_why(tiny_images, tmp_path, monkeypatch, change, part):
    from fedpeft.federated import loop

    ckpt = tmp_path / "run.pt"
    clients = make_clients(tiny_images)
    trainer = ClassifierTrainer(lr=1e-3, batch_size=8, epochs=1)
    run_federated(EuroSATCNN(), clients, FedAvg(), trainer, RoundConfig(num_rounds=2), checkpoint_path=ckpt,
                  progress=False, stop_after_round=1)
    strategy = FedProx(mu=1.0) if change == "strategy" else FedAvg()
    if change == "lr":
        trainer = ClassifierTrainer(lr=1e-2, batch_size=8, epochs=1)  # the killed-then-retuned run
    if change == "data":
        clients[0].train.images[0, 0, 0, 0] += 1  # one pixel
    if change == "code":
        monkeypatch.setattr(loop, "code_digest", lambda: "another version")
    with pytest.warns(RuntimeWarning, match=rf"checkpoint {ckpt} was written by a run with other {part}; starting afresh"):
        res = run_federated(EuroSATCNN(), clients, strategy, trainer, RoundConfig(num_rounds=2), checkpoint_path=ckpt,
                            progress=False)
    assert res.resumed_from_round == 0 and res.history["round"].tolist() == [0, 1, 2]


def test_unchanged_run_resumes_without_a_warning(tiny_images, tmp_path):
    import warnings

    ckpt = tmp_path / "run.pt"
    trainer = ClassifierTrainer(lr=1e-3, batch_size=8, epochs=1)
    run_federated(EuroSATCNN(), make_clients(tiny_images), FedAvg(), trainer, RoundConfig(num_rounds=2), checkpoint_path=ckpt,
                  progress=False, stop_after_round=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = run_federated(EuroSATCNN(), make_clients(tiny_images), FedAvg(), trainer, RoundConfig(num_rounds=2),
                            checkpoint_path=ckpt, progress=False)
    assert res.resumed_from_round == 1


def test_data_digest_sees_every_tensor_and_value():
    from fedpeft.federated.loop import data_digest

    a = {"x": torch.zeros(3), "y": [1, "z"]}
    assert data_digest(a) == data_digest({"y": [1, "z"], "x": torch.zeros(3)})
    assert data_digest(a) != data_digest({"x": torch.tensor([0.0, 0.0, 1e-30]), "y": [1, "z"]})
    assert data_digest(a) != data_digest({"x": torch.zeros(3, dtype=torch.float64), "y": [1, "z"]})
    assert data_digest(a) != data_digest({"x": torch.zeros(3), "y": [2, "z"]})


def test_time_limit_stops_between_rounds(tiny_images):
    res = run(tiny_images, FedAvg(), rounds=50, time_limit_s=1e-3)
    assert res.rounds_completed == 1 and res.stopped_by_time_limit


def test_sampling_fraction():
    assert sample_clients(10, 1.0, 1, seed=0, round_=1) == list(range(10))
    chosen = sample_clients(10, 0.3, 1, seed=0, round_=1)
    assert len(chosen) == 3 and len(set(chosen)) == 3
    assert chosen == sample_clients(10, 0.3, 1, seed=0, round_=1)
    assert len(sample_clients(10, 0.05, 2, seed=0, round_=1)) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_rounds": -1}, "num_rounds = -1 is not allowed"),
        ({"num_rounds": 2, "fraction_train": 0}, "fraction_train = 0"),
        ({"num_rounds": 2, "exchange": "gradients"}, "exchange = 'gradients'"),
    ],
)
def test_bad_round_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RoundConfig(**kwargs)


def test_client_states_kept_on_disk_give_identical_results_and_leave_memory_empty(tmp_path):
    from torch import nn

    from fedpeft.models.head import adapted_head, base_head
    from fedpeft.training.head import FeatureSet, FeatureViews, HeadTrainer

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(30) % 3
    features = torch.randn(30, 2, 16, generator=g) + labels[:, None, None]
    clients = [Client(f"f{i}", FeatureViews(features[i::3], labels[i::3])) for i in range(3)]
    config = RoundConfig(num_rounds=3, exchange="trainable", evaluate_clients=False)

    def go(**kw):
        torch.manual_seed(0)
        head = adapted_head(base_head(nn.Linear(16, 3), 0.0), "lora", 2, 4, 0.0, seed=0)
        trainer = HeadTrainer(local_steps=2, rounds=3, batch_size=4, lr=0.05)  # AdamW moments carry across rounds
        return run_federated(head, clients, FedAvg(), trainer, config, server_test=FeatureSet(features[:, 0], labels),
                             progress=False, **kw), trainer

    (in_memory, t1), (on_disk, t2) = go(), go(client_state_dir=tmp_path)
    for k, v in in_memory.final_state.items():
        assert torch.equal(on_disk.final_state[k], v), k
    assert len(t1.state_dict()) == 3 and t2.state_dict() == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.pt", "1.pt", "2.pt"]
    with pytest.raises(ValueError, match="client_state_dir and checkpoint_path cannot be used together"):
        go(client_state_dir=tmp_path, checkpoint_path=tmp_path / "ckpt.pt")


def test_a_continued_run_equals_one_uninterrupted_run(tiny_images, tmp_path):
    """continue_rounds: 1 round, then the rest continued from a fresh copy of the model it trained (another model
    object, as the QAT arm's, and another trainer), gives the 3-round run's global model, history and ledger: the
    continued rounds keep their round numbers, hence their client draws and batch orders."""
    from fedpeft.federated.continuation import continue_rounds

    torch.manual_seed(0)
    clients = make_clients(tiny_images)
    model = EuroSATCNN()
    trainer = ClassifierTrainer(lr=1e-3, batch_size=8, epochs=1)
    whole = run_federated(model, clients, FedAvg(), trainer, RoundConfig(num_rounds=3, seed=5), server_test=tiny_images, progress=False)
    first = run_federated(model, clients, FedAvg(), trainer, RoundConfig(num_rounds=1, seed=5), server_test=tiny_images,
                          progress=False, checkpoint_path=tmp_path / "first.pt")
    again = EuroSATCNN()
    again.load_state_dict(first.final_state)
    trainer2, config = ClassifierTrainer(lr=1e-3, batch_size=8, epochs=1), RoundConfig(num_rounds=3, seed=5)
    assert continue_rounds(tmp_path / "first.pt", tmp_path / "second.pt", again, clients, FedAvg(), trainer2, config) == 1
    rest = run_federated(again, clients, FedAvg(), trainer2, config, server_test=tiny_images, progress=False,
                         checkpoint_path=tmp_path / "second.pt")
    assert_same_state(rest.final_state, whole.final_state)
    assert rest.history["round"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(rest.history["server_loss"], whole.history["server_loss"], rtol=1e-6)
    assert rest.ledger.frame().equals(whole.ledger.frame())
    # the continued run's own checkpoint is left as it is; nothing is left to continue past num_rounds
    assert continue_rounds(tmp_path / "first.pt", tmp_path / "second.pt", again, clients, FedAvg(), trainer2, config) == 3
    with pytest.raises(ValueError, match="ends at round 1: nothing is left to continue up to num_rounds = 1"):
        continue_rounds(tmp_path / "first.pt", tmp_path / "third.pt", again, clients, FedAvg(), trainer2, RoundConfig(num_rounds=1))
