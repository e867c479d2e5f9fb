"""Weeds with a QLoRA head across federated farmers: the planned runs, each one DVC stage writing one record.

The backbone is frozen, so its features are computed once per (image, augmented view) and kept in the cache folder
(``<cache>/features/weeds_qlora_federated/<digest>.pt``, keyed by every setting that changes them); every run stage
loads them from there. Two kinds of run:

- ``setup``: the splits and sample images, the backbone, the feature cache's cost, one farmer's memory and the cost
  of a training step with and without the cache, and the seed's YOLO11s-cls counted exactly;
- ``run``: one scenario (centralized, FedAvg, DiLoCo, DiLoCo with a Nesterov outer step) for one seed, adapter arm,
  rank, transport and farmer mix, trained on the cached features; the record holds its per-round history and its
  test-set results, bytes and times.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedpeft.core import checkpoints
from fedpeft.core.config import Settings
from fedpeft.core.device import run_device
from fedpeft.core.files import atomic_torch_save
from fedpeft.core.integrity import require_trusted_file
from fedpeft.core.profiling import measure
from fedpeft.core.records import RunRecord, RunSpec
from fedpeft.data import weeds
from fedpeft.experiments.weeds_qlora_federated.settings import EXPERIMENT, SCENARIOS, SEED, ScenarioRun, planned_runs
from fedpeft.federated.deployment.timing import client_timing
from fedpeft.federated.engines import run_rounds
from fedpeft.federated.ledger import MIB, serialize_state
from fedpeft.federated.loop import Client, RoundConfig
from fedpeft.federated.network import NetworkModel
from fedpeft.federated.strategies import build_strategy
from fedpeft.models.backbones import Backbone, build_backbone, calibrate_batchnorm
from fedpeft.models.counting import count_parameters
from fedpeft.models.feature_cache import CacheStats, augmented_batch, extract_features, seed_augmentations
from fedpeft.models.head import adapted_head, base_head, effective_update_rank, lora_parameter_count
from fedpeft.training.contract import optimizer_step
from fedpeft.training.head import FeatureSet, FeatureViews, HeadTrainer, inverse_frequency_weights

#: Settings that change the cached features (and the splits they come from).
FEATURE_KEYS = ("source", "generated_fields", "weedsgalore_dir", "image_size", "tile_grid", "min_plant_fraction",
                "val_fraction", "test_fraction", "folds", "backbone", "backbone_checkpoint", "views")
SAMPLE_IMAGES = 12  # training samples kept (at most 96 px) for the report's image grid


def run_id(run: ScenarioRun) -> str:
    return run.label.replace(" ", "-") + f"-s{run.seed}"


def run_specs(s: Settings) -> list[RunSpec]:
    """The setup record, then every scenario run of :func:`planned_runs`."""
    arch_ranks = sorted({s["lora_rank"], *s["rank_sweep"], SEED["rank"]})
    specs = [RunSpec(f"setup-{s['arm']}-r{s['lora_rank']}", {"arm": s["arm"], "rank": s["lora_rank"], "arch_ranks": arch_ranks}, "setup")]
    return specs + [RunSpec(run_id(r), r.args(), "run") for r in planned_runs(s)]


def fold_of(s: Settings, seed: int) -> int:
    """The test fold of a run with ``seed`` (0 when ``folds`` is 0: the fixed split)."""
    return seed % s["folds"] if s["folds"] else 0


def execute(s: Settings, spec: RunSpec, progress: bool = True) -> RunRecord:
    fold = 0 if spec.kind == "setup" else fold_of(s, spec.args["seed"])
    samples = load_samples(s)
    splits = split_samples(s, samples, fold)
    backbone = make_backbone(s, splits)
    feats = cached_features(s, backbone, splits, fold, progress)
    if spec.kind == "setup":
        return _setup_record(s, spec, samples, splits, backbone, feats)
    result = run(s, feats, backbone, ScenarioRun(**spec.args), progress=False)
    tables = {k: v for k, v in result.items() if isinstance(v, pd.DataFrame)}
    scalars = {k: v for k, v in result.items() if k not in tables} | {"fold": fold}
    return RunRecord(EXPERIMENT, spec.run_id, spec.args, scalars, tables)


def _setup_record(s: Settings, spec: RunSpec, samples, splits, backbone: Backbone, feats) -> RunRecord:
    a = spec.args
    shown = splits.train.subset(list(range(min(SAMPLE_IMAGES, len(splits.train)))))
    images = shown.images
    if images.shape[-1] > 96:
        images = torch.nn.functional.interpolate(images.float(), size=(96, 96), mode="area").round().to(torch.uint8)
    scalars = {"backbone": backbone.name, "weights": backbone.weights, "dropout": backbone.dropout,
               "head_in_features": backbone.head.in_features, "head_out_features": backbone.head.out_features,
               "full_model_params": count_parameters(backbone.full_model), "full_model_bytes": full_model_bytes(backbone),
               "sample_labels": [shown.class_names[int(y)] for y in shown.labels]}
    memory = farmer_memory(s, backbone, splits, a["arm"], a["rank"])
    folds = range(s["folds"]) if s["folds"] else [0]
    split_tables = pd.concat([split_table(split_samples(s, samples, f)).assign(fold=f) for f in folds], ignore_index=True)
    tables = {"splits": split_tables, "cache": cache_table(feats), "farmer_memory": pd.DataFrame([memory]),
              "step_cost": pd.DataFrame([step_cost(s, backbone, splits, feats, a["arm"], a["rank"])]),
              "seed_architecture": seed_architecture(a["arch_ranks"])}
    return RunRecord(EXPERIMENT, spec.run_id, spec.args, scalars, tables, {"samples": images.numpy()})


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


def load_samples(s: Settings) -> weeds.FieldSamples | Splits:
    """Every sample of the profile's source (WeedsGalore: its own three splits, already apart)."""
    p = s.params
    if p["source"] == "generated":
        return weeds.load_generated(p["generated_fields"], p["image_size"], seed=0, min_plant_fraction=p["min_plant_fraction"])
    if p["source"] == "cwfid":
        return weeds.load_cwfid(s.data_root / "cwfid", p["image_size"], tuple(p["tile_grid"]), p["min_plant_fraction"])
    root = s.data_root / p["weedsgalore_dir"]
    load_split = lambda name: weeds.load_weedsgalore(root, name, p["image_size"], weeds.SEED_CLASS_MAP, p["min_plant_fraction"])  # noqa: E731
    return Splits(load_split("train"), load_split("val"), load_split("test"))


