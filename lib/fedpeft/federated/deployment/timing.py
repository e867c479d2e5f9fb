"""Where a deployment round's time goes: its critical path taken apart into measured parts.

The deployment engine's processes stamp the wall clock (``time.time()``, seconds since the epoch; every network
namespace of the machine shares that clock): the ServerApp just before Flower pushes a round's messages (``sent_t``)
and when every reply is in (``received_t``); each ClientApp when its process started (``process_start_t``: Flower
starts one per message), when Flower handed it the message (``app_enter_t``) and around its local training
(``train_start_t``, ``train_end_t``). The round's critical path runs through the farmer whose training ended last:

- ``pickup_s``: sent -> its ClientApp process started (the SuperNode's pull of messages, which waits 3 s whenever it
  finds none, the transfer down the link, the SuperExec's poll for tasks and the process launch);
- ``startup_s``: process started -> the app called (Python, torch, Flower and the app imported, the FAB installed;
  with resident clients the app imports Flower only);
- ``load_s``: app called -> training starts (job files, model, client state and the message's arrays loaded; with
  resident clients: the message handed over a Unix socket and the resident client's model restored);
- ``train_s``: the local training;
- ``return_s``: training ended -> the server has every reply (state saved, reply serialized, the SuperNode's push,
  the transfer up the link, the ServerApp's pull of replies, which waits 3 s whenever one is missing);
- ``server_s``: the rest of the round's wall time (``round_s``, between the server's evaluations): aggregation, the
  server's evaluation and building the next messages.

The six parts add up to ``round_s`` exactly (the identity the tests check). The stamps are wall-clock time, which the
machine's clock service may step or slew while a run goes on; ``round_s`` is the server's monotonic clock. A round in
which they disagree by more than :data:`CLOCK_TOLERANCE_S` (a part below ``-CLOCK_TOLERANCE_S``: the stamps' span is
longer than the round, or they run backwards) is marked ``clock_ok = False``: its split cannot be trusted.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["CLIENT_STAMPS", "CLOCK_TOLERANCE_S", "PARTS", "client_timing", "round_parts"]

CLIENT_STAMPS = ("process_start_t", "app_enter_t", "train_start_t", "train_end_t")
PARTS = ("pickup_s", "startup_s", "load_s", "train_s", "return_s", "server_s")
#: Seconds a part may fall below zero before the round's stamps are taken for a clock step (the kernel reads a
#: process's start time to a 10 ms tick; a slewing clock drifts some 0.1 s over a round here).
CLOCK_TOLERANCE_S = 0.5


def client_timing(client_history: pd.DataFrame) -> pd.DataFrame:
    """The clients' wall-clock stamps (round, client and :data:`CLIENT_STAMPS`), one row per reply that carried them
    (a farmer the network model dropped trains nothing and carries none); an empty table when no reply did (the
    in-process and simulation engines)."""
    columns = ["round", "client", *CLIENT_STAMPS]
    if not set(CLIENT_STAMPS) <= set(client_history.columns):
        return pd.DataFrame(columns=columns)
    return client_history.loc[client_history[list(CLIENT_STAMPS)].notna().all(axis=1), columns].reset_index(drop=True)


def round_parts(history: pd.DataFrame, timing: pd.DataFrame) -> pd.DataFrame:
    """Per round with stamps: the critical path's parts (:data:`PARTS`, seconds), ``round_s`` and the critical
    ``client``. ``history`` needs round, round_s, sent_t and received_t; ``timing`` is :func:`client_timing`'s table.
    Rounds in which no farmer trained are left out; ``clock_ok`` is False where the wall clock stepped (module
    docstring)."""
    needed = {"round", "round_s", "sent_t", "received_t"}
    if missing := needed - set(history.columns):
        raise ValueError(f"history lacks {sorted(missing)}: it is not a deployment run's history with stamps")
    if timing.empty:
        return pd.DataFrame(columns=["round", "client", *PARTS, "round_s", "clock_ok"])
    last = timing.loc[timing.groupby("round")["train_end_t"].idxmax()]
    t = last.merge(history[list(needed)], on="round", how="inner")
    out = pd.DataFrame({
        "round": t["round"].astype(int), "client": t["client"],
        "pickup_s": t["process_start_t"] - t["sent_t"],
        "startup_s": t["app_enter_t"] - t["process_start_t"],
        "load_s": t["train_start_t"] - t["app_enter_t"],
        "train_s": t["train_end_t"] - t["train_start_t"],
        "return_s": t["received_t"] - t["train_end_t"],
        "server_s": t["round_s"] - (t["received_t"] - t["sent_t"]),
        "round_s": t["round_s"],
    })
    out["clock_ok"] = (out[list(PARTS)] >= -CLOCK_TOLERANCE_S).all(axis=1)
    return out.sort_values("round", ignore_index=True)
