"""GLUE, federated LoRA aggregation: the planned runs, each one DVC stage writing one result record.

Four kinds of run (each kind one DVC stage, ``foreach`` over its ids):

- ``run``: one multi-round FedAvg of adapters with one aggregation (svd, naive, ffa) under one sharding, seed and
  client rank; the record holds the per-round history, the per-layer aggregation errors, the server's time spent
  measuring them, the traffic and the shards' sizes and labels;
- ``error_study``: one round of local training with K clients per sharding, the aggregation error of every method
  on the same client adapters;
- ``merge``: the seed's one-shot merge of K adapters trained apart, each merged adapter reloaded with peft and scored;
- ``centralized``: centralized LoRA and full fine-tuning on the pooled data, and (``warm``) federated svd rounds
  started from the centralized adapter;
- ``lr_study``: centralized LoRA and full fine-tuning each at every learning rate of ``lr_study``, one seed;
- ``mixed_rank``: one multi-round FedAvg on IID shards whose clients train adapters of different ranks
  (``mixed_ranks``, one per client), aggregated by one of ``mixed_rank_aggregations``
  (:mod:`fedpeft.federated.mixed_rank`), one seed.

A ``run`` whose spec has a ``global_rank`` (the rank sweep) keeps that rank on the server; the others keep
``svd_rank`` with svd and the client rank otherwise.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedpeft.core import checkpoints
from fedpeft.core.config import Settings
from fedpeft.core.device import run_device
from fedpeft.core.records import RunRecord, RunSpec
from fedpeft.core.seeding import seeded_generator
from fedpeft.data import glue
from fedpeft.experiments.glue_lora_aggregation.settings import EXPERIMENT, SHARDINGS
from fedpeft.experiments.runs import reused_in_process
from fedpeft.federated.ledger import serialize_state
from fedpeft.federated.loop import Client, RoundConfig, client_update, run_federated
from fedpeft.federated.lora_aggregation import LoraAggregation, merge_adapter_dirs, merge_adapter_states
from fedpeft.federated.mixed_rank import MixedRankLora
from fedpeft.federated.partition import label_skew, partition, save_shard_manifests
from fedpeft.federated.strategies import FedAvg, normalize_weights
from fedpeft.models.counting import count_parameters
from fedpeft.models.text import attach_lora, frozen_lora_a, load_text_model
from fedpeft.training.text import TextClassifierTrainer


def run_specs(s: Settings) -> list[RunSpec]:
    """The grid (every aggregation under every sharding, ``grid_seed``); every aggregation on IID shards and on each of
    ``repeat_shardings`` over the other ``seeds``; the train-at-``compress_client_rank`` runs and svd and naive on
    each extra task, over every seed; then the error study, the one-shot merge and the centralized baselines (with
    the warm start when ``warm_start``). The base model's seed is ``grid_seed`` for every run."""
    p = s.params
    seeds = [p["grid_seed"]] + [seed for seed in p["seeds"] if seed != p["grid_seed"]]
    plan = [(p["main_task"], m, sh, p["grid_seed"], p["lora_rank"]) for sh in p["shardings"] for m in p["aggregations"]]
    repeated = ["iid"] + [sh for sh in p["shardings"] if sh in p["repeat_shardings"] and sh != "iid"]
    plan += [(p["main_task"], m, sh, seed, p["lora_rank"]) for sh in repeated for seed in seeds[1:] + p["extra_seeds"]
             for m in p["aggregations"]]
    if p["compress_client_rank"]:
        plan += [(p["main_task"], "svd", "iid", seed, p["compress_client_rank"]) for seed in seeds]
    plan += [(task, m, "iid", seed, p["lora_rank"]) for task in p["extra_tasks"] for seed in seeds for m in ("svd", "naive")]
    specs = [RunSpec(f"{task}-{method}-{sharding}-r{rank}-s{seed}",
                     {"task": task, "method": method, "sharding": sharding, "seed": seed, "client_rank": rank}, "run")
             for task, method, sharding, seed, rank in plan]
    specs += [RunSpec(f"{p['main_task']}-svd-iid-r{rank}-keep-s{seed}",
                      {"task": p["main_task"], "method": "svd", "sharding": "iid", "seed": seed, "client_rank": rank,
                       "global_rank": rank}, "run")
              for rank in p["rank_sweep"] if rank != p["lora_rank"] for seed in seeds + p["extra_seeds"]]
    if p["mixed_ranks"]:
        ranks = "-".join(str(r) for r in p["mixed_ranks"])
        specs += [RunSpec(f"{p['main_task']}-{method}-iid-mixed-r{ranks}-s{seed}",
                          {"task": p["main_task"], "method": method, "sharding": "iid", "seed": seed,
                           "client_ranks": list(p["mixed_ranks"])}, "mixed_rank")
                  for method in p["mixed_rank_aggregations"] for seed in seeds + p["extra_seeds"]]
    if p["lr_study"]:
        specs += [RunSpec(f"{p['main_task']}-lr-study-s{seed}", {"task": p["main_task"], "seed": seed, "lrs": list(p["lr_study"])},
                          "lr_study") for seed in seeds]
    specs.append(RunSpec(f"{p['main_task']}-error-study-s{p['grid_seed']}", {"task": p["main_task"], "seed": p["grid_seed"]}, "error_study"))
    specs.append(RunSpec(f"{p['main_task']}-one-shot-merge-s{p['grid_seed']}", {"task": p["main_task"], "seed": p["grid_seed"]}, "merge"))
    specs.append(RunSpec(f"{p['main_task']}-centralized-s{p['grid_seed']}" + ("-warm" if p["warm_start"] else ""),
                         {"task": p["main_task"], "seed": p["grid_seed"], "warm_start": p["warm_start"]}, "centralized"))
    return specs