def field_folds(groups: np.ndarray, folds: int) -> list[list]:
    """``folds`` disjoint sets of fields covering every field once (shuffled with a fixed seed, sizes differ by at most 1)."""
    fields = sorted(set(groups.tolist()))
    if folds > len(fields):
        raise ValueError(f"folds = {folds} is more than the {len(fields)} fields; use at most {len(fields)}")
    order = [fields[i] for i in np.random.default_rng(0).permutation(len(fields))]
    return [sorted(order[i::folds]) for i in range(folds)]


def split_samples(s: Settings, samples: weeds.FieldSamples | Splits, fold: int = 0) -> Splits:
    """Train / validation / test samples; whole fields go to one split (a field's tiles never straddle two). With
    ``folds`` k >= 2, fold ``fold`` of the fields is the test set; otherwise the source's fixed test split (CWFID: the
    authors' test ids; generated: ``test_fraction`` of the fields). Validation is ``val_fraction`` of the rest."""
    p = s.params
    if isinstance(samples, Splits):
        return samples
    if p["folds"]:
        test = field_folds(samples.groups, p["folds"])[fold]
        rest = np.asarray(sorted(set(samples.groups.tolist()) - set(test)))
    elif p["source"] == "cwfid":
        split = weeds.cwfid_split(s.data_root / "cwfid")
        test, rest = split["test"], np.asarray(split["train"])
    else:
        rest, test = _field_split(samples.groups, p["test_fraction"], seed=0)
        rest = np.asarray(rest)
    train, val = _field_split(rest, p["val_fraction"], seed=1)
    return Splits(samples.in_groups(train), samples.in_groups(val), samples.in_groups(test))


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
    checkpoint = require_trusted_file(s.data_root, s["backbone_checkpoint"]) if s["backbone_checkpoint"] else None
    backbone = build_backbone(s["backbone"], len(splits.train.class_names), seed=0, checkpoint=checkpoint)
    if backbone.weights.startswith("random"):
        calibrate_batchnorm(backbone, splits.train.images)
        backbone.weights += ", BatchNorm statistics from the training images"
    return backbone


