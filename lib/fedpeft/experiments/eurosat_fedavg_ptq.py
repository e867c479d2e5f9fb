"""EuroSAT: Flower-style FedAvg of the report's CNN, then FP32 / FP16 / INT8 post-training quantization.

Seed: ``../shared/seeds/003_4ffed47dd2e2f732.txt``. Notebook: ``notebooks/04_eurosat_fedavg_ptq.ipynb``.
The notebook composes the small functions below; each is a plain function of its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedpeft.core.config import Settings, Spec, load_settings
from fedpeft.core.device import resolve_precision
from fedpeft.core.profiling import measure
from fedpeft.data import eurosat as fdata
from fedpeft.federated.ledger import MIB, cost
from fedpeft.federated.loop import Client, FederatedResult, RoundConfig, run_federated
from fedpeft.federated.partition import SCHEMES, label_skew, partition
from fedpeft.federated.strategies import build_strategy
from fedpeft.models.cnn import EuroSATCNN
from fedpeft.models.counting import count_parameters
from fedpeft.quantization.ptq import PTQ_METHODS, quantize
from fedpeft.reporting.outputs import ClaimsTable
from fedpeft.training.image import ClassifierTrainer

EXPERIMENT = "eurosat_fedavg_ptq"
TITLE = "EuroSAT FedAvg + post-training quantization"
SEED_REPORT = "003_4ffed47dd2e2f732.txt"
NOTEBOOK = "notebooks/04_eurosat_fedavg_ptq.ipynb"
LIMITATIONS = """\
- The per-client 80/20 split and the server's test set follow the report. The server's test set is a stratified
  20 % of all images in `local`, and the hub's `test` split in `paper`. It is never used for training or model
  selection.
- FP16 and INT8 are evaluated on the CPU. FP16 timing on a CPU means little; accuracy and size are what count here.
- `int8_static` is evaluated with the reference pt2e graph (quantize/dequantize around float kernels), which
  reproduces int8 numerics. Its speed is not measured.
- In the `embedded` profile the images are generated, so the report's accuracy claims are not tested there."""
ENGINES = ("inprocess", "flower")

SCHEMA: dict[str, Spec] = {
    "source": Spec(str, choices=("generated", "eurosat_zip", "hub"), doc="where the images come from"),
    "hub_dataset": Spec(str, doc="hub name (or save_to_disk folder) for source=hub"),
    "generated_images_per_class": Spec(int, low=4, doc="images per class for source=generated"),
    "verify_checksum": Spec(bool, doc="check the zip against the data root's MANIFEST.sha256"),
    "global_test_fraction": Spec(float, low=0.05, high=0.5, doc="share held out as the server's test set (not for hub)"),
    "num_clients": Spec(int, low=1, high=10_000),
    "client_test_fraction": Spec(float, low=0.0, high=0.9, doc="each client's local test split"),
    "partition": Spec(str, choices=SCHEMES, doc="the main partition scheme (the seed: iid)"),
    "seeds": Spec(list, item=int, unique=True, min_items=1, doc="seeds of the main runs"),
    "compare_partitions": Spec(list, item=str, choices=SCHEMES, doc="extra partition schemes"),
    "compare_seeds": Spec(list, item=int, unique=True, doc="seeds of the extra partition runs"),
    "dirichlet_alpha": Spec(float, low=1e-3, doc="Dirichlet concentration; smaller = more label skew"),
    "num_rounds": Spec(int, low=1, high=10_000),
    "local_epochs": Spec(int, low=1, high=1000),
    "batch_size": Spec(int, low=1, high=65_536),
    "learning_rate": Spec(float, low=1e-8, high=10.0),
    "fraction_train": Spec(float, low=0.01, high=1.0),
    "time_limit_s": Spec(float, low=1.0, nullable=True, doc="stop between rounds after this many seconds"),
    "train_precision": Spec(str, choices=("auto", "fp32", "bf16"), doc="auto: bf16 only on CPUs with native bf16"),
    "channels_last": Spec(bool),
    "eval_batch_size": Spec(int, low=1, high=65_536),
    "ptq_methods": Spec(list, item=str, choices=PTQ_METHODS, min_items=1),
    "calibration_images": Spec(int, low=1, doc="training images that calibrate int8_static"),
    "price_usd_per_mib": Spec(float, low=0.0, doc="link price; the seed's satellite link: $5 per MB (= MiB)"),
    "extra_rounds": Spec(int, low=0, doc="an extra run with this many rounds (0: none), to show what more rounds give"),
    "engine": Spec(str, choices=ENGINES),
    "torch_threads": Spec(int, low=0, doc="0: leave torch's default"),
}

