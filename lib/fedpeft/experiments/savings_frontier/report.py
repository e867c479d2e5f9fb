"""The savings frontier: the points' table, the savings table against the full model, the Pareto figure's data,
the study's checks and the conclusion, from the runs' records.

Notebook: ``notebooks/06_savings_frontier.ipynb``. Nothing here trains: the runs are
:mod:`fedpeft.experiments.savings_frontier.runs`, one DVC stage each. Bytes are the ledger's (serialized messages,
both directions, every client and round); MiB = 2**20 bytes; scores are in points (percent of the text task's
validation set, of the CNN's test set).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Mapping

import pandas as pd

from fedpeft.core.config import Settings
from fedpeft.core.records import RunRecord
from fedpeft.experiments import runs as run_stages
from fedpeft.experiments.savings_frontier.experiment import EXPERIMENT as DECLARED
from fedpeft.experiments.savings_frontier.settings import CNN_TASK, EXPERIMENT, load  # noqa: F401 - the notebook's API
from fedpeft.reporting.claims import ClaimsLedger, Verdict, at_most, paired_greater, says
from fedpeft.reporting.frontier import savings_table
from fedpeft.reporting.outputs import STUDY_PACKAGES

TITLE = DECLARED.title
SEED_REPORT = DECLARED.seed_report
NOTEBOOK = DECLARED.notebook
PACKAGES = STUDY_PACKAGES + DECLARED.packages
BASELINE = "full model"
#: The EuroSAT CNN's yardstick: its full model sent in fp32 every round (every CNN technique's name starts "CNN").
CNN_BASELINE = "CNN full model"
_COMMON_LIMITATIONS = """\
- FLoRA is not a point: its adapter's rank grows by K r every round, which the round loop does not model (the GLUE
  experiment runs it as a one-shot merge).
