"""The savings frontier: the experiment's name, settings and its plan and report keys.

The text task (a GLUE task, SST-2 in every profile) in one federation; every point of the plan varies one axis around a
base point (LoRA adapters of rank ``lora_rank`` aggregated by ``base_aggregation``, sent in fp32, FedAvg every round,
IID shards), with the same clients, data and budget of local steps (``num_rounds * local_epochs`` epochs per client):

- *what is sent*: the full model (``full_model``) or the adapters, aggregated by each of ``aggregations``;
- *how it is sent*: each of ``codecs`` (``fp16``, ``int8``, ``nf4``; ``+ef`` with error feedback) for the adapters,
  and each of ``full_model_codecs`` for the full model (:mod:`fedpeft.federated.compression`);
- *how often*: DiLoCo (outer Nesterov step) synchronizing every ``H`` of ``sync_intervals``: ``num_rounds / H``
  rounds of ``H * local_epochs`` epochs each;
- *data*: the points of ``skewed_points`` again on Dirichlet label skew (``dirichlet_alpha``);
- *memory*: the adapters on a 4-bit NF4 base (``qlora``, QLoRA).

A second task, the EuroSAT report's CNN (``cnn_points``), measures full-model updates on their own yardstick (the
CNN's full model in fp32 every round, IID), in a federation of its own (the ``cnn_*`` settings): each of
``cnn_codecs``, DiLoCo every ``H`` of ``cnn_sync_intervals`` rounds' worth of local epochs, and Dirichlet label skew
(its full model in fp32 and each of ``cnn_skewed_codecs``). Its accuracy is the server's test accuracy, never compared
with the text task's.

Runs are in :mod:`.runs` (one DVC stage each), the table, figure and claims in :mod:`.report`.
"""

from __future__ import annotations

from typing import Any

from fedpeft.core.config import Settings, Spec, load_settings, seed_spec, seeds_spec, threads_spec
from fedpeft.data import glue
from fedpeft.federated.compression import CODECS
from fedpeft.federated.lora_aggregation import ROUND_METHODS

EXPERIMENT = "savings_frontier"
#: The task name of the EuroSAT CNN's points (the text task's is a GLUE task name).
CNN_TASK = "eurosat"
#: A codec as the plan names it: one of CODECS, with "+ef" for error feedback (fp32 is the base point's own).
CODEC_CHOICES = tuple(c for c in CODECS if c != "fp32") + tuple(f"{c}+ef" for c in CODECS if c != "fp32")
SKEWABLE = ("lora", "full")

