"""GLUE, federated LoRA aggregation: the experiment's name, settings, and its plan, report and per-kind keys.

Seed: ``../shared/seeds/004_b0977eb72b9f505e.txt``. Notebook: ``notebooks/05_glue_lora_aggregation.ipynb``. Runs are
in :mod:`.runs` (one DVC stage each), tables, claims and the conclusion in :mod:`.report`.
"""

from __future__ import annotations

from typing import Any

from fedpeft.core.config import SEED_HIGH, SEED_LOW, Settings, Spec, load_settings, seed_spec, seeds_spec, threads_spec
from fedpeft.data import glue
from fedpeft.federated.lora_aggregation import ROUND_METHODS
from fedpeft.federated.mixed_rank import MIXED_RANK_METHODS

EXPERIMENT = "glue_lora_aggregation"
SHARDINGS = ("iid", "overlap", "category", "dirichlet")

SCHEMA: dict[str, Spec] = {
    "source": Spec(str, choices=("generated", "tsv", "hub"), doc="generated sentences, the data root's TSVs, or the hub"),
    "model": Spec(str, doc="tiny-roberta, minilm, or a hub id such as FacebookAI/roberta-base"),
    "main_task": Spec(str, choices=tuple(glue.TASKS), doc="task of the aggregation x sharding grid"),
    "extra_tasks": Spec(list, item=str, choices=tuple(glue.TASKS), doc="tasks run with svd and naive on IID shards, every seed"),
    "train_examples": Spec(int, low=0, high=10_000_000, doc="training examples drawn (stratified) from the task's train split; 0 = all"),
    "extra_train_examples": Spec(int, low=0, high=10_000_000, doc="training examples of each extra task; 0 = all"),
    "eval_examples": Spec(int, low=0, high=10_000_000, doc="validation examples used; 0 = all"),
    "pretrain_examples": Spec(int, low=0, high=10_000_000, doc="tiny-roberta only: generated sentences its encoder is first trained on"),
    "max_length": Spec(int, low=8, high=512, doc="tokens per example after truncation"),
    "num_clients": Spec(int, low=1, high=1000),
    "shardings": Spec(list, item=str, choices=SHARDINGS, min_items=1),
    "repeat_shardings": Spec(list, item=str, choices=SHARDINGS,
                             doc="shardings (besides iid) whose runs repeat over every seed, so aggregations compare with an interval"),
    "overlap_ratio": Spec(float, low=0.0, high=0.95, doc="overlap sharding: share of examples every client holds"),
    "dirichlet_alpha": Spec(float, low=1e-3, high=1e6),
    "aggregations": Spec(list, item=str, choices=ROUND_METHODS, min_items=1),
    "num_rounds": Spec(int, low=1, high=1000),
    "local_epochs": Spec(float, low=0.01, high=100.0, doc="local epochs per round (fractions allowed)"),
    "batch_size": Spec(int, low=1, high=4096),
    "eval_batch_size": Spec(int, low=1, high=4096),
    "learning_rate": Spec(float, low=1e-7, high=1.0),
    "lora_rank": Spec(int, low=1, high=1024),
    "lora_alpha": Spec(float, low=1e-3, high=10_000),
    "lora_dropout": Spec(float, low=0.0, high=0.9),
    "target_modules": Spec(list, item=str, min_items=1),
    "svd_rank": Spec(int, low=1, high=1024),
    "compress_client_rank": Spec(int, low=0, high=1024, doc="extra runs (every seed): clients train at this rank, svd to svd_rank (0: none)"),
    "rank_sweep": Spec(list, item=int, unique=True, low=1, high=1024, doc="extra runs (every seed and extra seed, svd, IID): clients train at each rank and the "
                                                              "server keeps it, beside lora_rank's runs (the seed's r 4 / 8 / 16 / 32)"),
    "lr_study": Spec(list, item=float, unique=True, low=1e-8, high=1.0, doc="centralized LoRA and full fine-tuning each at every learning rate "
                                                                "listed, per seed (the seed's 2e-4 for LoRA, 2e-5 for full); [] = none"),
    "mixed_ranks": Spec(list, item=int, low=1, high=1024, doc="extra runs (IID, every seed and extra seed): one LoRA rank per client, "
                                                            "the clients training adapters of different ranks (the seed's 'different ranks'); [] = none"),
    "mixed_rank_aggregations": Spec(list, item=str, choices=MIXED_RANK_METHODS, unique=True,
                                    doc="how the mixed-rank runs aggregate: svd to svd_rank, hetlora (zero-padding), flexlora "
                                        "(per-client truncation of the mean's SVD)"),
    "extra_seeds": Spec(list, item=int, unique=True, low=SEED_LOW, high=SEED_HIGH, doc="more seeds for the main task's repeated comparisons (IID and repeat_shardings, every "
                                  "aggregation), where three seeds left an interval over its threshold"),
    "grid_seed": seed_spec(),
    "seeds": seeds_spec(doc="seeds of the repeated IID runs (grid_seed is reused if listed)"),
    "error_study_clients": Spec(list, item=int, low=1, high=1000, min_items=1, doc="client counts of the one-round aggregation-error study"),
    "error_study_shardings": Spec(list, item=str, choices=SHARDINGS, min_items=1),
    "merge_clients": Spec(int, low=2, high=1000, doc="adapters merged one-shot"),
    "full_finetune_lr": Spec(float, low=1e-8, high=1.0),
    "warm_start": Spec(bool, doc="extra run: svd on IID shards starting from the centralized LoRA adapter"),
    "evaluate_clients": Spec(bool, doc="evaluate the fused model on each client's shard every round"),
    "torch_threads": threads_spec(),
}

