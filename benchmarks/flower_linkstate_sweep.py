"""Benchmark (not a test): one sweep of Flower's simulation engine over its nodes, on Flower's in-memory LinkState and
on the study's indexed one (:mod:`fedpeft.federated.linkstate_index`), against the number of nodes.

The engine's ``add_messages_to_queue`` asks the state for each node's next message, for every node, every 0.1 s. This
script builds the state as the engine does (``nodes`` registered SuperNodes, one run), stores one train message per
node as the server's grid does at the start of a round, and times (a) the delivering sweep (each node receives its
message) and (b) an idle sweep afterwards (nothing to deliver; delivered messages stay stored until the server pulls
their replies, which is what the engine repeats for the rest of the round). Both states are measured alternately in
one process, ``--repeats`` times each; the table gives medians (seconds per sweep) and their ratio. No training, no
Ray. Writes ``reports/benchmarks/flower_linkstate_sweep.{csv,md}``, which the weeds report shows.

    .venv/bin/python benchmarks/flower_linkstate_sweep.py [--nodes 50 100 500 1000 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from fedpeft.core.config import REPO_ROOT
from fedpeft.core.profiling import machine_description
from fedpeft.reporting.outputs import MarkdownReport, package_versions

OUT = REPO_ROOT / "reports" / "benchmarks" / "flower_linkstate_sweep"
RUN_ID = 7


def one_state(indexed: bool, nodes: int) -> tuple[float, float]:
    """Seconds of the delivering sweep and of the idle sweep after it, on a fresh state with ``nodes`` nodes."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from fedpeft.federated.linkstate_index import SimulatedFederation

    federation = SimulatedFederation(nodes, indexed, run_ids=(RUN_ID,))
    state, node_ids = federation.state, federation.node_ids
    federation.push(lambda: [Message(RecordDict({"c": ConfigRecord({"round": 1})}), dst_node_id=n, message_type="train") for n in node_ids])
    t0 = time.perf_counter()
    delivered = sum(len(state.get_message_ins(node_id=n, limit=1)) for n in node_ids)
    t1 = time.perf_counter()
    again = sum(len(state.get_message_ins(node_id=n, limit=1)) for n in node_ids)
    t2 = time.perf_counter()
    if delivered != nodes or again != 0:
        raise RuntimeError(f"{nodes} nodes: {delivered} messages delivered, then {again}; expected {nodes}, then 0")
    return t1 - t0, t2 - t1


def main() -> None:
    import logging

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[50, 100, 500, 1000, 2000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    rows = []
    for nodes in args.nodes:
        for repeat in range(args.repeats):
            for indexed in (False, True):  # alternately, so that drift hits both alike
                delivering, idle = one_state(indexed, nodes)
                rows.append({"nodes": nodes, "state": "indexed" if indexed else "flower", "repeat": repeat,
                             "delivering_sweep_s": delivering, "idle_sweep_s": idle})
        print(f"{nodes} nodes done", flush=True)
    raw = pd.DataFrame(rows)
    table = raw.groupby(["nodes", "state"], as_index=False)[["delivering_sweep_s", "idle_sweep_s"]].median()
    wide = table.pivot(index="nodes", columns="state", values=["delivering_sweep_s", "idle_sweep_s"])
    wide.columns = [f"{metric}_{state}" for metric, state in wide.columns]
    wide = wide.reset_index()
    wide["idle_sweep_ratio"] = wide["idle_sweep_s_flower"] / wide["idle_sweep_s_indexed"]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    wide.to_csv(OUT.with_suffix(".csv"), index=False)
    md = MarkdownReport("Flower's simulation engine: one sweep over its nodes, Flower's LinkState against the indexed one")
    md.text(f"One train message per node, stored as the server's grid stores a round's messages; the delivering sweep "
            f"hands each node its message, the idle sweep afterwards finds nothing (what the engine repeats every 0.1 s "
            f"until the round ends). Medians of {args.repeats} alternating repeats, seconds per sweep; one process, no "
            "Ray, no training.")
    md.table(wide, "Seconds per sweep", "{:.4g}")
    md.table(pd.DataFrame([machine_description()]), "Machine")
    md.table(package_versions(("flwr",)), "Versions")
    md.write(OUT.with_suffix(".md"))
    print(f"wrote {OUT.with_suffix('.csv')} and .md")


if __name__ == "__main__":
    main()