SCHEMA: dict[str, Spec] = {
    "source": Spec(str, choices=("generated", "tsv", "hub"), doc="generated sentences, the data root's TSVs, or the hub"),
    "model": Spec(str, doc="tiny-roberta, minilm, or a hub id such as FacebookAI/roberta-base"),
    "main_task": Spec(str, choices=tuple(glue.TASKS), doc="the task every point trains on"),
    "train_examples": Spec(int, low=0, high=10_000_000, doc="training examples drawn (stratified) from the task's train split; 0 = all"),
    "eval_examples": Spec(int, low=0, high=10_000_000, doc="validation examples used; 0 = all"),
    "pretrain_examples": Spec(int, low=0, high=10_000_000, doc="tiny-roberta only: generated sentences its encoder is first trained on"),
    "max_length": Spec(int, low=8, high=512, doc="tokens per example after truncation"),
    "num_clients": Spec(int, low=1, high=1000),
    "dirichlet_alpha": Spec(float, low=1e-3, high=1e6, doc="label skew of the skewed points (smaller: more skewed)"),
    "num_rounds": Spec(int, low=1, high=1000, doc="rounds of FedAvg every round (DiLoCo at H: num_rounds / H rounds)"),
    "local_epochs": Spec(float, low=0.01, high=100.0, doc="local epochs per FedAvg round (DiLoCo at H: H times as many)"),
    "batch_size": Spec(int, low=1, high=4096),
    "eval_batch_size": Spec(int, low=1, high=4096),
    "learning_rate": Spec(float, low=1e-7, high=1.0, doc="the adapters' learning rate"),
    "full_finetune_lr": Spec(float, low=1e-8, high=1.0, doc="the full model's learning rate"),
    "lora_rank": Spec(int, low=1, high=1024),
    "lora_alpha": Spec(float, low=1e-3, high=10_000),
    "lora_dropout": Spec(float, low=0.0, high=0.9),
    "target_modules": Spec(list, item=str, min_items=1),
    "diloco_outer_lr": Spec(float, low=1e-3, high=10.0, doc="DiLoCo's outer learning rate (Douillard et al.: 0.7)"),
    "diloco_momentum": Spec(float, low=0.0, high=0.99, doc="DiLoCo's outer Nesterov momentum (0.9)"),
    "model_seed": seed_spec(doc="seed of the classifier head every point starts from"),
    "base_aggregation": Spec(str, choices=ROUND_METHODS, doc="the base point's aggregation of the adapters"),
    "aggregations": Spec(list, item=str, choices=ROUND_METHODS, unique=True, doc="what is sent: the adapters aggregated by each"),
    "full_model": Spec(bool, doc="the full model, FedAvg in fp32 every round: the yardstick every saving is measured against"),
    "codecs": Spec(list, item=str, choices=CODEC_CHOICES, unique=True, doc="how the base point's updates travel ('+ef': with error feedback)"),
    "full_model_codecs": Spec(list, item=str, choices=CODEC_CHOICES, unique=True, doc="how the full model's updates travel"),
    "sync_intervals": Spec(list, item=int, unique=True, low=1, high=1000,
                           doc="DiLoCo on the base point, synchronizing every H FedAvg rounds' worth of local epochs"),
    "skewed_points": Spec(list, item=str, choices=SKEWABLE, unique=True, doc="base points (LoRA, full model) run again on Dirichlet shards"),
    "qlora": Spec(bool, doc="the base point on a 4-bit NF4 base model (QLoRA): the client's memory"),
    "seeds": seeds_spec(doc="every point runs once per seed (shards, adapters' initialization, batches)"),
    "cnn_points": Spec(bool, doc="the EuroSAT CNN's full-model points (a second task, its own full model as the yardstick)"),
    "cnn_source": Spec(str, choices=("generated", "eurosat_zip"), doc="the CNN's images: generated, or the data root's EuroSAT zip"),
    "cnn_images_per_class": Spec(int, low=4, high=10_000, doc="images per class for cnn_source = generated"),
    "cnn_pool_images": Spec(int, low=0, high=10_000_000, doc="images the CNN's clients share, drawn stratified (seed 0) after "
                            "the server's test set is held out; 0 = all"),
    "cnn_test_images": Spec(int, low=0, high=10_000_000, doc="images of the server's test set, drawn stratified (seed 0); 0 = all "
                            "held out (20 % of the images)"),
    "cnn_clients": Spec(int, low=1, high=10_000),
    "cnn_rounds": Spec(int, low=1, high=10_000, doc="rounds of FedAvg every round (DiLoCo at H: cnn_rounds / H rounds)"),
    "cnn_local_epochs": Spec(int, low=1, high=1000, doc="local epochs per FedAvg round (DiLoCo at H: H times as many)"),
    "cnn_batch_size": Spec(int, low=1, high=65_536),
    "cnn_learning_rate": Spec(float, low=1e-8, high=10.0, doc="Adam's learning rate (the EuroSAT report's 1e-3)"),
    "cnn_codecs": Spec(list, item=str, choices=CODEC_CHOICES, unique=True, doc="how the CNN's updates travel ('+ef': with error feedback)"),
    "cnn_sync_intervals": Spec(list, item=int, unique=True, low=1, high=1000, doc="DiLoCo on the CNN every H rounds' worth of local epochs"),
    "cnn_skewed_codecs": Spec(list, item=str, choices=("fp32",) + CODEC_CHOICES, unique=True,
                              doc="the CNN's Dirichlet points (dirichlet_alpha): its full model in fp32 and with each of these codecs; [] for none"),
    "cost_margin": Spec(float, low=0.0, high=100.0, doc="points of accuracy a technique may lose and still count as no real cost"),
    "torch_threads": threads_spec(),
}