def feature_digest(s: Settings) -> str:
    """Digest of the settings that change the cached features (the data files are checked on loading)."""
    payload = {"profile": s.profile, **{k: s[k] for k in FEATURE_KEYS}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_features(s: Settings, backbone: Backbone, splits: Splits, fold: int = 0, progress: bool = True) -> Features:
    """:func:`cache_features`, computed once per feature settings and test fold and kept in the cache folder (tensors,
    loaded with ``weights_only=True``); its ``cache`` stats are those of the build, so the report shows what building
    cost."""
    path = s.cache_dir / "features" / EXPERIMENT / (f"{feature_digest(s)}-fold{fold}.pt" if s["folds"] else f"{feature_digest(s)}.pt")
    if path.is_file():
        try:
            d = torch.load(path, weights_only=True)
            return Features(d["train"], d["train_labels"], np.asarray(d["train_groups"]), FeatureSet(d["val"], d["val_labels"]),
                            FeatureSet(d["test"], d["test_labels"]), d["num_classes"], [CacheStats(**c) for c in d["cache"]])
        except (OSError, RuntimeError, KeyError, TypeError) as err:
            print(f"the feature cache {path} cannot be read ({err}); building it again")
    feats = cache_features(s, backbone, splits, progress)
    atomic_torch_save({"train": feats.train, "train_labels": feats.train_labels, "train_groups": feats.train_groups.tolist(),
                       "val": feats.val.features, "val_labels": feats.val.labels, "test": feats.test.features,
                       "test_labels": feats.test.labels, "num_classes": feats.num_classes,
                       "cache": [asdict(c) for c in feats.cache]}, path)
    return feats


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


def simulated_farmers(feats: Features, num_farmers: int, samples_per_farmer: int, seed: int) -> list[Client]:
    """``num_farmers`` simulated farmers for scale studies (more farmers than the data has fields): each holds
    ``samples_per_farmer`` training samples (every cached view of each) drawn without replacement from the training
    split with ``(seed, farmer)``; different farmers may share a sample. Each farmer's features are its own copy, so
    memory for data grows as ``num_farmers x samples_per_farmer x views x feature bytes``."""
    n = len(feats.train_labels)
    if num_farmers < 1:
        raise ValueError(f"num_farmers = {num_farmers} is not allowed; it must be >= 1")
    if not 1 <= samples_per_farmer <= n:
        raise ValueError(f"samples_per_farmer = {samples_per_farmer} is not allowed; it must be in [1, {n}] (the training samples)")
    clients = []
    for f in range(num_farmers):
        idx = torch.as_tensor(np.random.default_rng([seed, f, 29]).choice(n, samples_per_farmer, replace=False))
        clients.append(Client(f"farmer_{f}", FeatureViews(feats.train[idx].clone(), feats.train_labels[idx].clone())))
    return clients


def network_model(s: Settings, spec: ScenarioRun) -> NetworkModel:
    return NetworkModel(s["bandwidth_mbps"], s["latency_s"], s["dropout_prob"] if spec.heterogeneous else 0.0, seed=spec.seed)


def run(s: Settings, feats: Features, backbone: Backbone, spec: ScenarioRun, progress: bool = True) -> dict[str, Any]:
    """One scenario run: adapted head, farmers, round loop on cached features, then the final model on the test set."""
    farmers, rounds, local_steps = schedule(s, spec.scenario)
    head = adapted_head(base_head(backbone.head, backbone.dropout), spec.arm, spec.rank, s["lora_alpha"], s["lora_dropout"],
                        s["target_module"], s["compute_dtype"], s["double_quant"], seed=spec.seed)
    clients = make_farmers(feats, farmers, spec.seed, local_steps, s["step_fractions"] if spec.heterogeneous else None)
    trainer = HeadTrainer(local_steps, rounds, s["batch_size"], s["learning_rate"],
                          inverse_frequency_weights(feats.train_labels, feats.num_classes), s["weight_decay"],
                          device=run_device(s.params))
    if spec.scenario == "diloco_nesterov":
        strategy = build_strategy("diloco", outer_lr=s["diloco_outer_lr"], momentum=s["diloco_momentum"], nesterov=True)
    else:
        strategy = build_strategy("fedavg")
    net = network_model(s, spec)
    config = RoundConfig(num_rounds=rounds, seed=spec.seed, exchange="trainable", transport=spec.transport, evaluate_clients=False)
    ran = run_rounds(spec.engine, head, clients, strategy, trainer, config, server_test=feats.val,
                     network=net if spec.heterogeneous else None, checkpoint_path=checkpoints.path("rounds"),
                     progress=progress, description=spec.label, deployment_clientapps=spec.clientapps)
    result, deployment = ran.result, ran.deployment
    head.load_state_dict(result.final_state, strict=False)
    test = trainer.evaluate(head, feats.test)
    with torch.no_grad():
        predicted = head(feats.test.features.to(trainer.torch_device)).float().argmax(1).cpu()
    simulated = net.round_seconds(result.client_history, result.ledger.frame(), [c.cid for c in clients])
    history = result.history.assign(**spec.args(), label=spec.label)
    history = history.merge(simulated[["round", "simulated_s"]], on="round", how="left")
    history["farmer_steps"] = history["round"] * local_steps
    ledger = result.ledger.frame()
    trainable = [p for p in head.parameters() if p.requires_grad]
    measured: dict[str, Any] = {}
    if deployment is not None:
        # the network model's prediction without latency, which tbf cannot shape: what the shaped links can confirm
        unshapeable = NetworkModel(net.bandwidth_mbps, 0.0, net.dropout_prob, seed=net.seed)
        bare = unshapeable.round_seconds(result.client_history, ledger, [c.cid for c in clients])
        history = history.merge(bare[["round", "simulated_s"]].rename(columns={"simulated_s": "simulated_no_latency_s"}),
                                on="round", how="left")
        measured = {"shaped": deployment.shaped, "unshaped_reason": deployment.unshaped_reason or "",
                    "link_rates_mbps": deployment.rates_mbps, "startup_s": deployment.startup_s,
                    "message_bytes": deployment.messages, "link_bytes": deployment.link_bytes, "tls": deployment.tls,
                    "listening": deployment.listening, "superexec_poll_s": deployment.superexec_poll_s,
                    "cpu_seconds": deployment.cpu_seconds, "machine_cores": len(os.sched_getaffinity(0)),
                    "client_timing": client_timing(result.client_history)}
    return {**spec.args(), "label": spec.label, "farmers": farmers, "rounds": rounds, "local_steps": local_steps, **measured,
            "history": history, "test_predictions": pd.DataFrame({"label": feats.test.labels.numpy(), "predicted": predicted.numpy()}),
            "test_loss": test.loss, "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
            "adapter_params": sum(p.numel() for p in trainable), "effective_update_rank": effective_update_rank(head),
            "payload_bytes": int(ledger.loc[ledger["direction"] == "up", "bytes"].iloc[0]) if (ledger["direction"] == "up").any() else 0,
            "messages": len(ledger), "total_bytes": int(ledger["bytes"].sum()), "syncs": rounds,
            "train_steps": int(sum(c.train.local_steps or local_steps for c in clients) * rounds),
            "wall_s": result.wall_s, "train_s": float(result.history["train_s"].sum()),
            "simulated_s": float(simulated["simulated_s"].sum()) if len(simulated) else 0.0,
            "dropped": int((~result.client_history.get("reported", pd.Series(dtype=bool)).astype(bool)).sum())}


def cache_table(feats: Features) -> pd.DataFrame:
    """Images, views and seconds of the feature cache per split."""
    return pd.DataFrame([{"set": name, "images": c.images, "views": c.views, "seconds": c.seconds,
                          "ms_per_view": 1000 * c.seconds_per_image}
                         for name, c in zip(("train", "val", "test"), feats.cache, strict=True)])


# --- memory and speed ------------------------------------------------------------------------------------------

def full_model_bytes(backbone: Backbone, transport: str = "fp32") -> int:
    """Bytes of one full-model message: the whole network's state (with the new head), serialized."""
    return len(serialize_state(backbone.full_model.state_dict(), transport))


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


def farmer_memory(s: Settings, backbone: Backbone, splits: Splits, arm: str, rank: int) -> dict[str, Any]:
    """Peak memory of one farmer's training step without the cache (augment, backbone forward without gradients,
    head forward and backward), and the backbone's weight bytes a device would also hold. Measured on the CPU, where
    the backbone and the images are (the process's resident memory, ``memory_kind`` says so), whatever the run's
    device: a farmer's step on a GPU would be another measurement."""
    device = torch.device("cpu")
    head = adapted_head(base_head(backbone.head, backbone.dropout), arm, rank, s["lora_alpha"], s["lora_dropout"],
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


def step_cost(s: Settings, backbone: Backbone, splits: Splits, feats: Features, arm: str, rank: int, steps: int = 3) -> dict[str, float]:
    """Seconds per training step with and without the feature cache (median of ``steps`` after one warm step)."""
    head = adapted_head(base_head(backbone.head, backbone.dropout), arm, rank, s["lora_alpha"], s["lora_dropout"],
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


