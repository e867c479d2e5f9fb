"""The savings frontier's planned runs: one *point* (a technique) per seed, each one DVC stage writing one record.

A point is what is sent (``model``: ``lora``, ``qlora`` or ``full``, and for adapters the ``aggregation``), how
(``codec``, ``error_feedback``), how often (``sync_interval``: 0 for FedAvg every round, H for DiLoCo every H rounds'
worth of local epochs) and on which shards (``sharding``: ``iid`` or ``dirichlet``). Every point of the text task starts from the
same base model and trains each client for ``num_rounds * local_epochs`` epochs in all (the EuroSAT CNN's points:
``cnn_rounds * cnn_local_epochs``, from the seed's CNN); the record holds the
per-round history, the ledger's bytes per round (both directions, serialized messages with their headers and
quantization scales) and the client's model-state memory (:func:`client_state_bytes`).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from fedpeft.core import checkpoints
from fedpeft.core.baselines import majority_baseline
from fedpeft.core.config import Settings
from fedpeft.core.device import run_device
from fedpeft.core.records import RunRecord, RunSpec
from fedpeft.data import eurosat
from fedpeft.data.eurosat import ImageArrays
from fedpeft.experiments.glue_lora_aggregation.runs import (
    TaskData,
    adapter_model,
    chance_score,
    make_trainer,
    prepare_task,
    shard,
    shard_table,
)
from fedpeft.experiments.savings_frontier.settings import CNN_TASK, EXPERIMENT
from fedpeft.federated.compression import CompressedUpdates
from fedpeft.federated.engines import run_rounds
from fedpeft.federated.loop import Client, RoundConfig
from fedpeft.federated.lora_aggregation import LoraAggregation
from fedpeft.federated.partition import label_skew, partition
from fedpeft.federated.strategies import DiLoCo, FedAvg
from fedpeft.models.cnn import EuroSATCNN
from fedpeft.models.counting import count_parameters
from fedpeft.models.text import frozen_lora_a
from fedpeft.quantization.nf4 import _quant_state_bytes as quant_state_bytes
from fedpeft.training.image import ClassifierTrainer

#: Bytes a client keeps per trainable parameter while training with AdamW (the CNN: Adam) in fp32: the value, its
#: gradient and the two moments.
TRAINABLE_BYTES = 4 * 4


def point_id(task: str, model: str, aggregation: str, codec: str, sync_interval: int, sharding: str, seed: int) -> str:
    """``sst2-lora-naive-int8ef-every-iid-s42``: model (and aggregation), codec, how often, shards, seed."""
    what = model if model == "full" else f"{model}-{aggregation}"
    often = "every" if sync_interval == 0 else f"diloco{sync_interval}"
    return f"{task}-{what}-{codec.replace('+', '')}-{often}-{sharding}-s{seed}"


def _spec(task: str, model: str, aggregation: str, codec: str, sync_interval: int, sharding: str, seed: int) -> RunSpec:
    args = {"task": task, "model": model, "aggregation": aggregation, "codec": codec.removesuffix("+ef"),
            "error_feedback": codec.endswith("+ef"), "sync_interval": sync_interval, "sharding": sharding, "seed": seed}
    return RunSpec(point_id(task, model, aggregation, codec, sync_interval, sharding, seed), args,
                   "cnn_point" if task == CNN_TASK else "point")


def run_specs(s: Settings) -> list[RunSpec]:
    """One axis at a time around the base point (LoRA, ``base_aggregation``, fp32, every round, IID), every seed:
    the full model and its codecs, each aggregation, each codec, each DiLoCo interval, the skewed points, QLoRA."""
    p, task, base = s.params, s["main_task"], s["base_aggregation"]
    points = [("lora", base, "fp32", 0, "iid")]
    points += [("full", "fedavg", "fp32", 0, "iid")] if p["full_model"] else []
    points += [("full", "fedavg", codec, 0, "iid") for codec in p["full_model_codecs"]]
    points += [("lora", method, "fp32", 0, "iid") for method in p["aggregations"]]
    points += [("lora", base, codec, 0, "iid") for codec in p["codecs"]]
    points += [("lora", base, "fp32", h, "iid") for h in p["sync_intervals"]]
    points += [("lora" if what == "lora" else "full", base if what == "lora" else "fedavg", "fp32", 0, "dirichlet")
               for what in p["skewed_points"]]
    points += [("qlora", base, "fp32", 0, "iid")] if p["qlora"] else []
    planned = [(task, *point) for point in points]
    if p["cnn_points"]:
        cnn = [("full", "fedavg", "fp32", 0, "iid")] + [("full", "fedavg", codec, 0, "iid") for codec in p["cnn_codecs"]]
        cnn += [("full", "fedavg", "fp32", h, "iid") for h in p["cnn_sync_intervals"]]
        if p["cnn_skewed_codecs"]:
            cnn += [("full", "fedavg", codec, 0, "dirichlet") for codec in dict.fromkeys(["fp32", *p["cnn_skewed_codecs"]])]
        planned += [(CNN_TASK, *point) for point in cnn]
    specs: dict[str, RunSpec] = {}
    for point in dict.fromkeys(planned):
        for seed in p["seeds"]:
            spec = _spec(*point, seed)
            specs.setdefault(spec.run_id, spec)
    return list(specs.values())


def execute(s: Settings, spec: RunSpec, progress: bool = True) -> RunRecord:
    if spec.kind == "cnn_point":
        return _cnn_point_record(s, spec, progress)
    data = prepare_task(s, spec.args["task"], seed=s["model_seed"])
    return _point_record(s, spec, data, progress)


# --- one point ---------------------------------------------------------------------------------------------------

def client_state_bytes(model: nn.Module) -> dict[str, int]:
    """What a client holds in memory for its model while it trains, in bytes, from the model's own tensors: the
    frozen weights as stored (an NF4 weight: its packed 4-bit codes and quantization state), and per trainable
    parameter :data:`TRAINABLE_BYTES` (fp32 value, gradient, AdamW's two moments). Activations are not counted
    (they depend on the batch, not on the technique)."""
    import bitsandbytes as bnb

    frozen = trainable = 0
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if param.requires_grad:
                trainable += param.numel() * TRAINABLE_BYTES
                continue
            frozen += param.numel() * param.element_size()
            state = getattr(param, "quant_state", None) if isinstance(param, bnb.nn.Params4bit) else None
            if state is not None:
                frozen += quant_state_bytes(state)
        frozen += sum(b.numel() * b.element_size() for b in module.buffers(recurse=False))
    return {"frozen_bytes": frozen, "trainable_state_bytes": trainable, "client_state_bytes": frozen + trainable}


def point_model(s: Settings, data: TaskData, model: str, aggregation: str, seed: int) -> tuple[nn.Module, FedAvg, float]:
    """The model a point's clients train, the strategy that aggregates it, and its learning rate."""
    if model == "full":
        full = copy.deepcopy(data.base_model)
        for param in full.parameters():
            param.requires_grad_(True)
        return full, FedAvg(), s["full_finetune_lr"]
    base = data
    if model == "qlora":
        from fedpeft.quantization.nf4 import quantize_linear_layers

        quantized = copy.deepcopy(data.base_model)
        quantize_linear_layers(quantized.base_model.encoder, compute_dtype=torch.float32)
        base = copy.copy(data)
        base.base_model = quantized
    peft_model, alpha = adapter_model(s, base, aggregation, s["lora_rank"], seed)
    strategy = LoraAggregation(aggregation, s["lora_rank"], alpha, global_rank=s["lora_rank"], global_alpha=alpha,
                               frozen=frozen_lora_a(peft_model))
    return peft_model, strategy, s["learning_rate"]


def _strategy(s: Settings, inner: FedAvg, a: dict[str, Any], exact: frozenset[str] = frozenset()) -> FedAvg:
    if a["sync_interval"]:
        if getattr(inner, "method", "naive") != "naive":  # the full model's FedAvg, or the adapters averaged naively
            raise ValueError(f"sync_interval = {a['sync_interval']} needs naive averaging; the point aggregates with {inner.describe()}")
        inner = DiLoCo(outer_lr=s["diloco_outer_lr"], momentum=s["diloco_momentum"])
    if a["codec"] != "fp32" or a["error_feedback"]:
        inner = CompressedUpdates(inner, a["codec"], error_feedback=a["error_feedback"], exact=exact)
    return inner


def _point_record(s: Settings, spec: RunSpec, data: TaskData, progress: bool) -> RunRecord:
    a = spec.args
    model, inner, lr = point_model(s, data, a["model"], a["aggregation"], a["seed"])
    strategy = _strategy(s, inner, a)
    every = max(1, a["sync_interval"])
    parts = shard(s, data, a["sharding"], s["num_clients"], a["seed"])
    clients = [Client(str(i + 1), data.train.subset(p)) for i, p in enumerate(parts)]
    config = RoundConfig(num_rounds=s["num_rounds"] // every, seed=a["seed"], exchange="trainable", evaluate_clients=False)
    trainer = make_trainer(s, data, epochs=s["local_epochs"] * every, lr=lr)
    run = run_rounds("inprocess", model, clients, strategy, trainer, config, server_test=data.dev,
                     checkpoint_path=checkpoints.path("rounds"), progress=progress,
                     description=f"{spec.run_id}").result
    per_round = run.ledger.per_round()
    h = run.history
    scalars = {**a, "score": float(h["server_score"].iloc[-1]), "chance_score": chance_score(data), "wall_s": run.wall_s,
               "rounds_completed": run.rounds_completed, "local_epochs_per_round": s["local_epochs"] * every,
               "up_bytes": int(per_round["up"].sum()), "down_bytes": int(per_round["down"].sum()),
               "total_bytes": int(per_round["total"].sum()), "trainable": count_parameters(model, trainable_only=True),
               "total": count_parameters(model), "train_examples": len(data.train), "eval_examples": len(data.dev),
               "strategy": strategy.describe(), **client_state_bytes(model)}
    tables = {"history": h, "ledger_per_round": per_round, "shards": shard_table(data, parts)}
    return RunRecord(EXPERIMENT, spec.run_id, spec.args, scalars, tables)


# --- the EuroSAT CNN's points ------------------------------------------------------------------------------------

def cnn_images(s: Settings, progress: bool = True) -> tuple[ImageArrays, ImageArrays]:
    """(the images the CNN's clients share, the server's test set): 20 % of the images held out (stratified, seed 0,
    as in the EuroSAT experiment), then ``cnn_test_images`` and ``cnn_pool_images`` drawn from each side (stratified,
    seed 0; 0 keeps all)."""
    if s["cnn_source"] == "generated":
        images = eurosat.generate_landcover_images(s["cnn_images_per_class"], seed=0)
    else:
        images = eurosat.load_eurosat_zip(s.data_root, s.cache_dir, verify=True, progress=progress)
    pool_idx, test_idx = eurosat.stratified_split(images.labels.numpy(), 0.2, seed=0)
    pool, test = images.subset(pool_idx), images.subset(test_idx)
    return _draw(pool, s["cnn_pool_images"], "cnn_pool_images"), _draw(test, s["cnn_test_images"], "cnn_test_images")


def _draw(images: ImageArrays, count: int, setting: str) -> ImageArrays:
    if count == 0 or count == len(images):
        return images
    if count > len(images):
        raise ValueError(f"{setting} = {count} is not allowed: there are {len(images):,} images to draw from; use at most that, or 0 for all")
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(images)), train_size=count, stratify=images.labels.numpy(), random_state=0)
    return images.subset(np.sort(keep))


