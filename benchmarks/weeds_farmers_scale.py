"""Benchmark (not a test): the weeds head with 50 to 2,000 simulated farmers (the seed's economics population is 500),
in-process and on Flower's simulation engine, on the cached backbone features.

Engines: ``inprocess`` (the study's loop), ``flower`` (Flower's simulation as the study runs it: the LinkState indexed
by destination node and the ClientApp loading its client from a shelf), and the two "before" variants:
``flower-scan`` (Flower's own LinkState scan, with the shelf) and ``flower-before`` (Flower's scan, and every client's
data held in the ClientApp, which Ray pickles with every message: how the engine ran before issue 35).

Each (engine, farmers) setting runs in a fresh process, so that its peak memory is its own: a thread samples the
resident memory (RSS) of that process and all its children (Ray's workers) every 50 ms. Farmers come from
:func:`fedpeft.experiments.weeds_qlora_federated.runs.simulated_farmers` (``--samples`` training samples each, every
cached view); their trainer state (AdamW moments) is kept on disk between rounds by both engines, so memory should
grow with the farmers' own data alone. The table reports seconds per round (median over rounds after the first),
peak memory, the memory held before the farmers were made, and the farmers' data bytes. FedAvg with every farmer in
every round, the profile's local steps, batch size and learning rate. Writes ``reports/benchmarks/weeds_farmers_scale.
{csv,md}``, which the weeds report plots.

    .venv/bin/python benchmarks/weeds_farmers_scale.py [--profile local] [--farmers 50 100 500 1000 2000] [--rounds 3] \
        [--engines inprocess flower flower-scan flower-before] [--before-up-to 500]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress

import pandas as pd
import psutil
import torch

from fedpeft.core.config import REPO_ROOT
from fedpeft.core.profiling import machine_description
from fedpeft.reporting.outputs import MarkdownReport, package_versions

OUT = REPO_ROOT / "reports" / "benchmarks" / "weeds_farmers_scale"
#: Flower engine variants: run_flower's options for each.
FLOWER_VARIANTS = {
    "flower": {"index_messages": True, "shelve_clients": True},
    "flower-scan": {"index_messages": False, "shelve_clients": True},
    "flower-before": {"index_messages": False, "shelve_clients": False},
}


class TreeMemory:
    """Peak RSS (bytes) of this process and its descendants, sampled every ``interval_s`` seconds."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self._me = psutil.Process()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def now(self) -> int:
        total = 0
        for p in [self._me, *self._me.children(recursive=True)]:
            with suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.interval_s)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def prepare(profile: str, path) -> None:
    """The profile's cached features of fold 0 and its backbone's head, written once for every setting's process (so
    that none of them loads the images or the backbone)."""
    from fedpeft.experiments.weeds_qlora_federated import runs, settings

    s = settings.load(profile)
    splits = runs.split_samples(s, runs.load_samples(s), 0)
    backbone = runs.make_backbone(s, splits)
    feats = runs.cached_features(s, backbone, splits, 0, progress=False)
    torch.save({"feats": feats, "head": backbone.head, "dropout": backbone.dropout, "source": s["source"]}, path)


