"""QLoRA's 4-bit NF4 weights: quantizing layers with bitsandbytes, what they really occupy, and analytic memory.

bitsandbytes stores an NF4 weight as two 4-bit codes per byte plus one absolute maximum per block of 64 weights.
Without double quantization the absmax is fp32 (4 bytes per 64 weights: 0.5 bits per weight). With double
quantization the absmax values are themselves quantized to 8 bits in blocks of 256, each block keeping an fp32
scale, plus a 256-entry fp32 code table and an fp32 offset per tensor (about 0.127 bits per weight): the
"0.37 bits per parameter" the QLoRA paper saves. Sizes here are in bytes; MiB = 2**20 bytes, GB = 10**9 bytes.

Every NF4 layer of the study is made here (:func:`quantize_linear_layers`, :func:`from_pretrained_4bit`), and each
one is pinned to a single CPU path by :func:`pin_cpu_path`: the reason is in that function.
"""

from __future__ import annotations

from typing import Iterable

import pandas as pd
import torch
from torch import nn

NF4_BLOCK = 64  # weights per absmax (bitsandbytes' default blocksize for 4-bit)
NESTED_BLOCK = 256  # absmax values per second-level scale (double quantization)

#: The methods sentence of every report that runs NF4 layers on a CPU (the reason: :func:`pin_cpu_path`).
CPU_PATH_METHOD = ("**NF4 on a CPU**: every 4-bit layer dequantizes its weight to the compute dtype and multiplies in that "
                   "dtype, in training and in evaluation alike, on every x86-64 CPU. bitsandbytes' bf16 kernel for CPUs with "
                   "AVX512-BF16 (Intel Xeon with AMX), which it would take for evaluation, is switched off "
                   "(`fedpeft.quantization.nf4.pin_cpu_path`): it computes in bf16 whatever the compute dtype, needs layers "
                   "of at least 64 inputs and a multiple of 32 outputs, and exists on one CPU kind only, so no number here "
                   "depends on which CPU ran it.")


