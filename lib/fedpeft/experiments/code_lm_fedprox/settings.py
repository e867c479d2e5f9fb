"""Python code, federated LoRA, FedProx vs FedAvg: the experiment's name, settings and plan/report keys.

Seed: ``../shared/seeds/001_b400fdb76fdfd447.txt``. Notebook: ``notebooks/02_code_lm_fedprox_lora.ipynb``. Runs are in
:mod:`.runs` (one DVC stage each), tables, claims and the conclusion in :mod:`.report`.
"""

from __future__ import annotations

from typing import Any

from fedpeft.core.config import ParameterError, Settings, Spec, load_settings, seeds_spec, threads_spec
from fedpeft.data import code_corpus

EXPERIMENT = "code_lm_fedprox"

SCHEMA: dict[str, Spec] = {
    "source": Spec(str, choices=("stdlib", "hub"), doc="Python's own standard library, or a hub code dataset"),
    "stdlib_packages": Spec(list, item=str, doc="stdlib source: keep only these top-level packages ([] = all)"),
    "hub_dataset": Spec(str, doc="hub source: dataset id with content/repo_name/path columns"),
    "model": Spec(str, doc="tiny-opt, smollm2, or a hub id such as facebook/opt-350m"),
    "max_length": Spec(int, low=2, high=1_000_000, doc="tokens per packed sample (checked against the model's maximum)"),
    "eval_fraction": Spec(float, low=0.01, high=0.9, doc="share of files held out for evaluation (by file)"),
    "num_clients": Spec(int, low=1, high=1000),
    "samples_per_client": Spec(int, low=1, high=10_000_000, doc="packed samples of max_length tokens per client"),
    "eval_samples": Spec(int, low=1, high=10_000_000, doc="packed samples of the held-out files the server evaluates on"),
    "splits": Spec(list, item=str, choices=code_corpus.SPLITS, min_items=1, doc="client splits of the mu sweep"),
    "prox_mus": Spec(list, item=float, low=0.0, high=1e6, min_items=1, doc="FedProx mu values of the sweep; 0 is FedAvg"),
    "main_mu": Spec(float, low=0.0, high=1e6, doc="the seed's mu; the main comparison is FedProx(main_mu) vs FedAvg"),
    "seeds": seeds_spec(doc="seeds of the main comparison; the sweep uses the first"),
    "num_rounds": Spec(int, low=1, high=10000, doc="rounds of the main comparison (the seed: 20)"),
    "sweep_rounds": Spec(int, low=1, high=10000, doc="rounds of the mu-sweep runs; the sweep compares every arm at this "
                                                      "round (the main runs' history gives theirs; <= num_rounds)"),
    "half_data_rounds": Spec(int, low=1, high=10000, doc="rounds of the half-data arm; compared with full data at this "
                                                          "round (the seed: 10; <= num_rounds)"),
    "probe_samples": Spec(int, low=0, high=10_000_000, doc="blocks drawn across all held-out files on which the base "
                                                             "model's loss is measured once, beside the evaluation blocks "
                                                             "(0: no probe run)"),
    "local_epochs": Spec(int, low=1, high=1000),
    "batch_size": Spec(int, low=1, high=4096),
    "eval_batch_size": Spec(int, low=1, high=4096),
    "learning_rate": Spec(float, low=1e-8, high=1.0),
    "lora_rank": Spec(int, low=1, high=4096),
    "lora_alpha": Spec(float, low=1e-3, high=10_000),
    "lora_dropout": Spec(float, low=0.0, high=0.95),
    "target_modules": Spec(list, item=str, min_items=1, nullable=True, doc="null: peft's default for the model"),
    "pretrain_samples": Spec(int, low=0, high=10_000_000, doc="tiny-opt only: blocks of other stdlib packages it is first trained on"),
    "half_data_run": Spec(bool, doc="extra run: FedProx(main_mu) with half the samples per client (seed's 1k vs 2k)"),
    "full_model_rounds": Spec(int, low=0, high=10_000, doc="extra run: full-model FedProx(main_mu) for this many rounds (0: none)"),
    "full_model_lr": Spec(float, low=1e-8, high=1.0),
    "precision": Spec(str, choices=("fp32", "bf16", "auto"), doc="auto: bf16 on a GPU or a CPU with native bf16"),
    "device": Spec(str, choices=("auto", "cpu", "cuda")),
    "transport": Spec(str, choices=("fp32", "fp16", "bf16"), doc="precision of the adapters on the wire"),
    "torch_threads": threads_spec(),
}

#: Keys that decide which runs exist; a run's mu, split, seed, samples, rounds and adapter are in its spec.
PLAN_KEYS = frozenset({"splits", "prox_mus", "main_mu", "seeds", "num_rounds", "samples_per_client", "half_data_run",
                       "full_model_rounds", "sweep_rounds", "half_data_rounds", "probe_samples"})
#: Keys only the report reads.
REPORT_KEYS: frozenset[str] = frozenset()


def load(profile: str, overrides: dict[str, Any] | None = None) -> Settings:
    """The validated settings; the sweep's and the half-data arm's rounds must not exceed the main runs' (the main
    runs' history stands in for the sweep's FedAvg and FedProx(main_mu) arms, and gives full data's loss at the
    half-data arm's last round)."""
    s = load_settings(profile, EXPERIMENT, SCHEMA, overrides)  # prox_mus: the schema bounds each mu to [0, 1e6]
    for key in ("sweep_rounds", "half_data_rounds"):
        if s[key] > s["num_rounds"]:
            raise ParameterError(f"{EXPERIMENT}.{key} = {s[key]} is not allowed; it must be <= num_rounds ({s['num_rounds']})")
    return s


def arm_name(mu: float) -> str:
    return "FedAvg" if mu == 0 else f"FedProx mu={mu:g}"


def data_files(s: Settings) -> list[str]:  # noqa: ARG001 - the corpus is the standard library's or the hub's
    """The data-root files this profile's runs read: none."""
    return []
