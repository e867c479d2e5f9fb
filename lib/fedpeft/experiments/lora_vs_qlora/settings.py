"""LoRA vs QLoRA: the experiment's name, settings, and the keys each kind of run (language model, UNet) reads.

Seed: ``../shared/seeds/002_831372d6abfe4dd9.txt``. Notebook: ``notebooks/03_lora_vs_qlora.ipynb``. Runs are in
:mod:`.runs` (one DVC stage each), tables, claims and the conclusion in :mod:`.report`.
"""

from __future__ import annotations

from typing import Any

import torch

from fedpeft.core.config import Settings, Spec, load_settings, seed_spec, seeds_spec, threads_spec

EXPERIMENT = "lora_vs_qlora"
ARMS = ("lora", "qlora")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

SCHEMA: dict[str, Spec] = {
    "lm_model": Spec(str, doc="tiny-gemma2, smollm2, or a hub id such as google/gemma-2-2b"),
    "lm_data": Spec(str, choices=("generated", "stdlib", "dolly"), doc="instruction pairs"),
    "lm_pairs": Spec(int, low=0, high=10_000_000, doc="pairs drawn from the source (0 = all)"),
    "eval_fraction": Spec(float, low=0.001, high=0.5, doc="held-out share of the pairs (the seed: 0.01)"),
    "max_length": Spec(int, low=8, high=1_000_000, doc="tokens per rendered pair after truncation"),
    "lm_steps": Spec(int, low=2, high=1_000_000, doc="optimizer steps per arm (each grad_accum examples)"),
    "warm_steps": Spec(int, low=1, high=1_000_000, doc="first steps left out of the speed figures"),
    "grad_accum": Spec(int, low=1, high=10_000),
    "learning_rate": Spec(float, low=1e-8, high=1.0),
    "warmup_ratio": Spec(float, low=0.0, high=0.5),
    "lora_rank": Spec(int, low=1, high=4096),
    "lora_alpha": Spec(float, low=1e-3, high=10_000),
    "lora_dropout": Spec(float, low=0.0, high=0.9),
    "target_modules": Spec(list, item=str, min_items=1),
    "base_dtype": Spec(str, choices=tuple(DTYPES), doc="LoRA arm: dtype of the frozen base weights"),
    "compute_dtype": Spec(str, choices=tuple(DTYPES), doc="QLoRA arm: dtype the NF4 weights are dequantized to"),
    "double_quant": Spec(bool),
    "diffusion_model": Spec(str, doc="tiny, small, or a hub id such as runwayml/stable-diffusion-v1-5"),
    "diffusion_images": Spec(str, doc="'generated' or a folder under the data root (vangogh)"),
    "generated_images": Spec(int, low=1, high=100_000, doc="generated source only: how many images"),
    "resolution": Spec(int, low=16, high=1024),
    "diffusion_steps": Spec(int, low=2, high=1_000_000),
    "diffusion_batch": Spec(int, low=1, high=4096),
    "diffusion_lr": Spec(float, low=1e-8, high=1.0),
    "unet_lora_rank": Spec(int, low=1, high=4096),
    "unet_lora_alpha": Spec(float, low=1e-3, high=10_000),
    "sample_steps": Spec(int, low=1, high=1000, doc="DDIM steps of the sample image"),
    "seed": seed_spec(doc="seed of the data, its split and the generated base models: the same in every run"),
    "seeds": seeds_spec(doc="one run per arm and seed: adapter init and batch order"),
    "torch_threads": threads_spec(),
}

#: No key decides which runs exist (always the two arms on each model) or is read by the report alone.
PLAN_KEYS: frozenset[str] = frozenset({"seeds"})
REPORT_KEYS: frozenset[str] = frozenset()
#: Keys only one kind of run reads: a language-model setting reruns the two LM arms, a UNet setting the two UNet arms.
KIND_KEYS = {
    "lm": frozenset({"lm_model", "lm_data", "lm_pairs", "eval_fraction", "max_length", "lm_steps", "grad_accum",
                     "learning_rate", "warmup_ratio", "lora_rank", "lora_alpha", "lora_dropout", "target_modules", "base_dtype"}),
    "unet": frozenset({"diffusion_model", "diffusion_images", "generated_images", "resolution", "diffusion_steps",
                       "diffusion_batch", "diffusion_lr", "unet_lora_rank", "unet_lora_alpha", "sample_steps"}),
}
FP16_RELOAD_TOLERANCE = 1e-2  # largest logit difference still called "the same logits" after an fp16 round trip


def load(profile: str, overrides: dict[str, Any] | None = None) -> Settings:
    s = load_settings(profile, EXPERIMENT, SCHEMA, overrides)
    if s["warm_steps"] >= s["lm_steps"] or s["warm_steps"] >= s["diffusion_steps"]:
        raise ValueError(f"warm_steps = {s['warm_steps']} leaves no timed step; it must be below lm_steps "
                         f"({s['lm_steps']}) and diffusion_steps ({s['diffusion_steps']})")
    return s


def data_files(s: Settings) -> list[str]:
    """The data-root files (manifest paths; a trailing ``/``: a whole folder) this profile's runs read: the UNet's
    image folder (the language model's pairs are generated, the standard library's or the hub's)."""
    return [] if s["diffusion_images"] == "generated" else [f"{s['diffusion_images'].rstrip('/')}/"]
