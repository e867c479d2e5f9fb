"""GLUE, federated LoRA aggregation: tables, claims and the conclusion, from the runs' records.

Seed: ``../shared/seeds/004_b0977eb72b9f505e.txt``. Notebook: ``notebooks/05_glue_lora_aggregation.ipynb``. Nothing
here trains: the runs are :mod:`fedpeft.experiments.glue_lora_aggregation.runs`, one DVC stage each.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from fedpeft.core.config import Settings
from fedpeft.core.records import RunRecord
from fedpeft.data import glue
from fedpeft.experiments import runs as run_stages
from fedpeft.experiments.glue_lora_aggregation.experiment import EXPERIMENT as DECLARED
from fedpeft.experiments.glue_lora_aggregation.settings import EXPERIMENT, load  # noqa: F401 - the notebook's API
from fedpeft.federated.ledger import MIB
from fedpeft.reporting.claims import (
    ClaimsLedger,
    Verdict,
    above_chance,
    accuracy_above_chance,
    at_most,
    beyond_one_run,
    fact,
    matches,
    not_testable,
    paired_faster,
    paired_greater,
    paired_less,
    says,
    signal_label,
    stated,
    within,
)
from fedpeft.reporting.outputs import STUDY_PACKAGES, mean_spread, scale_gap

TITLE = DECLARED.title
SEED_REPORT = DECLARED.seed_report
NOTEBOOK = DECLARED.notebook
LIMITATIONS = """\
- `embedded` uses a 2-layer RoBERTa whose encoder the study first trains on separate generated sentences (a
  stand-in for pretraining) and generated SST-2-like sentences with 10 % label noise: it tests the plumbing, not the
  report's claims.
- `local` uses all-MiniLM-L6-v2 (a 6-layer BERT, not RoBERTa) on a stratified sample of the real GLUE data, at the
  scale stated in its parameters, so absolute scores are below RoBERTa's; the comparisons between aggregations are
  what it tests.
- FLoRA is run as a one-shot merge and in the error study, not in the round loop: its adapter's rank grows by K r
  every round, so it needs clients that change shape between rounds, which the round loop does not model.
- Clients with different ranks train one adapter of the largest rank whose extra components stay exactly zero, at
  one scaling `lora_alpha / r` for every client; HetLoRA is run as zero-padding alone (without its sparsity-weighted
  aggregation and rank self-pruning), and FlexLoRA's server keeps the top components at the largest client rank
  rather than the dense mean (its error is in the table).
- The category sharding of a two-label task with K > 2 gives each client a single label; such clients cannot learn
  the task alone, which is the point of the test. Where svd's and naive's accuracy stays at chance there over several
  seeds, the seed's "naive may be less stable with heterogeneous clients" is judged on where the global model's
  validation loss ends (both arms start each seed from the same model), paired by seed: a proxy, since the seed does
  not define "stable"."""
PACKAGES = STUDY_PACKAGES + DECLARED.packages


def collect(s: Settings, progress: bool = True) -> dict[str, RunRecord]:
    """Every planned run's record (see :func:`fedpeft.experiments.runs.collect`)."""
    return run_stages.collect(s, progress)


def federated(records: Mapping[str, RunRecord]) -> list[RunRecord]:
    """The multi-round federated runs, in plan order."""
    return [r for r in records.values() if "errors" in r.tables]


def one_of(records: Mapping[str, RunRecord], table: str) -> RunRecord:
    return next(r for r in records.values() if table in r.tables)


def runs_wall_s(records: Mapping[str, RunRecord]) -> float:
    """Wall seconds of every federated run's training loop together (``scalars.wall_s``; no model loading)."""
    return float(sum(r["wall_s"] for r in federated(records)))


def describe(s: Settings, records: Mapping[str, RunRecord]) -> tuple[str, float]:
    """What ran, as markdown, and the trainable fraction of the adapted model."""
    p = s.params
    r = next(r for r in federated(records) if r["task"] == p["main_task"] and r["client_rank"] == p["lora_rank"])
    trainable, total = r["trainable"], r["total"]
    text = (f"**Data** ({p['source']}, task {p['main_task']}): {r['train_examples']:,} training examples shared by "
            f"{p['num_clients']} clients, {r['eval_examples']:,} validation examples. **Model**: `{p['model']}`, {total:,} parameters; "
            f"LoRA r={p['lora_rank']} on {p['target_modules']} plus the classification head: **{trainable:,} trainable "
            f"({100 * trainable / total:.2f} %)**. **Schedule**: {p['num_rounds']} rounds x {p['local_epochs']:g} local epochs, "
            f"lr {p['learning_rate']:g}, batch {p['batch_size']}; seeds {list(p['seeds'])}.")
    extra = {r["task"]: r for r in federated(records) if r["task"] != p["main_task"]}
    if extra:
        sizes = ", ".join(f"{task} {r['train_examples']:,} training and {r['eval_examples']:,} validation examples"
                          for task, r in sorted(extra.items()))
        text += (f" **Extra tasks** (IID shards, svd and naive aggregation over every seed): {sizes}. A regression task's "
                 "head predicts its largest training score times its output (STS-B: 5 x, `target_scale`), the same as "
                 "training on scores scaled to [0, 1].")
    from fedpeft.reporting.compute import compute_table

    devices = "; ".join(sorted(set(compute_table(records)["device"]))) or "not recorded"
    base = roberta_counts("base", p["lora_rank"])
    per_client = r["train_examples"] // p["num_clients"]
    n = len(p["seeds"])
    text += "\n\n" + scale_gap([
        ("model", f"roberta-base, {base['total']:,} parameters with LoRA and head (counted), {base['trainable']:,} trainable",
         f"`{p['model']}`, {total:,} parameters, {trainable:,} trainable"),
        ("data (SST-2)", "all 67,349 training examples, the 872 validation examples",
         f"{r['train_examples']:,} training examples, {r['eval_examples']:,} validation examples"),
        ("clients, rounds", "3 clients, 5 rounds x 1 local epoch", f"{p['num_clients']} clients, {p['num_rounds']} rounds x "
                                                                  f"{p['local_epochs']:g} local epochs"),
        ("examples per client per round", "about 22,450", f"about {per_client:,}"),
        ("LoRA", "r 8, alpha 8, dropout 0, query and value; SVD rank 8", f"r {p['lora_rank']} on {p['target_modules']}; SVD rank "
                                                                          f"{p['svd_rank']}"),
        ("optimizer, batch", "lr 2e-4, batch 32", f"lr {p['learning_rate']:g}, batch {p['batch_size']}"),
        ("precision, device", "not stated (fp32 by default; a CUDA GPU implied)", f"fp32 on {devices}"),
        ("runs", "no measured scores reported", f"{n + len(p['extra_seeds'])} seeds per aggregation on IID and "
                                                 f"{', '.join(p['repeat_shardings']) or 'no other'} shards, one seed on the other "
                                                 f"shardings; a rank sweep {sorted({p['lora_rank'], *p['rank_sweep']})} and a "
                                                 f"learning-rate study {list(p['lr_study'])} over {n} seeds"),
    ], s.profile)
    return text, trainable / total