#: The seed's reported figures (``003_4ffed47dd2e2f732.txt``), quoted, not measured.
SEED = {
    "params": 434_602,
    "accuracy": {"fp32": 85.20, "fp16": 85.18, "int8_dynamic": 84.95},
    "size_mb": {"fp32": 1.66, "fp16": 0.83, "int8_dynamic": 0.52},
    "compression": {"fp16": 2.00, "int8_dynamic": 3.19},
    "round_traffic_mb": 33.2,
    "cost_10_rounds_usd": 1660.0,
    "int8_drop_pct": -0.25,
}


def load(profile: str, overrides: dict[str, Any] | None = None) -> Settings:
    return load_settings(profile, EXPERIMENT, SCHEMA, overrides)


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
    )


@dataclass
class Run:
    partition: str
    seed: int
    num_rounds: int
    result: FederatedResult
    model: torch.nn.Module
    label_skew: float
    train_images: int  # image passes of local training (epochs counted)
    peak_memory_mib: float
    memory_kind: str

    def history(self) -> pd.DataFrame:
        return self.result.history.assign(partition=self.partition, seed=self.seed, num_rounds=self.num_rounds)


def run_one(s: Settings, pool, server_test, scheme: str, seed: int, num_rounds: int | None = None, progress: bool = True) -> Run:
    """One federated training run from a seeded initial model; resumes from its checkpoint if interrupted."""
    p = s.params
    rounds = num_rounds or p["num_rounds"]
    if p["torch_threads"]:
        torch.set_num_threads(p["torch_threads"])
    clients = make_clients(pool, scheme, s, seed)
    trainer = make_trainer(s)
    torch.manual_seed(seed)
    model = trainer.prepare(EuroSATCNN(num_classes=len(pool.class_names)))
    config = RoundConfig(
        num_rounds=rounds, seed=seed, fraction_train=p["fraction_train"], time_limit_s=p["time_limit_s"]
    )
    strategy = build_strategy("fedavg")
    ckpt = s.cache_dir / "checkpoints" / s.profile / EXPERIMENT / f"{scheme}_seed{seed}_r{rounds}.pt"
    with measure() as m:
        if p["engine"] == "flower":
            from fedpeft.federated.flower_engine import run_flower

            result = run_flower(model, clients, strategy, trainer, config, server_test=server_test)
        else:
            result = run_federated(
                model, clients, strategy, trainer, config, server_test=server_test, checkpoint_path=ckpt,
                progress=progress, description=f"{scheme} seed {seed}",
            )
    if not result.stopped_by_time_limit:
        ckpt.unlink(missing_ok=True)  # finished: the next run starts afresh; a time-limited one resumes from it
    model.load_state_dict(result.final_state)
    parts_skew = _skew(clients)
    rounds_done = result.rounds_completed
    train_images = sum(len(c.train) for c in clients) * p["local_epochs"] * rounds_done
    return Run(scheme, seed, rounds, result, model, parts_skew, train_images, m.peak_memory_mib, m.memory_kind)


def _skew(clients: list[Client]) -> float:
    """Label skew of the clients' training splits (mean total-variation distance to the pooled distribution)."""
    labels = np.concatenate([c.train.labels.numpy() for c in clients])
    offsets = np.cumsum([0] + [len(c.train) for c in clients])
    parts = [np.arange(offsets[i], offsets[i + 1]) for i in range(len(clients))]
    return label_skew(parts, labels)


def run_plan(s: Settings) -> list[tuple[str, int, int]]:
    """``(partition, seed, rounds)`` of every run: the main partition over ``seeds``, each of
    ``compare_partitions`` over ``compare_seeds``, and the optional longer run (``extra_rounds``)."""
    p = s.params
    plan = [(p["partition"], seed, p["num_rounds"]) for seed in p["seeds"]]
    plan += [(scheme, seed, p["num_rounds"]) for scheme in p["compare_partitions"] for seed in p["compare_seeds"]]
    if p["extra_rounds"]:
        plan.append((p["partition"], p["seeds"][0], p["extra_rounds"]))
    return plan