- Quantized updates are the client's uplink; the server's broadcast travels in fp32, as in NVIDIA FLARE's example.
- The client's memory is its model state (frozen weights as stored, and per trainable parameter its fp32 value,
  gradient and AdamW's two moments; with a codec, the fp32 state it received, to compute its update, and with error
  feedback its fp32 residual), computed from the records; activations, which depend on the batch and not on the
  technique, are not counted. QLoRA quantizes the encoder's linear layers only, as bitsandbytes does: the embeddings
  (a third of MiniLM's weights), the pooler and the head stay fp32.
- DiLoCo's outer Nesterov step acts on the averaged A, B and head, each apart, not on the product B A.
- Each call of local training on the text task starts a fresh AdamW with its own linear decay (in every point). The
  trainer rounds a call's steps up, so DiLoCo at H takes ceil(H x) steps where FedAvg takes H ceil(x); the budget
  table gives each point's steps per client.
- `embedded` trains a 2-layer RoBERTa on generated sentences and the CNN on generated images: it tests the plumbing,
  not the savings' costs."""
_TWO_TASKS = """\
- Two tasks, each in one small federation: SST-2 (the GLUE experiment's clients) for the adapters and the full
  model, and the EuroSAT CNN (the federation of the `cnn_*` settings, whose size the set-up gives) for full-model
  updates alone. Each task's techniques are judged against its own full model; the two tasks' accuracies are never
  compared. The CNN's clients train with Adam at a constant rate, a fresh optimizer each round.
- The CNN's BatchNorm statistics travel in fp32 in every point (they are not gradients; a variance quantized with
  larger values can come back negative); under DiLoCo they are averaged while the weights take the outer Nesterov
  step, so the server evaluates with statistics of the clients' models, not of its extrapolated weights."""
_ONE_TASK = """\
- One task (SST-2) in one small federation (the GLUE experiment's clients): the EuroSAT CNN's full-model points are
  off in this profile (`cnn_points: false`), so the frontier is that of one text classifier."""


def limitations(s: Settings) -> str:
    """The report's limitations for this profile's plan (whether the CNN's points ran)."""
    return (_TWO_TASKS if s["cnn_points"] else _ONE_TASK) + "\n" + _COMMON_LIMITATIONS


def collect(s: Settings, progress: bool = True) -> dict[str, RunRecord]:
    """Every planned run's record (see :func:`fedpeft.experiments.runs.collect`)."""
    return run_stages.collect(s, progress)


def technique(args: Mapping) -> str:
    """A point's name: what is sent, how and how often ("LoRA naive int8 + EF", "full model", "LoRA naive DiLoCo H=2";
    the EuroSAT CNN's "CNN full model int8 + EF")."""
    name = BASELINE if args["model"] == "full" else f"{'QLoRA' if args['model'] == 'qlora' else 'LoRA'} {args['aggregation']}"
    if args.get("task") == CNN_TASK:
        name = f"CNN {name}"
    if args["codec"] != "fp32":
        name += f" {args['codec']}"
    if args["error_feedback"]:
        name += " + EF"
    if args["sync_interval"]:
        name += f" DiLoCo H={args['sync_interval']}"
    return name


#: Bytes a client keeps per trainable value beyond its model when it compresses its update: the fp32 state it
#: received (its update is the difference), and with error feedback its fp32 residual.
RECEIVED_BYTES = RESIDUAL_BYTES = 4


def client_memory_bytes(r: RunRecord) -> int:
    """The client's memory for this point (see :func:`limitations`): the model state the run recorded, plus what sending a
    compressed update needs."""
    extra = 0
    if r.spec["codec"] != "fp32" or r.spec["error_feedback"]:
        extra += RECEIVED_BYTES * int(r["trainable"])
    if r.spec["error_feedback"]:
        extra += RESIDUAL_BYTES * int(r["trainable"])
    return int(r["client_state_bytes"]) + extra


def local_steps(r: RunRecord, batch_size: int) -> int:
    """Optimizer steps of the largest client over the whole run: per round ceil(epochs x examples / batch), as the
    trainer takes them (``batch_size``: the text task's); a CNN point's record holds its own count."""
    if "local_steps" in r.scalars:  # the CNN's points record their own (another trainer, another batch size)
        return int(r["local_steps"])
    largest = int(r.tables["shards"]["examples"].max())
    per_round = max(1, math.ceil(float(r["local_epochs_per_round"]) * largest / batch_size))
    return per_round * int(r["rounds_completed"])


def points(records: Mapping[str, RunRecord], batch_size: int) -> pd.DataFrame:
    """One row per run: its technique, axis values, seed, score (points), bytes both ways, the client's memory
    (:func:`client_memory_bytes`) and its local steps (:func:`local_steps`)."""
    rows = []
    for r in records.values():
        a = r.spec
        rows.append({"technique": technique(a), "task": a["task"], "sharding": a["sharding"], "seed": a["seed"], "model": a["model"],
                     "aggregation": a["aggregation"], "codec": a["codec"], "error_feedback": a["error_feedback"],
                     "sync_interval": a["sync_interval"], "score": 100 * r["score"], "chance": 100 * r["chance_score"],
                     "rounds": r["rounds_completed"], "up_bytes": r["up_bytes"], "down_bytes": r["down_bytes"],
                     "total_bytes": r["total_bytes"], "trainable": r["trainable"],
                     "client_state_bytes": client_memory_bytes(r), "local_steps": local_steps(r, batch_size),
                     "wall_s": r["wall_s"]})
    return pd.DataFrame(rows)


def histories(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Every run's per-round score (the text task's validation score, the CNN's test accuracy), with its technique,
    task, sharding, seed and the local epochs each client has trained by then (``epochs``: DiLoCo's rounds are H times
    as long as FedAvg's)."""
    return pd.concat([r.tables["history"].assign(technique=technique(r.spec), task=r.spec["task"], sharding=r.spec["sharding"],
                                                 seed=r.spec["seed"],
                                                 epochs=lambda h, r=r: h["round"] * float(r["local_epochs_per_round"]))
                      for r in records.values()], ignore_index=True)


def savings(runs: pd.DataFrame, sharding: str, margin: float, task: str | None = None) -> pd.DataFrame | None:
    """The savings table of one task's points run on ``sharding`` against that task's full model there
    (:func:`fedpeft.reporting.frontier.savings_table`), with each technique's client memory (MiB), rounds and local
    steps; None when that full model did not run on ``sharding``. ``task``: ``None`` for the text task,
    :data:`CNN_TASK` for the EuroSAT CNN's points."""
    is_cnn = runs["task"] == CNN_TASK if "task" in runs else pd.Series(False, index=runs.index)
    part = runs[(runs["sharding"] == sharding) & (is_cnn if task == CNN_TASK else ~is_cnn)]
    baseline = CNN_BASELINE if task == CNN_TASK else BASELINE
    if baseline not in set(part["technique"]):
        return None
    table = savings_table(part, baseline, margin)
    extra = part.groupby("technique").agg(client_state_MiB=("client_state_bytes", lambda b: b.mean() / 2**20),
                                          rounds=("rounds", "max"), local_steps=("local_steps", "max"))
    out = table.merge(extra, left_on="technique", right_index=True, how="left")
    out.attrs = table.attrs
    return out.sort_values("total_MiB", ascending=False, ignore_index=True)


def _arm(runs: pd.DataFrame, name: str, sharding: str = "iid") -> pd.Series:
    return runs[(runs["technique"] == name) & (runs["sharding"] == sharding)].set_index("seed")["score"]


def _with_saving(verdict: Verdict, saved_x: float) -> Verdict:
    """The cost verdict with the bytes saved in its measured text ("48x fewer bytes at -0.40 points [...]"), so that a
    finding quoting it carries both."""
    return replace(verdict, measured=f"{saved_x:.3g}x fewer bytes at {verdict.measured}")


def build_claims(s: Settings, runs: pd.DataFrame, table: pd.DataFrame, skewed: pd.DataFrame | None = None,
                 cnn: pd.DataFrame | None = None, cnn_skewed: pd.DataFrame | None = None) -> ClaimsLedger:
    """The study's checks (this experiment has no seed report): each technique's cost against its task's full model
    (``table``: the text task's, ``cnn``: the EuroSAT CNN's), judged as non-inferiority at ``cost_margin`` points,
    paired by seed; error feedback against none; on label skew; and the client memory QLoRA saves."""
    ledger = ClaimsLedger(s.profile, EXPERIMENT)
    ledger.few_seeds = (f"every point runs on the same {runs['seed'].nunique()} seeds ({len(runs)} runs, "
                        f"{runs['wall_s'].sum() / 3600:.1f} h of training here); more seeds for every point did not fit the budget")
    margin = s["cost_margin"]
    points = f"{margin:g} point{'' if margin == 1 else 's'}"
    for _, row in table[table["technique"] != BASELINE].iterrows():
        ledger.check(f"{row['technique']} saves {row['saved_x']:.3g}x of the full model's traffic at a cost of at most {points}",
                     _with_saving(table.attrs["verdicts"][row["technique"]], row["saved_x"]), "savings",
                     f"IID shards; {row['reading']}", seed_figure="not in a seed", key=f"cost:{row['technique']}")
    if cnn is not None:
        for _, row in cnn[cnn["technique"] != CNN_BASELINE].iterrows():
            ledger.check(f"{row['technique']} saves {row['saved_x']:.3g}x of the CNN full model's traffic at a cost of at most "
                         f"{points}", _with_saving(cnn.attrs["verdicts"][row["technique"]], row["saved_x"]), "savings_cnn",
                         f"EuroSAT CNN, IID shards; {row['reading']}", seed_figure="not in a seed", key=f"cost:{row['technique']}")
    if cnn_skewed is not None:
        for _, row in cnn_skewed[cnn_skewed["technique"] != CNN_BASELINE].iterrows():
            ledger.check(f"On Dirichlet label skew too, {row['technique']} costs at most {points} against the CNN full model",
                         _with_saving(cnn_skewed.attrs["verdicts"][row["technique"]], row["saved_x"]), "savings_cnn_dirichlet",
                         f"EuroSAT CNN, alpha = {s['dirichlet_alpha']:g}; {row['reading']}", seed_figure="not in a seed",
                         key=f"skew:{row['technique']}")
    for codec in ("int8", "nf4", "fp16"):
        for plain in (f"LoRA {s['base_aggregation']} {codec}", f"{BASELINE} {codec}", f"{CNN_BASELINE} {codec}"):
            with_ef, without = _arm(runs, plain + " + EF"), _arm(runs, plain)
            shared = with_ef.index.intersection(without.index)
            with_ef, without = with_ef.loc[shared], without.loc[shared]
            if len(shared):
                ledger.check(f"Error feedback raises the accuracy of {plain}",
                             paired_greater(with_ef, without, 0.0, f"{plain} with - without error feedback score", "{:+.2f}",
                                            " points", "seeds, paired"),
                             "points", "the same bytes: the residual stays on the client", seed_figure="not in a seed",
                             key=f"ef:{plain}")
    if skewed is not None and len(skewed):
        for _, row in skewed[skewed["technique"] != BASELINE].iterrows():
            ledger.check(f"On Dirichlet label skew too, {row['technique']} costs at most {points} against the full model",
                         _with_saving(skewed.attrs["verdicts"][row["technique"]], row["saved_x"]), "savings_dirichlet",
                         f"alpha = {s['dirichlet_alpha']:g}; {row['reading']}", seed_figure="not in a seed",
                         key=f"skew:{row['technique']}")
    memory = runs[runs["sharding"] == "iid"].groupby("technique")["client_state_bytes"].mean()
    lora, qlora = f"LoRA {s['base_aggregation']}", f"QLoRA {s['base_aggregation']}"
    note = "model state computed from the model's tensors (frozen weights as stored, 16 bytes per trainable value); activations are not counted"
    if {lora, BASELINE} <= set(memory.index):
        ledger.check("A LoRA client holds less model state than a full-model client",
                     at_most(memory[lora] / 2**20, memory[BASELINE] / 2**20, f"{lora} client memory (full model's as the limit)",
                             "{:.1f}", " MiB"), "savings", note, seed_figure="not in a seed", key="memory_lora")
    if {lora, qlora} <= set(memory.index):
        ledger.check("A QLoRA client (4-bit base) holds less model state than a LoRA client",
                     at_most(memory[qlora] / 2**20, memory[lora] / 2**20, f"{qlora} client memory (LoRA's as the limit)",
                             "{:.1f}", " MiB"), "savings", note, seed_figure="not in a seed", key="memory_qlora")
    return ledger


def cnn_sentences(s: Settings, cnn: pd.DataFrame, claims: ClaimsLedger, skewed: pd.DataFrame | None = None) -> str:
    """What the EuroSAT CNN's points show, from their savings tables and the verdicts: its full model's traffic and
    accuracy, each technique's saving and cost against it, error feedback, and label skew."""
    base = cnn[cnn["technique"] == CNN_BASELINE].iloc[0]
    ranked = cnn[cnn["technique"] != CNN_BASELINE].sort_values("saved_x", ascending=False)
    text = (f"On the EuroSAT CNN ({s['cnn_clients']} clients, full-model updates), its full model sent in fp32 every round "
            f"moves {base['total_MiB']:,.1f} MiB over {int(base['rounds'])} rounds and reaches {base['score_mean']:.2f} % test "
            f"accuracy ({int(base['seeds'])} seeds).")
    if len(ranked):
        text += " Against it, paired by seed: " + "; ".join(f"{r['technique']} {r['reading']}" for _, r in ranked.iterrows()) + "."
    front = cnn[cnn["on_frontier"]].sort_values("total_MiB")
    if len(front):
        text += " On its frontier: " + ", ".join(front["technique"]) + "."
    text += _ef_sentence(claims, cnn=True)
    if skewed is not None and len(skewed) > 1:
        text += (" On Dirichlet label skew: " + "; ".join(f"{r['technique']} {r['reading']}"
                                                          for _, r in skewed[skewed["technique"] != CNN_BASELINE].iterrows()) + ".")
    return text


def _ef_sentence(claims: ClaimsLedger, cnn: bool) -> str:
    """The error-feedback verdicts of one task (the CNN's, or the text task's) in one sentence ("" when none)."""
    v = claims.verdicts
    ef = [k for k in v if k.startswith("ef:") and k[3:].startswith(CNN_BASELINE) == cnn]
    if not ef:
        return ""
    return " Error feedback: " + "; ".join(
        says(v[k], f"{k[3:]} gains {{measured}} with it", f"{k[3:]} loses {{measured}} with it",
             f"{k[3:]} cannot be told apart with and without it ({{measured}})", "") for k in ef) + "."


def finding(s: Settings, table: pd.DataFrame, claims: ClaimsLedger, skewed: pd.DataFrame | None = None,
            cnn: pd.DataFrame | None = None, cnn_skewed: pd.DataFrame | None = None) -> str:
    """The report's opening paragraph, written from the savings tables (``cnn``: the EuroSAT CNN's) and the verdicts."""
    base = table[table["technique"] == BASELINE]
    parts = []
    if len(base):
        b = base.iloc[0]
        parts.append(f"The full model sent in fp32 every round moves {b['total_MiB']:,.1f} MiB over {int(b['rounds'])} rounds "
                     f"({s['num_clients']} clients, both directions) and reaches {b['score_mean']:.2f} % "
                     f"({int(b['seeds'])} seeds).")
    ranked = table[table["technique"] != BASELINE].sort_values("saved_x", ascending=False)
    if len(ranked):
        parts.append("Against it, paired by seed: " + "; ".join(f"{r['technique']} {r['reading']}" for _, r in ranked.iterrows()) + ".")
    front = table[table["on_frontier"]].sort_values("total_MiB")
    if len(front):
        parts.append("On the Pareto frontier of traffic against accuracy: " + ", ".join(front["technique"]) + ".")
    if ef := _ef_sentence(claims, cnn=False).strip():
        parts.append(ef)
    if skewed is not None and len(skewed) > 1:
        parts.append("On Dirichlet label skew: " + "; ".join(f"{r['technique']} {r['reading']}"
                                                              for _, r in skewed[skewed["technique"] != BASELINE].iterrows()) + ".")
    memory = table.set_index("technique")["client_state_MiB"]
    shown = [t for t in (BASELINE, f"LoRA {s['base_aggregation']}", f"QLoRA {s['base_aggregation']}") if t in memory.index]
    if len(shown) > 1:
        parts.append("A client's model state: " + ", ".join(f"{t} {memory[t]:.1f} MiB" for t in shown) + ".")
    if cnn is not None and len(cnn):
        parts.append(cnn_sentences(s, cnn, claims, cnn_skewed))
    return " ".join(parts)


def headline(table: pd.DataFrame) -> pd.DataFrame:
    """The savings table, one row per technique (IID)."""
    return table[["technique", "total_MiB", "saved_x", "score_mean", "cost_points", "cost_low", "cost_high", "verdict",
                  "client_state_MiB", "local_steps", "on_frontier"]]


def _key(name: str) -> str:
    return name.lower().replace(" + ", "_").replace(" ", "_").replace("=", "")


def metrics(table: pd.DataFrame, runs: pd.DataFrame, cnn: pd.DataFrame | None = None) -> dict[str, float]:
    """Flat numbers for ``dvc metrics``: per technique (IID, both tasks) its mean score (%), total bytes and client
    memory (bytes)."""
    out: dict[str, float] = {}
    iid = runs[runs["sharding"] == "iid"].groupby("technique")
    for _, r in pd.concat([table, cnn]).iterrows() if cnn is not None else table.iterrows():
        k = _key(r["technique"])
        out[f"{k}_score_pct"] = float(r["score_mean"])
        out[f"{k}_total_bytes"] = int(iid.get_group(r["technique"])["total_bytes"].iloc[0])
        out[f"{k}_client_state_bytes"] = int(iid.get_group(r["technique"])["client_state_bytes"].iloc[0])
    out["runs_wall_s"] = float(runs["wall_s"].sum())
    return out


def describe(s: Settings, runs: pd.DataFrame) -> str:
    """What ran, as markdown: the model, data, federation, budget and the axes of each task (the EuroSAT CNN's when
    its points ran), with each task's techniques and runs counted apart."""
    is_cnn = runs["task"] == CNN_TASK if "task" in runs else pd.Series(False, index=runs.index)
    text_runs, cnn_runs = runs[~is_cnn], runs[is_cnn]
    text = (f"`{s['model']}` on {s['main_task']} ({s['source']} data: {s['train_examples'] or 'all'} training examples, "
            f"{s['eval_examples'] or 'all'} validation examples), {s['num_clients']} clients. Every point trains each client "
            f"for {s['num_rounds'] * s['local_epochs']:g} epochs in all: FedAvg {s['num_rounds']} rounds of "
            f"{s['local_epochs']:g} epochs; DiLoCo at H {s['num_rounds']} / H rounds of H x {s['local_epochs']:g} epochs "
            f"(outer lr {s['diloco_outer_lr']:g}, Nesterov momentum {s['diloco_momentum']:g}). LoRA r {s['lora_rank']} "
            f"(alpha {s['lora_alpha']:g}) on {', '.join(s['target_modules'])} at lr {s['learning_rate']:g}; the full model "
            f"at lr {s['full_finetune_lr']:g}. {text_runs['technique'].nunique()} techniques, {text_runs['seed'].nunique()} seeds "
            f"({', '.join(str(x) for x in sorted(text_runs['seed'].unique()))}), {len(text_runs)} runs; Dirichlet alpha "
            f"{s['dirichlet_alpha']:g} for the skewed points.")
    if len(cnn_runs):
        epochs = f"{s['cnn_local_epochs']} local epoch{'s' if s['cnn_local_epochs'] != 1 else ''}"
        text += (f" The EuroSAT CNN ({s['cnn_source']} images): {s['cnn_clients']} clients sharing "
                 f"{s['cnn_pool_images'] or 'all'} images, {s['cnn_test_images'] or 'all held-out'} in the server's test set, "
                 f"{s['cnn_rounds']} "
                 f"rounds of {epochs} (DiLoCo at H: {s['cnn_rounds']} / H rounds of H x {epochs}), Adam at lr "
                 f"{s['cnn_learning_rate']:g}, batch {s['cnn_batch_size']}; its full model's parameters and BatchNorm statistics "
                 f"travel at every synchronization. {cnn_runs['technique'].nunique()} techniques, {cnn_runs['seed'].nunique()} "
                 f"seeds, {len(cnn_runs)} runs.")
    return text