#: Keys that decide which runs exist (a run's task, method, sharding, seed and rank are in its spec).
PLAN_KEYS = frozenset({"shardings", "repeat_shardings", "aggregations", "seeds", "extra_tasks", "compress_client_rank", "warm_start",
                       "rank_sweep", "lr_study", "extra_seeds", "mixed_ranks", "mixed_rank_aggregations"})
#: Keys only the report reads.
REPORT_KEYS: frozenset[str] = frozenset()
#: Keys only one kind of run reads: changing them reruns that kind's stage alone.
KIND_KEYS = {
    "error_study": frozenset({"error_study_clients", "error_study_shardings"}),
    "merge": frozenset({"merge_clients"}),
    "centralized": frozenset({"full_finetune_lr"}),
}


def load(profile: str, overrides: dict[str, Any] | None = None) -> Settings:
    s = load_settings(profile, EXPERIMENT, SCHEMA, overrides)
    if s["svd_rank"] > s["lora_rank"]:
        raise ValueError(f"svd_rank = {s['svd_rank']} is above lora_rank = {s['lora_rank']}; the global adapter "
                         "cannot be larger than the ones clients train")
    if s["compress_client_rank"] and s["compress_client_rank"] < s["svd_rank"]:
        raise ValueError(f"compress_client_rank = {s['compress_client_rank']} is below svd_rank = {s['svd_rank']}")
    if s["svd_rank"] != s["lora_rank"] and s["rank_sweep"]:
        raise ValueError(f"rank_sweep = {s['rank_sweep']} needs svd_rank = lora_rank ({s['lora_rank']}), so that lora_rank's "
                         f"runs are the sweep's point at r {s['lora_rank']}; svd_rank is {s['svd_rank']}")
    if s["mixed_ranks"] and len(s["mixed_ranks"]) != s["num_clients"]:
        raise ValueError(f"mixed_ranks = {s['mixed_ranks']} gives {len(s['mixed_ranks'])} ranks for num_clients = "
                         f"{s['num_clients']}; give one rank per client, or [] for no mixed-rank runs")
    if s["mixed_ranks"] and not s["mixed_rank_aggregations"]:
        raise ValueError(f"mixed_ranks = {s['mixed_ranks']} needs at least one of mixed_rank_aggregations "
                         f"({list(MIXED_RANK_METHODS)}); it is []")
    if s["mixed_ranks"] and "svd" in s["mixed_rank_aggregations"] and s["svd_rank"] > max(s["mixed_ranks"]):
        raise ValueError(f"svd_rank = {s['svd_rank']} is above the largest of mixed_ranks = {s['mixed_ranks']}; lower "
                         "svd_rank, raise a client's rank, or drop svd from mixed_rank_aggregations")
    repeated = sorted(set(s["extra_seeds"]) & set(s["seeds"]))
    if repeated:
        raise ValueError(f"extra_seeds = {s['extra_seeds']} is not allowed; {repeated} already in seeds = {s['seeds']}")
    unknown = sorted(set(s["repeat_shardings"]) - set(s["shardings"]))
    if unknown:
        raise ValueError(f"repeat_shardings = {s['repeat_shardings']} names {unknown}, which shardings = {s['shardings']} "
                         "does not run")
    if s["source"] == "generated" and (s["main_task"] != "sst2" or s["extra_tasks"]):
        raise ValueError("source = 'generated' makes SST-2-like sentences only: set main_task: sst2, extra_tasks: []")
    return s


def data_files(s: Settings) -> list[str]:
    """The data-root files (manifest paths) this profile's runs read: each task's train and dev split
    (``fedpeft.data.glue.TSV_FILES`` and ``SPLIT_FILES``; the unlabelled test split is never read)."""
    folders = {"sst2": "glue/SST-2", "mrpc": "glue/MRPC", "stsb": "glue/STS-B"}
    tasks = [t for t in [s["main_task"], *s["extra_tasks"]] if t in folders] if s["source"] == "tsv" else []
    return [f"{folders[t]}/{split}" for t in tasks for split in ("train.tsv", "dev.tsv")]