#: Keys that decide which runs exist.
PLAN_KEYS = frozenset({"base_aggregation", "aggregations", "full_model", "codecs", "full_model_codecs", "sync_intervals",
                       "skewed_points", "qlora", "seeds", "cnn_points", "cnn_codecs", "cnn_sync_intervals", "cnn_skewed_codecs"})
#: Keys only the report reads.
REPORT_KEYS = frozenset({"cost_margin"})
#: Keys only one kind of run reads: the text task's points (``point``) and the EuroSAT CNN's (``cnn_point``), so that
#: a change to one task's settings leaves the other's records valid.
KIND_KEYS = {
    "point": frozenset({"source", "model", "main_task", "train_examples", "eval_examples", "pretrain_examples", "max_length",
                        "num_clients", "num_rounds", "local_epochs", "batch_size", "eval_batch_size", "learning_rate",
                        "full_finetune_lr", "lora_rank", "lora_alpha", "lora_dropout", "target_modules", "model_seed"}),
    "cnn_point": frozenset({"cnn_source", "cnn_images_per_class", "cnn_pool_images", "cnn_test_images", "cnn_clients",
                            "cnn_rounds", "cnn_local_epochs", "cnn_batch_size", "cnn_learning_rate"}),
}


def load(profile: str, overrides: dict[str, Any] | None = None) -> Settings:
    s = load_settings(profile, EXPERIMENT, SCHEMA, overrides)
    uneven = [h for h in s["sync_intervals"] if s["num_rounds"] % h]
    if uneven:
        raise ValueError(f"sync_intervals = {s['sync_intervals']} holds {uneven}, which do not divide num_rounds = "
                         f"{s['num_rounds']}; every point trains the same local epochs, so H must divide the rounds")
    if s["sync_intervals"] and s["base_aggregation"] != "naive":
        raise ValueError(f"sync_intervals = {s['sync_intervals']} needs base_aggregation = 'naive' (DiLoCo's outer step "
                         f"acts on the averaged adapters); it is {s['base_aggregation']!r}")
    if (s["full_model_codecs"] or "full" in s["skewed_points"]) and not s["full_model"]:
        raise ValueError(f"full_model_codecs = {s['full_model_codecs']} and skewed_points = {s['skewed_points']} vary the "
                         "full model, which full_model = false does not run")
    uneven = [h for h in s["cnn_sync_intervals"] if s["cnn_rounds"] % h]
    if uneven:
        raise ValueError(f"cnn_sync_intervals = {s['cnn_sync_intervals']} holds {uneven}, which do not divide cnn_rounds = "
                         f"{s['cnn_rounds']}; every CNN point trains the same local epochs, so H must divide the rounds")
    if s["source"] == "generated" and s["main_task"] != "sst2":
        raise ValueError("source = 'generated' makes SST-2-like sentences only: set main_task: sst2")
    return s


def data_files(s: Settings) -> list[str]:
    """The data-root files (manifest paths) the runs read: the text task's train and dev split, and the EuroSAT zip
    when the CNN's points read it (``cnn_source``), whether or not they are planned yet."""
    folders = {"sst2": "glue/SST-2", "mrpc": "glue/MRPC", "stsb": "glue/STS-B"}
    files = []
    if s["source"] == "tsv" and s["main_task"] in folders:
        files += [f"{folders[s['main_task']]}/{split}" for split in ("train.tsv", "dev.tsv")]
    if s["cnn_source"] == "eurosat_zip":  # also while cnn_points is off: turning it on leaves the lock (and the text points) as they are
        files.append("eurosat/EuroSAT_RGB.zip")  # fedpeft.data.eurosat.EUROSAT_ZIP
    return files