def nf4_bytes(num_weights: int, double_quant: bool, blocksize: int = NF4_BLOCK, nested_blocksize: int = NESTED_BLOCK) -> int:
    """Bytes of one NF4 weight tensor with its quantization statistics, as bitsandbytes lays it out."""
    blocks = -(-num_weights // blocksize)
    packed = -(-num_weights // 2)
    code = 16 * 4  # the 16-value NF4 code book, fp32
    if not double_quant:
        return packed + 4 * blocks + code
    nested = -(-blocks // nested_blocksize)
    return packed + blocks + 4 * nested + 256 * 4 + 4 + code


def bnb_config(compute_dtype: torch.dtype = torch.bfloat16, double_quant: bool = True):
    """transformers' ``BitsAndBytesConfig`` of the seed: 4-bit NF4, double quantization, ``compute_dtype``."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=compute_dtype)


def pin_cpu_path(model: nn.Module) -> int:
    """Make every bitsandbytes ``Linear4bit`` of ``model`` compute on the CPU as it does on every x86-64 CPU, and as
    it does in training: dequantize the NF4 weight to the layer's compute dtype (exactly: code x absmax), then one
    ``torch.nn.functional.linear``. Returns how many layers it pinned.

    Why (issue 28): bitsandbytes 0.50 asks ``has_avx512bf16()`` when it builds a layer. Where the CPU has
    AVX512-BF16 (Intel Xeon with AMX, not the AMD EPYC machines), a forward in eval mode without gradient repacks
    the weight for a fused bf16 kernel instead. That path (1) exists on one CPU kind only, so an evaluation loss
    would depend on the machine; (2) computes in bf16 whatever compute dtype a run chose (fp32 in the CPU
    profiles), so evaluation would not compute what training computes; (3) needs ``out_features % 32 == 0`` and
    ``in_features >= 64``, so it crashes on the weeds' ``Linear(1280, 2 or 3)`` head and on the tiny UNet's
    32-wide layers. The portable path is what training always takes (gradients never take the bf16 path) and
    what a GPU computes for a batch, so a comparison is never confounded by the machine. It costs speed only in
    NF4 evaluation on such CPUs, which the study does not time. On CUDA the flag is not read."""
    import bitsandbytes as bnb

    count = 0
    for mod in model.modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            mod.support_avx512bf16_for_cpu = False
            count += 1
    return count


def from_pretrained_4bit(auto_class, source, compute_dtype: torch.dtype, double_quant: bool = True, **kwargs) -> nn.Module:
    """``auto_class.from_pretrained(source)`` with the seed's 4-bit NF4 config (:func:`bnb_config`) computing in
    ``compute_dtype``, its NF4 layers pinned to the study's CPU path (:func:`pin_cpu_path`); ``kwargs`` go to
    ``from_pretrained`` (``device_map``, for example)."""
    model = auto_class.from_pretrained(source, quantization_config=bnb_config(compute_dtype, double_quant),
                                       dtype=compute_dtype, **kwargs)
    pin_cpu_path(model)
    return model


def quantize_linear_layers(module: nn.Module, compute_dtype: torch.dtype = torch.float32, double_quant: bool = True,
                           skip: Iterable[str] = ()) -> int:
    """Replace every ``nn.Linear`` of ``module`` (in place, on the CPU) by a bitsandbytes NF4 ``Linear4bit``
    holding the same weights, pinned to the study's CPU path (:func:`pin_cpu_path`); ``skip`` names modules (last
    name part) to leave alone. Returns how many were replaced. For models that transformers does not load itself
    (a diffusers UNet built here, the weeds' classifier head)."""
    import bitsandbytes as bnb

    skip = set(skip)
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or isinstance(child, bnb.nn.Linear4bit) or name in skip:
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=compute_dtype, compress_statistics=double_quant, quant_type="nf4")
            q.weight = bnb.nn.Params4bit(child.weight.data.to(torch.float32).clone(), requires_grad=False,
                                         quant_type="nf4", compress_statistics=double_quant)
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data.clone(), requires_grad=False)
            pin_cpu_path(q)
            setattr(parent, name, q.to("cpu"))  # moving the Params4bit to a device is what quantizes it
            count += 1
    return count


def _quant_state_bytes(state) -> int:
    total = state.absmax.numel() * state.absmax.element_size() + state.code.numel() * state.code.element_size()
    if getattr(state, "nested", False) and state.state2 is not None:
        s2 = state.state2
        total += s2.absmax.numel() * s2.absmax.element_size() + s2.code.numel() * s2.code.element_size() + 4
    return total


def weight_bytes_by_layer_type(model: nn.Module) -> pd.DataFrame:
    """Measured bytes of every parameter, grouped by the type of the layer that owns it: the stored weights and,
    for NF4 layers, their quantization statistics (absmax, nested absmax, code books). LoRA adapters are their
    own group."""
    import bitsandbytes as bnb

    rows: dict[str, dict[str, int]] = {}
    seen: set[int] = set()  # tied weights (an output head sharing the embedding) count once
    for name, mod in model.named_modules():
        own = [(n, p) for n, p in mod.named_parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for _, p in own)
        if not own:
            continue
        kind = "LoRA adapter" if ".lora_" in f".{name}" else type(mod).__name__
        row = rows.setdefault(kind, {"tensors": 0, "parameters": 0, "weight_bytes": 0, "statistics_bytes": 0})
        for pname, p in own:
            row["tensors"] += 1
            row["weight_bytes"] += p.numel() * p.element_size()
            if isinstance(mod, bnb.nn.Linear4bit) and pname == "weight" and getattr(p, "quant_state", None) is not None:
                row["parameters"] += int(p.quant_state.shape.numel())
                row["statistics_bytes"] += _quant_state_bytes(p.quant_state)
            else:
                row["parameters"] += p.numel()
    df = pd.DataFrame([{"layer type": k, **v} for k, v in rows.items()])
    df["bytes_per_parameter"] = (df["weight_bytes"] + df["statistics_bytes"]) / df["parameters"]
    return df.sort_values("weight_bytes", ascending=False).reset_index(drop=True)


def nf4_measured_vs_formula(model: nn.Module) -> dict[str, int]:
    """Bytes of every bitsandbytes NF4 layer in ``model`` as measured (packed codes plus quantization statistics)
    and as :func:`nf4_bytes` predicts them from each layer's weight count alone. Layers without a quantization
    state (not yet moved to a device) are not counted."""
    import bitsandbytes as bnb

    out = {"layers": 0, "weights": 0, "measured_bytes": 0, "formula_bytes": 0}
    for mod in model.modules():
        state = getattr(mod.weight, "quant_state", None) if isinstance(mod, bnb.nn.Linear4bit) else None
        if state is None:
            continue
        n = int(state.shape.numel())
        out["layers"] += 1
        out["weights"] += n
        out["measured_bytes"] += mod.weight.numel() * mod.weight.element_size() + _quant_state_bytes(state)
        out["formula_bytes"] += nf4_bytes(n, bool(getattr(state, "nested", False)), state.blocksize)
    return out


def quantizable_linear_parameters(model: nn.Module, skip: Iterable[str] = ("lm_head",)) -> tuple[list[int], int]:
    """Weight sizes of the ``nn.Linear`` layers a 4-bit load quantizes (transformers leaves the output head in
    full precision), and the count of every other parameter."""
    skip = set(skip)
    linear, other = [], 0
    covered = set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and name.split(".")[-1] not in skip:
            linear.append(mod.weight.numel())
            covered.add(id(mod.weight))
    for p in model.parameters():
        if id(p) not in covered:
            other += p.numel()
    return linear, other


def analytic_weight_memory(model: nn.Module, skip: Iterable[str] = ("lm_head",)) -> pd.DataFrame:
    """Bytes of a model's weights stored in fp32, bf16, NF4 and NF4 with double quantization (linear layers in
    4 bits, everything else in bf16 for the NF4 rows, as a QLoRA load keeps it). Works on the meta device."""
    linear, other = quantizable_linear_parameters(model, skip)
    n_linear = sum(linear)
    rows = [
        {"storage": "fp32", "bytes": 4 * (n_linear + other)},
        {"storage": "bf16", "bytes": 2 * (n_linear + other)},
        {"storage": "nf4 (linear) + bf16", "bytes": sum(nf4_bytes(n, False) for n in linear) + 2 * other},
        {"storage": "nf4 + double quant (linear) + bf16", "bytes": sum(nf4_bytes(n, True) for n in linear) + 2 * other},
    ]
    df = pd.DataFrame(rows)
    df["GB"] = df["bytes"] / 1e9
    df["GiB"] = df["bytes"] / 2**30
    df["linear_parameters"] = n_linear
    df["other_parameters"] = other
    return df
