"""EuroSAT FedAvg + PTQ: the planned runs, each one DVC stage writing one result record.

A run trains the report's CNN with FedAvg from a seeded initial model (resuming from the round loop's checkpoint
if it was killed) and records its per-round history, its communication ledger, its timing, the chance (majority-class)
accuracy of the server's test set and the bytes of a training checkpoint (model + Adam state). Every main run (each
seed of the main partition at the main number of rounds) also quantizes its final model with every ``ptq_methods``
entry and records accuracy and saved bytes, so that each quantization claim is judged over every seed and the report
never needs a trained model. The quantization-aware arm (``qat_rounds``) repeats each main seed's run with its last
rounds on the int8 fake-quantized model and records its converted int8 model's accuracy and size (``qat`` table).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedpeft.core import checkpoints
from fedpeft.core.baselines import majority_baseline
from fedpeft.core.config import Settings
from fedpeft.core.device import resolve_precision, run_device
from fedpeft.core.profiling import measure
from fedpeft.core.records import RunRecord, RunSpec
from fedpeft.data import eurosat as fdata
from fedpeft.experiments.eurosat_fedavg_ptq.settings import EXPERIMENT
from fedpeft.federated.continuation import continue_rounds
from fedpeft.federated.engines import run_rounds
from fedpeft.federated.ledger import MIB
from fedpeft.federated.loop import Client, RoundConfig
from fedpeft.federated.partition import label_skew, partition
from fedpeft.federated.strategies import build_strategy
from fedpeft.models.cnn import EuroSATCNN
from fedpeft.models.counting import count_parameters, training_checkpoint_bytes
from fedpeft.quantization.ptq import quantize
from fedpeft.quantization.qat import convert_qat, prepare_qat
from fedpeft.training.image import ClassifierTrainer


def run_specs(s: Settings) -> list[RunSpec]:
    """Every run: the main partition over ``seeds`` (each also measures PTQ), each of ``compare_partitions``
    over ``compare_seeds``, the optional longer run (``extra_rounds``) and the quantization-aware arm over ``seeds``
    (``qat_rounds``). Ids: ``<partition>-s<seed>-r<rounds>``, the QAT arm's ``...-qat<qat_rounds>``."""
    p = s.params
    plan = [(p["partition"], seed, p["num_rounds"], True) for seed in p["seeds"]]
    plan += [(scheme, seed, p["num_rounds"], False) for scheme in p["compare_partitions"] for seed in p["compare_seeds"]]
    if p["extra_rounds"]:
        plan.append((p["partition"], p["seeds"][0], p["extra_rounds"], False))
    specs = [RunSpec(f"{scheme}-s{seed}-r{rounds}", {"partition": scheme, "seed": seed, "rounds": rounds, "ptq": ptq})
             for scheme, seed, rounds, ptq in plan]
    if p["qat_rounds"] > p["num_rounds"]:
        raise ValueError(f"eurosat_fedavg_ptq: qat_rounds = {p['qat_rounds']} is not allowed with num_rounds = {p['num_rounds']}; "
                         "it must be between 0 (no QAT arm) and num_rounds (QAT from the start)")
    if p["qat_rounds"] and p["engine"] != "inprocess":
        raise ValueError(f"eurosat_fedavg_ptq: qat_rounds = {p['qat_rounds']} is not allowed with engine = {p['engine']!r}: the QAT "
                         "arm continues its float rounds' checkpoint, which only the in-process round loop writes; use engine "
                         "'inprocess' or qat_rounds = 0")
    if p["qat_rounds"]:
        specs += [RunSpec(f"{p['partition']}-s{seed}-r{p['num_rounds']}-qat{p['qat_rounds']}",
                          {"partition": p["partition"], "seed": seed, "rounds": p["num_rounds"], "ptq": False,
                           "qat_rounds": p["qat_rounds"]}) for seed in p["seeds"]]
    return specs


