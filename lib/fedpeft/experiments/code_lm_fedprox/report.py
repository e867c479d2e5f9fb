"""Python code, federated LoRA, FedProx vs FedAvg: tables, claims and the conclusion, from the runs' records.

Seed: ``../shared/seeds/001_b400fdb76fdfd447.txt``. Notebook: ``notebooks/02_code_lm_fedprox_lora.ipynb``. Nothing
here trains: the runs are :mod:`fedpeft.experiments.code_lm_fedprox.runs`, one DVC stage each.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from fedpeft.core.config import Settings
from fedpeft.core.records import RunRecord
from fedpeft.experiments import runs as run_stages
from fedpeft.experiments.code_lm_fedprox.experiment import EXPERIMENT as DECLARED
from fedpeft.experiments.code_lm_fedprox.settings import EXPERIMENT, arm_name, load  # noqa: F401 - the notebook's API
from fedpeft.federated.ledger import MIB
from fedpeft.models.causal_lm import build_on_meta, opt_350m_config, training_memory_bytes
from fedpeft.models.counting import count_parameters
from fedpeft.models.text import attach_lora
from fedpeft.reporting.claims import (
    ClaimsLedger,
    Verdict,
    exact,
    fact,
    matches,
    not_testable,
    paired_greater,
    paired_less,
    says,
    stated,
    stated_range,
    within,
)
from fedpeft.reporting.outputs import STUDY_PACKAGES, mean_spread, scale_gap

TITLE = DECLARED.title
SEED_REPORT = DECLARED.seed_report
NOTEBOOK = DECLARED.notebook
LIMITATIONS = """\
- `embedded` uses a 2-layer OPT with a byte-level tokenizer, first trained on other standard-library packages (a
  stand-in for pretraining), and a few packages' source: it tests the plumbing, not the report's claims.
- `local` fine-tunes SmolLM2-135M-Instruct (Llama architecture, not OPT) on the standard library at a 2-core CPU
  scale far below the seed's (the scale-gap table above gives data, steps and rounds on both sides), with a learning
  rate raised to match (see `params/local.yaml`); the comparisons between arms are what it tests, not the seed's
  loss values.
- The seed does not state its sequence length or how it cut files into samples; the study packs files into blocks
  of `max_length` tokens in every profile.
- Memory on the CPU is the growth of the process's resident set during a run: memory freed by an earlier run and
  reused is not counted again, so the analytic table is the cleaner comparison of LoRA and full-model training."""

PACKAGES = STUDY_PACKAGES + DECLARED.packages

#: Figures quoted from the seed, not measured.
SEED = {
    "trainable": 1_572_864, "total": 332_769_280, "trainable_pct": 0.47,
    "eval_loss_round0": 2.9871, "eval_loss_round20": 2.2073, "eval_loss_round10": 2.2944,
    "eval_loss_round10_half_data": 2.383, "eval_s_per_round": 734.0, "eval_samples_per_s": 4.10,
    "total_runtime_s": 27423.6, "full_model_overfit_round": 6,
}


def collect(s: Settings, progress: bool = True) -> dict[str, RunRecord]:
    """Every planned run's record (see :func:`fedpeft.experiments.runs.collect`)."""
    return run_stages.collect(s, progress)


LABELS = ["arm", "mu", "split", "seed", "adapter", "samples_per_client"]


def federated(records: Mapping[str, RunRecord]) -> dict[str, RunRecord]:
    """The training runs' records (every record but the base model's loss probe)."""
    return {rid: r for rid, r in records.items() if "history" in r.tables}


