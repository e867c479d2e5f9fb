"""Every trainer of the contract (the four federated ones, and the SFT and diffusion trainers that the LoRA-vs-QLoRA
experiment uses centrally) runs on both engines: Flower's simulation gives the same global model as the in-process
loop."""

import copy

import psutil
import pytest
import torch
from torch import nn

from fedpeft.federated.loop import Client, RoundConfig, run_federated
from fedpeft.federated.partition import partition
from fedpeft.federated.strategies import FedAvg, FedProx
from fedpeft.models.cnn import EuroSATCNN
from fedpeft.training.image import ClassifierTrainer

pytest.importorskip("flwr")
pytest.importorskip("ray")


def _image_case(tiny_images):
    parts = partition(tiny_images.labels.numpy(), "iid", 2, seed=0)
    clients = [Client(f"c{i}", tiny_images.subset(p)) for i, p in enumerate(parts)]
    torch.manual_seed(0)
    # FedProx: a strategy with a client-side term, so both engines must apply it
    return EuroSATCNN(), clients, ClassifierTrainer(lr=1e-3, batch_size=8, epochs=1), tiny_images, FedProx(mu=0.1), "state", 2


def _text_case(_):
    from fedpeft.data import glue
    from fedpeft.models.text import attach_lora, load_text_model
    from fedpeft.training.text import TextClassifierTrainer

    table = glue.generate_sentiment_sentences(48, 0)
    model, tokenizer = load_text_model("tiny-roberta", 2, seed=0, tokenizer_texts=table["text_a"].tolist())
    data = glue.tokenize(tokenizer, table, 32)
    model = attach_lora(model, 4, 8, 0.0, ["query", "value"], seed=0)
    clients = [Client(f"c{i}", data.subset(range(i, 48, 2))) for i in range(2)]
    return model, clients, TextClassifierTrainer("sst2", lr=1e-3, batch_size=8, epochs=1), data, FedAvg(), "trainable", 1


def _causal_lm_case(_):
    from fedpeft.data.code_corpus import TokenBlocks
    from fedpeft.models.causal_lm import byte_level_tokenizer, tiny_opt
    from fedpeft.models.text import attach_lora
    from fedpeft.training.causal_lm import CausalLMTrainer

    torch.manual_seed(0)
    model = attach_lora(tiny_opt(byte_level_tokenizer(), 64), 4, 8, 0.0, None, seed=0, task_type="CAUSAL_LM")
    gen = torch.Generator().manual_seed(0)
    clients = [Client(f"c{i}", TokenBlocks(torch.randint(2, 258, (4, 16), generator=gen), [])) for i in range(2)]
    test = TokenBlocks(torch.randint(2, 258, (4, 16), generator=gen), [])
    return model, clients, CausalLMTrainer(lr=1e-3, batch_size=2, epochs=1), test, FedProx(mu=0.1), "trainable", 1


def _head_case(_):
    from fedpeft.models.head import adapted_head, base_head
    from fedpeft.training.head import FeatureSet, FeatureViews, HeadTrainer

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(24) % 3
    features = torch.randn(3, 16, generator=g)[labels][:, None, :] + torch.randn(24, 2, 16, generator=g)
    torch.manual_seed(0)
    head = adapted_head(base_head(nn.Linear(16, 3), 0.0), "qlora", 4, 8, 0.0, seed=0)
    clients = [Client(f"f{i}", FeatureViews(features[i::2], labels[i::2])) for i in range(2)]
    # two rounds: each farmer's AdamW moments must survive between rounds on both engines
    trainer = HeadTrainer(local_steps=3, rounds=2, batch_size=4, lr=0.01)
    return head, clients, trainer, FeatureSet(features[:, 0], labels), FedAvg(), "trainable", 2


def _sft_case(_):
    from fedpeft.models.causal_lm import byte_level_tokenizer
    from fedpeft.models.text import attach_lora
    from fedpeft.training.sft import SFTTrainer, tiny_gemma2

    torch.manual_seed(0)
    model = attach_lora(tiny_gemma2(byte_level_tokenizer()), 4, 8, 0.0, ["q_proj", "v_proj"], seed=0, task_type="CAUSAL_LM")
    gen = torch.Generator().manual_seed(0)
    examples = [torch.randint(2, 258, (12,), generator=gen) for _ in range(8)]
    clients = [Client(f"c{i}", examples[i::2]) for i in range(2)]
    return model, clients, SFTTrainer(steps=2, grad_accum=2, lr=1e-3, warmup_ratio=0.0), examples[:2], FedProx(mu=0.1), "trainable", 1