def _cnn_point_record(s: Settings, spec: RunSpec, progress: bool) -> RunRecord:
    """One CNN point: the full model's state averaged by FedAvg or DiLoCo, the parameters' updates compressed by the
    point's codec and the BatchNorm statistics sent in fp32 (a quantized variance can come back negative); Adam at a
    constant learning rate, every client every round, the server's test accuracy after each. Every point of one seed
    starts from the same CNN (initialised from the seed, as the EuroSAT experiment's runs) and shards."""
    a = spec.args
    pool, test = cnn_images(s, progress)
    every = max(1, a["sync_interval"])
    labels = pool.labels.numpy()
    options = {"alpha": s["dirichlet_alpha"]} if a["sharding"] == "dirichlet" else {}
    parts = partition(labels, "dirichlet" if a["sharding"] == "dirichlet" else "iid", s["cnn_clients"], a["seed"], **options)
    clients = [Client(str(i + 1), pool.subset(p)) for i, p in enumerate(parts)]
    torch.manual_seed(a["seed"])  # every point of a seed starts from the same CNN; seeds differ, as in the EuroSAT experiment
    trainer = ClassifierTrainer(lr=s["cnn_learning_rate"], batch_size=s["cnn_batch_size"], epochs=s["cnn_local_epochs"] * every,
                                optimizer="adam", precision="fp32", channels_last=True, eval_batch_size=64,
                                device=run_device(s.params))
    model = trainer.prepare(EuroSATCNN(num_classes=len(pool.class_names)))
    strategy = _strategy(s, FedAvg(), a, exact=frozenset(name for name, b in model.named_buffers() if b.is_floating_point()))
    config = RoundConfig(num_rounds=s["cnn_rounds"] // every, seed=a["seed"], exchange="state", evaluate_clients=False)
    run = run_rounds("inprocess", model, clients, strategy, trainer, config, server_test=test,
                     checkpoint_path=checkpoints.path("rounds"), progress=progress, description=spec.run_id).result
    per_round = run.ledger.per_round()
    h = run.history.assign(server_score=run.history["server_accuracy"])
    model.load_state_dict(run.final_state)
    scalars = {**a, "score": float(h["server_score"].iloc[-1]), "chance_score": majority_baseline(test.labels.numpy()),
               "wall_s": run.wall_s, "rounds_completed": run.rounds_completed,
               "local_epochs_per_round": s["cnn_local_epochs"] * every, "batch_size": s["cnn_batch_size"],
               # the image trainer takes epochs x ceil(examples / batch) steps a round (the largest client's here)
               "local_steps": run.rounds_completed * s["cnn_local_epochs"] * every
               * -(-max(len(p) for p in parts) // s["cnn_batch_size"]),
               "up_bytes": int(per_round["up"].sum()), "down_bytes": int(per_round["down"].sum()),
               "total_bytes": int(per_round["total"].sum()), "trainable": count_parameters(model, trainable_only=True),
               "total": count_parameters(model), "train_examples": len(pool), "eval_examples": len(test),
               "label_skew": label_skew(parts, labels), "strategy": strategy.describe(), **client_state_bytes(model)}
    shards = pd.DataFrame([{"client": i, "examples": int(len(p)),
                            "labels": json.dumps({str(k): int(v) for k, v in zip(*np.unique(labels[p], return_counts=True), strict=True)})}
                           for i, p in enumerate(parts, start=1)])
    tables = {"history": h, "ledger_per_round": per_round, "shards": shards}
    return RunRecord(EXPERIMENT, spec.run_id, spec.args, scalars, tables)