def load_data(s: Settings, progress: bool = True) -> tuple[fdata.ImageArrays, fdata.ImageArrays]:
    """(pool shared out among clients, server test set) for the profile's source."""
    p = s.params
    if p["source"] == "hub":
        return fdata.load_eurosat_hub(p["hub_dataset"])
    if p["source"] == "generated":
        images = fdata.generate_landcover_images(p["generated_images_per_class"], seed=0)
    else:
        images = fdata.load_eurosat_zip(s.data_root, s.cache_dir, verify=p["verify_checksum"], progress=progress)
    pool_idx, test_idx = fdata.stratified_split(images.labels.numpy(), p["global_test_fraction"], seed=0)
    return images.subset(pool_idx), images.subset(test_idx)


def make_clients(pool: fdata.ImageArrays, scheme: str, s: Settings, seed: int) -> list[Client]:
    """Partition ``pool`` among ``num_clients`` and split each part into local train/test (seeded)."""
    p = s.params
    options = {"alpha": p["dirichlet_alpha"]} if scheme == "dirichlet" else {}
    if scheme == "by_label":
        options = {"classes_per_client": 2}
    if scheme == "overlap":
        options = {"overlap_fraction": 0.1}
    parts = partition(pool.labels.numpy(), scheme, p["num_clients"], seed, **options)
    clients = []
    for i, idx in enumerate(parts):
        tr, te = fdata.random_split(len(idx), p["client_test_fraction"], seed=seed * 1000 + i)
        clients.append(Client(f"client_{i}", pool.subset(idx[tr]), pool.subset(idx[te])))
    return clients


def make_trainer(s: Settings) -> ClassifierTrainer:
    p = s.params
    return ClassifierTrainer(
        lr=p["learning_rate"],
        batch_size=p["batch_size"],
        epochs=p["local_epochs"],
        optimizer="adam",
        precision=resolve_precision(p["train_precision"]),
        channels_last=p["channels_last"],
        eval_batch_size=p["eval_batch_size"],
        device=run_device(p),
    )



def _skew(clients: list[Client]) -> float:
    """Label skew of the clients' training splits (mean total-variation distance to the pooled distribution)."""
    labels = np.concatenate([c.train.labels.numpy() for c in clients])
    offsets = np.cumsum([0] + [len(c.train) for c in clients])
    parts = [np.arange(offsets[i], offsets[i + 1]) for i in range(len(clients))]
    return label_skew(parts, labels)