def one_setting(profile: str, prepared, engine: str, farmers: int, samples: int, rounds: int) -> dict:
    """One (engine, farmers) run in this process; returns its measurements."""
    from fedpeft.experiments.weeds_qlora_federated import runs, settings
    from fedpeft.federated.loop import RoundConfig, run_federated
    from fedpeft.federated.strategies import build_strategy
    from fedpeft.models.head import adapted_head, base_head
    from fedpeft.training.head import HeadTrainer, inverse_frequency_weights

    s = settings.load(profile)
    torch.set_num_threads(1)  # as each Flower actor; the in-process loop then runs the same kernels
    saved = torch.load(prepared, weights_only=False)  # written by prepare() above
    feats = saved["feats"]
    memory = TreeMemory()
    before = memory.now()
    clients = runs.simulated_farmers(feats, farmers, samples, seed=0)
    data_bytes = sum(c.train.features.nbytes + c.train.labels.nbytes for c in clients)
    head = adapted_head(base_head(saved["head"], saved["dropout"]), s["arm"], s["lora_rank"], s["lora_alpha"],
                        s["lora_dropout"], s["target_module"], s["compute_dtype"], s["double_quant"], seed=0)
    trainer = HeadTrainer(s["fedavg_local_steps"], rounds, s["batch_size"], s["learning_rate"],
                          inverse_frequency_weights(feats.train_labels, feats.num_classes), s["weight_decay"])
    config = RoundConfig(num_rounds=rounds, seed=0, exchange="trainable", evaluate_clients=False)
    with memory, tempfile.TemporaryDirectory(prefix="fedpeft-scale-states-") as states:
        t0 = time.perf_counter()
        if engine in FLOWER_VARIANTS:
            from fedpeft.federated.flower_engine import run_flower

            result = run_flower(head, clients, build_strategy("fedavg"), trainer, config, server_test=feats.val,
                                **FLOWER_VARIANTS[engine])
        else:
            result = run_federated(head, clients, build_strategy("fedavg"), trainer, config, server_test=feats.val,
                                   progress=False, client_state_dir=states)
        wall = time.perf_counter() - t0
    per_round = result.history[result.history["round"] >= 1]["round_s"].tolist()
    later = per_round[1:] or per_round
    return {"engine": engine, "farmers": farmers, "samples_per_farmer": samples, "views": int(feats.train.shape[1]),
            "rounds": rounds, "s_per_round": float(pd.Series(later).median()), "first_round_s": per_round[0],
            "wall_s": wall, "peak_mib": memory.peak / 2**20, "before_farmers_mib": before / 2**20,
            "farmer_data_mib": data_bytes / 2**20, "messages": len(result.ledger.frame()),
            "final_val_macro_f1": float(result.history["server_macro_f1"].iloc[-1]), "features": f"{profile}: {saved['source']}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="local", choices=["embedded", "local"])
    parser.add_argument("--farmers", type=int, nargs="+", default=[50, 100, 500, 1000, 2000])
    parser.add_argument("--engines", nargs="+", default=["inprocess", "flower"], choices=["inprocess", *FLOWER_VARIANTS])
    parser.add_argument("--before-up-to", type=int, default=500,
                        help="run the 'before' Flower variants only up to this many farmers (their rounds grow with the square)")
    parser.add_argument("--samples", type=int, default=8, help="training samples per farmer")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", nargs=3, metavar=("PREPARED", "ENGINE", "FARMERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = one_setting(args.profile, args.one[0], args.one[1], int(args.one[2]), args.samples, args.rounds)
        print("RESULT " + json.dumps(result))
        return
    rows = []
    work = tempfile.TemporaryDirectory(prefix="fedpeft-scale-")
    prepared = f"{work.name}/features.pt"
    prepare(args.profile, prepared)
    for farmers in args.farmers:
        for engine in args.engines:
            if engine in ("flower-scan", "flower-before") and farmers > args.before_up_to:
                continue
            cmd = [sys.executable, __file__, "--profile", args.profile, "--samples", str(args.samples), "--rounds",
                   str(args.rounds), "--one", prepared, engine, str(farmers)]
            print(f"{engine}, {farmers} farmers ...", flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                raise RuntimeError(f"{engine} with {farmers} farmers failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
            rows.append(json.loads(lines[-1][len("RESULT "):]))
            print(f"  {rows[-1]['s_per_round']:.2f} s/round, peak {rows[-1]['peak_mib']:.0f} MiB", flush=True)
            write_tables(rows, args, done=False)  # after every setting, so that a stopped run keeps what it measured
    work.cleanup()
    write_tables(rows, args, done=True)
    print(f"wrote {OUT.with_suffix('.csv')} and .md")


def write_tables(rows: list[dict], args: argparse.Namespace, done: bool) -> None:
    """The measured settings as ``OUT``.csv and .md; ``done`` False marks the table as partial (the run goes on)."""
    table = pd.DataFrame(rows)
    table["peak_minus_data_mib"] = table["peak_mib"] - table["farmer_data_mib"]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT.with_suffix(".csv"), index=False)
    md = MarkdownReport("Weeds head: time per round and peak memory against the number of farmers")
    md.text(f"Features: {rows[0]['features']}; {args.samples} samples per farmer, every cached view; FedAvg, every farmer "
            f"every round, {args.rounds} rounds; torch with one thread per process. Seconds per round: median over rounds "
            "after the first. Peak memory: resident memory of the run's process and its children (Ray's workers), sampled "
            "every 50 ms. Trainer states are kept on disk by both engines."
            + ("" if done else " **Partial: the benchmark was still running (or was stopped) when this was written.**"))
    md.table(table, "Every setting", "{:.4g}")
    md.table(pd.DataFrame([machine_description()]), "Machine")
    md.table(package_versions(("torch", "flwr", "ray")), "Versions")
    md.write(OUT.with_suffix(".md"))


if __name__ == "__main__":
    main()
