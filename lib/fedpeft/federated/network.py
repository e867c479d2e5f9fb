"""A simulated network of farmers: per-farmer bandwidth, a latency, and a chance to drop out of a round.

The round loop asks :meth:`NetworkModel.reports` whether a sampled farmer reports back this round (a farmer that
drops out has downloaded the global model but never uploads; the round goes on with those that report). After
the run, :meth:`NetworkModel.round_seconds` turns the ledger's real message sizes and each farmer's measured
training time into a simulated wall-clock time per round: a farmer takes
``latency + down_bytes * 8 / bandwidth + train_s * slowdown (+ latency + up_bytes * 8 / bandwidth if it reports)``
and the round lasts as long as its slowest reporting farmer (with nobody reporting, as long as the slowest one).
Bandwidth is in Mbit/s (10**6 bits per second).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd


@dataclass
class NetworkModel:
    bandwidth_mbps: Sequence[float]  # per farmer, cycled when shorter than the farmer list
    latency_s: float = 0.0
    dropout_prob: float = 0.0
    slowdown: Sequence[float] = field(default_factory=lambda: [1.0])  # device seconds per measured second, cycled
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.bandwidth_mbps or any(not b > 0 for b in self.bandwidth_mbps):
            raise ValueError(f"bandwidth_mbps = {list(self.bandwidth_mbps)!r} is not allowed; give one or more values > 0 (Mbit/s)")
        if not self.latency_s >= 0:
            raise ValueError(f"latency_s = {self.latency_s!r} is not allowed; it must be >= 0 seconds")
        if not 0 <= self.dropout_prob < 1:
            raise ValueError(f"dropout_prob = {self.dropout_prob!r} is not allowed; it must be in [0, 1)")
        if not self.slowdown or any(not s > 0 for s in self.slowdown):
            raise ValueError(f"slowdown = {list(self.slowdown)!r} is not allowed; give one or more values > 0")

    def reports(self, round_: int, client_index: int) -> bool:
        """Whether the farmer reports in this round; a fixed draw from ``(seed, round, farmer)``."""
        if self.dropout_prob == 0:
            return True
        return bool(np.random.default_rng([self.seed, round_, client_index]).random() >= self.dropout_prob)

    def _bandwidth(self, client_index: int) -> float:
        return float(self.bandwidth_mbps[client_index % len(self.bandwidth_mbps)]) * 1e6 / 8  # bytes per second

    def _slowdown(self, client_index: int) -> float:
        return float(self.slowdown[client_index % len(self.slowdown)])

    def round_seconds(self, client_history: pd.DataFrame, ledger: pd.DataFrame, client_ids: Sequence[str]) -> pd.DataFrame:
        """Simulated seconds per round from the run's client rows (``train_s``, ``reported``) and ledger."""
        index = {cid: i for i, cid in enumerate(client_ids)}
        sizes = ledger.pivot_table(index=["round", "client"], columns="direction", values="bytes", aggfunc="sum", fill_value=0)
        rows = []
        trained = client_history[client_history["round"] > 0] if "round" in client_history else client_history
        for round_, group in trained.groupby("round"):
            times, reporting = [], []
            for _, c in group.iterrows():
                i = index[c["client"]]
                down = sizes.loc[(round_, c["client"]), "down"] if (round_, c["client"]) in sizes.index else 0
                up = sizes.loc[(round_, c["client"]), "up"] if "up" in sizes and (round_, c["client"]) in sizes.index else 0
                t = self.latency_s + down / self._bandwidth(i) + float(c.get("train_s", 0.0) or 0.0) * self._slowdown(i)
                if bool(c["reported"]):
                    t += self.latency_s + up / self._bandwidth(i)
                times.append(t)
                reporting.append(bool(c["reported"]))
            reported_times = [t for t, r in zip(times, reporting, strict=True) if r]
            rows.append({"round": int(round_), "farmers": len(times), "reported": int(sum(reporting)),
                         "simulated_s": max(reported_times) if reported_times else max(times)})
        return pd.DataFrame(rows)