def execute(s: Settings, spec: RunSpec, progress: bool = True) -> RunRecord:
    """One federated training run (and, for the first main run, the PTQ comparison) as a record."""
    p = s.params
    scheme, seed, rounds = spec.args["partition"], spec.args["seed"], spec.args["rounds"]
    pool, server_test = load_data(s, progress=progress)
    clients = make_clients(pool, scheme, s, seed)
    trainer = make_trainer(s)
    torch.manual_seed(seed)
    model = trainer.prepare(EuroSATCNN(num_classes=len(pool.class_names)))
    qat_rounds = spec.args.get("qat_rounds", 0)
    qat = None
    with measure(trainer.torch_device) as m:
        if qat_rounds:
            model, result = _qat_run(s, model, clients, pool, server_test, seed, rounds, qat_rounds, trainer, spec.run_id, progress)
            if not result.stopped_by_time_limit:
                qat = _qat_table(model, server_test, s)
        else:
            config = RoundConfig(num_rounds=rounds, seed=seed, fraction_train=p["fraction_train"], time_limit_s=p["time_limit_s"])
            result = run_rounds(p["engine"], model, clients, build_strategy("fedavg"), trainer, config, server_test=server_test,
                                checkpoint_path=checkpoints.path("rounds"), progress=progress, description=spec.run_id).result
    if result.stopped_by_time_limit and checkpoints.active() is not None:
        checkpoints.active().keep()  # a time-limited run resumes from its last round when it is run again
    model.load_state_dict(result.final_state)
    h = result.history
    train_s = float(h["train_s"].sum())
    train_images = sum(len(c.train) for c in clients) * p["local_epochs"] * result.rounds_completed
    scalars: dict[str, Any] = {
        "partition": scheme, "seed": seed, "rounds": rounds, "rounds_completed": result.rounds_completed,
        "label_skew_tv": _skew(clients), "server_accuracy": float(h.iloc[-1]["server_accuracy"]),
        "client_accuracy": float(h.iloc[-1].get("client_accuracy", np.nan)), "wall_s": result.wall_s, "train_s": train_s,
        "eval_s": float(h["eval_s"].sum()), "train_images_per_s": train_images / train_s if train_s else float("nan"),
        "loop_overhead": result.loop_overhead(), "stopped_by_time_limit": result.stopped_by_time_limit,
        "resumed_from_round": result.resumed_from_round, "peak_memory_mib": m.peak_memory_mib, "memory_kind": m.memory_kind,
        "pool_images": len(pool), "test_images": len(server_test), "classes": len(pool.class_names),
        "model_parameters": count_parameters(model), "precision": trainer.precision, "optimizer": trainer.optimizer,
        "clients_per_round": int(h.loc[h["round"] > 0, "num_clients"].mean()),
        "client_train_images_mean": float(np.mean([len(c.train) for c in clients])),
        "client_test_images_mean": float(np.mean([len(c.test) for c in clients])),
        "chance_accuracy": majority_baseline(server_test.labels.numpy()),
        "checkpoint_bytes": training_checkpoint_bytes(model, "adam"),
    }
    tables = {"history": h, "ledger": result.ledger.frame()}
    if spec.args["ptq"]:
        tables["ptq"] = ptq_comparison(model, server_test, pool, s)
    if qat_rounds:
        scalars.update({"qat_rounds": qat_rounds, "qat_precision": "fp32"})
    if qat is not None:
        tables["qat"] = qat
        scalars["qat_int8_accuracy"] = float(qat["accuracy_pct"].iloc[0]) / 100
    return RunRecord(EXPERIMENT, spec.run_id, spec.args, scalars, tables)


def _qat_run(s: Settings, model: torch.nn.Module, clients: list[Client], pool: fdata.ImageArrays, server_test, seed: int,
             rounds: int, qat_rounds: int, trainer: ClassifierTrainer, run_id: str, progress: bool) -> tuple[torch.nn.Module, Any]:
    """The QAT arm: rounds ``1 .. rounds - qat_rounds`` as the FP32 run's (in-process, the same trainer), then the
    last ``qat_rounds`` FedAvg rounds of the int8 fake-quantized :class:`~fedpeft.quantization.qat.QATModel` of the
    model they trained (the clients' data, optimizer and local epochs as before; fp32 and contiguous layout, which the
    fake-quantization kernels take). The QAT rounds continue the run's round numbers
    (:func:`~fedpeft.federated.continuation.continue_rounds`), so their client draws and batch orders are the FP32
    run's own for those rounds, and the history (``phase``: ``fp32`` or ``qat``) and ledger are one run's. The time
    limit covers both phases. Returns the model (the QAT model once its rounds ran) and the run's result."""
    p = s.params
    float_rounds = rounds - qat_rounds
    with tempfile.TemporaryDirectory() as scratch:  # outside the harness the continuation still needs the float rounds' checkpoint
        first = checkpoints.path("rounds") or Path(scratch) / "rounds.pt"
        second = checkpoints.path("qat-rounds") or Path(scratch) / "qat-rounds.pt"
        limit, before = p["time_limit_s"], None
        if float_rounds:
            config = RoundConfig(num_rounds=float_rounds, seed=seed, fraction_train=p["fraction_train"], time_limit_s=limit)
            before = run_rounds("inprocess", model, clients, build_strategy("fedavg"), trainer, config, server_test=server_test,
                                checkpoint_path=first, progress=progress, description=run_id).result
            if before.stopped_by_time_limit:
                return model, _with_phases(before, rounds, qat_rounds)
            model.load_state_dict(before.final_state)
            limit = None if limit is None else max(limit - before.wall_s, 1e-3)
        qat_model = prepare_qat(model, fdata.normalize_batch(pool.images[: p["batch_size"]]))
        qat_trainer = make_trainer(s)
        qat_trainer.precision, qat_trainer.channels_last = "fp32", False
        strategy = build_strategy("fedavg")
        config = RoundConfig(num_rounds=rounds, seed=seed, fraction_train=p["fraction_train"], time_limit_s=limit)
        resumed = second.is_file()
        if float_rounds:
            continue_rounds(first, second, qat_model, clients, strategy, qat_trainer, config)
        result = run_rounds("inprocess", qat_model, clients, strategy, qat_trainer, config, server_test=server_test,
                            checkpoint_path=second, progress=progress, description=f"{run_id} (QAT)").result
    qat_model.load_state_dict(result.final_state)
    if before is not None:
        result = dataclasses.replace(result, wall_s=before.wall_s + result.wall_s,
                                     resumed_from_round=result.resumed_from_round if resumed else before.resumed_from_round)
    return qat_model, _with_phases(result, rounds, qat_rounds)