def histories(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    return pd.concat([r.tables["history"].assign(task=r["task"], method=r["method"], sharding=r["sharding"], seed=r["seed"],
                                                 client_rank=r["client_rank"]) for r in federated(records)], ignore_index=True)


def shard_summary(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Examples and labels per client of every sharding and seed the runs used."""
    frames = [r.tables["shards"].assign(task=r["task"], sharding=r["sharding"], seed=r["seed"]) for r in federated(records)]
    return pd.concat(frames, ignore_index=True).drop_duplicates(subset=["task", "sharding", "seed", "client"])[
        ["task", "sharding", "seed", "client", "examples", "labels"]]


def warm_start(s: Settings, records: Mapping[str, RunRecord]) -> pd.DataFrame | None:
    """Validation score per round of federated svd rounds started from the centralized adapter, beside the cold
    start of the grid (None when ``warm_start`` is off)."""
    p = s.params
    centralized = one_of(records, "baselines")
    if "warm_history" not in centralized.tables:
        return None
    warm = centralized.tables["warm_history"]
    cold = next(r for r in federated(records) if (r["task"], r["method"], r["sharding"], r["seed"], r["client_rank"])
                == (p["main_task"], "svd", "iid", p["grid_seed"], p["lora_rank"])).tables["history"]
    return pd.DataFrame({"round": cold["round"], "cold start (%)": 100 * cold["server_score"],
                         "warm start (%)": 100 * warm["server_score"]})


def baselines(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    return one_of(records, "baselines").tables["baselines"]


def error_study(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    return one_of(records, "error_study").tables["error_study"]


def one_shot_merge(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """The one-shot merge table; ``attrs`` hold the clients' own scores and sizes."""
    r = one_of(records, "one_shot_merge")
    table = r.tables["one_shot_merge"].copy()
    table.attrs["client_scores"], table.attrs["client_sizes"] = r["client_scores"], r["client_sizes"]
    return table


def communication(scores: pd.DataFrame) -> pd.DataFrame:
    return scores[["task", "method", "sharding", "seed", "client_rank", "round_traffic_MiB", "full_model_round_traffic_MiB",
                   "mean_aggregate_ms", "train_s", "wall_s"]]


def kept_rank(r: RunRecord, svd_rank: int | None = None) -> int:
    """The rank the server kept in a federated run: the rank sweep's own, ``svd_rank`` for svd (when given), else
    the clients' rank."""
    if r.scalars.get("global_rank"):
        return int(r["global_rank"])
    return int(svd_rank) if r["method"] == "svd" and svd_rank else int(r["client_rank"])


def final_scores(records: Mapping[str, RunRecord], svd_rank: int | None = None) -> pd.DataFrame:
    """One row per federated run: the last round's validation metrics, aggregation time and traffic, and the rank
    the server kept (``kept_rank``, from ``svd_rank`` for svd runs outside the rank sweep)."""
    rows = []
    for r in federated(records):
        h = r.tables["history"]
        last = h.iloc[-1]
        per_round = r.tables["ledger_per_round"]
        rows.append({
            "task": r["task"], "method": r["method"], "sharding": r["sharding"], "seed": r["seed"], "client_rank": r["client_rank"],
            "kept_rank": kept_rank(r, svd_rank), "label_skew": r["label_skew"], "score": last["server_score"], "loss": last["server_loss"],
            "chance_score": r["chance_score"],
            "eval_examples": r["eval_examples"],
            "round0_score": h.iloc[0]["server_score"],
            "last_round_gain": last["server_score"] - h.iloc[-2]["server_score"] if len(h) > 1 else np.nan,
            **{c.removeprefix("server_"): last[c] for c in h.columns if c.startswith("server_") and c not in ("server_score", "server_loss")},
            "mean_aggregate_ms": 1000 * (h["aggregate_s"].iloc[1:].to_numpy() - r.tables["measure_s"]["seconds"].to_numpy()).mean(),
            "max_relative_error": r.tables["errors"]["relative_error"].max() if len(r.tables["errors"]) else np.nan,
            "round_traffic_MiB": per_round["total"].mean() / MIB,
            "full_model_round_traffic_MiB": 2 * h["num_clients"].iloc[1] * r["full_model_bytes"] / MIB,
            "train_s": h["train_s"].sum(), "wall_s": r["wall_s"],
        })
    return pd.DataFrame(rows)


def grid_table(scores: pd.DataFrame, task: str, seed: int) -> pd.DataFrame:
    """Final validation score of each aggregation (rows) under each sharding (columns) for one seed, in percent."""
    sub = scores[(scores["task"] == task) & (scores["seed"] == seed)]
    return (100 * sub.pivot_table(index="method", columns="sharding", values="score", aggfunc="mean")).round(2)


def over_seeds(scores: pd.DataFrame) -> pd.DataFrame:
    """Final validation score (percent) of every setting (task, sharding, aggregation, client rank): mean, sample sd
    and number of seeds, beside the chance score (the constant majority predictor; 0 for STS-B's correlation) and
    a signal label: ``no signal`` when the 95 % interval over seeds reaches chance; a single run of an accuracy task
    is judged on the Wilson interval over its evaluation examples, of another metric it has no interval."""
    rows = []
    keys = ["task", "sharding", "method", "client_rank"] + (["kept_rank"] if "kept_rank" in scores else [])
    for key, g in scores.groupby(keys, sort=False):
        task, sharding, method, rank = key[:4]
        mean, spread = mean_spread(100 * g["score"])
        chance = 100 * float(g["chance_score"].iloc[0])
        kept = {"kept_rank": int(key[4])} if len(key) > 4 else {}
        rows.append({"task": task, "sharding": sharding, "method": method, "client_rank": int(rank), **kept, "seeds": len(g),
                     "score_mean_pct": mean, "score_std_pct": spread, "chance_pct": chance,
                     "signal": signal_label(100 * g["score"], chance, int(g["eval_examples"].iloc[0])
                                            if len(g) == 1 and glue.TASKS[task].metrics[0] == "accuracy" else None)})
    return pd.DataFrame(rows)


def seed_table(scores: pd.DataFrame, task: str, rank: int, sharding: str = "iid") -> pd.DataFrame:
    """:func:`over_seeds` for one task and sharding at the main rank: one row per aggregation."""
    table = over_seeds(scores)
    table = table[(table["task"] == task) & (table["sharding"] == sharding) & (table["client_rank"] == rank)]
    return table.drop(columns=["task", "sharding", "client_rank", "kept_rank"], errors="ignore").reset_index(drop=True)


def lr_study(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Centralized LoRA and full fine-tuning at each learning rate of the study, one row per training (all seeds);
    empty when the profile runs no learning-rate study."""
    frames = [r.tables["lr_study"] for r in records.values() if "lr_study" in r.tables]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def lr_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The learning-rate study over seeds: validation score (%) of each training and rate, mean ± sample sd."""
    rows = []
    for (baseline, lr), g in runs.groupby(["baseline", "lr"], sort=False):
        mean, spread = mean_spread(100 * g["score"])
        rows.append({"training": baseline, "lr": lr, "seeds": len(g), "score_mean_pct": mean, "score_std_pct": spread})
    return pd.DataFrame(rows)


def rank_sweep(scores: pd.DataFrame, s: Settings, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """svd on IID shards with the server keeping the clients' rank, per rank over seeds (score in %), beside
    centralized full fine-tuning at the study's lower learning rate (the seed's rate for it) when ``runs`` (the
    learning-rate study) has it."""
    sel = scores[(scores["task"] == s["main_task"]) & (scores["sharding"] == "iid") & (scores["method"] == "svd")
                 & (scores["client_rank"] == scores["kept_rank"])]
    rows = []
    for rank, g in sel.groupby("client_rank"):
        mean, spread = mean_spread(100 * g["score"])
        rows.append({"setting": f"LoRA r {int(rank)}", "rank": int(rank), "seeds": len(g), "score_mean_pct": mean, "score_std_pct": spread})
    if runs is not None and len(runs):
        full = runs[(runs["baseline"] == "full fine-tuning") & (runs["lr"] == runs["lr"].min())]
        mean, spread = mean_spread(100 * full["score"])
        rows.append({"setting": f"full fine-tuning (centralized, lr {runs['lr'].min():g})", "rank": np.nan, "seeds": len(full),
                     "score_mean_pct": mean, "score_std_pct": spread})
    return pd.DataFrame(rows)


def mixed_rank(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """One row per mixed-rank run (clients of different ranks): the last round's validation score, the largest
    aggregation error against the exact mean delta-W, the mean traffic per round, and the smallest and largest
    client's upload per round; empty when the profile runs none."""
    rows = []
    for r in records.values():
        if "mixed_history" not in r.tables:
            continue
        h, by_client = r.tables["mixed_history"], r.tables["traffic_by_client"]
        errors = r.tables["mixed_errors"]["relative_error"]
        rows.append({"method": r["method"], "seed": r["seed"], "client_ranks": "/".join(str(k) for k in r["client_ranks"]),
                     "global_rank": r["global_rank"], "score": h.iloc[-1]["server_score"], "round0_score": h.iloc[0]["server_score"],
                     "chance_score": r["chance_score"], "max_relative_error": errors.max() if len(errors) else np.nan,
                     "round_traffic_MiB": r.tables["ledger_per_round"]["total"].mean() / MIB,
                     "min_rank_up_MiB": by_client.loc[by_client["rank"].idxmin(), "up_bytes"] / MIB,
                     "max_rank_up_MiB": by_client.loc[by_client["rank"].idxmax(), "up_bytes"] / MIB})
    return pd.DataFrame(rows)


def mixed_histories(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """The per-round history of every mixed-rank run, with its method, seed and client ranks."""
    return pd.concat([r.tables["mixed_history"].assign(method=r["method"], seed=r["seed"],
                                                       client_ranks="/".join(str(k) for k in r["client_ranks"]))
                      for r in records.values() if "mixed_history" in r.tables], ignore_index=True)


def mixed_rank_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The mixed-rank runs over seeds, one row per aggregation: score (%) mean and sample sd, the largest aggregation
    error and the traffic."""
    rows = []
    for method, g in runs.groupby("method", sort=False):
        mean, spread = mean_spread(100 * g["score"])
        rows.append({"aggregation": method, "client ranks": g["client_ranks"].iloc[0], "server rank": int(g["global_rank"].iloc[0]),
                     "seeds": len(g), "score_mean_pct": mean, "score_std_pct": spread,
                     "max_relative_error": g["max_relative_error"].max(), "MiB_per_round": g["round_traffic_MiB"].mean(),
                     "smallest client up (MiB/round)": g["min_rank_up_MiB"].mean(),
                     "largest client up (MiB/round)": g["max_rank_up_MiB"].mean()})
    return pd.DataFrame(rows)


def _scores(scores: pd.DataFrame, task: str, sharding: str, method: str, rank: int) -> list[float]:
    sel = scores[(scores["task"] == task) & (scores["sharding"] == sharding) & (scores["method"] == method)
                 & (scores["client_rank"] == rank)]
    return (100 * sel.sort_values("seed")["score"]).tolist()


def error_by_round(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Mean and max over layers of each round's aggregation error, per run."""
    frames = [r.tables["errors"].assign(sharding=r["sharding"], seed=r["seed"], client_rank=r["client_rank"])
              for r in federated(records) if len(r.tables["errors"])]
    df = pd.concat(frames)
    return df.groupby(["method", "sharding", "client_rank", "seed", "round"], as_index=False)["relative_error"].agg(["mean", "max"])


def still_rising(scores: pd.DataFrame, task: str, rank: int) -> str:
    """A note for a task that has not (yet) beaten chance: in how many seeds the svd/IID score still rose in the
    last round, so a reader can tell "has not learned yet" from "stays at chance"."""
    sel = scores[(scores["task"] == task) & (scores["sharding"] == "iid") & (scores["method"] == "svd")
                 & (scores["client_rank"] == rank)].sort_values("seed")
    gains = 100 * sel["last_round_gain"].dropna()
    if not len(gains):
        return ""
    per_seed = ", ".join(f"{100 * v:.1f}" for v in sel["score"])
    return (f"per seed {per_seed}; the score still rose in the last round in {int((gains > 0).sum())} of {len(gains)} "
            f"seeds (mean {gains.mean():+.1f} points): more rounds may decide")


def one_model_learns(task: str, score: float, chance: float, eval_examples: int, what: str) -> Verdict:
    """Whether one trained model (no seeds to spread over) beats chance. Accuracy tasks carry the evaluation set's
    sampling error (a Wilson interval over ``eval_examples``); other metrics have no interval here: inconclusive.
    ``score`` and ``chance`` are fractions."""
    if glue.TASKS[task].metrics[0] == "accuracy":
        return accuracy_above_chance(score, chance, eval_examples, what)
    return above_chance([100 * score], 100 * chance, what, "{:.2f}", " %", "models")


#: RoBERTa's published dimensions (the seed's models), to count their parameters on the meta device offline.
ROBERTA = {"base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
           "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096}}


def roberta_counts(size: str, rank: int = 8, targets: tuple[str, ...] = ("query", "value"), num_labels: int = 2) -> dict[str, int]:
    """Parameters of RoBERTa-``size`` for sequence classification (built on the meta device from its published
    dimensions: vocabulary 50,265, 514 positions; ``model``), with the LoRA matrices (``total``), and the seed's trainable ones: LoRA r ``rank`` on ``targets`` of every
    layer plus the classification head (its two linear layers). Exact counts; nothing is downloaded."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(vocab_size=50_265, max_position_embeddings=514, type_vocab_size=1, num_labels=num_labels, **ROBERTA[size])
    with torch.device("meta"):
        model = RobertaForSequenceClassification(config)
    total = sum(p.numel() for p in model.parameters())
    h = config.hidden_size
    lora = config.num_hidden_layers * len(targets) * rank * (h + h)
    head = sum(p.numel() for p in model.classifier.parameters())
    return {"model": total, "total": total + lora, "trainable": lora + head, "lora": lora, "head": head}


def build_claims(s: Settings, scores: pd.DataFrame, errors: pd.DataFrame, baselines: pd.DataFrame, merge: pd.DataFrame,
                 trainable: float, warm: pd.DataFrame | None = None, lr_runs: pd.DataFrame | None = None,
                 mixed_runs: pd.DataFrame | None = None) -> ClaimsLedger:
    """Every claim of the seed (``004_b0977eb72b9f505e.txt``) and the study's own checks, judged by the claims engine.

    ``trainable``: the fraction of this profile's model's parameters that LoRA trains. Scores are percent (F1 and
    correlations x 100). Aggregation methods of one seed share its shards and training, so they are compared paired
    by seed; the error study's methods share each case's client adapters, so they are paired by case (a client count
    x a sharding, one seed). The seed is a README: it states no measured score, so its claims are directions and
    capabilities, and its model sizes are counted on RoBERTa's published architecture. ``lr_runs``
    (:func:`lr_study`) judges the learning-rate advice, and with the rank sweep's runs in ``scores`` the rank
    guidance's r 32 against full fine-tuning."""
    task, rank = s["main_task"], s["lora_rank"]
    ledger = ClaimsLedger(s.profile, EXPERIMENT)
    base, large = roberta_counts("base", rank), roberta_counts("large", rank)
    ledger.add("roberta-base has ~125M parameters", "~125M", matches(base["model"], stated("125", 1e6), "parameters", "{:,.0f}",
                                                                      " parameters"), "setup",
               "for sequence classification (with its head); counted on the meta device", key="base_params")
    ledger.add("roberta-large has ~355M parameters", "~355M", matches(large["model"], stated("355", 1e6), "parameters", "{:,.0f}",
                                                                       " parameters"), "setup",
               "for sequence classification (with its head); counted on the meta device")
    ledger.add("LoRA trains < 1 % of the parameters", "< 1 %",
               at_most(100 * base["trainable"] / base["total"], 1.0, "roberta-base's trainable share", "{:.2f}", " %"), "setup",
               f"LoRA r {rank} on query and value ({base['lora']:,}) plus the head ({base['head']:,}); this profile's `{s['model']}` "
               f"trains {100 * trainable:.2f} %", key="trainable_share")
    chance = 100 * float(scores.loc[scores["task"] == task, "chance_score"].iloc[0])
    n_eval = int(scores.loc[scores["task"] == task, "eval_examples"].iloc[0])

    def per_seed(t: str, sharding: str, method: str, r: int, kept: int | None = None, column: str = "score") -> pd.Series:
        sel = scores[(scores["task"] == t) & (scores["sharding"] == sharding) & (scores["method"] == method) & (scores["client_rank"] == r)]
        if kept is not None and "kept_rank" in sel:
            sel = sel[sel["kept_rank"] == kept]
        return (100 if column == "score" else 1) * sel.set_index("seed")[column]

    svd, naive = per_seed(task, "iid", "svd", rank), per_seed(task, "iid", "naive", rank)
    svd_r = errors[errors["method"] == f"svd r={s['svd_rank']}"].set_index(["clients", "sharding"])["mean_relative_error"]
    naive_e = errors[errors["method"] == "naive"].set_index(["clients", "sharding"])["mean_relative_error"]
    if len(svd_r) and len(naive_e):
        ledger.add(f"SVD aggregation (at the rank the runs keep, r = {s['svd_rank']}) is better aligned with FedAvg than naive",
                   "better aligned with FedAvg", paired_less(svd_r, naive_e, 0.0, "svd - naive mean relative error of delta-W",
                                                            "{:+.3f}", " relative error", "error-study cases (fixed client counts x shardings of one seed and one round), paired"),
                   "error_study", "relative error = |aggregated delta-W - mean delta-W| / |mean delta-W|, mean over layers, one round",
                   key="svd_aligned")
    for sharding in [sh for sh in s["shardings"] if sh != "iid"]:
        a, b = per_seed(task, sharding, "svd", rank), per_seed(task, sharding, "naive", rank)
        if len(a) and len(b):
            one = len(a) == 1
            learned = any(signal_label(x.tolist(), chance, n_eval if one and glue.TASKS[task].metrics[0] == "accuracy" else None)
                          == "above chance" for x in (a, b))
            verdict = paired_greater(a, b, 0.0, f"svd - naive final score on {sharding} shards", "{:+.2f}", " points",
                                     "seeds, paired")
            how, key = "judged on the final score (a less stable aggregation ends lower)", f"naive_unstable_{sharding}"
            if not learned and "loss" in scores and not one:
                # accuracy pinned at chance: the aggregation whose global model's validation loss climbs higher is the
                # less stable one
                verdict = paired_greater(per_seed(task, sharding, "naive", rank, column="loss"),
                                         per_seed(task, sharding, "svd", rank, column="loss"), 0.0,
                                         f"naive - svd final validation loss on {sharding} shards", "{:+.3f}", " nats", "seeds, paired")
                how = (f"neither arm's accuracy beats chance ({chance:.1f} %) over the seeds, so judged on the final validation loss, a proxy "
                       "(the seed does not define 'stable'): read here as the less stable aggregation's global model ending "
                       "at the higher loss")
                key += "_loss"
            elif not learned:
                verdict = not_testable(f"both arms stay at chance ({chance:.1f} %) on these shards, so they cannot separate the "
                                       "methods" + ("; one run a side leaves no interval on the loss" if one else ""),
                                       verdict.measured, needs="signal")
            ledger.add(f"Naive averaging is less stable with heterogeneous clients ({sharding} shards)", "may be less stable",
                       verdict, "over_seeds", how + "; " + ("one run a side: no interval" if one else f"{len(a)} seeds, paired"),
                       key=key)
    times = scores[(scores["task"] == task) & (scores["sharding"] == "iid") & (scores["client_rank"] == rank)]
    t_svd = times[times["method"] == "svd"].set_index("seed")["mean_aggregate_ms"]
    t_naive = times[times["method"] == "naive"].set_index("seed")["mean_aggregate_ms"]
    if len(t_svd) and len(t_naive):
        ledger.add("Naive averaging is faster (no SVD)", "faster", paired_faster(1 / t_naive, 1 / t_svd, "naive / svd aggregations per s",
                                                                                 "runs (IID, paired by seed)"),
                   "communication_and_time", "the server's aggregation time per round, mean over each run's rounds")
    ledger.add("Naive averaging keeps the exact rank and cannot compress it", "cannot compress rank",
               fact(f"naive global rank = client rank = {rank}", "averaging A and B separately keeps their shapes"), "setup")
    comp = s["compress_client_rank"]
    compressed = per_seed(task, "iid", "svd", comp, kept=s["svd_rank"]) if comp else pd.Series(dtype=float)
    if len(compressed) and len(svd):
        ledger.add(f"Clients can train at r = {comp} and the server compress to r = {s['svd_rank']}", "supported (e.g. r 16 -> 8)",
                   fact(f"{len(compressed)} runs trained at r {comp}, aggregated at r {s['svd_rank']}",
                        "the server's SVD keeps the top s['svd_rank'] singular directions of the mean delta-W".replace(
                            "s['svd_rank']", str(s["svd_rank"]))), "over_seeds")
    ledger.add("The script averages both the LoRA adapters and the classification head", "adapters and head",
               fact("every message carries the head", "the study's aggregation averages the head with the adapters "
                    "(fedpeft.federated.lora_aggregation)"), "setup")
    _mixed_ranks(ledger, s, mixed_runs if mixed_runs is not None else pd.DataFrame())
    lr_runs = lr_runs if lr_runs is not None else pd.DataFrame()
    _rank_guidance(ledger, s, {r: per_seed(task, "iid", "svd", r, kept=r) for r in {rank, *s["rank_sweep"]}}, lr_runs)
    _learning_rates(ledger, s, lr_runs)
    present = sorted({task, *s["extra_tasks"]})
    ledger.add("The code supports all 9 GLUE tasks", "9 tasks",
               not_testable(f"the data here holds {', '.join(t.upper() for t in present)}; the study's code defines "
                            f"{len(glue.TASKS)} tasks and the runs learn these (study checks)", needs="seed data"), "setup")

    # --- the study's own checks ---
    if len(svd):
        ledger.check(f"Federated LoRA learns {task.upper()} (above the majority class)",
                     above_chance(svd.tolist(), chance, "svd, IID, validation score", "{:.2f}", " %"), "over_seeds",
                     "without it no aggregation comparison means anything", key="learns")
    kr = errors[errors["method"].str.contains("=K r", regex=False)]
    if len(kr):
        ledger.check("delta-W averaging + SVD at rank K r is exactly FedAvg of the clients' updates",
                     fact(f"max relative error {kr['max_relative_error'].max():.1e} at rank K r",
                          "the mean of K rank-r updates has rank at most K r, so an SVD kept at K r reproduces it"), "error_study")
    if len(svd) and len(naive):
        ledger.check("SVD aggregation trains a better global model than naive A/B averaging (IID)",
                     paired_greater(svd, naive, 0.0, "svd - naive validation score", "{:+.2f}", " points", "seeds, paired"),
                     "over_seeds", seed_figure="implied (better aligned)", key="svd_better")
    if len(compressed) and len(svd):
        ledger.check(f"Training at r = {comp} and compressing to r = {s['svd_rank']} loses less than 2 points",
                     paired_greater(*common_seeds(compressed, svd), -2.0, f"r {comp} compressed - r {rank} score", "{:+.2f}", " points",
                                    "seeds, paired"), "over_seeds", "non-inferiority: holds when the loss is surely under 2 points")
    skews = scores[(scores["task"] == task) & (scores["sharding"] == "iid")].drop_duplicates("seed")["label_skew"]
    ledger.check("IID shards keep the label distribution across clients (label skew below 0.05)",
                 within(skews.tolist(), 0.0, 0.05, "label skew (total variation distance)", "{:.3f}", " TV", "shardings (one per seed)"),
                 "shards", seed_figure="stratified")
    for t in s["extra_tasks"]:
        values = per_seed(t, "iid", "svd", rank)
        if len(values):
            c = 100 * float(scores.loc[scores["task"] == t, "chance_score"].iloc[0])
            verdict = above_chance(values.tolist(), c, "svd, IID, validation score", "{:.2f}", " %")
            ledger.check(f"Federated LoRA learns {t.upper()} (a task the seed supports)", verdict,
                         "over_seeds", "" if verdict.verdict == "holds" else still_rising(scores, t, rank), key=f"learns_{t}")
    cen = baselines.set_index("baseline")["score"]
    seed_merge = merge[(merge["method"] == "svd") & merge["weighting"].str.startswith("manifest")]
    if len(merge) and not len(seed_merge):
        raise ValueError(f"the one-shot merge table has no svd merge with manifest weights (fedavg_merge.py's); it has "
                         f"{merge[['method', 'weighting']].to_dict('records')}")
    if len(seed_merge):
        alone = ", ".join(f"{100 * v:.1f}" for v in merge.attrs.get("client_scores", []))
        ledger.check("A one-shot merge of independently trained adapters (fedavg_merge.py) gives a working global adapter",
                     one_model_learns(task, float(seed_merge["score"].iloc[0]), chance / 100, n_eval,
                                      "the merged adapter's score (svd, manifest weights, as fedavg_merge.py)"),
                     "one_shot_merge", "one merge, one seed" + (f"; the clients' adapters alone score {alone} %" if alone else ""),
                     seed_figure="use case", key="merge")
    if "centralized LoRA" in cen.index:
        ledger.check("Centralized LoRA learns the task (the upper reference)",
                     one_model_learns(task, float(cen["centralized LoRA"]), chance / 100, n_eval, "score"), "baselines", "one seed",
                     seed_figure="baseline")
    fedex, naive_runs = per_seed(task, "iid", "fedex", rank), per_seed(task, "iid", "naive", rank)
    fx = scores[(scores["task"] == task) & (scores["method"] == "fedex")]
    if len(fx):
        ledger.check("FedEx-LoRA's frozen weight plus adapter is exactly the mean of the clients' updates (every layer and round)",
                     at_most(float(fx["max_relative_error"].max()), 1e-5, "largest relative error of delta-W", "{:.1e}", " relative error"),
                     "round_errors", f"{len(fx)} runs; the residual mean(B A) - mean(B) mean(A) is folded into the frozen weight",
                     seed_figure="not in the seed", key="fedex_exact")
        iid = scores[(scores["task"] == task) & (scores["sharding"] == "iid") & (scores["client_rank"] == rank)]
        traffic = iid.groupby("method")["round_traffic_MiB"].mean()
        if {"fedex", "naive"} <= set(traffic.index):
            ledger.check("FedEx-LoRA's exactness costs traffic: the dense residual travels to every client each round",
                         fact(f"{traffic['fedex']:.2f} MiB per round against naive's {traffic['naive']:.2f} MiB "
                              f"({traffic['fedex'] / traffic['naive']:.1f}x)", "counted by the ledger, both directions, "
                              "all clients"), "communication_and_time", seed_figure="not in the seed", key="fedex_traffic")
    if len(fedex) and len(naive_runs):
        ledger.check("FedEx-LoRA (exact) trains a better global model than naive A/B averaging (IID)",
                     paired_greater(fedex, naive_runs, 0.0, "fedex - naive validation score", "{:+.2f}", " points", "seeds, paired"),
                     "over_seeds", "the same A/B averages; FedEx adds what their product misses", seed_figure="not in the seed",
                     key="fedex_better")
    if warm is not None and len(svd):
        ledger.add("Warm-starting the federated rounds from a centralized adapter (--init_adapter) helps", "recommended (tip 6)",
                   beyond_one_run(float(warm["warm start (%)"].iloc[-1]), svd.tolist(), "warm-started final validation score",
                                  "{:.2f}", " %", "cold-started seeds"), "warm_start",
                   "one warm-started run (the grid seed) against the cold-started runs over seeds: helps = ends above them",
                   key="warm")
    return ledger


def _mixed_ranks(ledger: ClaimsLedger, s: Settings, runs: pd.DataFrame) -> None:
    """The seed's "SVD is more stable when clients have different ranks", from the mixed-rank runs
    (:func:`mixed_rank`): SVD to the common rank against HetLoRA's zero-padding (the naive average of the padded
    factors, the seed's other method made to take different ranks), paired by seed on the final score, as the seed's
    "naive is less stable with heterogeneous clients" is judged; and, as the study's check, FlexLoRA against SVD."""
    claim, figure = "SVD aggregation is more stable when clients have different ranks", "advantage"
    per = {m: g.set_index("seed")["score"] * 100 for m, g in runs.groupby("method")} if len(runs) else {}
    if not {"svd", "hetlora"} <= set(per):
        ranks = list(s["mixed_ranks"])
        why = (f"the profile runs no clients of different ranks (mixed_ranks: {ranks})" if not ranks else
               f"mixed_rank_aggregations {list(s['mixed_rank_aggregations'])} lacks svd or hetlora, or their runs are missing")
        ledger.add(claim, figure, not_testable(why, needs="new arm"), "mixed_rank")
        return
    ranks = runs["client_ranks"].iloc[0]
    kept = runs.groupby("method")["global_rank"].first()
    note = (f"clients of ranks {ranks} on IID shards; svd keeps rank {int(kept['svd'])} (a client above it restarts its extra "
            f"components every round), HetLoRA averages the zero-padded A and B at rank {int(kept['hetlora'])}; judged on the "
            "final score, as the seed's 'naive is less stable' (a less stable aggregation ends lower)")
    ledger.add(claim, figure, paired_greater(*common_seeds(per["svd"], per["hetlora"]), 0.0,
                                             "svd - HetLoRA zero-padding final score", "{:+.2f}", " points", "seeds, paired"),
               "mixed_rank", note, key="mixed_svd")
    if "flexlora" in per:
        ledger.check("With clients of different ranks, FlexLoRA (each client its top components of the mean's SVD) trains a "
                     "better global model than SVD to a common rank",
                     paired_greater(*common_seeds(per["flexlora"], per["svd"]), 0.0, "FlexLoRA - svd final score", "{:+.2f}",
                                    " points", "seeds, paired"),
                     "mixed_rank", f"clients of ranks {ranks}, IID; the two differ in the rank the server keeps: FlexLoRA "
                                   f"{int(runs.loc[runs['method'] == 'flexlora', 'global_rank'].iloc[0])} (each client its own "
                                   f"rank's components), svd {int(kept['svd'])}",
                     seed_figure="not in the seed", key="mixed_flex")


def common_seeds(a: pd.Series, b: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Two arms indexed by seed, kept to the seeds both ran (the extra seeds repeat some comparisons only)."""
    seeds = a.index.intersection(b.index)
    return a.loc[seeds], b.loc[seeds]


def _rank_guidance(ledger: ClaimsLedger, s: Settings, by_rank: Mapping[int, pd.Series], lr_runs: pd.DataFrame) -> None:
    """The seed's "r 4 may sacrifice accuracy, 8 is a good balance, 16 higher, 32 approaching full fine-tuning", one
    row per comparison: svd on IID shards with the server keeping each rank, paired by seed against r 8 (and r 32
    against centralized full fine-tuning at the study's lower learning rate)."""
    have = {r: v for r, v in by_rank.items() if len(v)}
    missing = lambda r: not_testable(f"the profile's rank_sweep {list(s['rank_sweep'])} with lora_rank {s['lora_rank']} has no r {r}", needs="new arm")
    unit = dict(fmt="{:+.2f}", unit=" points", n_counts="seeds, paired")
    note = "svd on IID shards, the server keeping the clients' rank; final validation score"
    ledger.add("Rank guidance: r 4 may sacrifice accuracy (against r 8)", "r 4 may sacrifice accuracy",
               paired_less(*common_seeds(have[4], have[8]), 0.0, "r 4 - r 8 score", **unit) if {4, 8} <= set(have) else missing(4 if 8 in have else 8),
               "rank_sweep", note, key="rank4")
    ledger.add("Rank guidance: r 16 gives higher accuracy than r 8", "r 16 higher",
               paired_greater(*common_seeds(have[16], have[8]), 0.0, "r 16 - r 8 score", **unit) if {16, 8} <= set(have) else missing(16 if 8 in have else 8),
               "rank_sweep", note, key="rank16")
    full = lr_runs[(lr_runs["baseline"] == "full fine-tuning") & (lr_runs["lr"] == lr_runs["lr"].min())] if len(lr_runs) else lr_runs
    if 32 in have and len(full):
        verdict = paired_greater(*common_seeds(have[32], 100 * full.set_index("seed")["score"]), -1.0,
                                 "r 32 - full fine-tuning score", **unit)
    else:
        verdict = missing(32) if 32 not in have else not_testable("no full fine-tuning over seeds (lr_study: [])", needs="new arm")
    ledger.add("Rank guidance: r 32 approaches full fine-tuning (at most 1 point below)", "r 32 near full fine-tuning", verdict,
               "rank_sweep", "federated r 32 against centralized full fine-tuning at the study's lower learning rate, paired "
               "by seed: the gap also holds what federation costs; 'near' read as at most 1 point below", key="rank32",
               few_seeds=lr_study_few_seeds(lr_runs, paired_with=True) if len(lr_runs) else None)


def lr_study_few_seeds(lr_runs: pd.DataFrame, paired_with: bool = False) -> str:
    """Why the learning-rate study has fewer seeds than the rest (``paired_with``: said of a row paired with it),
    from its records."""
    minutes = lr_runs.groupby("seed")["train_s"].sum().mean() / 60
    why = (f"each seed trains four centralized models ({minutes:.0f} min of training a seed here), the GLUE runs' "
           "longest; further seeds did not fit the CPU budget")
    return f"the full fine-tuning it is paired with comes from the learning-rate study, where {why}" if paired_with else why


def _learning_rates(ledger: ClaimsLedger, s: Settings, lr_runs: pd.DataFrame) -> None:
    """The seed's advice, 2e-4 for LoRA and 2e-5 for full fine-tuning, as two paired comparisons over seeds: each
    training at its recommended rate against the other's."""
    if not len(lr_runs) or lr_runs["lr"].nunique() < 2:
        reason = not_testable(f"the profile runs no learning-rate study (lr_study: {list(s['lr_study'])})", needs="new arm")
        ledger.add("LoRA's learning rate (2e-4) is higher than full fine-tuning's (2e-5)", "2e-4 vs 2e-5", reason, "setup")
        return
    high, low = float(lr_runs["lr"].max()), float(lr_runs["lr"].min())

    def arm(baseline: str, lr: float) -> pd.Series:
        sel = lr_runs[(lr_runs["baseline"] == baseline) & (lr_runs["lr"] == lr)]
        return 100 * sel.set_index("seed")["score"]

    unit = dict(fmt="{:+.2f}", unit=" points", n_counts="seeds, paired")
    note = f"centralized, {int(lr_runs['epochs'].iloc[0])} epochs on the pooled data; the study's rates {high:g} and {low:g}"
    few = lr_study_few_seeds(lr_runs)
    ledger.add(f"LoRA's learning rate (2e-4) is higher than full fine-tuning's (2e-5): LoRA learns better at {high:g} than at {low:g}",
               "2e-4 for LoRA", paired_greater(arm("centralized LoRA", high), arm("centralized LoRA", low), 0.0,
                                               f"LoRA at {high:g} - at {low:g} score", **unit), "lr_study", note, key="lr_lora",
               few_seeds=few)
    ledger.add(f"... and full fine-tuning learns better at {low:g} than at {high:g}", "2e-5 for full fine-tuning",
               paired_greater(arm("full fine-tuning", low), arm("full fine-tuning", high), 0.0,
                              f"full fine-tuning at {low:g} - at {high:g} score", **unit), "lr_study", note, key="lr_full",
               few_seeds=few)


def metrics(s: Settings, scores: pd.DataFrame, seeds: pd.DataFrame, study: pd.DataFrame, merge: pd.DataFrame,
            baselines: pd.DataFrame, runs_wall_s: float) -> dict[str, float]:
    """Flat numbers for ``dvc metrics``: scores in percent, errors as fractions, times in seconds."""
    out: dict[str, float] = {}
    main = scores[(scores["task"] == s["main_task"]) & (scores["client_rank"] == s["lora_rank"]) & (scores["seed"] == s["grid_seed"])]
    for _, r in main.iterrows():
        out[f"{r['task']}_{r['method']}_{r['sharding']}_score_pct"] = 100 * r["score"]
        out[f"{r['task']}_{r['method']}_{r['sharding']}_max_error"] = r["max_relative_error"]
    for _, r in seeds.iterrows():
        out[f"{s['main_task']}_{r['method']}_iid_seed_mean_pct"] = r["score_mean_pct"]
        out[f"{s['main_task']}_{r['method']}_iid_seed_std_pct"] = r["score_std_pct"]
    for _, r in scores[scores["task"] != s["main_task"]].iterrows():
        out[f"{r['task']}_{r['method']}_iid_score"] = r["score"]
    for _, r in merge.iterrows():
        out[f"merge_{r['method']}_{r['weighting'].split()[0]}_score_pct"] = 100 * r["score"]
    for _, r in baselines.iterrows():
        out[f"baseline_{r['baseline'].replace(' ', '_')}_score_pct"] = 100 * r["score"]
    out["naive_max_error_in_study"] = float(study[study["method"] == "naive"]["max_relative_error"].max())
    out["mean_svd_aggregate_ms"] = float(scores[scores["method"] == "svd"]["mean_aggregate_ms"].mean())
    out["federated_runs_wall_s"] = runs_wall_s
    return out


def extra_task_sentences(scores: pd.DataFrame, tasks, rank: int) -> list[str]:
    """One sentence per extra task with IID runs: each aggregation's final headline metric (percent) over seeds,
    mean ± sample sd, and its signal label against chance."""
    out = []
    for task in tasks:
        extra = seed_table(scores, task, rank)
        if len(extra):
            txt = ", ".join(f"{r['method']} {r['score_mean_pct']:.2f} ± {r['score_std_pct']:.2f} ({r['signal']})"
                            for _, r in extra.iterrows())
            out.append(f"On {task} ({glue.get_task(task).metrics[0]} in %, IID, {int(extra['seeds'].max())} seeds; chance "
                       f"{extra['chance_pct'].iloc[0]:.2f}): {txt}.")
    return out


def finding(s: Settings, scores: pd.DataFrame, seeds: pd.DataFrame, study: pd.DataFrame, merge: pd.DataFrame,
            baselines: pd.DataFrame, runs_wall_s: float, trainable: float, claims: ClaimsLedger,
            ranks: pd.DataFrame | None = None, lrs: pd.DataFrame | None = None, mixed: pd.DataFrame | None = None) -> str:
    """The report's opening paragraph, written from the measured tables and the ledger's verdicts; ``ranks``
    (:func:`rank_sweep`), ``lrs`` (:func:`lr_table`) and ``mixed`` (:func:`mixed_rank_table`) add the rank sweep, the
    learning-rate study and the clients of different ranks."""
    v = claims.verdicts
    main = scores[(scores["task"] == s["main_task"]) & (scores["client_rank"] == s["lora_rank"]) & (scores["seed"] == s["grid_seed"])]
    by = main.set_index(["method", "sharding"])["score"]
    chance = 100 * float(scores.loc[scores["task"] == s["main_task"], "chance_score"].iloc[0])
    parts = [f"LoRA trains {100 * trainable:.2f} % of `{s['model']}`'s parameters here; "
             + says(v["trainable_share"], "on the seed's roberta-base it trains {measured}, under the seed's 1 %.",
                    "on the seed's roberta-base it trains {measured}, over the seed's 1 %.", "", "")]
    if len(seeds):
        txt = ", ".join(f"{r['method']} {r['score_mean_pct']:.2f} ± {r['score_std_pct']:.2f} %" for _, r in seeds.iterrows())
        parts.append(f"On IID shards of {s['main_task']} after {s['num_rounds']} rounds ({int(seeds['seeds'].max())} seeds): {txt}.")
    if "svd_better" in v:
        parts.append(says(v["svd_better"], "SVD aggregation trains the better global model, paired by seed ({measured}).",
                          "Naive A/B averaging trains the better global model, paired by seed ({measured}).",
                          "SVD aggregation and naive A/B averaging cannot be told apart by their global models "
                          "(paired by seed: {measured}).", ""))
    if "fedex_exact" in v:
        parts.append(says(v["fedex_exact"], "FedEx-LoRA reproduces the mean update exactly ({measured})",
                          "FedEx-LoRA misses the mean update ({measured})", "", "")
                     + (says(v["fedex_traffic"], ", at {measured}.", "", "", "") if "fedex_traffic" in v else ".")
                     + (" " + says(v["fedex_better"], "Its global model beats naive averaging's, paired by seed ({measured}).",
                                   "Its global model falls below naive averaging's, paired by seed ({measured}).",
                                   "Its global model cannot be told apart from naive averaging's, paired by seed ({measured}).", "")
                        if "fedex_better" in v else ""))
    if ranks is not None and len(ranks):
        txt = ", ".join(f"{r['setting']} {r['score_mean_pct']:.2f} ± {r['score_std_pct']:.2f}" for _, r in ranks.iterrows())
        parts.append(f"Rank sweep (svd, IID, the server keeping each rank; mean ± sd over seeds, %): {txt}.")
    if lrs is not None and len(lrs):
        txt = ", ".join(f"{r['training']} at {r['lr']:g} {r['score_mean_pct']:.2f} ± {r['score_std_pct']:.2f}" for _, r in lrs.iterrows())
        parts.append(f"Learning rates (centralized, %): {txt}"
                     + (": " + says(v["lr_lora"], "LoRA does better at the higher rate", "LoRA does worse at the higher rate",
                                    "LoRA's two rates cannot be told apart", "") + " and "
                        + says(v["lr_full"], "full fine-tuning at the lower, as the seed advises.",
                               "full fine-tuning does worse at the lower, against the seed's advice.",
                               "full fine-tuning's two rates cannot be told apart.", "") if "lr_lora" in v else "."))
    if mixed is not None and len(mixed) and "mixed_svd" in v:
        txt = ", ".join(f"{r['aggregation']} {r['score_mean_pct']:.2f} ± {r['score_std_pct']:.2f}" for _, r in mixed.iterrows())
        parts.append(f"With clients of ranks {mixed['client ranks'].iloc[0]} (IID, %): {txt}; "
                     + says(v["mixed_svd"], "SVD to a common rank beats HetLoRA's zero-padding, paired by seed ({measured})",
                            "SVD to a common rank falls below HetLoRA's zero-padding, paired by seed ({measured})",
                            "SVD to a common rank and HetLoRA's zero-padding cannot be told apart, paired by seed ({measured})", "")
                     + (says(v["mixed_flex"], ", and FlexLoRA beats SVD ({measured}).", ", and FlexLoRA falls below SVD ({measured}).",
                             ", and FlexLoRA and SVD cannot be told apart ({measured}).", ".") if "mixed_flex" in v else "."))
    parts += extra_task_sentences(scores, s["extra_tasks"], s["lora_rank"])
    category = scores[(scores["task"] == s["main_task"]) & (scores["client_rank"] == s["lora_rank"]) & (scores["sharding"] == "category")]
    runs_per_arm = category.groupby("method")["seed"].nunique()
    if runs_per_arm.get("svd", 0) > 1 and runs_per_arm.get("naive", 0) > 1:
        arms = {m: mean_spread(100 * category.loc[category["method"] == m, "score"]) for m in ("svd", "naive")}
        parts.append(f"With one label per client (category shards, {int(runs_per_arm[['svd', 'naive']].min())} seeds; chance "
                     f"{chance:.2f} %) svd reaches {arms['svd'][0]:.2f} ± {arms['svd'][1]:.2f} % and naive "
                     f"{arms['naive'][0]:.2f} ± {arms['naive'][1]:.2f} %.")
    elif ("svd", "category") in by.index and ("naive", "category") in by.index:
        cat = {m: 100 * by[(m, "category")] for m in ("svd", "naive")}
        at_chance = all(abs(x - chance) < 0.005 for x in cat.values())
        parts.append(f"With one label per client (category shards) svd reaches {cat['svd']:.2f} % and naive {cat['naive']:.2f} %"
                     + (f": both exactly the majority-class rate ({chance:.2f} %), a global model that predicts one class."
                        if at_chance else f" (chance {chance:.2f} %)."))
    if "naive_unstable_category_loss" in v:
        parts.append(says(v["naive_unstable_category_loss"],
                          "Neither beats chance over the seeds, so judged on the validation loss: naive's global model ends "
                          "higher than svd's, paired by seed ({measured}): less stable, as the seed says.",
                          "Neither beats chance over the seeds, so judged on the validation loss: naive's global model ends "
                          "lower than svd's, paired by seed ({measured}): not less stable.",
                          "Neither beats chance over the seeds, so judged on the validation loss: svd and naive cannot be "
                          "told apart, paired by seed ({measured}).", ""))
    naive = study[study["method"] == "naive"]
    if len(naive):
        worst = naive.loc[naive["mean_relative_error"].idxmax()]
        exact_methods = sorted(m for m, g in study.groupby("method") if g["max_relative_error"].max() < 1e-6)
        parts.append(f"Naive A/B averaging misses the true mean delta-W by up to {100 * naive['mean_relative_error'].max():.1f} % "
                     f"(mean over layers; {int(worst['clients'])} clients, {worst['sharding']} shards)"
                     + (f"; {', '.join(exact_methods)} reproduce it to within 1e-6" if exact_methods else "")
                     + (", and " + says(v["svd_aligned"], "SVD at the runs' rank is closer to it than naive, on average over the "
                                        "error study's cases ({measured}).", "SVD at the runs' rank is further from it than naive ({measured}).",
                                        "SVD at the runs' rank is not surely closer to it than naive ({measured}).", "")
                        if "svd_aligned" in v else "."))
    cen = baselines.set_index("baseline")["score"]
    parts.append(f"Centralized LoRA reaches {100 * cen.get('centralized LoRA', float('nan')):.2f} % and full fine-tuning "
                 f"{100 * cen.get('full fine-tuning', float('nan')):.2f} % on the same data.")
    if len(merge):
        top = merge[merge["score"] == merge["score"].max()]
        names = "; ".join(f"{r['method']}, {r['weighting']}" for _, r in top.iterrows())
        parts.append(f"The best one-shot merge{'s' if len(top) > 1 else ''} ({names}) reach{'' if len(top) > 1 else 'es'} "
                     f"{100 * top['score'].iloc[0]:.2f} %" + (says(v["merge"], ", above chance.", ", below chance.",
                                                                 f": no signal against chance ({chance:.2f} %).", ".")
                                                            if "merge" in v else "."))
    if "warm" in v:
        parts.append(says(v["warm"], "Warm-starting the federated rounds from the centralized adapter ends above what one "
                          "cold-started run gives ({measured}).", "Warm-starting ends below what one cold-started run gives "
                          "({measured}).", "Warm-starting from the centralized adapter ends within what one cold-started run "
                          "gives ({measured}).", ""))
    main_svd = scores[(scores["method"] == "svd") & (scores["task"] == s["main_task"]) & (scores["client_rank"] == s["lora_rank"])]
    parts.append(f"The federated runs' training loops took {runs_wall_s / 60:.1f} min here (the compute table adds each "
                 f"run stage's model loading and data setup); the SVD aggregation of the main task's runs took "
                 f"{main_svd['mean_aggregate_ms'].mean():.1f} ms per round on average.")
    return " ".join(parts)


def headline(s: Settings, scores: pd.DataFrame, seeds: pd.DataFrame) -> pd.DataFrame:
    """One row per aggregation on the main task: IID score over seeds, the skewed shardings' scores (grid seed),
    the worst per-layer aggregation error seen in any round, and the server's aggregation time."""
    main = scores[(scores["task"] == s["main_task"]) & (scores["client_rank"] == s["lora_rank"])]
    rows = []
    for method, g in main.groupby("method", sort=False):
        row = {"method": method}
        sd = seeds.set_index("method")
        if method in sd.index:
            row["iid_mean_pct"], row["iid_std_pct"] = sd.loc[method, "score_mean_pct"], sd.loc[method, "score_std_pct"]
        grid_runs = g[g["seed"] == s["grid_seed"]].set_index("sharding")
        for sharding in ("overlap", "category", "dirichlet"):
            if sharding in grid_runs.index:
                row[f"{sharding}_pct"] = 100 * grid_runs.loc[sharding, "score"]
        row["max_round_error"] = g["max_relative_error"].max()
        row["aggregate_ms"] = g["mean_aggregate_ms"].mean()
        rows.append(row)
    return pd.DataFrame(rows)