def describe(s: Settings, pool, server_test) -> str:
    """What runs, against the seed's setting, as markdown (data, model, clients, schedule, seeds)."""
    p = s.params
    trainer = make_trainer(s)
    return (f"**Data** ({p['source']}): {len(pool):,} images shared by {p['num_clients']} clients "
            f"({p['partition']} partition), {len(server_test):,} held out as the server's test set; "
            f"{len(pool.class_names)} classes. **Model**: the report's CNN, {model_parameters(pool):,} parameters. "
            f"**Schedule**: {p['num_rounds']} rounds x {p['local_epochs']} local epochs, {trainer.optimizer} lr "
            f"{p['learning_rate']:g}, batch {p['batch_size']}, {trainer.precision} training. **Seeds**: {list(p['seeds'])} "
            f"(the seed report: one run, 10 rounds x 2 epochs, Adam 1e-3, batch 32, 10 IID clients).")


def model_parameters(pool) -> int:
    """Parameters of the report's CNN for the pool's classes."""
    return count_parameters(EuroSATCNN(num_classes=len(pool.class_names)))


def speed_table(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[["partition", "seed", "rounds", "wall_s", "train_s", "eval_s", "train_images_per_s", "loop_overhead",
                    "peak_memory_mib", "memory_kind"]]


def histories(runs: list[Run]) -> pd.DataFrame:
    """Every run's per-round history, labelled with its partition, seed and planned rounds."""
    return pd.concat([r.history() for r in runs], ignore_index=True)


def run_summary(runs: list[Run]) -> pd.DataFrame:
    """One row per run: final accuracy, time, throughput and the loop's overhead."""
    rows = []
    for r in runs:
        h = r.result.history
        last = h.iloc[-1]
        train_s = float(h["train_s"].sum())
        rows.append(
            {
                "partition": r.partition,
                "seed": r.seed,
                "rounds": r.num_rounds,  # planned
                "rounds_completed": int(last["round"]),
                "label_skew_tv": r.label_skew,
                "server_accuracy": float(last["server_accuracy"]),
                "client_accuracy": float(last.get("client_accuracy", np.nan)),
                "wall_s": r.result.wall_s,
                "train_s": train_s,
                "eval_s": float(h["eval_s"].sum()),
                "train_images_per_s": r.train_images / train_s if train_s else np.nan,
                "loop_overhead": r.result.loop_overhead(),
                "stopped_by_time_limit": r.result.stopped_by_time_limit,
                "peak_memory_mib": r.peak_memory_mib,
                "memory_kind": r.memory_kind,
            }
        )
    return pd.DataFrame(rows)


def accuracy_by_partition(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation of the final server accuracy (percent) per partition."""
    g = summary.groupby(["partition", "rounds"], sort=False)
    out = g["server_accuracy"].agg(accuracy_mean="mean", accuracy_std="std", runs="count").reset_index()
    out["rounds_completed"] = g["rounds_completed"].min().to_numpy()  # below rounds: stopped by time_limit_s
    out[["accuracy_mean", "accuracy_std"]] *= 100
    return out.fillna({"accuracy_std": 0.0})


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
        rows.append(
            {
                "method": method,
                "accuracy_pct": 100 * stats["accuracy"],
                "size_bytes": q.size_bytes(),
                "int8_weight_share": q.int8_fraction(),
                "notes": "; ".join(q.notes),
            }
        )
    df = pd.DataFrame(rows)
    base = df.loc[df["method"] == "fp32"].iloc[0] if (df["method"] == "fp32").any() else df.iloc[0]
    df["drop_pct_points"] = df["accuracy_pct"] - base["accuracy_pct"]
    df["size_mib"] = df["size_bytes"] / MIB
    df["compression"] = base["size_bytes"] / df["size_bytes"]
    return df[["method", "accuracy_pct", "drop_pct_points", "size_bytes", "size_mib", "compression", "int8_weight_share", "notes"]]


def communication_table(ptq: pd.DataFrame, run: Run, s: Settings) -> pd.DataFrame:
    """Traffic per round and in total if the model travelled at each precision, and its cost.

    The FP32 row's per-message bytes are the ledger's measured safetensors messages of ``run``; the other rows use
    the measured saved size of the quantized model as the message (what a client would send), both directions.
    """
    p = s.params
    ledger = run.result.ledger.frame()
    rounds = run.result.rounds_completed
    clients_per_round = int(run.result.history.loc[run.result.history["round"] > 0, "num_clients"].mean())
    rows = []
    for _, r in ptq.iterrows():
        if r["method"] == "fp32" and not ledger.empty:
            per_round = ledger.groupby("round")["bytes"].sum().mean()
            message = ledger["bytes"].mean()
            source = "ledger (safetensors messages)"
        else:
            message = r["size_bytes"]
            per_round = 2 * clients_per_round * message
            source = "saved model size x 2 directions x clients"
        total = per_round * rounds
        rows.append(
            {
                "precision": r["method"],
                "message_bytes": int(message),
                "round_mib": per_round / MIB,
                "total_mib": total / MIB,
                "rounds": rounds,
                "cost_usd": cost(total, p["price_usd_per_mib"]),
                "source": source,
            }
        )
    df = pd.DataFrame(rows)
    df["saving_vs_fp32_pct"] = 100 * (1 - df["total_mib"] / df.loc[0, "total_mib"])
    return df


def build_claims(s: Settings, acc: pd.DataFrame, ptq: pd.DataFrame, comm: pd.DataFrame, params: int) -> ClaimsTable:
    """The seed's claims beside the study's measurements (accuracy claims need the real data to be tested)."""
    real = s.params["source"] != "generated"
    claims = ClaimsTable(profile=s.profile)
    claims.add("The CNN has 434,602 parameters", f"{SEED['params']:,}", f"{params:,}", params == SEED["params"])
    main = acc.loc[(acc["partition"] == s.params["partition"]) & (acc["rounds"] == s.params["num_rounds"])].iloc[0]
    study_acc = f"{main['accuracy_mean']:.2f} ± {main['accuracy_std']:.2f} % ({int(main['runs'])} seeds)"
    holds = (abs(main["accuracy_mean"] - SEED["accuracy"]["fp32"]) <= max(2 * main["accuracy_std"], 1.0)) if real else None
    claims.add(
        "FP32 FedAvg test accuracy after 10 rounds (single run)", "85.20 %", study_acc, holds,
        "held-out global test set" + ("" if real else "; generated images, so the figure is not comparable"),
    )
    by = ptq.set_index("method")
    for method, label in (("fp16", "FP16"), ("int8_dynamic", "INT8 (dynamic)")):
        if method in by.index:
            seed_drop = SEED["accuracy"][method] - SEED["accuracy"]["fp32"]
            drop = by.loc[method, "drop_pct_points"]
            claims.add(
                f"{label} accuracy drop vs FP32", f"{seed_drop:+.2f} pts", f"{drop:+.2f} pts",
                abs(drop) <= 0.5 if real else None, f"one trained model (seed {s.params['seeds'][0]}), global test set",
            )
    for method, label in (("fp32", "FP32"), ("fp16", "FP16"), ("int8_dynamic", "INT8 (dynamic)")):
        if method in by.index:
            mib = by.loc[method, "size_mib"]
            claims.add(f"{label} saved model size", f"{SEED['size_mb'][method]:.2f} MB", f"{mib:.2f} MiB",
                       abs(mib - SEED["size_mb"][method]) < 0.01)
    if "int8_dynamic" in by.index:
        share = by.loc["int8_dynamic", "int8_weight_share"]
        claims.add("INT8 model: 'Quantize these layers' {Linear, Conv2d}", "all weights int8", f"{100 * share:.1f} % of weights int8",
                   share > 0.99, "quantize_dynamic has no Conv2d kernel: convolutions stay fp32")
        c = by.loc["int8_dynamic", "compression"]
        claims.add("INT8 compression ratio", "3.19x", f"{c:.2f}x", abs(c - 3.19) < 0.05)
    if "int8_static" in by.index:
        claims.add("Full INT8 (convolutions too) compression", "0.41 MB, 4x (theoretical)", f"{by.loc['int8_static', 'size_mib']:.2f} MiB, {by.loc['int8_static', 'compression']:.2f}x",
                   None, "pt2e static int8; measured, not claimed by the seed")
    fp32 = comm.loc[comm["precision"] == "fp32"].iloc[0]
    n = s.params["num_clients"] * s.params["fraction_train"]
    claims.add(f"FP32 traffic per round ({n:g} clients, both directions)", "33.2 MB", f"{fp32['round_mib']:.2f} MiB",
               abs(fp32["round_mib"] - SEED["round_traffic_mb"]) < 0.5 if n == 10 else None, "measured message bytes")
    return claims


def headline(s: Settings, acc: pd.DataFrame, ptq: pd.DataFrame, comm: pd.DataFrame) -> pd.DataFrame:
    """The experiment's one-table summary, for the study's top-level report."""
    main = acc.loc[(acc["partition"] == s.params["partition"]) & (acc["rounds"] == s.params["num_rounds"])].iloc[0]
    merged = ptq.merge(comm[["precision", "total_mib", "cost_usd"]], left_on="method", right_on="precision")
    merged.insert(0, "fp32_accuracy_seeds", f"{main['accuracy_mean']:.2f} ± {main['accuracy_std']:.2f}")
    return merged[["method", "fp32_accuracy_seeds", "accuracy_pct", "size_mib", "compression", "total_mib", "cost_usd"]]


def finding(s: Settings, acc: pd.DataFrame, ptq: pd.DataFrame, comm: pd.DataFrame) -> str:
    """The notebook's conclusion in a few sentences, from the measured tables."""
    p = s.params
    main_acc = acc[(acc["partition"] == p["partition"]) & (acc["rounds"] == p["num_rounds"])].iloc[0]
    by = ptq.set_index("method")
    fp32_comm = comm.set_index("precision").loc["fp32"]
    text = (f"Over {int(main_acc['runs'])} seeds, FedAvg with the report's settings reaches "
            f"**{main_acc['accuracy_mean']:.2f} ± {main_acc['accuracy_std']:.2f} %** test accuracy after {p['num_rounds']} "
            f"rounds ({p['source']} data, {make_trainer(s).precision} training). ")
    if "fp16" in by.index:
        text += f"FP16 changes accuracy by {by.loc['fp16', 'drop_pct_points']:+.2f} points at half the size. "
    if "int8_dynamic" in by.index:
        text += (f"The report's INT8 (`quantize_dynamic`) stores only {100 * by.loc['int8_dynamic', 'int8_weight_share']:.0f} % "
                 f"of the weights in int8, because its convolutions stay fp32, and compresses "
                 f"{by.loc['int8_dynamic', 'compression']:.2f}x. ")
    if "int8_static" in by.index:
        text += (f"Static int8 with quantized convolutions compresses {by.loc['int8_static', 'compression']:.2f}x "
                 f"at {by.loc['int8_static', 'drop_pct_points']:+.2f} points. ")
    text += (f"FP32 traffic is {fp32_comm['round_mib']:.2f} MiB per round; all {int(fp32_comm['rounds'])} rounds cost "
             f"${fp32_comm['cost_usd']:,.0f} at ${p['price_usd_per_mib']:g}/MiB.")
    if (acc["rounds_completed"] < acc["rounds"]).any():
        text += (f" **Some runs stopped at the time limit ({p['time_limit_s']} s) before their last round**, so these numbers "
                 "are not final; their checkpoints are kept, and running the notebook again continues them.")
    return text


def metrics(summary: pd.DataFrame, acc: pd.DataFrame, ptq: pd.DataFrame, comm: pd.DataFrame, s: Settings) -> dict[str, float]:
    """Flat numbers for ``dvc metrics``."""
    out: dict[str, float] = {}
    for _, r in acc.iterrows():
        key = f"{r['partition']}_r{int(r['rounds'])}"
        out[f"{key}_accuracy_mean_pct"] = round(float(r["accuracy_mean"]), 4)
        out[f"{key}_accuracy_std_pct"] = round(float(r["accuracy_std"]), 4)
    for _, r in ptq.iterrows():
        out[f"ptq_{r['method']}_accuracy_pct"] = round(float(r["accuracy_pct"]), 4)
        out[f"ptq_{r['method']}_size_bytes"] = int(r["size_bytes"])
    for _, r in comm.iterrows():
        out[f"traffic_{r['precision']}_total_mib"] = round(float(r["total_mib"]), 4)
    main = summary[summary["partition"] == s.params["partition"]]
    out["train_images_per_s_mean"] = round(float(main["train_images_per_s"].mean()), 1)
    out["loop_overhead_mean"] = round(float(main["loop_overhead"].mean()), 4)
    out["run_wall_s_mean"] = round(float(main["wall_s"].mean()), 1)
    return out
