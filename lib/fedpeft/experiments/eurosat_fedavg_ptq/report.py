"""EuroSAT FedAvg + PTQ: tables, claims and the conclusion, from the runs' records.

Seed: ``../shared/seeds/003_4ffed47dd2e2f732.txt``. Notebook: ``notebooks/04_eurosat_fedavg_ptq.ipynb``. Nothing here
trains: the runs are :mod:`fedpeft.experiments.eurosat_fedavg_ptq.runs`, one DVC stage each, and :func:`collect`
reads their records (or, in a notebook outside DVC, runs what is missing or stale).
"""

from __future__ import annotations

from typing import Mapping

import pandas as pd

from fedpeft.core.config import Settings
from fedpeft.core.records import RunRecord
from fedpeft.experiments import runs as run_stages
from fedpeft.experiments.eurosat_fedavg_ptq.settings import EXPERIMENT, SEED_REPORT_FILE, load  # noqa: F401 - the notebook's API
from fedpeft.federated.ledger import MIB, cost
from fedpeft.reporting.outputs import ClaimsTable

TITLE = "EuroSAT FedAvg + post-training quantization"
SEED_REPORT = SEED_REPORT_FILE
NOTEBOOK = "notebooks/04_eurosat_fedavg_ptq.ipynb"
LIMITATIONS = """\
- The per-client 80/20 split and the server's test set follow the report. The server's test set is a stratified
  20 % of all images in `local`, and the hub's `test` split in `paper`. It is never used for training or model
  selection.
- FP16 and INT8 are evaluated on the CPU. FP16 timing on a CPU means little; accuracy and size are what count here.
- `int8_static` is evaluated with the reference pt2e graph (quantize/dequantize around float kernels), which
  reproduces int8 numerics. Its speed is not measured.
- In the `embedded` profile the images are generated, so the report's accuracy claims are not tested there."""

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


def collect(s: Settings, progress: bool = True) -> dict[str, RunRecord]:
    """Every planned run's record (see :func:`fedpeft.experiments.runs.collect`)."""
    return run_stages.collect(s, progress)


def describe(s: Settings, run: RunRecord) -> str:
    """What ran, against the seed's setting, as markdown (data, model, clients, schedule, seeds)."""
    p = s.params
    return (f"**Data** ({p['source']}): {run['pool_images']:,} images shared by {p['num_clients']} clients "
            f"({p['partition']} partition), {run['test_images']:,} held out as the server's test set; "
            f"{run['classes']} classes. **Model**: the report's CNN, {run['model_parameters']:,} parameters. "
            f"**Schedule**: {p['num_rounds']} rounds x {p['local_epochs']} local epochs, {run['optimizer']} lr "
            f"{p['learning_rate']:g}, batch {p['batch_size']}, {run['precision']} training. **Seeds**: {list(p['seeds'])} "
            f"(the seed report: one run, 10 rounds x 2 epochs, Adam 1e-3, batch 32, 10 IID clients).")


def speed_table(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[["partition", "seed", "rounds", "wall_s", "train_s", "eval_s", "train_images_per_s", "loop_overhead",
                    "peak_memory_mib", "memory_kind"]]


SUMMARY_COLUMNS = ["partition", "seed", "rounds", "rounds_completed", "label_skew_tv", "server_accuracy", "client_accuracy",
                   "wall_s", "train_s", "eval_s", "train_images_per_s", "loop_overhead", "stopped_by_time_limit",
                   "resumed_from_round", "peak_memory_mib", "memory_kind"]


def run_summary(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """One row per run (in plan order): final accuracy, time, throughput and the loop's overhead."""
    return pd.DataFrame([{"run": rid, **{k: r[k] for k in SUMMARY_COLUMNS}} for rid, r in records.items()])


def histories(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Every run's per-round history, labelled with its partition, seed and planned rounds."""
    return pd.concat([r.tables["history"].assign(partition=r["partition"], seed=r["seed"], num_rounds=r["rounds"])
                      for r in records.values()], ignore_index=True)


def ptq_run(records: Mapping[str, RunRecord]) -> RunRecord:
    """The run whose final model was quantized (the first seed of the main partition)."""
    return next(r for r in records.values() if "ptq" in r.tables)


def accuracy_by_partition(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation of the final server accuracy (percent) per partition."""
    g = summary.groupby(["partition", "rounds"], sort=False)
    out = g["server_accuracy"].agg(accuracy_mean="mean", accuracy_std="std", runs="count").reset_index()
    out["rounds_completed"] = g["rounds_completed"].min().to_numpy()  # below rounds: stopped by time_limit_s
    out[["accuracy_mean", "accuracy_std"]] *= 100
    return out.fillna({"accuracy_std": 0.0})


def communication_table(ptq: pd.DataFrame, run: RunRecord, s: Settings) -> pd.DataFrame:
    """Traffic per round and in total if the model travelled at each precision, and its cost.

    The FP32 row's per-message bytes are the ledger's measured safetensors messages of ``run``; the other rows use
    the measured saved size of the quantized model as the message (what a client would send), both directions.
    """
    p = s.params
    ledger = run.tables["ledger"]
    rounds = run["rounds_completed"]
    rows = []
    for _, r in ptq.iterrows():
        if r["method"] == "fp32" and not ledger.empty:
            per_round = ledger.groupby("round")["bytes"].sum().mean()
            message = ledger["bytes"].mean()
            source = "ledger (safetensors messages)"
        else:
            message = r["size_bytes"]
            per_round = 2 * run["clients_per_round"] * message
            source = "saved model size x 2 directions x clients"
        total = per_round * rounds
        rows.append({"precision": r["method"], "message_bytes": int(message), "round_mib": per_round / MIB,
                     "total_mib": total / MIB, "rounds": rounds, "cost_usd": cost(total, p["price_usd_per_mib"]), "source": source})
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


def finding(s: Settings, acc: pd.DataFrame, ptq: pd.DataFrame, comm: pd.DataFrame, run: RunRecord) -> str:
    """The notebook's conclusion in a few sentences, from the measured tables."""
    p = s.params
    main_acc = acc[(acc["partition"] == p["partition"]) & (acc["rounds"] == p["num_rounds"])].iloc[0]
    by = ptq.set_index("method")
    fp32_comm = comm.set_index("precision").loc["fp32"]
    text = (f"Over {int(main_acc['runs'])} seeds, FedAvg with the report's settings reaches "
            f"**{main_acc['accuracy_mean']:.2f} ± {main_acc['accuracy_std']:.2f} %** test accuracy after {p['num_rounds']} "
            f"rounds ({p['source']} data, {run['precision']} training). ")
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
                 "are not final; their checkpoints are kept, and running their stages again continues them.")
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
