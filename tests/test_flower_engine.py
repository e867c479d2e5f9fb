"""The same strategy on Flower's simulation engine gives the same global model as the in-process loop."""

import time

import psutil
import pytest
import torch

from fedpeft.federated import Client, RoundConfig, run_federated
from fedpeft.models import EuroSATCNN
from fedpeft.partition import partition
from fedpeft.strategies import FedProx
from fedpeft.training import ClassifierTrainer

pytest.importorskip("flwr")
pytest.importorskip("ray")


@pytest.mark.slow
def test_flower_two_clients_two_rounds_matches_in_process(tiny_images):
    from fedpeft.flower_engine import run_flower

    parts = partition(tiny_images.labels.numpy(), "iid", 2, seed=0)
    clients = [Client(f"c{i}", tiny_images.subset(p)) for i, p in enumerate(parts)]
    trainer = ClassifierTrainer(lr=1e-3, batch_size=8, epochs=1)
    torch.manual_seed(0)
    model = EuroSATCNN()
    config = RoundConfig(num_rounds=2, evaluate_clients=False)
    strategy = FedProx(mu=0.1)  # a strategy with a client-side term, so both engines must apply it

    # Flower's Ray actors get one CPU each and run torch with one thread; the sums inside convolutions depend on
    # the thread count, so the in-process run uses one thread too for a like-for-like comparison.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        in_process = run_federated(model, clients, strategy, trainer, config, server_test=tiny_images, progress=False)
    finally:
        torch.set_num_threads(threads)
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    flower = run_flower(model, clients, FedProx(mu=0.1), trainer, config, server_test=tiny_images)

    for k, v in in_process.final_state.items():
        assert torch.allclose(flower["final_state"][k].float(), v.float(), atol=1e-6), k
    assert sorted(flower["server_metrics"]) == [0, 1, 2]
    assert flower["server_metrics"][2]["accuracy"] == pytest.approx(in_process.history["server_accuracy"].iloc[-1])

    deadline = time.time() + 30  # Ray's processes exit shortly after shutdown
    while time.time() < deadline:
        left = [p for p in psutil.Process().children(recursive=True) if p.pid not in children_before and p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE]
        if not left:
            break
        time.sleep(1)
    assert not left, f"processes left running after the Flower simulation: {[p.name() for p in left]}"


def test_flower_engine_refuses_unsupported_transport(tiny_images):
    from fedpeft.flower_engine import run_flower

    clients = [Client("c0", tiny_images)]
    trainer = ClassifierTrainer(lr=1e-3, batch_size=8, epochs=1)
    with pytest.raises(ValueError, match="transport = 'fp16' is not supported on the Flower engine"):
        run_flower(EuroSATCNN(), clients, FedProx(mu=0.0), trainer, RoundConfig(num_rounds=1, transport="fp16"))