def _diffusion_case(_):
    from fedpeft.training import diffusion

    comps = diffusion.build_components("tiny")
    images, captions = diffusion.generated_images(4, 32)
    data = diffusion.LatentCaptions(diffusion.encode_images(comps, images), diffusion.encode_captions(comps, captions))
    unet = diffusion.attach_unet_lora(comps.unet, 4, 4)
    clients = [Client(f"c{i}", diffusion.LatentCaptions(data.latents[i::2], data.text[i::2])) for i in range(2)]
    trainer = diffusion.DiffusionTrainer(comps.scheduler, steps=2, batch_size=2, lr=1e-3, eval_repeats=1)
    return unet, clients, trainer, data, FedAvg(), "trainable", 1


CASES = {"image": _image_case, "text": _text_case, "causal_lm": _causal_lm_case, "head": _head_case, "sft": _sft_case,
         "diffusion": _diffusion_case}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_flower_matches_in_process_for_every_trainer(case, tiny_images, ray_cluster):
    from fedpeft.federated.flower_engine import run_flower

    model, clients, trainer, test, strategy, exchange, rounds = CASES[case](tiny_images)
    config = RoundConfig(num_rounds=rounds, exchange=exchange, evaluate_clients=False)
    flower_strategy = copy.deepcopy(strategy)
    # Flower's Ray actors get one CPU each and run torch with one thread; sums inside kernels depend on the thread
    # count, so the in-process run uses one thread too for a like-for-like comparison.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        in_process = run_federated(model, clients, strategy, trainer, config, server_test=test, progress=False)
    finally:
        torch.set_num_threads(threads)
    flower = run_flower(model, clients, flower_strategy, trainer, config, server_test=test, ray_address=ray_cluster.address)

    assert set(flower.final_state) == set(in_process.final_state)
    for k, v in in_process.final_state.items():
        assert torch.allclose(flower.final_state[k].float(), v.float(), atol=1e-5), k
    assert flower.history["round"].tolist() == list(range(rounds + 1))
    assert flower.history["server_loss"].iloc[-1] == pytest.approx(in_process.history["server_loss"].iloc[-1], rel=1e-4)
    # the ledger counts the same messages, byte for byte
    assert flower.ledger.frame().sort_values(["round", "client", "direction"])["bytes"].tolist() == \
        in_process.ledger.frame().sort_values(["round", "client", "direction"])["bytes"].tolist()


@pytest.mark.slow
def test_a_local_ray_instance_is_started_and_stopped_even_beside_a_running_cluster(tiny_images, ray_cluster):
    """Without an address, run_flower starts its own Ray instance and leaves no process of it behind. Ray alone would
    join the cluster running here (or a stale one its session file still names) and refuse num_cpus: the run
    failed with "When connecting to an existing cluster, num_cpus and num_gpus must not be provided"."""
    from fedpeft.federated.flower_engine import run_flower

    def ours() -> set[int]:  # this process's descendants, but for the session cluster's (its idle workers come and go)
        cluster = {p.pid for p in psutil.Process(ray_cluster.pid).children(recursive=True)} | {ray_cluster.pid}
        return {p.pid for p in psutil.Process().children(recursive=True)} - cluster

    model, clients, trainer, test, strategy, exchange, _ = _image_case(tiny_images)
    before = ours()
    result = run_flower(model, clients, strategy, trainer, RoundConfig(num_rounds=1, exchange=exchange), server_test=test)
    assert result.history["round"].tolist() == [0, 1]
    started = [psutil.Process(pid) for pid in ours() - before if psutil.pid_exists(pid)]
    _, alive = psutil.wait_procs(started, timeout=30)  # Ray's processes exit shortly after shutdown
    left = [p for p in alive if _still_running(p)]
    assert not left, f"processes left running after the Flower simulation: {[p.pid for p in left]}"


def _still_running(process: psutil.Process) -> bool:
    """Alive and not a zombie waiting to be reaped (a process may exit while it is being looked at)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_flower_engine_refuses_unsupported_transport(tiny_images):
    from fedpeft.federated.flower_engine import run_flower

    clients = [Client("c0", tiny_images)]
    trainer = ClassifierTrainer(lr=1e-3, batch_size=8, epochs=1)
    with pytest.raises(ValueError, match="transport = 'fp16' is not supported on the Flower engine"):
        run_flower(EuroSATCNN(), clients, FedProx(mu=0.0), trainer, RoundConfig(num_rounds=1, transport="fp16"))