def histories(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Every run's per-round history with its labels, evaluation loss (nats/token) and perplexity."""
    frames = []
    for r in federated(records).values():
        h = r.tables["history"].copy()
        h["eval_loss"] = h["server_loss"]
        h["eval_perplexity"] = np.exp(h["server_loss"])
        frames.append(h.assign(**{k: r[k] for k in LABELS}))
    return pd.concat(frames, ignore_index=True)


def run_table(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """One row per run: final and best evaluation loss, perplexity, overfitting onset, speed, memory, traffic."""
    rows = []
    for rid, r in federated(records).items():
        h = r.tables["history"].assign(eval_loss=lambda d: d["server_loss"]).set_index("round")
        ch = r.tables["client_history"]
        drift = ch.dropna(subset=["update_norm"]).groupby("round")["update_norm"].mean() if "update_norm" in ch else pd.Series(dtype=float)
        rows.append({
            "run": f"{r['arm']}, {r['split']}, {r['samples_per_client']}/client, seed {r['seed']}", "run_id": rid,
            **{k: r[k] for k in LABELS}, "rounds": r["rounds_completed"],
            "eval_loss_round0": float(h.loc[0, "eval_loss"]), "final_eval_loss": float(h["eval_loss"].iloc[-1]),
            "best_eval_loss": float(h["eval_loss"].min()), "final_perplexity": float(np.exp(h["eval_loss"].iloc[-1])),
            "final_train_loss": float(h["train_loss"].iloc[-1]), "loss_rises_at_round": first_rising_round(h["eval_loss"]),
            "mean_update_norm": float(drift.mean()) if len(drift) else float("nan"),
            "train_tokens_per_s": r["train_tokens_per_s"], "eval_tokens_per_s": r["eval_tokens_per_s"],
            "train_s": float(h["train_s"].sum()), "eval_s": float(h["eval_s"].sum()),
            "aggregate_s": float(h["aggregate_s"].sum()), "wall_s": r["wall_s"],
            "peak_memory_mib": r["peak_memory_bytes"] / MIB, "memory_kind": r["memory_kind"],
            "payload_mib": r["payload_bytes"] / MIB, "traffic_mib": r["traffic_bytes"] / MIB,
        })
    return pd.DataFrame(rows)


def corpus_summary(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Files, packages and tokens on each side of the held-out split, and what each client holds in each client
    split and data size of the runs."""
    parts = pd.concat([r.tables["corpus"] for r in federated(records).values()], ignore_index=True)
    return parts.drop_duplicates(subset="part").reset_index(drop=True)


def base_loss(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """The base model's loss before training (nats/token) on each probed sample of the held-out files: blocks,
    files, tokens, mean and sd over blocks. Empty without a probe run."""
    probe = [r for r in records.values() if "base_loss" in r.tables]
    return probe[0].tables["base_loss"] if probe else pd.DataFrame()


def block_losses(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """The base model's loss of every probed block (nats/token), by sample. Empty without a probe run."""
    probe = [r for r in records.values() if "block_losses" in r.tables]
    return probe[0].tables["block_losses"] if probe else pd.DataFrame()


def loss_at(hist: pd.DataFrame, round_: int) -> pd.Series:
    """Evaluation loss at ``round_`` of each run in ``hist`` (one run per seed), indexed by seed."""
    return hist[hist["round"] == round_].set_index("seed")["eval_loss"]


def late_drop(hist: pd.DataFrame, rounds: int) -> pd.Series:
    """How much the evaluation loss still falls in the second half of ``rounds`` (loss at round rounds // 2 minus
    loss at round ``rounds``), per seed: near zero once a run has reached its plateau."""
    return loss_at(hist, rounds // 2) - loss_at(hist, rounds)


def describe(s: Settings, records: Mapping[str, RunRecord]) -> str:
    """What ran, as markdown: corpus, model, adapter and schedule, with the scale gap on both sides."""
    from fedpeft.reporting.compute import compute_table

    p, r = s.params, next(iter(federated(records).values()))
    trainable, total = r["lora_trainable"], r["lora_total"]
    devices = "; ".join(sorted(set(compute_table(records)["device"]))) or "not recorded"
    steps = -(-p["samples_per_client"] // p["batch_size"]) * p["local_epochs"]
    n = len(p["seeds"])
    gap = scale_gap([
        ("model", f"facebook/opt-350m, {SEED['total']:,} parameters, {SEED['trainable']:,} trainable",
         f"`{p['model']}`, {total:,} parameters, {trainable:,} trainable"),
        ("LoRA", "r 16, alpha 32, dropout 0.5 (peft's default targets)", f"r {p['lora_rank']}, alpha {p['lora_alpha']:g}, dropout "
                                                                       f"{p['lora_dropout']:g} on {p['target_modules'] or 'peft default'}"),
        ("data", "codeparrot-clean-valid: 3 clients x 2,000 samples (length not stated)",
         f"{p['source']}: {p['num_clients']} clients x {p['samples_per_client']} samples of {p['max_length']} tokens"),
        ("evaluation", "about 3,000 samples (734 s at 4.10 samples/s)", f"{r['eval_samples']} samples, {r['eval_tokens']:,} tokens"),
        ("steps per client per round", "3 epochs x 1,000 batches of 2 = 3,000", f"{p['local_epochs']} epochs x "
                                                                              f"{-(-p['samples_per_client'] // p['batch_size'])} batches of {p['batch_size']} = {steps} "
                                                                              f"({3_000 / steps:,.0f}x fewer)"),
        ("local steps per client, whole run", "3,000 x 20 rounds = 60,000",
         f"{steps} x {p['num_rounds']} rounds = {steps * p['num_rounds']:,} ({60_000 / (steps * p['num_rounds']):,.0f}x fewer)"),
        ("rounds", "20 (the 1,000-sample run: 10)", f"{p['num_rounds']} (main comparison); mu sweep {p['sweep_rounds']}, "
                                                    f"half data {p['half_data_rounds']}, full model {p['full_model_rounds']}"),
        ("optimizer", "lr 1e-5", f"lr {p['learning_rate']:g}"),
        ("precision, device", "not stated; a GPU with 8 GB", f"fp32 on {devices}"),
        ("runs", "one FedProx run", f"{n} seed{'s' if n != 1 else ''} of FedAvg and FedProx, a mu sweep, a half-data and a "
                                    "full-model arm"),
    ], s.profile)
    return (f"**Corpus** ({p['source']}): {r['train_files']:,} training files, {r['eval_files']:,} held-out files "
            f"({r['eval_samples']} evaluation samples, {r['eval_tokens']:,} tokens). **Model**: `{p['model']}`; "
            f"LoRA r={p['lora_rank']}, alpha={p['lora_alpha']:g}, dropout={p['lora_dropout']:g} on "
            f"{p['target_modules'] or 'peft default'}: **{trainable:,} of {total:,} parameters trainable "
            f"({100 * trainable / total:.2f} %)**. **Schedule**: {p['num_rounds']} rounds x {p['local_epochs']} local epochs, "
            f"lr {p['learning_rate']:g}, {p['num_clients']} clients, seeds {list(p['seeds'])}.\n\n" + gap)


def seed_parameter_line(s: Settings) -> dict[str, int]:
    """The seed's "trainable params" line recomputed on facebook/opt-350m's architecture (meta device, no
    weights) with the profile's LoRA settings: trainable and total parameters with the adapters attached."""
    meta = build_on_meta(opt_350m_config())
    base_total = sum(p.numel() for p in meta.parameters())
    peft = attach_lora(meta, s["lora_rank"], s["lora_alpha"], s["lora_dropout"], None, task_type="CAUSAL_LM")
    trainable, total = count_parameters(peft, trainable_only=True), count_parameters(peft)
    return {"base_total": base_total, "trainable": trainable, "total": total}


def first_rising_round(eval_losses: pd.Series) -> int | None:
    """The first round whose evaluation loss is above the previous round's (overfitting onset); None if the
    loss never rises. ``eval_losses`` is indexed by round, round 0 first."""
    values = eval_losses.sort_index()
    rising = values.diff() > 0
    return int(rising.idxmax()) if rising.any() else None


def main_comparison(table: pd.DataFrame, main_mu: float) -> pd.DataFrame:
    """FedAvg vs FedProx(main_mu), LoRA, IID: mean and spread over seeds of the final evaluation loss."""
    lora = table[(table["adapter"] == "lora") & (table["split"] == "iid")
                 & (table["samples_per_client"] == table["samples_per_client"].max())]
    rows = []
    for mu in (0.0, main_mu):
        sel = lora[lora["mu"] == mu]
        mean, sd = mean_spread(sel["final_eval_loss"])
        rows.append({"arm": arm_name(mu), "seeds": len(sel), "final_eval_loss_mean": mean, "final_eval_loss_sd": sd,
                     "final_perplexity_mean": float(np.exp(sel["final_eval_loss"]).mean()),
                     "mean_update_norm": float(sel["mean_update_norm"].mean()), "wall_s_mean": float(sel["wall_s"].mean())})
    return pd.DataFrame(rows)


def main_runs(table: pd.DataFrame, s: Settings) -> pd.Series:
    """Rows of the main comparison: LoRA, IID clients, FedAvg (mu 0) and FedProx at ``main_mu``."""
    p = s.params
    return ((table["adapter"] == "lora") & (table["split"] == "iid") & table["mu"].isin([0.0, p["main_mu"]])
            & (table["samples_per_client"] == p["samples_per_client"]))


def speed_table(table: pd.DataFrame) -> pd.DataFrame:
    split = runtime_split(table)
    return table[["run", "train_tokens_per_s", "eval_tokens_per_s", "train_s", "eval_s", "wall_s"]].assign(eval_share=split["eval_share"])


def mu_sweep(hist: pd.DataFrame, first_seed: int, samples_per_client: int, rounds: int) -> pd.DataFrame:
    """Evaluation loss at round ``rounds`` (``sweep_rounds``) by split and mu (first seed, LoRA, full data): the
    main comparison's longer runs give their arms' loss at that round."""
    sel = hist[(hist["adapter"] == "lora") & (hist["seed"] == first_seed) & (hist["samples_per_client"] == samples_per_client)
               & (hist["round"] == rounds)]
    return sel.pivot_table(index="mu", columns="split", values="eval_loss").reset_index()


def runtime_split(table: pd.DataFrame) -> pd.DataFrame:
    """Seconds per run in local training, server evaluation and aggregation, and evaluation's share of them."""
    out = table[["run", "train_s", "eval_s", "aggregate_s", "wall_s"]].copy()
    out["eval_share"] = out["eval_s"] / (out["train_s"] + out["eval_s"] + out["aggregate_s"])
    return out


def _monotone(hist: pd.DataFrame, column: str) -> list[bool]:
    """Per seed of ``hist`` (one run each): does ``column`` fall every round? Rounds without a value (no training
    loss at round 0) are skipped."""
    out = []
    for _, h in hist.groupby("seed"):
        v = h.set_index("round")[column].dropna().sort_index()
        out.append(bool((v.diff().dropna() < 0).all()))
    return out


def claims(s: Settings, profile: str, table: pd.DataFrame, hist: pd.DataFrame, line: dict[str, int],
           probe_blocks: pd.DataFrame | None = None) -> ClaimsLedger:
    """Every claim of the seed (``001_b400fdb76fdfd447.txt``) and the study's own checks, judged by the claims engine.

    Losses are nats per token on the held-out files. FedAvg, FedProx and the half-data arm of one seed share its
    shards and initial adapter, so they are compared paired by seed (n counts seeds). The seed ran FedProx alone:
    whether FedProx ends better than FedAvg is the study's own check; the seed's "kept the client updates close" is judged
    against FedAvg's update norm, the only reference there is. Shapes over the seed's 20 rounds are judged only where the
    runs have 20 rounds; what the study's shorter runs show is a study check. ``probe_blocks`` (:func:`block_losses`)
    adds the check that the evaluation blocks are typical of the held-out files."""
    ledger = ClaimsLedger(profile, EXPERIMENT)
    main_mu, rounds = s["main_mu"], s["num_rounds"]
    lora = table[(table["adapter"] == "lora") & (table["split"] == "iid") & (table["samples_per_client"] == s["samples_per_client"])]
    avg, prox = lora[lora["mu"] == 0.0].set_index("seed"), lora[lora["mu"] == main_mu].set_index("seed")
    meta = "counted on facebook/opt-350m's architecture (meta device) with the seed's LoRA settings, whatever the profile trains"
    ledger.add("LoRA r 16 on OPT-350m trains 1,572,864 parameters", f"{SEED['trainable']:,}",
               exact(line["trainable"], SEED["trainable"], "trainable parameters", " parameters"), "setup", meta)
    ledger.add("... of 332,769,280 in all", f"{SEED['total']:,}", exact(line["total"], SEED["total"], "parameters", " parameters"),
               "setup", meta)
    ledger.add("... that is 0.47 %", "0.47 %", matches(100 * line["trainable"] / line["total"], stated("0.47"), "trainable share",
                                                        "{:.4f}", " %"), "setup", meta)
    main_hist = hist[(hist["adapter"] == "lora") & (hist["split"] == "iid") & (hist["mu"] == main_mu)
                     & (hist["samples_per_client"] == s["samples_per_client"])]
    short = f"the runs have {rounds} rounds, not the seed's 20"
    for column, label, seed_figure in (("train_loss", "training loss", "2.6038 -> 2.1748"), ("eval_loss", "evaluation loss", "2.9871 -> 2.2073")):
        falls = _monotone(main_hist, column)
        counted = exact(sum(falls), len(falls), f"seeds whose {label} falls every round", " seeds")
        ledger.add(f"The {label} falls every round over 20 rounds (FedProx mu {main_mu:g})", f"{seed_figure} over 20 rounds",
                   counted if rounds >= 20 else not_testable(short, f"{sum(falls)} of {len(falls)} seeds fall every round of {rounds}", needs="profile"),
                   "eval_loss_per_round")
        if rounds < 20:
            ledger.check(f"The {label} falls every round of the study's {rounds} (FedProx mu {main_mu:g})", counted,
                         "eval_loss_per_round", f"{len(falls)} seeds x {rounds} rounds", seed_figure=f"{seed_figure} over 20 rounds")
    rises = [r for r in prox["loss_rises_at_round"] if r is not None and not pd.isna(r)]
    ledger.add("No overfitting with LoRA-FedProx up to round 20", "none up to round 20",
               exact(len(rises), 0, "seeds whose evaluation loss rises in some round", " seeds") if rounds >= 20 else
               not_testable(short, f"{len(rises)} of {len(prox)} seeds rise within {rounds} rounds", needs="profile"), "eval_loss_per_round")
    ledger.add("Round 20's evaluation takes longer (about 891 s, the final aggregation's overhead)", "891 s",
               not_testable("a timing of the seed's GPU and evaluation set", needs="gpu"), "speed")
    full = table[table["adapter"] == "full"]
    if len(full):
        f = full.iloc[0]
        frise = f["loss_rises_at_round"]
        onset = None if frise is None or pd.isna(frise) else int(frise)
        ledger.add("Full-model FedProx starts overfitting at about round 6-7", "onset r6-r7",
                   not_testable(f"the full-model run has {int(f['rounds'])} rounds", "no rise" if onset is None else f"rises at round {onset}", needs="profile")
                   if f["rounds"] < 7 else (matches(onset, stated_range(6, 7, "r6-r7"), "first rising round", "round {:.0f}", "")
                                           if onset is not None else Verdict("does not hold", f"no rise in {int(f['rounds'])} rounds",
                                                                             "first rising round in the seed's r6-r7")),
                   "data_and_full_model")
        analytic = paper_memory(line).set_index("training")["total_gib"]
        ledger.add("LoRA halves the memory footprint", "halves",
                   matches(float(analytic["LoRA"] / analytic["full model"]), stated_range(0.45, 0.55, "half"),
                           "LoRA / full-model fp32 training memory of OPT-350m (weights, gradients, AdamW states)", "{:.3f}", "x"),
                   "paper_memory", "computed exactly without activations; the CPU processes' peaks are in memory_and_traffic",
                   key="memory")
        ledger.add("RAM stays under 11 GB with LoRA, against 30-40 GB for the full model", "< 11 GB vs 30-40 GB",
                   not_testable("absolute memory of the seed's OPT-350m GPU run (the seed also says 'under 9 GB')",
                                f"{float(prox['peak_memory_mib'].mean()):,.0f} vs {float(f['peak_memory_mib']):,.0f} MiB "
                                f"CPU resident-set growth here ({s['model']})", needs="seed model"), "memory_and_traffic")
        payload = float(prox["payload_mib"].iloc[0] / f["payload_mib"])
        ledger.add("LoRA halves the communication", "halves",
                   matches(payload, stated_range(0.45, 0.55, "half"), "LoRA / full-model message bytes", "{:.4f}", "x"),
                   "memory_and_traffic", key="traffic")
        ledger.add("LoRA sends the adapter weights only", "adapter weights only",
                   fact(f"{float(prox['payload_mib'].iloc[0]):.2f} MiB per message", "the study's clients send the LoRA "
                        "matrices, the frozen base never travels"), "memory_and_traffic")
    ledger.add("VRAM is fully used (8 GB) in training and freed during server aggregation", "8 GB, freed",
               not_testable("a GPU-memory statement; the local profile runs on a CPU (see the paper dry run for GPU peaks)", needs="gpu"), "setup")
    ledger.add("Evaluation takes about 734 s per round at 4.10 samples/s", "734 s, 4.10 samples/s",
               not_testable("a timing of the seed's GPU and evaluation set; compare this machine's evaluation share in speed",
                            f"evaluation is {100 * float((prox['eval_s'] / (prox['train_s'] + prox['eval_s'])).mean()):.0f} % of train + eval time here", needs="gpu"),
               "speed")
    ledger.add("The whole run takes 27,423.6 s (~7.6 h)", "27,423.6 s", not_testable("a timing of the seed's GPU", needs="gpu"), "speed")
    ledger.add(f"FedProx (mu {main_mu:g}) keeps the client updates close to the global model", "asserted",
               paired_less(prox["mean_update_norm"], avg["mean_update_norm"], 0.0, "FedProx - FedAvg mean update norm", "{:+.3g}",
                           " L2 norm", "seeds, paired"), "main_comparison",
               "the seed's 'kept close' read as closer than FedAvg's: the L2 norm of each client's change to the adapters in a "
               "round, mean over clients and rounds", key="update_norm")
    half_rounds = s["half_data_rounds"]
    half_hist = hist[(hist["adapter"] == "lora") & (hist["samples_per_client"] < s["samples_per_client"])]
    if len(half_hist):
        full_at, half_at = loss_at(main_hist, half_rounds), loss_at(half_hist, half_rounds)
        ledger.add(f"Doubling the data per client lowers the evaluation loss at the same round (round {half_rounds})",
                   "2.294 vs 2.383 at round 10",
                   paired_greater(half_at, full_at, 0.0, f"half-data - full-data eval loss at round {half_rounds}", "{:+.4f}",
                                  " nats/token", "seeds, paired"),
                   "runs", "same rounds and epochs, so twice the local steps; the full-data runs' history gives their loss "
                   f"at round {half_rounds}", key="more_data")
        ledger.add("More data per client delays the evaluation-loss plateau", "plateau later",
                   paired_greater(late_drop(main_hist, half_rounds), late_drop(half_hist, half_rounds), 0.0,
                                  f"full-data - half-data fall of the eval loss from round {half_rounds // 2} to {half_rounds}",
                                  "{:+.4f}", " nats/token", "seeds, paired"),
                   "eval_loss_per_round", "a later plateau read as a loss still falling further in the second half of the "
                   f"half-data arm's {half_rounds} rounds", key="plateau")
    else:
        ledger.add("More data per client delays the evaluation-loss plateau", "plateau later",
                   not_testable("the profile runs no half-data arm (half_data_run: false)", needs="profile"), "eval_loss_per_round")
    ledger.add("The final evaluation loss is 2.207 after 20 rounds", "2.2073",
               not_testable(f"another model ({s['model']}), corpus and scale" + ("" if rounds >= 20 else f"; {short}"),
                            f"{prox['final_eval_loss'].mean():.4f} nats/token after {rounds} rounds", needs="seed model"), "main_comparison")

    # --- the study's own checks ---
    blocks = probe_blocks if probe_blocks is not None else pd.DataFrame()
    if len(blocks):
        broad = blocks[blocks["sample"] == "broad sample"]["loss"]
        evaluated = blocks[blocks["sample"] == "evaluation blocks"]["loss"]
        ledger.check("The evaluation blocks' round-0 loss is typical of the held-out files (within 0.1 nats/token of a "
                     f"broad sample of {len(broad)} blocks)",
                     within(evaluated.tolist(), float(broad.mean()), 0.1, "base-model loss of the evaluation blocks",
                            "{:.4f}", " nats/token", "blocks"),
                     "base_loss", "the base model before any training, block by block: the evaluation set's mean against "
                     f"the broad sample's mean; blocks differ by {float(broad.std()):.2f} nats/token (sd), so {len(evaluated)} "
                     "blocks place a level only roughly, while the arms, evaluated on the same blocks, are compared without "
                     "that error", key="eval_typical")
    ledger.check(f"FedProx (mu {main_mu:g}) ends at a lower evaluation loss than FedAvg",
                 paired_less(prox["final_eval_loss"], avg["final_eval_loss"], 0.0, "FedProx - FedAvg final eval loss", "{:+.4f}",
                             " nats/token", "seeds, paired"), "main_comparison",
                 "the seed ran no FedAvg baseline: its 'FedProx converges' has no comparison", key="prox_vs_avg")
    return ledger


def paper_memory(line: dict[str, int]) -> pd.DataFrame:
    """Analytic fp32 training memory of OPT-350m without activations (weights, gradients, AdamW's two states),
    LoRA vs full model, in GiB (2**30 bytes)."""
    full = training_memory_bytes(build_on_meta(opt_350m_config()).requires_grad_(True))
    lora = {"weights": 4 * line["total"], "gradients": 4 * line["trainable"], "optimizer": 8 * line["trainable"]}
    lora["total"] = sum(lora.values())
    rows = [{"training": name, **{f"{k}_gib": v / 2**30 for k, v in parts.items()}}
            for name, parts in (("full model", full), ("LoRA", lora))]
    return pd.DataFrame(rows)


def headline(s: Settings, table: pd.DataFrame) -> pd.DataFrame:
    """The main comparison over seeds, and the full-model run: evaluation loss, perplexity, speed, memory, payload."""
    rows = []
    main = table[(table["split"] == "iid") & (table["samples_per_client"] == s["samples_per_client"])]
    for (adapter, mu), g in main.groupby(["adapter", "mu"], sort=False):
        if adapter == "lora" and mu not in (0.0, s["main_mu"]):
            continue
        mean, sd = mean_spread(g["final_eval_loss"])
        rows.append({"arm": g["arm"].iloc[0], "seeds": len(g), "rounds": int(g["rounds"].max()),
                     "eval_loss_round0": g["eval_loss_round0"].mean(), "final_eval_loss": mean, "final_eval_loss_sd": sd,
                     "final_perplexity": float(np.exp(g["final_eval_loss"]).mean()),
                     "train_tokens_per_s": g["train_tokens_per_s"].mean(), "eval_tokens_per_s": g["eval_tokens_per_s"].mean(),
                     "peak_memory_mib": g["peak_memory_mib"].max(), "payload_mib": g["payload_mib"].iloc[0]})
    return pd.DataFrame(rows)


def metrics(table: pd.DataFrame, runs_wall_s: float) -> dict[str, float]:
    """Flat numbers for ``dvc metrics``: losses in nats per token, speeds in tokens/s, memory and payload in MiB."""
    out: dict[str, float] = {}
    for _, r in table.iterrows():
        key = f"{r['adapter']}_{r['split']}_mu{r['mu']:g}_n{r['samples_per_client']}_seed{r['seed']}"
        out[f"{key}_final_eval_loss"] = r["final_eval_loss"]
        out[f"{key}_train_tokens_per_s"] = r["train_tokens_per_s"]
        out[f"{key}_eval_tokens_per_s"] = r["eval_tokens_per_s"]
        out[f"{key}_peak_memory_mib"] = r["peak_memory_mib"]
    out["runs_wall_s"] = runs_wall_s
    return out


def finding(s: Settings, table: pd.DataFrame, sweep: pd.DataFrame, runs_wall_s: float, main_wall_s: float,
            claims: ClaimsLedger, base: pd.DataFrame | None = None) -> str:
    """The report's opening paragraph, written from the measured tables and the ledger's verdicts; ``base``
    (:func:`base_loss`) adds what the base model's loss is before training on each probed sample."""
    v = claims.verdicts
    comp = main_comparison(table, s["main_mu"])
    avg, prox = comp.iloc[0], comp.iloc[1]
    spread = lambda r: f"{r['final_eval_loss_mean']:.4f}" + (f" ± {r['final_eval_loss_sd']:.4f}" if r["seeds"] > 1 else "")
    n = int(avg["seeds"])
    parts = [f"On `{s['model']}` with LoRA r={s['lora_rank']} over {s['num_clients']} clients x "
             f"{s['samples_per_client']} samples of {s['max_length']} tokens and {s['num_rounds']} rounds, the held-out "
             f"evaluation loss (nats/token) goes from {table['eval_loss_round0'].iloc[0]:.4f} to {spread(avg)} with FedAvg and "
             f"{spread(prox)} with FedProx mu={s['main_mu']:g} ({n} seed{'s' if n != 1 else ''}; mean ± sd)."]
    if base is not None and len(base) and "eval_typical" in v:
        b = base.set_index("sample")
        ev, broad = b.loc["evaluation blocks"], b.loc["broad sample"]
        first = (f", and {b.loc['first files in name order', 'loss']:.4f} on the first {int(b.loc['first files in name order', 'blocks'])} "
                 f"blocks of the files in name order ({int(b.loc['first files in name order', 'files'])} file"
                 f"{'s' if b.loc['first files in name order', 'files'] != 1 else ''})" if "first files in name order" in b.index else "")
        parts.append(f"Before any training the model's loss is {ev['loss']:.4f} on the {int(ev['blocks'])} evaluation blocks "
                     f"({int(ev['files'])} files), {broad['loss']:.4f} ± {broad['loss_sd']:.4f} (sd over blocks) on "
                     f"{int(broad['blocks'])} blocks drawn across the held-out files{first}: "
                     + says(v["eval_typical"], "the evaluation set is typical of the held-out code ({measured}).",
                            "the evaluation set is not typical of the held-out code ({measured}).",
                            "whether the evaluation set is typical of the held-out code is undecided ({measured}).", ""))
    parts.append(says(v["prox_vs_avg"], "FedProx ends lower than FedAvg, paired by seed ({measured}).",
                      "FedProx ends higher than FedAvg, paired by seed ({measured}): the proximal term costs loss here.",
                      "FedProx and FedAvg end at losses that cannot be told apart, paired by seed ({measured}).", ""))
    parts.append(says(v["update_norm"], "The proximal term keeps the clients' updates closer to the global model "
                      f"(mean update L2 norm {avg['mean_update_norm']:.3g} with FedAvg, {prox['mean_update_norm']:.3g} with FedProx; "
                      "paired difference {measured}).", "The proximal term does not keep the clients' updates closer ({measured}).",
                      "Whether the proximal term keeps the clients' updates closer is undecided ({measured}).", ""))
    if "more_data" in v:
        at = f"at round {s['half_data_rounds']}"
        parts.append(says(v["more_data"], f"Twice the data per client lowers the loss {at}, as the seed says ({{measured}} for half the data).",
                          f"Twice the data per client does not lower the loss {at} ({{measured}} for half the data).",
                          f"Twice the data per client does not measurably change the loss {at} ({{measured}} for half the data).", ""))
        parts.append(says(v["plateau"], "With twice the data the loss still falls further late in the run, a later plateau as the seed "
                          "says ({measured}).", "With twice the data the loss does not keep falling longer ({measured}): no later "
                          "plateau.", "Whether twice the data delays the plateau is undecided ({measured}).", ""))
    if len(sweep):
        cols = [c for c in sweep.columns if c != "mu"]
        best = {c: sweep.loc[sweep[c].idxmin(), "mu"] for c in cols}
        parts.append(f"Across the mu sweep (one seed, loss at round {s['sweep_rounds']}) the lowest loss is at "
                     + ", ".join(f"mu={x:g} ({k})" for k, x in best.items()) + ".")
    full = table[table["adapter"] == "full"]
    lora = table[(table["adapter"] == "lora") & (table["mu"] == s["main_mu"]) & (table["split"] == "iid")
                 & (table["samples_per_client"] == s["samples_per_client"])]
    if len(full):
        f = full.iloc[0]
        parts.append(f"Full-model FedProx reaches {f['final_eval_loss']:.4f} after {int(f['rounds'])} rounds, sending "
                     f"{f['payload_mib']:.1f} MiB per message against LoRA's {lora['payload_mib'].iloc[0]:.2f} MiB: "
                     + says(v["traffic"], "half, as the seed says.", "{measured}, far from the seed's half.", "", ""))
        parts.append("On OPT-350m, LoRA's fp32 training memory without activations is "
                     + says(v["memory"], "half the full model's ({measured}), as the seed says.",
                            "{measured} of the full model's, not the seed's half.", "", "") +
                     f" (CPU resident-set growth here: {f['peak_memory_mib']:,.0f} MiB full model, "
                     f"{lora['peak_memory_mib'].mean():,.0f} MiB LoRA, mean over seeds.)")
    parts.append(f"Training ran at {lora['train_tokens_per_s'].mean():.0f} tokens/s and evaluation at "
                 f"{lora['eval_tokens_per_s'].mean():.0f} tokens/s (mean over seeds); the main comparison's training loops took "
                 f"{main_wall_s / 60:.1f} min and all runs' {runs_wall_s / 60:.1f} min on this machine (the compute table adds "
                 "each run stage's model loading and data setup).")
    return " ".join(parts)
