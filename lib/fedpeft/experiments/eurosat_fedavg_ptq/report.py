"""EuroSAT FedAvg + PTQ: tables, claims and the conclusion, from the runs' records.

Seed: ``../shared/seeds/003_4ffed47dd2e2f732.txt``. Notebook: ``notebooks/04_eurosat_fedavg_ptq.ipynb``. Nothing here
trains: the runs are :mod:`fedpeft.experiments.eurosat_fedavg_ptq.runs`, one DVC stage each, and :func:`collect`
reads their records (or, in a notebook outside DVC, runs what is missing or stale).
"""

from __future__ import annotations

import math
from typing import Mapping

import pandas as pd

from fedpeft.core.config import Settings
from fedpeft.core.records import RunRecord
from fedpeft.experiments import runs as run_stages
from fedpeft.experiments.eurosat_fedavg_ptq.experiment import EXPERIMENT as DECLARED
from fedpeft.experiments.eurosat_fedavg_ptq.settings import EXPERIMENT, load  # noqa: F401 - the notebook's API
from fedpeft.federated.ledger import MIB, cost
from fedpeft.reporting.claims import (
    ClaimsLedger,
    above_chance,
    derived,
    exact,
    matches,
    not_testable,
    one_run_matches,
    paired_greater,
    paired_less,
    says,
    signal_label,
    stated,
    stated_range,
    within,
)
from fedpeft.reporting.outputs import scale_gap

TITLE = DECLARED.title
SEED_REPORT = DECLARED.seed_report
NOTEBOOK = DECLARED.notebook
LIMITATIONS = """\
- The per-client 80/20 split and the server's test set follow the report. The server's test set is a stratified
  20 % of all images in `local`, and the hub's `test` split in `paper`. It is never used for training or model
  selection.
- FP16 and INT8 are evaluated on the CPU. FP16 timing on a CPU means little; accuracy and size are what count here.
- `int8_static` is evaluated with the reference pt2e graph (quantize/dequantize around float kernels), which
  reproduces int8 numerics. Its speed is not measured.
- The QAT arm trains only its last `qat_rounds` rounds with fake quantization (the first are the FP32 run's own),
  in fp32 and in-process; its clients' activation ranges are averaged by FedAvg with the weights, and their observer
  buffers travel in its messages (a few KiB more than the FP32 run's).
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
SEED_ROUNDS = 10
SEED_CLIENTS = 10
SEED_PRICE = 5.0  # USD per MB (= MiB) of the seed's satellite link


def collect(s: Settings, progress: bool = True) -> dict[str, RunRecord]:
    """Every planned run's record (see :func:`fedpeft.experiments.runs.collect`)."""
    return run_stages.collect(s, progress)


def describe(s: Settings, run: RunRecord) -> str:
    """What ran, against the seed's setting, as markdown (data, model, clients, schedule, seeds), with the scale gap
    on both sides."""
    p = s.params
    n = len(p["seeds"])
    gap = scale_gap([
        ("model", f"the report's CNN, {SEED['params']:,} parameters", f"the same CNN, {int(run['model_parameters']):,} parameters"),
        ("data", "EuroSAT RGB from the hub (`tanganke/eurosat`): ~21,600 training images over 10 IID clients (1,728 / 432 "
                 "each), ~5,400 in the server's test set",
         f"{p['source']}: {int(run['pool_images']):,} images over {p['num_clients']} {p['partition']} clients "
         f"({run['client_train_images_mean']:,.0f} / {run['client_test_images_mean']:,.0f} each), {int(run['test_images']):,} "
         "in the server's test set"),
        ("schedule", "10 rounds x 2 local epochs, every client every round",
         f"{p['num_rounds']} rounds x {p['local_epochs']} local epochs, {p['fraction_train']:g} of the clients per round"),
        ("optimizer, batch", "Adam, lr 1e-3, batch 32", f"{run['optimizer']}, lr {p['learning_rate']:g}, batch {p['batch_size']}"),
        ("precision, device", "fp32 on a GPU (its timings say so; the model is not named)", f"{run['precision']} on {run_device(run)}"),
        ("quantization", "model.half() and quantize_dynamic({Linear, Conv2d}) after training; QAT proposed, not run",
         "the same, and static int8 with quantized convolutions (pt2e), on the CPU"
         + (f"; a QAT arm over every seed (its last {p['qat_rounds']} of {p['num_rounds']} rounds with int8 fake quantization)"
            if p["qat_rounds"] else "")),
        ("runs", "one run", f"{n} seed{'s' if n != 1 else ''}" + (f", plus {p['compare_partitions']} shards and {p['extra_rounds']} rounds"
                                                              if p["compare_partitions"] or p["extra_rounds"] else "")),
    ], s.profile)
    return (f"**Data** ({p['source']}): {run['pool_images']:,} images shared by {p['num_clients']} clients "
            f"({p['partition']} partition), {run['test_images']:,} held out as the server's test set; "
            f"{run['classes']} classes. **Model**: the report's CNN, {run['model_parameters']:,} parameters. "
            f"**Schedule**: {p['num_rounds']} rounds x {p['local_epochs']} local epochs, {run['optimizer']} lr "
            f"{p['learning_rate']:g}, batch {p['batch_size']}, {run['precision']} training. **Seeds**: {list(p['seeds'])}.\n\n" + gap)