def execute(s: Settings, spec: RunSpec, progress: bool = True) -> RunRecord:
    data = prepare_task(s, spec.args["task"], seed=s["grid_seed"])
    kind = {"run": _federated_record, "error_study": _error_study_record, "merge": _merge_record,
            "centralized": _centralized_record, "lr_study": _lr_study_record, "mixed_rank": _mixed_rank_record}[spec.kind]
    return kind(s, spec, data, progress)


# --- data ------------------------------------------------------------------------------------------------------

def stratify_labels(task: str, labels: np.ndarray) -> np.ndarray:
    """Integer labels to stratify and shard by: class ids, or STS-B scores rounded to 0..5."""
    return np.rint(labels).astype(np.int64) if glue.get_task(task).is_regression else labels.astype(np.int64)


def _draw(table: pd.DataFrame, task: str, count: int, seed: int) -> pd.DataFrame:
    if count == 0 or count >= len(table):
        return table.reset_index(drop=True)
    from sklearn.model_selection import train_test_split

    strata = stratify_labels(task, table["label"].to_numpy())
    keep, _ = train_test_split(np.arange(len(table)), train_size=count, stratify=strata, random_state=seed)
    return table.iloc[np.sort(keep)].reset_index(drop=True)


def load_tables(s: Settings, task: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The task's training pool and validation table at the profile's scale."""
    if s["source"] == "generated":
        train = glue.generate_sentiment_sentences(s["train_examples"], seed=1)
        dev = glue.generate_sentiment_sentences(s["eval_examples"], seed=2)
        return train, dev
    if s["source"] == "tsv":
        train, dev = (glue.load_glue_tsv(s.data_root, task, split) for split in ("train", "validation"))
    else:
        train, dev = (glue.load_glue_hub(task, split) for split in ("train", "validation"))
    count = s["train_examples"] if task == s["main_task"] else s["extra_train_examples"]
    return _draw(train, task, count, seed=0), _draw(dev, task, s["eval_examples"], seed=0)


@dataclass
class TaskData:
    task: str
    train_table: pd.DataFrame
    train: glue.TokenizedText
    dev: glue.TokenizedText
    tokenizer: Any
    base_model: torch.nn.Module  # the encoder with a fresh head, before any adapter

    @property
    def strata(self) -> np.ndarray:
        return stratify_labels(self.task, self.train_table["label"].to_numpy())


@reused_in_process
def prepare_task(s: Settings, task: str, seed: int = 0) -> TaskData:
    """Load, tokenize, and build the base model (tiny-roberta's encoder is first trained on separate
    generated sentences, standing in for pretraining, and its head is then re-initialised)."""
    train_table, dev_table = load_tables(s, task)
    spec = glue.get_task(task)
    pretrain = glue.generate_sentiment_sentences(s["pretrain_examples"], seed=3) if s["model"] == "tiny-roberta" else None
    texts = None if pretrain is None else pretrain["text_a"].tolist() + train_table["text_a"].tolist()
    model, tokenizer = load_text_model(s["model"], spec.num_labels, seed, tokenizer_texts=texts)
    if pretrain is not None:
        warmup = TextClassifierTrainer(task, lr=1e-3, batch_size=16, epochs=3, device=run_device(s.params))
        warmup.train(model, glue.tokenize(tokenizer, pretrain, s["max_length"]), seeded_generator(seed, 10_000))
        torch.manual_seed(seed)
        model.classifier.apply(model._init_weights)
    return TaskData(task, train_table, glue.tokenize(tokenizer, train_table, s["max_length"]),
                    glue.tokenize(tokenizer, dev_table, s["max_length"]), tokenizer, model)


def chance_score(data: TaskData) -> float:
    """The headline metric of the constant majority predictor on the validation set (0 for STS-B's correlation)."""
    spec = glue.get_task(data.task)
    return glue.chance_metrics(data.task, data.dev.labels.numpy())[spec.metrics[0]]


def shard(s: Settings, data: TaskData, mode: str, num_clients: int, seed: int) -> list[np.ndarray]:
    """The report's sharding modes (iid = stratified, overlap, category = whole labels per client) and
    Dirichlet label skew."""
    strata = data.strata
    if mode == "iid":
        return partition(strata, "stratified", num_clients, seed)
    if mode == "overlap":
        return partition(strata, "overlap", num_clients, seed, overlap_fraction=s["overlap_ratio"])
    if mode == "category":
        return partition(strata, "by_label", num_clients, seed, classes_per_client=1)
    if mode == "dirichlet":
        return partition(strata, "dirichlet", num_clients, seed, alpha=s["dirichlet_alpha"])
    raise ValueError(f"sharding = {mode!r} is not known; allowed: {list(SHARDINGS)}")


def shard_table(data: TaskData, parts: list[np.ndarray]) -> pd.DataFrame:
    """One row per client (1-based, as the seed's manifests): examples and label counts (JSON)."""
    strata = data.strata
    return pd.DataFrame([{"client": i, "examples": int(len(p)),
                          "labels": json.dumps({str(k): int(v) for k, v in zip(*np.unique(strata[p], return_counts=True), strict=True)})}
                         for i, p in enumerate(parts, start=1)])


# --- training --------------------------------------------------------------------------------------------------

def target_scale(data: TaskData) -> float:
    """A regression task's largest absolute training score (STS-B: 5.0), the scale its head predicts on; 1 for a
    classification task."""
    if not glue.get_task(data.task).is_regression:
        return 1.0
    return float(np.abs(data.train_table["label"].to_numpy()).max()) or 1.0


def make_trainer(s: Settings, data: TaskData, epochs: float | None = None, lr: float | None = None) -> TextClassifierTrainer:
    return TextClassifierTrainer(data.task, lr=lr or s["learning_rate"], batch_size=s["batch_size"],
                                 epochs=epochs if epochs is not None else s["local_epochs"], eval_batch_size=s["eval_batch_size"],
                                 target_scale=target_scale(data), device=run_device(s.params))


def adapter_model(s: Settings, data: TaskData, method: str, rank: int, seed: int):
    alpha = s["lora_alpha"] * rank / s["lora_rank"]  # keep alpha / r fixed when the rank changes
    return attach_lora(copy.deepcopy(data.base_model), rank, alpha, s["lora_dropout"], s["target_modules"],
                       freeze_a=method == "ffa", seed=seed), alpha


def load_adapter(model, adapter_dir: Path) -> None:
    """Load a peft adapter folder (``save_pretrained``) into ``model``, which must have the same layout."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"init_adapter = {adapter_dir} is not a peft adapter folder (no adapter_config.json)")
    result = set_peft_model_state_dict(model, load_peft_weights(str(adapter_dir), device="cpu"))
    missing_lora = [k for k in result.missing_keys if "lora_" in k]
    if missing_lora:
        raise ValueError(f"init_adapter = {adapter_dir} lacks {len(missing_lora)} LoRA tensors of the model, e.g. {missing_lora[0]}")


@dataclass
class FederatedRun:
    result: Any
    strategy: LoraAggregation
    parts: list[np.ndarray]
    model: torch.nn.Module


def run_federated_lora(s: Settings, data: TaskData, method: str, sharding: str, seed: int, client_rank: int | None = None,
                       progress: bool = True, init_adapter: Path | None = None, checkpoint: str = "rounds",
                       global_rank: int | None = None) -> FederatedRun:
    """One multi-round FedAvg run of adapters with the given aggregation and sharding; ``init_adapter``: a peft
    adapter folder to start from (the report's warm start) instead of a fresh adapter; ``checkpoint``: the name of
    the round loop's checkpoint in the run's checkpoint folder (when the run harness executes it); ``global_rank``:
    the rank the server keeps (default: ``svd_rank`` for svd, the client rank otherwise)."""
    client_rank = client_rank or s["lora_rank"]
    parts = shard(s, data, sharding, s["num_clients"], seed)
    clients = [Client(str(i + 1), data.train.subset(p), data.train.subset(p) if s["evaluate_clients"] else None) for i, p in enumerate(parts)]
    model, alpha = adapter_model(s, data, method, client_rank, seed)
    if init_adapter is not None:
        load_adapter(model, init_adapter)
    global_rank = global_rank or (s["svd_rank"] if method == "svd" else client_rank)
    strategy = LoraAggregation(method, client_rank, alpha, global_rank=global_rank,
                               global_alpha=s["lora_alpha"] * global_rank / s["lora_rank"], frozen=frozen_lora_a(model))
    config = RoundConfig(num_rounds=s["num_rounds"], seed=seed, exchange="trainable", evaluate_clients=s["evaluate_clients"])
    result = run_federated(model, clients, strategy, make_trainer(s, data), config, server_test=data.dev,
                           checkpoint_path=checkpoints.path(checkpoint), progress=progress,
                           description=f"{data.task} {method}/{sharding} r{client_rank} seed {seed}")
    return FederatedRun(result, strategy, parts, model)


def _federated_record(s: Settings, spec: RunSpec, data: TaskData, progress: bool) -> RunRecord:
    a = spec.args
    run = run_federated_lora(s, data, a["method"], a["sharding"], a["seed"], client_rank=a["client_rank"], progress=progress,
                             global_rank=a.get("global_rank"))
    return _run_record(spec, data, run)


def run_mixed_rank(s: Settings, data: TaskData, method: str, seed: int, client_ranks: list[int], progress: bool = True,
                   checkpoint: str = "rounds") -> FederatedRun:
    """FedAvg on IID shards with client ``i`` training a LoRA adapter of rank ``client_ranks[i]`` (every adapter at the
    scaling ``lora_alpha / lora_rank``), aggregated by ``method`` (:class:`~fedpeft.federated.mixed_rank.MixedRankLora`)."""
    if len(client_ranks) != s["num_clients"]:
        raise ValueError(f"client_ranks = {client_ranks} gives {len(client_ranks)} ranks for num_clients = {s['num_clients']}")
    parts = shard(s, data, "iid", s["num_clients"], seed)
    clients = [Client(str(i + 1), data.train.subset(p), data.train.subset(p) if s["evaluate_clients"] else None) for i, p in enumerate(parts)]
    model, alpha = adapter_model(s, data, method, max(client_ranks), seed)
    strategy = MixedRankLora(method, client_ranks, alpha / max(client_ranks), svd_rank=s["svd_rank"])
    config = RoundConfig(num_rounds=s["num_rounds"], seed=seed, exchange="trainable", evaluate_clients=s["evaluate_clients"])
    result = run_federated(model, clients, strategy, make_trainer(s, data), config, server_test=data.dev,
                           checkpoint_path=checkpoints.path(checkpoint), progress=progress,
                           description=f"{data.task} {method}/iid ranks {client_ranks} seed {seed}")
    return FederatedRun(result, strategy, parts, model)


def traffic_by_client(ledger_frame: pd.DataFrame, client_ranks: list[int]) -> pd.DataFrame:
    """Mean bytes per round each client received and sent, beside its rank (clients ``1..K`` in order)."""
    per = ledger_frame.groupby(["client", "direction", "round"])["bytes"].sum().groupby(["client", "direction"]).mean().unstack()
    return pd.DataFrame({"client": [str(i + 1) for i in range(len(client_ranks))], "rank": client_ranks}).assign(
        down_bytes=lambda t: t["client"].map(per["down"]).astype(float), up_bytes=lambda t: t["client"].map(per["up"]).astype(float))


def _mixed_rank_record(s: Settings, spec: RunSpec, data: TaskData, progress: bool) -> RunRecord:
    a = spec.args
    run = run_mixed_rank(s, data, a["method"], a["seed"], a["client_ranks"], progress=progress)
    h = run.result.history
    scalars = {**a, "global_rank": run.strategy.global_rank, "wall_s": run.result.wall_s, "rounds_completed": run.result.rounds_completed,
               "eval_examples": len(data.dev), "chance_score": chance_score(data)}
    tables = {"mixed_history": h, "mixed_errors": run.strategy.error_frame(),
              "ledger_per_round": run.result.ledger.per_round().reset_index(),
              "traffic_by_client": traffic_by_client(run.result.ledger.frame(), a["client_ranks"]),
              "shards": shard_table(data, run.parts)}
    return RunRecord(EXPERIMENT, spec.run_id, spec.args, scalars, tables)


def _run_record(spec: RunSpec, data: TaskData, run: FederatedRun, **extra: Any) -> RunRecord:
    h = run.result.history
    scalars = {**spec.args, **extra, "label_skew": label_skew(run.parts, data.strata), "wall_s": run.result.wall_s,
               "rounds_completed": run.result.rounds_completed, "trainable": count_parameters(run.model, trainable_only=True),
               "total": count_parameters(run.model), "full_model_bytes": len(serialize_state(run.model.state_dict())),
               "train_examples": len(data.train), "eval_examples": len(data.dev),
               "chance_score": chance_score(data)}
    tables = {"history": h, "errors": run.strategy.error_frame(), "ledger_per_round": run.result.ledger.per_round().reset_index(),
              "measure_s": pd.DataFrame({"round": np.arange(1, len(run.strategy.measure_s) + 1), "seconds": run.strategy.measure_s}),
              "shards": shard_table(data, run.parts)}
    return RunRecord(EXPERIMENT, spec.run_id, spec.args, scalars, tables)


def train_centralized(s: Settings, data: TaskData, seed: int, full: bool, save_to: Path | None = None,
                      lr: float | None = None) -> dict[str, float]:
    """Baselines on the pooled data for ``num_rounds * local_epochs`` epochs: LoRA, or every parameter, at ``lr``
    (default: ``learning_rate`` for LoRA, ``full_finetune_lr`` for full fine-tuning). ``save_to``: a folder to save
    the trained LoRA adapter in (peft format)."""
    epochs = s["num_rounds"] * s["local_epochs"]
    if full:
        model, lr = copy.deepcopy(data.base_model), lr or s["full_finetune_lr"]
    else:
        (model, _), lr = adapter_model(s, data, "svd", s["lora_rank"], seed), lr or s["learning_rate"]
    trainer = make_trainer(s, data, epochs=epochs, lr=lr)
    start = time.perf_counter()
    trainer.train(model, data.train, seeded_generator(seed, 20_000))
    seconds = time.perf_counter() - start
    trainable = count_parameters(model, trainable_only=True)
    stats = trainer.evaluate(model, data.dev)
    if save_to is not None and not full:
        model.save_pretrained(save_to)
    return {"baseline": "full fine-tuning" if full else "centralized LoRA", "seed": seed, "trainable_params": trainable,
            "epochs": epochs, "train_s": seconds, **stats.as_dict()}




def _centralized_record(s: Settings, spec: RunSpec, data: TaskData, progress: bool) -> RunRecord:
    """Centralized LoRA (its adapter kept for the warm start) and full fine-tuning; then the warm start. Each
    baseline is a checkpointed part of the run, and the warm start's round loop writes its own checkpoint; the
    centralized adapter is kept in the run's checkpoint folder (a temporary one outside the harness)."""
    seed = spec.args["seed"]
    ckpt = checkpoints.active()
    with tempfile.TemporaryDirectory() as tmp:
        adapter_dir = (ckpt.folder if ckpt is not None else Path(tmp)) / "centralized_adapter"
        baselines = pd.DataFrame([checkpoints.part("full-fine-tuning" if full else "centralized-lora",
                                                   lambda full=full: train_centralized(s, data, seed, full=full, save_to=None if full else adapter_dir))
                                  for full in (False, True)])
        tables = {"baselines": baselines}
        if spec.args["warm_start"]:
            warm = run_federated_lora(s, data, "svd", "iid", seed, init_adapter=adapter_dir, progress=progress, checkpoint="warm-rounds")
            tables["warm_history"] = warm.result.history
    return RunRecord(EXPERIMENT, spec.run_id, spec.args, {"seed": seed, "chance_score": chance_score(data)}, tables)


def _lr_study_record(s: Settings, spec: RunSpec, data: TaskData, progress: bool) -> RunRecord:
    """Centralized LoRA and full fine-tuning at every learning rate of the spec, one seed: each training a
    checkpointed part of the run."""
    from tqdm.auto import tqdm

    seed, lrs = spec.args["seed"], spec.args["lrs"]
    arms = [(full, lr) for full in (False, True) for lr in lrs]
    rows = [{"lr": lr} | checkpoints.part(f"{'full' if full else 'lora'}-lr{lr:g}",
                                          lambda full=full, lr=lr: train_centralized(s, data, seed, full, lr=lr))
            for full, lr in tqdm(arms, desc=spec.run_id, disable=not progress, leave=False)]
    return RunRecord(EXPERIMENT, spec.run_id, spec.args, {"seed": seed, "chance_score": chance_score(data)},
                     {"lr_study": pd.DataFrame(rows)})


def train_clients_once(s: Settings, data: TaskData, parts: list[np.ndarray], seed: int, rank: int,
                       checkpoint: str | None = None) -> tuple[list[dict], float, Any]:
    """Each client trains its own adapter from the same initial one for ``local_epochs``; returns their
    trainable states, the scaling and the (untrained) model they came from. ``checkpoint``: a name under which each
    client's adapter is a checkpointed part of the run (``<name>-<client>``)."""
    model, alpha = adapter_model(s, data, "svd", rank, seed)
    keys = [n for n, p in model.named_parameters() if p.requires_grad]
    initial = {k: v.detach().clone() for k, v in model.state_dict().items() if k in keys}
    work, trainer = copy.deepcopy(model), make_trainer(s, data)

    def train(i: int, p: np.ndarray) -> dict:
        return client_update(work, initial, Client(str(i + 1), data.train.subset(p)), i, 1, FedAvg(), trainer, seed)[0]

    states = [train(i, p) if checkpoint is None else checkpoints.part(f"{checkpoint}-{i + 1}", lambda i=i, p=p: train(i, p))
              for i, p in enumerate(parts)]
    return states, alpha / rank, model


def error_study(s: Settings, data: TaskData, seed: int, progress: bool = True) -> pd.DataFrame:
    """One round of local training with K clients under each sharding; the aggregation error of each method
    on the same client adapters, including SVD truncated to r, 2r and K r."""
    from tqdm.auto import tqdm

    rows = []
    r = s["lora_rank"]
    cases = [(k, m) for k in s["error_study_clients"] for m in s["error_study_shardings"]]

    def case(k: int, mode: str) -> list[dict]:
        parts = shard(s, data, mode, k, seed)
        states, scaling, _ = train_clients_once(s, data, parts, seed, r)
        weights = normalize_weights([len(p) for p in parts], k)
        variants = [("naive", None), ("flora", None)] + [("svd", q) for q in sorted({r, 2 * r, k * r})]
        out = []
        for method, q in variants:
            _, errors = merge_adapter_states(states, [scaling] * k, method, weights, svd_rank=q, scaling=scaling)
            out.append({"clients": k, "sharding": mode, "label_skew": float(label_skew(parts, data.strata)),
                        "method": method if q is None else f"svd r={q}" + (" (=K r)" if q == k * r else ""),
                        "mean_relative_error": float(errors["relative_error"].mean()),
                        "max_relative_error": float(errors["relative_error"].max())})
        return out

    for k, mode in tqdm(cases, desc="error study", disable=not progress, leave=False):
        rows += checkpoints.part(f"case-k{k}-{mode}", lambda k=k, mode=mode: case(k, mode))  # each case resumes as a whole
    return pd.DataFrame(rows)




def _error_study_record(s: Settings, spec: RunSpec, data: TaskData, progress: bool) -> RunRecord:
    return RunRecord(EXPERIMENT, spec.run_id, spec.args, {}, {"error_study": error_study(s, data, spec.args["seed"], progress)})


def one_shot_merge(s: Settings, data: TaskData, seed: int, work_dir: Path) -> tuple[pd.DataFrame, list[dict]]:
    """The report's ``fedavg_merge.py``: K adapters trained apart on IID shards, merged once from their saved
    folders with each method and weighting; every merged adapter is loaded back with peft and evaluated."""
    from peft import PeftModel

    k = s["merge_clients"]
    parts = shard(s, data, "iid", k, seed)
    manifest_dir = work_dir / "shards" / f"{data.task}_iid_k{k}"
    manifests = save_shard_manifests(manifest_dir, parts, data.strata, {"task": data.task, "mode": "iid", "seed": seed})
    states, scaling, model = train_clients_once(s, data, parts, seed, s["lora_rank"], checkpoint="client")
    trainer = make_trainer(s, data)
    adapter_dirs = []
    for i, state in enumerate(states, start=1):
        model.load_state_dict(state, strict=False)
        adapter_dirs.append(work_dir / f"client_{i}")
        model.save_pretrained(adapter_dirs[-1])
    client_scores = []
    for state in states:
        model.load_state_dict(state, strict=False)
        client_scores.append(trainer.evaluate(model, data.dev)["score"])
    rows, saved = [], []
    options = [("svd", "manifest"), ("svd", "equal"), ("naive", "manifest"), ("flora", "manifest")]
    for method, weighting in options:
        out = work_dir / f"merged_{method}_{weighting}"
        manifest = merge_adapter_dirs(
            adapter_dirs, out, method=method, svd_rank=s["svd_rank"] if method == "svd" else None,
            manifests=[manifest_dir / f"client_{i}.json" for i in range(1, k + 1)] if weighting == "manifest" else None,
        )
        merged = PeftModel.from_pretrained(copy.deepcopy(data.base_model), str(out))
        stats = trainer.evaluate(merged, data.dev)
        rows.append({"method": method, "weighting": manifest["weighting"], "rank": manifest["rank"],
                     "max_relative_error": manifest["max_relative_error"], "score": stats["score"]})
        saved.append(manifest)
    table = pd.DataFrame(rows)
    table.attrs["client_scores"] = client_scores
    table.attrs["client_sizes"] = manifests["size_per_client"]
    return table, saved




def _merge_record(s: Settings, spec: RunSpec, data: TaskData, progress: bool) -> RunRecord:  # noqa: ARG001
    with tempfile.TemporaryDirectory() as tmp:
        table, _ = one_shot_merge(s, data, spec.args["seed"], Path(tmp))
    scalars = {"client_scores": table.attrs["client_scores"], "client_sizes": table.attrs["client_sizes"],
               "chance_score": chance_score(data)}
    return RunRecord(EXPERIMENT, spec.run_id, spec.args, scalars, {"one_shot_merge": pd.DataFrame(table)})
