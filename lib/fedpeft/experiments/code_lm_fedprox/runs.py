"""Python code, federated LoRA: the planned runs, each one DVC stage writing one result record.

A run loads the base model (for ``tiny-opt``, first trained on other standard-library packages with the spec's base
seed), packs the corpus into client shards and runs FedProx(mu) (FedAvg at mu 0) with LoRA or the full model,
resuming from its checkpoint when killed. Its record holds the per-round history, the clients' per-round update
norms, the throughput, the peak memory, the bytes per message, and the corpus' sizes for the report's set-up table.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from fedpeft.core import checkpoints
from fedpeft.core.config import Settings
from fedpeft.core.device import run_device
from fedpeft.core.profiling import measure
from fedpeft.core.records import RunRecord, RunSpec
from fedpeft.data import code_corpus
from fedpeft.experiments.code_lm_fedprox.settings import EXPERIMENT, arm_name
from fedpeft.experiments.runs import reused_in_process
from fedpeft.federated.ledger import serialize_state
from fedpeft.federated.loop import Client, RoundConfig, run_federated
from fedpeft.federated.strategies import fedprox_or_fedavg
from fedpeft.models.causal_lm import check_sequence_length, load_causal_lm
from fedpeft.models.counting import count_parameters
from fedpeft.models.text import attach_lora
from fedpeft.training.causal_lm import CausalLMTrainer


def run_specs(s: Settings) -> list[RunSpec]:
    """The main comparison (FedAvg and FedProx(main_mu), IID, over ``seeds``, ``num_rounds`` rounds), the mu sweep
    over ``splits`` (first seed, ``sweep_rounds``; the main runs stand in for their own arms), the half-data runs
    (over ``seeds``, ``half_data_rounds``, so that the data-volume claim has an interval), the full-model run once,
    and the base model's loss probe. The base model's seed is the first of ``seeds``."""
    first = s["seeds"][0]
    main_mus = (0.0, s["main_mu"])
    base = dict(adapter="lora", samples_per_client=s["samples_per_client"], rounds=s["num_rounds"], base_seed=first)
    plan = [base | dict(mu=mu, split="iid", seed=seed) for seed in s["seeds"] for mu in main_mus]
    plan += [base | dict(mu=mu, split=split, seed=first, rounds=s["sweep_rounds"]) for split in s["splits"]
             for mu in s["prox_mus"] if not (split == "iid" and mu in main_mus)]
    if s["half_data_run"]:
        plan += [base | dict(mu=s["main_mu"], split="iid", seed=seed, samples_per_client=s["samples_per_client"] // 2,
                             rounds=s["half_data_rounds"]) for seed in s["seeds"]]
    if s["full_model_rounds"]:
        plan.append(base | dict(mu=s["main_mu"], split="iid", seed=first, adapter="full", rounds=s["full_model_rounds"]))
    specs: dict[str, RunSpec] = {}
    if s["probe_samples"]:
        specs[PROBE] = RunSpec(PROBE, dict(adapter="none", probe_samples=s["probe_samples"], base_seed=first))
    for args in plan:
        run_id = f"{args['adapter']}-{args['split']}-mu{args['mu']:g}-n{args['samples_per_client']}-s{args['seed']}-r{args['rounds']}"
        specs.setdefault(run_id, RunSpec(run_id, args))
    return list(specs.values())


#: Run id of the base model's loss probe (no training).
PROBE = "base-model-loss"


# --- data and model --------------------------------------------------------------------------------------------

@dataclass
class CodeData:
    base_model: nn.Module
    tokenizer: Any
    train_docs: list[code_corpus.Document]
    eval_docs: list[code_corpus.Document]
    eval_blocks: code_corpus.TokenBlocks
    shards: dict[tuple[str, int], list[code_corpus.TokenBlocks]]  # (split, samples per client) -> client blocks


def documents(s: Settings) -> list[code_corpus.Document]:
    if s["source"] == "stdlib":
        return code_corpus.stdlib_documents(s["stdlib_packages"])
    return code_corpus.hub_documents(s["hub_dataset"])


@reused_in_process
def prepare(s: Settings, seed: int) -> CodeData:
    """Model, tokenizer, the held-out split and the evaluation blocks (client shards are built on demand)."""
    model, tokenizer = load_causal_lm(s["model"], s.cache_dir, seed=seed, max_positions=max(s["max_length"], 256))
    check_sequence_length(s["max_length"], model.config)
    docs = documents(s)
    train_docs, eval_docs = code_corpus.split_held_out(docs, s["eval_fraction"], seed=0)
    if s["pretrain_samples"]:
        pretrain_base(s, model, tokenizer, {d.group for d in docs}, seed)
    eval_blocks = code_corpus.sample_blocks(eval_docs, tokenizer, s["max_length"], s["eval_samples"],
                                            tokenizer.eos_token_id, seed=0, what="eval_samples")
    return CodeData(model, tokenizer, train_docs, eval_docs, eval_blocks, {})


def pretrain_base(s: Settings, model: nn.Module, tokenizer, exclude_groups: set[str], seed: int) -> None:
    """Give ``tiny-opt`` a base to adapt: one epoch of full training on ``pretrain_samples`` blocks of the
    standard library's *other* packages (none of the experiment's training or held-out files)."""
    if s["model"] != "tiny-opt":
        raise ValueError(f"pretrain_samples = {s['pretrain_samples']} is for model 'tiny-opt' only (a pretrained "
                         f"model is not trained again); set it to 0 for model {s['model']!r}")
    others = [d for d in code_corpus.stdlib_documents() if d.group not in exclude_groups]
    blocks = code_corpus.pack_blocks(code_corpus.shuffled(others, seed), tokenizer, s["max_length"],
                                     s["pretrain_samples"], tokenizer.eos_token_id, what="pretrain_samples")
    trainer = CausalLMTrainer(lr=s["full_model_lr"], batch_size=s["batch_size"], epochs=1, precision=s["precision"], device=run_device(s.params))
    trainer.train(model, blocks, torch.Generator().manual_seed(seed))
    model.eval()


def shards(s: Settings, data: CodeData, split: str, samples_per_client: int) -> list[code_corpus.TokenBlocks]:
    num_clients, max_length = s["num_clients"], s["max_length"]  # read on every call: each record lists what it used
    key = (split, samples_per_client)
    if key not in data.shards:
        data.shards[key] = code_corpus.client_shards(
            data.train_docs, data.tokenizer, split, num_clients, samples_per_client, max_length,
            data.tokenizer.eos_token_id, seed=0)
    return data.shards[key]


def adapter_model(s: Settings, data: CodeData, seed: int) -> nn.Module:
    return attach_lora(copy.deepcopy(data.base_model), s["lora_rank"], s["lora_alpha"], s["lora_dropout"],
                       s["target_modules"], seed=seed, task_type="CAUSAL_LM")


def full_model(data: CodeData) -> nn.Module:
    model = copy.deepcopy(data.base_model)
    model.requires_grad_(True)
    return model


def execute(s: Settings, spec: RunSpec, progress: bool = True) -> RunRecord:
    """One federated run of ``spec`` (or the base model's loss probe) as a record."""
    a = spec.args
    data = prepare(s, seed=a["base_seed"])
    if spec.run_id == PROBE:
        return probe_base_loss(s, spec, data, progress)
    clients = [Client(f"client{c}", blocks) for c, blocks in enumerate(shards(s, data, a["split"], a["samples_per_client"]))]
    model = adapter_model(s, data, a["seed"]) if a["adapter"] == "lora" else full_model(data)
    lr = s["learning_rate"] if a["adapter"] == "lora" else s["full_model_lr"]
    trainer = CausalLMTrainer(lr=lr, batch_size=s["batch_size"], epochs=s["local_epochs"],
                              eval_batch_size=s["eval_batch_size"], precision=s["precision"], device=run_device(s.params))
    config = RoundConfig(num_rounds=a["rounds"], seed=a["seed"], exchange="trainable", transport=s["transport"],
                         evaluate_clients=False)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    payload = len(serialize_state(trainable, s["transport"]))
    with measure(trainer.torch_device) as m:
        result = run_federated(model, clients, fedprox_or_fedavg(a["mu"]), trainer, config, server_test=data.eval_blocks,
                               checkpoint_path=checkpoints.path("rounds"), progress=progress, description=spec.run_id)
    rates = trainer.meter.rates()
    probe = adapter_model(s, data, a["seed"])
    scalars: dict[str, Any] = {
        "arm": arm_name(a["mu"]) + (" (full model)" if a["adapter"] == "full" else ""), "mu": a["mu"], "split": a["split"],
        "seed": a["seed"], "adapter": a["adapter"], "samples_per_client": a["samples_per_client"],
        "rounds_completed": result.rounds_completed, "resumed_from_round": result.resumed_from_round,
        "train_tokens_per_s": rates["train_tokens_per_s"], "eval_tokens_per_s": rates["eval_tokens_per_s"],
        "wall_s": result.wall_s, "peak_memory_bytes": m.peak_memory_bytes, "memory_kind": m.memory_kind,
        "payload_bytes": payload, "traffic_bytes": result.ledger.total_bytes(),
        "train_files": len(data.train_docs), "eval_files": len(data.eval_docs), "eval_samples": len(data.eval_blocks),
        "eval_tokens": data.eval_blocks.num_tokens, "lora_trainable": count_parameters(probe, trainable_only=True),
        "lora_total": count_parameters(probe),
    }
    tables = {"history": result.history, "client_history": result.client_history, "corpus": corpus_summary(s, data, a["split"], a["samples_per_client"])}
    return RunRecord(EXPERIMENT, spec.run_id, spec.args, scalars, tables)


def probe_base_loss(s: Settings, spec: RunSpec, data: CodeData, progress: bool = True) -> RunRecord:
    """The base model's loss (nats per predicted token) before any training, block by block, on three samples of
    the held-out files: the runs' evaluation blocks, ``probe_samples`` blocks drawn across all held-out files, and
    the first ``eval_samples`` blocks of the files in name order (the sample the study evaluated on before it drew
    blocks at random). Explains the runs' round-0 loss: how typical of the held-out code their evaluation set is."""
    from tqdm.auto import tqdm

    trainer = CausalLMTrainer(lr=s["learning_rate"], batch_size=s["batch_size"], epochs=1,
                              eval_batch_size=s["eval_batch_size"], precision=s["precision"], device=run_device(s.params))
    tok, length = data.tokenizer, s["max_length"]
    samples = {
        "evaluation blocks": data.eval_blocks,
        "broad sample": code_corpus.sample_blocks(data.eval_docs, tok, length, spec.args["probe_samples"], tok.eos_token_id,
                                                  seed=1, what="probe_samples"),
        "first files in name order": code_corpus.pack_blocks(data.eval_docs, tok, length, s["eval_samples"],
                                                             tok.eos_token_id, what="eval_samples"),
    }
    rows, blocks = [], []
    with measure(trainer.torch_device) as m:
        for name, sample in tqdm(samples.items(), desc=spec.run_id, disable=not progress):
            losses = trainer.block_losses(data.base_model, sample).tolist()
            files = sample.block_files or [tuple(sample.files)] * len(sample)
            blocks += [{"sample": name, "block": i, "loss": v, "first_file": f[0], "files": len(f)}
                       for i, (v, f) in enumerate(zip(losses, files, strict=True))]
            rows.append({"sample": name, "blocks": len(sample), "files": len(sample.files), "tokens": sample.num_tokens,
                         "loss": float(np.mean(losses)), "loss_sd": float(np.std(losses, ddof=1)) if len(losses) > 1 else float("nan")})
    scalars = {"arm": "base model", "adapter": "none", "held_out_files": len(data.eval_docs),
               "eval_tokens_per_s": trainer.meter.rates()["eval_tokens_per_s"], "peak_memory_bytes": m.peak_memory_bytes,
               "memory_kind": m.memory_kind, "wall_s": m.wall_s}
    return RunRecord(EXPERIMENT, spec.run_id, spec.args, scalars,
                     {"base_loss": pd.DataFrame(rows), "block_losses": pd.DataFrame(blocks)})


def corpus_summary(s: Settings, data: CodeData, split: str, samples_per_client: int) -> pd.DataFrame:
    """Files, packages and tokens on each side of the held-out split, and what each client of this run holds."""
    packages = lambda files: len({name.split("/")[0].removesuffix(".py") for name in files})
    rows = [
        {"part": "training files", "files": len(data.train_docs), "packages": len({d.group for d in data.train_docs}),
         "samples": None, "tokens": None},
        {"part": "held-out files", "files": len(data.eval_docs), "packages": len({d.group for d in data.eval_docs}),
         "samples": None, "tokens": None},
        {"part": "evaluation blocks", "files": len(data.eval_blocks.files), "packages": packages(data.eval_blocks.files),
         "samples": len(data.eval_blocks), "tokens": data.eval_blocks.num_tokens},
    ]
    for c, blocks in enumerate(shards(s, data, split, samples_per_client)):
        rows.append({"part": f"{split} client {c} ({samples_per_client} samples)", "files": len(blocks.files),
                     "packages": packages(blocks.files), "samples": len(blocks), "tokens": blocks.num_tokens})
    return pd.DataFrame(rows)