def speed_table(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[["partition", "seed", "rounds", "wall_s", "train_s", "eval_s", "train_images_per_s", "loop_overhead",
                    "peak_memory_mib", "memory_kind"]]


SUMMARY_COLUMNS = ["partition", "seed", "rounds", "rounds_completed", "label_skew_tv", "server_accuracy", "client_accuracy",
                   "wall_s", "train_s", "eval_s", "train_images_per_s", "loop_overhead", "stopped_by_time_limit",
                   "resumed_from_round", "peak_memory_mib", "memory_kind", "chance_accuracy", "test_images"]


def is_qat(run: RunRecord) -> bool:
    """Whether a run is the quantization-aware arm (its last rounds trained with int8 fake quantization)."""
    return bool(run.spec.get("qat_rounds"))


def run_summary(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """One row per float run (in plan order; the QAT arm is in :func:`qat_comparison`): final accuracy, time,
    throughput and the loop's overhead."""
    return pd.DataFrame([{"run": rid, **{k: r[k] for k in SUMMARY_COLUMNS}} for rid, r in records.items() if not is_qat(r)])


def arm(run: RunRecord) -> str:
    """``fp32``, or ``qat<k>`` for the QAT arm whose last k rounds trained with fake quantization."""
    return f"qat{run.spec['qat_rounds']}" if is_qat(run) else "fp32"


def histories(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Every run's per-round history, labelled with its partition, seed, planned rounds and arm (:func:`arm`)."""
    return pd.concat([r.tables["history"].assign(partition=r["partition"], seed=r["seed"], num_rounds=r["rounds"], arm=arm(r))
                      for r in records.values()], ignore_index=True)


def qat_comparison(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Per seed with both arms finished: the FP32 run's accuracy and its post-training static int8 model's
    (``int8_static``) against the QAT arm's int8 model (the same int8 scheme; percent, differences in points), the QAT
    arm's last fake-quantized accuracy, the FP32 run's training precision (the QAT rounds train in fp32), and how
    closely the QAT arm's float rounds repeat the FP32 run's (largest difference of the server loss over them: 0 when
    the two ran the same kernels). A QAT run its time limit stopped has no int8 model and no row (see
    :func:`unfinished_qat`). Empty when no QAT run finished."""
    fp32 = {r["seed"]: r for r in ptq_runs(records)}
    rows = []
    for r in records.values():
        if not is_qat(r) or "qat" not in r.tables or r["seed"] not in fp32:
            continue
        base = fp32[r["seed"]]
        ptq = base.tables["ptq"].set_index("method")["accuracy_pct"]
        qat = float(r.tables["qat"]["accuracy_pct"].iloc[0])
        h, hb = r.tables["history"], base.tables["history"].set_index("round")
        floats = h[(h["phase"] == "fp32") & (h["round"] > 0)].set_index("round")["server_loss"]
        repeat = float((floats - hb["server_loss"].reindex(floats.index)).abs().max()) if len(floats) else float("nan")
        rows.append({"seed": r["seed"], "rounds": r["rounds"], "qat_rounds": r.spec["qat_rounds"], "fp32_pct": float(ptq["fp32"]),
                     "ptq_int8_static_pct": float(ptq["int8_static"]), "qat_int8_pct": qat,
                     "qat_minus_ptq_points": qat - float(ptq["int8_static"]), "qat_minus_fp32_points": qat - float(ptq["fp32"]),
                     "qat_fake_quant_pct": 100 * float(h.iloc[-1]["server_accuracy"]), "fp32_arm_precision": base["precision"],
                     "float_rounds_loss_diff": repeat, "qat_size_bytes": int(r.tables["qat"]["size_bytes"].iloc[0]),
                     "wall_s": r["wall_s"]})
    table = pd.DataFrame(rows)
    table.attrs["unfinished"] = unfinished_qat(records)
    return table


def unfinished_qat(records: Mapping[str, RunRecord]) -> list[str]:
    """The QAT runs that stopped at the time limit before their last round (no int8 model yet)."""
    return [rid for rid, r in records.items() if is_qat(r) and "qat" not in r.tables]


def ptq_run(records: Mapping[str, RunRecord]) -> RunRecord:
    """The run whose final model was quantized (the first seed of the main partition)."""
    return next(r for r in records.values() if "ptq" in r.tables)


def partition_signal(runs: pd.DataFrame) -> str:
    """``above chance`` or ``no signal`` for the runs of one partition and round count: over seeds, the t interval
    of their accuracies against chance; a single run (the extra-rounds row), the Wilson interval of its accuracy
    over its test images, since there is no spread over seeds to judge it on."""
    return signal_label(100 * runs["server_accuracy"], 100 * float(runs["chance_accuracy"].iloc[0]),
                        eval_examples=int(runs["test_images"].iloc[0]))


def accuracy_by_partition(summary: pd.DataFrame) -> pd.DataFrame:
    """Final server accuracy (percent) per partition: mean, sample sd and count over seeds, beside the chance
    baseline (always the test set's most frequent class) and a signal label (:func:`partition_signal`)."""
    g = summary.groupby(["partition", "rounds"], sort=False)
    out = g["server_accuracy"].agg(accuracy_mean="mean", accuracy_std="std", runs="count").reset_index()
    out["rounds_completed"] = g["rounds_completed"].min().to_numpy()  # below rounds: stopped by time_limit_s
    out[["accuracy_mean", "accuracy_std"]] *= 100
    out["chance_pct"] = 100 * g["chance_accuracy"].first().to_numpy()
    out["signal"] = [partition_signal(grp) for _, grp in g]
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


def run_device(run: RunRecord) -> str:
    """The device a run trained on, from its record's machine description."""
    machine = run.meta.get("machine", {})
    gpu = machine.get("gpu", "none")
    return gpu if gpu and gpu != "none" else f"CPU ({machine.get('cpu', 'unknown')}, {machine.get('torch_threads', '?')} threads)"


def ptq_runs(records: Mapping[str, RunRecord]) -> list[RunRecord]:
    """The runs whose final model was quantized (every seed of the main partition at the main number of rounds)."""
    return [r for r in records.values() if "ptq" in r.tables]


def ptq_by_seed(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Every quantized run's PTQ table, one row per (seed, method)."""
    return pd.concat([r.tables["ptq"].assign(seed=r["seed"]) for r in ptq_runs(records)], ignore_index=True)


def ptq_over_seeds(by_seed: pd.DataFrame) -> pd.DataFrame:
    """Accuracy and drop vs FP32 (percentage points) per method: mean and sample sd over the quantized seeds; sizes
    (MiB = 2^20 bytes) are the same for every seed, since they depend on shapes alone."""
    g = by_seed.groupby("method", sort=False)
    out = g.agg(accuracy_mean=("accuracy_pct", "mean"), accuracy_sd=("accuracy_pct", "std"),
                drop_mean=("drop_pct_points", "mean"), drop_sd=("drop_pct_points", "std"), seeds=("seed", "count"),
                size_bytes=("size_bytes", "first"), size_mib=("size_mib", "first"), compression=("compression", "first"),
                int8_weight_share=("int8_weight_share", "first")).reset_index()
    return out.fillna({"accuracy_sd": 0.0, "drop_sd": 0.0})


def _drops(by_seed: pd.DataFrame, method: str) -> list[float]:
    return by_seed.loc[by_seed["method"] == method, "drop_pct_points"].tolist()


def _accuracy_by_seed(summary: pd.DataFrame, partition: str, rounds: int) -> pd.Series:
    """Final server test accuracy (percent) of the runs of one partition and round count, indexed by seed."""
    rows = summary[(summary["partition"] == partition) & (summary["rounds"] == rounds)]
    return 100 * rows.set_index("seed")["server_accuracy"]


def build_claims(s: Settings, summary: pd.DataFrame, by_seed: pd.DataFrame, comm: pd.DataFrame, run: RunRecord,
                 qat: pd.DataFrame | None = None) -> ClaimsLedger:
    """Every claim of the seed (``003_4ffed47dd2e2f732.txt``) and the study's own checks, judged by the claims engine.

    Accuracy claims need the real images (``source`` not ``generated``); sizes and traffic are computed in any profile
    and matched to the precision the seed states them with. The seed's "MB" are mebibytes (1,738,408 bytes is its
    "1.66 MB"), so they are compared with MiB. The seed's one run is compared with the prediction interval of one
    study run over seeds; a quantized model is paired with its own seed's FP32 model. The seed's "INT8" is
    ``quantize_dynamic``: its sizes, saving and traffic are judged on that model; the fully int8 model (static, pt2e)
    is the study's own check. ``qat`` (:func:`qat_comparison`) pairs each seed's static int8 model with the QAT
    arm's.
    """
    p = s.params
    real = p["source"] != "generated"
    seed_setting = p["num_clients"] == SEED_CLIENTS and real
    ledger = ClaimsLedger(s.profile, EXPERIMENT)
    if real:
        ledger.few_seeds = ("a EuroSAT run is this profile's longest (see the compute table); five seeds of each arm did not "
                            "fit the 2-core budget")
    no_real = "generated images in this profile: accuracy claims need the real EuroSAT images (profile local or paper)"
    ledger.add("The CNN has 434,602 parameters", f"{SEED['params']:,}", exact(int(run["model_parameters"]), SEED["params"], "parameters",
                                                                           " parameters"), "setup")
    images = int(run["pool_images"]) + int(run["test_images"])
    ledger.add("EuroSAT has ~27,000 images in 10 land-use classes", "~27,000 images, 10 classes",
               matches(images, stated("27,000"), "images", "{:,.0f}", " images") if real else not_testable(no_real, needs="profile"), "setup",
               f"{int(run['classes'])} classes")
    per_client = run["client_train_images_mean"]
    share = float(run["pool_images"]) / p["num_clients"]
    other_setting = (f"{p['num_clients']} clients on {int(run['pool_images']):,} "
                     f"{'generated' if not real else 'real'} images in this profile")
    ledger.add("Each of 10 clients gets ~2,700 images", "~2,700", matches(share, stated("2,700"), "images per client", "{:,.0f}",
                                                                        " images") if seed_setting else
               not_testable(other_setting, needs="profile"), "setup",
               "the server's test set held out first, as the seed's own later arithmetic does (21,600 / 10 = 2,160): "
               "the seed contradicts itself")
    if seed_setting:
        ledger.add("Each of 10 IID clients trains on 1,728 images and tests on 432", "1,728 / 432",
                   exact(round(per_client), 1728, "mean client train images", " images"), "setup",
                   f"mean client test images {run['client_test_images_mean']:,.0f}")
        batches = math.ceil(per_client / p["batch_size"]) * p["local_epochs"]
        ledger.add("108 local batches per client per round (54 per epoch x 2 epochs)", "108",
                   exact(batches, 108, "ceil(train images / batch) x local epochs", " batches"), "setup")
    else:
        for claim, fig in (("Each of 10 IID clients trains on 1,728 images and tests on 432", "1,728 / 432"),
                           ("108 local batches per client per round (54 per epoch x 2 epochs)", "108")):
            ledger.add(claim, fig, not_testable(other_setting, f"{per_client:.0f} train images per client", needs="profile"), "setup")
    main = summary[(summary["partition"] == p["partition"]) & (summary["rounds"] == p["num_rounds"])]
    acc = (100 * main["server_accuracy"]).tolist()
    chance = 100 * float(main["chance_accuracy"].iloc[0])
    ledger.add(f"FP32 FedAvg test accuracy after {SEED_ROUNDS} rounds is 85.20 %", "85.20 % (one run)",
               one_run_matches(acc, stated("85.20"), "test accuracy", "{:.2f}", " %") if real else not_testable(no_real, needs="profile"),
               "accuracy", key="fp32_accuracy")
    methods = {"fp16": "FP16", "int8_dynamic": "INT8 (quantize_dynamic)"}
    for method, label in methods.items():
        pct = by_seed.loc[by_seed["method"] == method, "accuracy_pct"].tolist()
        if pct:
            ledger.add(f"{label} test accuracy is {SEED['accuracy'][method]:.2f} %", f"{SEED['accuracy'][method]:.2f} % (one run)",
                       one_run_matches(pct, stated(f"{SEED['accuracy'][method]:.2f}"), f"{label} test accuracy", "{:.2f}", " %")
                       if real else not_testable(no_real, needs="profile"), "ptq_seeds")
    for method, label in methods.items():
        drops = _drops(by_seed, method)
        seed_drop = SEED["accuracy"][method] - SEED["accuracy"]["fp32"]
        if drops:
            ledger.add(f"{label} costs almost no accuracy ({seed_drop:+.2f} points against FP32)", f"{seed_drop:+.2f} points",
                       one_run_matches(drops, stated(f"{seed_drop:.2f}"), f"{label} - FP32 accuracy", "{:+.2f}", " points",
                                       "seeds, each quantized model paired with its own FP32 model") if real else not_testable(no_real, needs="profile"),
                       "ptq_seeds", key=f"{method}_drop")
    by = by_seed.drop_duplicates("method").set_index("method")
    for method, label in (("fp32", "FP32"), ("fp16", "FP16"), ("int8_dynamic", "INT8 (quantize_dynamic)")):
        if method in by.index:
            mb = f"{SEED['size_mb'][method]:.2f}"
            ledger.add(f"{label} saved model size is {mb} MB", f"{mb} MB",
                       matches(float(by.loc[method, "size_mib"]), stated(mb), "saved size", "{:.3f}", " MiB"), "ptq",
                       "torch.save of the model; the seed's sizes are its parameters x bytes, without buffers or the file's header")
    if "fp16" in by.index:
        ledger.add("FP16 compresses 2.00x", "2.00x", matches(float(by.loc["fp16", "compression"]), stated("2.00"), "compression",
                                                             "{:.3f}", "x"), "ptq")
    if "int8_dynamic" in by.index:
        share = float(by.loc["int8_dynamic", "int8_weight_share"])
        ledger.add("quantize_dynamic({Linear, Conv2d}) stores every weight in INT8 (434,602 params x 1 byte)", "every weight int8",
                   matches(100 * share, stated("100"), "% of weight elements stored as int8", "{:.1f}", " %"), "ptq",
                   "quantize_dynamic has no Conv2d kernel: the convolutions stay fp32")
        ledger.add("INT8 (quantize_dynamic) compresses 3.19x", "3.19x",
                   matches(float(by.loc["int8_dynamic", "compression"]), stated("3.19"), "compression", "{:.3f}", "x"), "ptq")
    # "With INT8 (if implemented)": the seed's 0.41 MB, 75 % and 8.2 MB price a model whose every weight is int8, one
    # byte per parameter. The study's fully int8 model (static, convolutions too) is that model; all three are judged
    # on its saved size, each at the seed's stated precision.
    if "int8_static" in by.index:
        mib = float(by.loc["int8_static", "size_mib"])
        ledger.add("A fully INT8 model (if implemented) is 0.41 MB per transfer", "0.41 MB (1 byte per parameter)",
                   matches(mib, stated("0.41"), "int8_static saved size", "{:.3f}", " MiB"), "ptq",
                   "pt2e static int8; biases, scales and zero points are what the seed's 1 byte/parameter leaves out",
                   key="int8_static_size")
        saving = 100 * (1 - mib / float(by.loc["fp32", "size_mib"]))
        ledger.add("... and saves 75 % of the traffic", "75 %", matches(saving, stated("75"), "int8_static saving against FP32",
                                                                      "{:.2f}", " %"), "ptq")
    ckpt_mib = float(run["checkpoint_bytes"]) / MIB
    ledger.add("Real files with optimizer state are 10-15 MB", "10-15 MB",
               matches(ckpt_mib, stated_range(10, 15, "10-15"), "checkpoint size", "{:.2f}", " MiB"),
               "setup", "torch.save of the weights and Adam's two moments")
    # Traffic claims: the measured message (the ledger's FP32 safetensors message; the saved INT8 model) times the
    # seed's protocol of 10 clients x 2 directions per round, so that they are judged in every profile.
    message = float(comm.set_index("precision").loc["fp32", "message_bytes"]) / MIB
    transfers = 2 * SEED_CLIENTS
    how = f"measured message {message:.3f} MiB x {transfers} transfers per round"
    # The seed's traffic figures are its 1.66 MB (or 0.41 MB) message times transfers and rounds: each carries that
    # message's precision (derived), not only its own last digit.
    ledger.add("FP32 traffic is 33.2 MB per round (10 clients, both directions)", "33.2 MB",
               matches(message * transfers, derived("33.2", "1.66"), "MiB per round", "{:.2f}", " MiB"), "communication", how)
    for rounds, mb, usd in ((10, "332", 1660.0), (20, "664", 3320.0)):
        total = message * transfers * rounds
        ledger.add(f"FP32 over {rounds} rounds: {mb} MB, ${usd:,.0f} at $5/MB", f"{mb} MB / ${usd:,.0f}",
                   matches(total, derived(mb, "1.66"), f"MiB over {rounds} rounds", "{:.2f}", " MiB"), "communication",
                   f"${cost(total * MIB, SEED_PRICE):,.0f} at $5/MiB; {how}")
    if "int8_static" in by.index:
        int8_round = transfers * float(by.loc["int8_static", "size_mib"])
        ledger.add("INT8 (if implemented): 8.2 MB per round, 164 MB and $820 for 20 rounds", "8.2 MB / 164 MB / $820",
                   matches(int8_round, derived("8.2", "0.41"), "int8_static MiB per round", "{:.2f}", " MiB"), "communication",
                   f"{int8_round * 20:.0f} MiB and ${cost(int8_round * 20 * MIB, SEED_PRICE):,.0f} for 20 rounds; the saved "
                   f"fully int8 model x {transfers} transfers")
    rounds_s = main["wall_s"] / main["rounds_completed"]
    ledger.add("A round takes 15-20 s and 10 rounds 2.5-3 min (GPU)", "15-20 s per round",
               not_testable(f"the seed timed a GPU; these runs ran on {run_device(run)}", f"{rounds_s.mean():.1f} s per round here", needs="gpu"),
               "speed")
    ledger.add("FP16 training would be 20-30 % faster, INT8 40-50 %", "20-30 % / 40-50 %",
               not_testable("the seed never trained in FP16 or INT8 (its own words: 'NOT IMPLEMENTED'); the study trains in "
                            "FP32 (bf16 only on CPUs with native bf16) and quantizes after training", needs="gpu"), "speed")
    has_qat = qat is not None and not qat.empty
    if has_qat and real:
        k, n = int(qat["qat_rounds"].iloc[0]), int(qat["rounds"].iloc[0])
        schedule = (f"trains every one of its {n} rounds with int8 fake quantization" if k == n else
                    f"trains rounds {n - k + 1}-{n} of {n} with int8 fake quantization (rounds 1-{n - k}, their client draws "
                    "and batch orders as the FP32 run's)")
        precisions = sorted(set(qat["fp32_arm_precision"]))
        ledger.add("PTQ is slightly less accurate than quantization-aware training", "slightly lower", ptq_below_qat(qat),
                   "ptq_vs_qat", f"the QAT arm {schedule}; both int8 models are pt2e static int8 (per-channel weights, "
                   f"calibrated or trained ranges); 'slightly less' read as 0 to {2 * SLIGHTLY:g} point"
                   f"{'s' if 2 * SLIGHTLY != 1 else ''} below QAT; the FP32 arm trained in {'/'.join(precisions)}, the QAT "
                   "rounds in fp32", key="ptq_below_qat")
    else:
        why = (no_real if not real else "qat_rounds = 0 in this profile: no QAT arm ran" if not p["qat_rounds"]
               else "no QAT run has finished in this profile yet")
        ledger.add("PTQ is slightly less accurate than quantization-aware training", "slightly lower",
                   not_testable(why, needs="profile"), "ptq_seeds", key="ptq_below_qat")

    # --- the study's own checks ---
    ledger.check("The FedAvg model learns: test accuracy above chance (always the most frequent class)",
                 above_chance(acc, chance, "server test accuracy", "{:.2f}", " %"), "accuracy", key="learns")
    if "int8_static" in by.index:
        ledger.check("A fully INT8 model keeps accuracy within 0.5 points of FP32",
                     within(_drops(by_seed, "int8_static"), 0.0, 0.5, "int8_static - FP32 accuracy", "{:+.2f}", " points")
                     if real else not_testable(no_real, needs="profile"), "ptq_seeds", key="int8_static_drop")
    if has_qat:
        ledger.check("A QAT int8 model keeps accuracy within 0.5 points of FP32",
                     within(qat["qat_minus_fp32_points"].tolist(), 0.0, 0.5, "QAT int8 - FP32 accuracy", "{:+.2f}", " points")
                     if real else not_testable(no_real, needs="profile"), "ptq_vs_qat", key="qat_drop")
    skews = main["label_skew_tv"].tolist()
    ledger.check("IID partitioning gives each client a similar class distribution (label skew below 0.05)",
                 within(skews, 0.0, 0.05, "label skew (total variation distance)", "{:.3f}", " TV"), "accuracy",
                 "mean total-variation distance of each client's labels to the pooled labels; 0.05 is the study's band",
                 seed_figure="similar distributions")

    iid = _accuracy_by_seed(summary, p["partition"], p["num_rounds"])
    for other in p["compare_partitions"]:
        skewed = _accuracy_by_seed(summary, other, p["num_rounds"])
        seeds = iid.index.intersection(skewed.index)
        if len(seeds):
            ledger.check(f"{other} label skew lowers the final accuracy against {p['partition']} shards",
                         paired_less(skewed[seeds], iid[seeds], 0.0, f"{other} - {p['partition']} test accuracy", "{:+.2f}", " points",
                                     "seeds, paired: same seed, different shards") if real else not_testable(no_real, needs="profile"),
                         "accuracy", key=f"{other}_lowers")
    if p["extra_rounds"]:
        longer = _accuracy_by_seed(summary, p["partition"], p["extra_rounds"])
        seeds = longer.index.intersection(iid.index)
        if len(seeds):
            ledger.check(f"{p['extra_rounds']} rounds reach a higher accuracy than {p['num_rounds']}",
                         paired_greater(longer[seeds], iid[seeds], 0.0, f"{p['extra_rounds']} - {p['num_rounds']} rounds test accuracy",
                                        "{:+.2f}", " points", "seeds, paired") if real else not_testable(no_real, needs="profile"),
                         "accuracy", key="more_rounds")
    return ledger


def headline(s: Settings, acc: pd.DataFrame, ptq: pd.DataFrame, comm: pd.DataFrame) -> pd.DataFrame:
    """The experiment's one-table summary: per method, accuracy over seeds (percent) beside chance, size (MiB),
    compression and the traffic and cost of all rounds."""
    main = acc.loc[(acc["partition"] == s.params["partition"]) & (acc["rounds"] == s.params["num_rounds"])].iloc[0]
    merged = ptq.merge(comm[["precision", "total_mib", "cost_usd"]], left_on="method", right_on="precision")
    merged["chance_pct"] = main["chance_pct"]
    merged["signal"] = main["signal"]
    return merged[["method", "accuracy_mean", "accuracy_sd", "seeds", "chance_pct", "signal", "drop_mean", "size_mib",
                   "compression", "total_mib", "cost_usd"]]


def partitions_and_rounds(s: Settings, summary: pd.DataFrame, claims: ClaimsLedger) -> str:
    """Sentences on the study's own comparisons, from their verdicts in ``claims``: each of ``compare_partitions``
    against the main partition at ``num_rounds`` (final accuracy, paired by seed) and the ``extra_rounds`` runs
    against the same seeds' main runs. Empty when neither ran."""
    p = s.params
    v = claims.verdicts

    main = _accuracy_by_seed(summary, p["partition"], p["num_rounds"])
    sentences = []
    for other in p["compare_partitions"]:
        if f"{other}_lowers" not in v:
            continue
        skewed = _accuracy_by_seed(summary, other, p["num_rounds"])
        seeds = main.index.intersection(skewed.index)
        skew = f"Dirichlet({p['dirichlet_alpha']:g})" if other == "dirichlet" else other
        means = f"{skewed[seeds].mean():.2f} % against {main[seeds].mean():.2f} %, paired by seed"
        sentences.append(says(v[f"{other}_lowers"],
                              f"{skew} label skew lowers the final accuracy against {p['partition']} shards by {{measured}} ({means}).",
                              f"{skew} label skew raises the final accuracy against {p['partition']} shards: {{measured}} ({means}).",
                              f"Whether {skew} label skew changes the final accuracy is undecided on these seeds: {{measured}}, an "
                              f"interval that covers zero ({means}).",
                              f"{skew} label skew could not be judged here."))
    if "more_rounds" in v:
        longer = _accuracy_by_seed(summary, p["partition"], p["extra_rounds"])
        seeds = longer.index.intersection(main.index)
        runs = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}: {longer[seeds].mean():.2f} % against {main[seeds].mean():.2f} %"
        sentences.append(says(v["more_rounds"], f"{p['extra_rounds']} rounds beat {p['num_rounds']} ({runs}; {{measured}}).",
                              f"{p['extra_rounds']} rounds do worse than {p['num_rounds']} ({runs}; {{measured}}).",
                              f"Whether {p['extra_rounds']} rounds beat {p['num_rounds']} is undecided ({runs}; {{measured}}).",
                              ""))
    return " ".join(x for x in sentences if x)


def finding(s: Settings, acc: pd.DataFrame, ptq: pd.DataFrame, comm: pd.DataFrame, run: RunRecord,
            summary: pd.DataFrame, claims: ClaimsLedger, qat: pd.DataFrame | None = None) -> str:
    """The notebook's conclusion in a few sentences, from the measured tables and the ledger's verdicts (``qat``:
    :func:`qat_comparison`)."""
    p = s.params
    v = claims.verdicts
    main_acc = acc[(acc["partition"] == p["partition"]) & (acc["rounds"] == p["num_rounds"])].iloc[0]
    by = ptq.set_index("method")
    fp32_comm = comm.set_index("precision").loc["fp32"]
    n = int(main_acc["runs"])
    text = (f"Over {n} seed{'s' if n != 1 else ''}, FedAvg ({p['num_clients']} {p['partition']} clients, {p['num_rounds']} rounds "
            f"x {p['local_epochs']} local epochs, {p['source']} data, {run['precision']} training on {run_device(run)}) reaches "
            f"**{main_acc['accuracy_mean']:.2f} ± {main_acc['accuracy_std']:.2f} %** test accuracy (chance "
            f"{main_acc['chance_pct']:.1f} %: {main_acc['signal']}). ")
    if "fp32_accuracy" in v:
        text += says(v["fp32_accuracy"], "The seed's single run (85.20 %) is one this study could have made: {measured}. ",
                     "The seed's single run (85.20 %) lies outside what one run of this study gives: {measured}. ",
                     "Too few runs to place the seed's 85.20 %: {measured}. ", "")
    for method, label, seed_drop in (("fp16", "FP16", "-0.02"), ("int8_dynamic", "The seed's INT8 (`quantize_dynamic`)", "-0.25")):
        if f"{method}_drop" in v:
            text += says(v[f"{method}_drop"], f"{label} changes accuracy as the seed says ({seed_drop} points): {{measured}}. ",
                         f"{label} does not change accuracy by the seed's {seed_drop} points: {{measured}}. ",
                         f"{label}'s change of accuracy is undecided against the seed's {seed_drop} points: {{measured}}. ", "")
    if "int8_dynamic" in by.index:
        share = 100 * by.loc["int8_dynamic", "int8_weight_share"]
        text += (f"The seed's INT8 stores {share:.0f} % of the weight elements in int8 ({'every one' if share >= 99.95 else 'its convolutions stay fp32'}) "
                 f"and compresses {by.loc['int8_dynamic', 'compression']:.2f}x to {by.loc['int8_dynamic', 'size_mib']:.3f} MiB, against the seed's "
                 "3.19x and 0.52 MB. ")
    if "int8_static" in by.index and "int8_static_drop" in v:
        text += (f"Static int8 with quantized convolutions compresses {by.loc['int8_static', 'compression']:.2f}x to "
                 f"{by.loc['int8_static', 'size_mib']:.3f} MiB; " + says(v["int8_static_drop"], "it keeps accuracy within 0.5 points ({measured}). ",
                                                                        "it loses more than 0.5 points ({measured}). ",
                                                                        "whether it keeps accuracy within 0.5 points is undecided ({measured}). ",
                                                                        "its accuracy needs the real images. "))
    if qat is not None and not qat.empty and "ptq_below_qat" in v:
        text += qat_sentence(qat, v["ptq_below_qat"]) + " "
    text += (f"FP32 traffic is {fp32_comm['round_mib']:.2f} MiB per round; all {int(fp32_comm['rounds'])} rounds cost "
             f"${fp32_comm['cost_usd']:,.0f} at ${p['price_usd_per_mib']:g}/MiB.")
    if comparisons := partitions_and_rounds(s, summary, claims):
        text += " " + comparisons
    if qat is not None and qat.attrs.get("unfinished"):
        many = len(qat.attrs["unfinished"]) != 1
        text += (f" **QAT run{'s' if many else ''} {', '.join(qat.attrs['unfinished'])} stopped at the time limit before the last "
                 f"round** and {'are' if many else 'is'} left out of the comparison; running {'their stages' if many else 'its stage'} "
                 f"again continues {'them' if many else 'it'}.")
    if (acc["rounds_completed"] < acc["rounds"]).any():
        text += (f" **Some runs stopped at the time limit ({p['time_limit_s']} s) before their last round**, so these numbers "
                 "are not final; their checkpoints are kept, and running their stages again continues them.")
    return text


#: Half the width of the band that reads the seed's "slightly less accurate": PTQ between 0 and 2 x this many points
#: below QAT.
SLIGHTLY = 0.5


def ptq_below_qat(qat: pd.DataFrame):
    """The seed's "PTQ is slightly less accurate than QAT" on :func:`qat_comparison`, judged on its magnitude: the
    per-seed differences (post-training static int8 accuracy minus the same seed's QAT int8 accuracy, paired) within
    ``[-2 SLIGHTLY, 0]`` points: holds when their whole t interval lies inside (below zero, by at most a point), does
    not hold when it lies wholly outside (PTQ better, or much worse), inconclusive otherwise."""
    diffs = (qat["ptq_int8_static_pct"] - qat["qat_int8_pct"]).tolist()
    return within(diffs, -SLIGHTLY, SLIGHTLY, "PTQ - QAT int8 test accuracy (paired by seed)", "{:+.2f}", " points")


def qat_sentence(qat: pd.DataFrame, verdict) -> str:
    """What the QAT arm shows against post-training static int8, from its verdict and the per-seed table."""
    k, n, seeds = int(qat["qat_rounds"].iloc[0]), int(qat["rounds"].iloc[0]), len(qat)
    means = (f"QAT {qat['qat_int8_pct'].mean():.2f} % against PTQ {qat['ptq_int8_static_pct'].mean():.2f} % and FP32 "
             f"{qat['fp32_pct'].mean():.2f} %, {seeds} seed{'s' if seeds != 1 else ''}")
    arm = ("quantization-aware training (every round with int8 fake quantization)" if k == n else
           f"quantization-aware training (the last {k} of {n} rounds with int8 fake quantization)")
    band = f"0 to {2 * SLIGHTLY:g} point{'s' if 2 * SLIGHTLY != 1 else ''}"
    return says(verdict, f"As the seed expects, post-training quantization is slightly less accurate than {arm}: PTQ - QAT "
                         f"{{measured}}, within {band} below ({means}).",
                f"Post-training quantization is not slightly less accurate than {arm}, as the seed expects: PTQ - QAT "
                f"{{measured}}, outside {band} below ({means}).",
                f"Whether post-training quantization is slightly less accurate than {arm} is undecided: PTQ - QAT "
                f"{{measured}}, an interval that crosses the edge of {band} below ({means}).", "")


def metrics(summary: pd.DataFrame, acc: pd.DataFrame, ptq: pd.DataFrame, comm: pd.DataFrame, s: Settings,
            qat: pd.DataFrame | None = None) -> dict[str, float]:
    """Flat numbers for ``dvc metrics`` (with the QAT arm's int8 accuracy, mean over seeds, and size when it ran)."""
    out: dict[str, float] = {}
    if qat is not None and not qat.empty:
        out["qat_int8_accuracy_pct"] = round(float(qat["qat_int8_pct"].mean()), 4)
        out["qat_int8_size_bytes"] = int(qat["qat_size_bytes"].iloc[0])
    for _, r in acc.iterrows():
        key = f"{r['partition']}_r{int(r['rounds'])}"
        out[f"{key}_accuracy_mean_pct"] = round(float(r["accuracy_mean"]), 4)
        out[f"{key}_accuracy_std_pct"] = round(float(r["accuracy_std"]), 4)
    for _, r in ptq.iterrows():
        out[f"ptq_{r['method']}_accuracy_pct"] = round(float(r["accuracy_mean"]), 4)
        out[f"ptq_{r['method']}_size_bytes"] = int(r["size_bytes"])
    for _, r in comm.iterrows():
        out[f"traffic_{r['precision']}_total_mib"] = round(float(r["total_mib"]), 4)
    main = summary[summary["partition"] == s.params["partition"]]
    out["train_images_per_s_mean"] = round(float(main["train_images_per_s"].mean()), 1)
    out["loop_overhead_mean"] = round(float(main["loop_overhead"].mean()), 4)
    out["run_wall_s_mean"] = round(float(main["wall_s"].mean()), 1)
    return out