def _with_phases(result, rounds: int, qat_rounds: int):
    """``result`` with a ``phase`` column in its history: ``qat`` for the last ``qat_rounds`` of ``rounds``, else
    ``fp32`` (round 0, the initial model, included)."""
    h = result.history
    phase = np.where(h["round"] > rounds - qat_rounds, "qat", "fp32")
    if qat_rounds == rounds:
        phase = np.where(h["round"] > 0, "qat", "fp32")
    return dataclasses.replace(result, history=h.assign(phase=phase))


def _qat_table(qat_model: torch.nn.Module, server_test, s: Settings) -> pd.DataFrame:
    """The QAT arm's int8 model (converted from its fake-quantized graph): accuracy on the server's test set and saved
    size, in the columns of the PTQ table."""
    trainer = make_trainer(s)
    trainer.precision, trainer.channels_last = "fp32", False
    q = convert_qat(qat_model)
    stats = trainer.evaluate(q.module, server_test)
    return pd.DataFrame([{"method": q.method, "accuracy_pct": 100 * stats["accuracy"], "size_bytes": q.size_bytes(),
                          "size_mib": q.size_bytes() / MIB, "int8_weight_share": q.int8_fraction(), "notes": "; ".join(q.notes)}])


def ptq_comparison(model: torch.nn.Module, server_test, calibration_source, s: Settings) -> pd.DataFrame:
    """Accuracy, drop vs FP32, saved size and compression of each PTQ method on the server's test set."""
    p = s.params
    trainer = make_trainer(s)
    trainer.precision, trainer.channels_last = "fp32", False  # quantized kernels: plain fp32/contiguous inputs
    n_cal = min(p["calibration_images"], len(calibration_source))
    cal = [fdata.normalize_batch(calibration_source.images[i : i + 64]) for i in range(0, n_cal, 64)]
    rows = []
    for method in p["ptq_methods"]:
        q = quantize(model, method, calibration=cal if method == "int8_static" else None)
        stats = trainer.evaluate(q.module, server_test, input_dtype=q.input_dtype)
        rows.append({"method": method, "accuracy_pct": 100 * stats["accuracy"], "size_bytes": q.size_bytes(),
                     "int8_weight_share": q.int8_fraction(), "notes": "; ".join(q.notes)})
    df = pd.DataFrame(rows)
    base = df.loc[df["method"] == "fp32"].iloc[0] if (df["method"] == "fp32").any() else df.iloc[0]
    df["drop_pct_points"] = df["accuracy_pct"] - base["accuracy_pct"]
    df["size_mib"] = df["size_bytes"] / MIB
    df["compression"] = base["size_bytes"] / df["size_bytes"]
    return df[["method", "accuracy_pct", "drop_pct_points", "size_bytes", "size_mib", "compression", "int8_weight_share", "notes"]]
