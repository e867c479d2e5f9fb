"""A classifier head with LoRA or QLoRA adapters (its trainer on cached features: :mod:`fedpeft.training.head`).

The head is the backbone's ``Dropout -> Linear(features, classes)``. ``qlora`` stores the Linear's weight in 4-bit
NF4 with bitsandbytes (``Linear4bit``) before peft adds LoRA on it; ``lora`` keeps it in fp32. Only the LoRA
matrices train and travel. :func:`adapted_head` deep-copies the fp32 head before quantizing, so any number of
farmers can be built from one base (the seed's bug: quantizing the shared base in place made the second farmer
fail on uint8 weights).

With ``r`` larger than ``min(in, out)`` (the seed's r 4 on a 3-class head) LoRA is allowed but the update
``B @ A`` still has rank at most ``min(in, out)``: a bigger r adds bytes, not expressiveness.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from fedpeft.models.lora_settings import lora_config
from fedpeft.quantization import nf4

ARMS = ("lora", "qlora")
COMPUTE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def base_head(linear: nn.Linear, dropout: float) -> nn.Module:
    """``Dropout(dropout) -> linear`` as a module whose Linear is named ``linear`` (the adapter's target)."""
    head = nn.Sequential(OrderedDict(drop=nn.Dropout(dropout), linear=copy.deepcopy(linear)))
    for p in head.parameters():
        p.requires_grad_(False)
    return head


def lora_parameter_count(in_features: int, out_features: int, rank: int) -> int:
    """Parameters of one LoRA pair on a Linear(in, out): A is (r, in), B is (out, r)."""
    return rank * (in_features + out_features)


def adapted_head(head: nn.Module, arm: str, rank: int, alpha: float, dropout: float, target: str = "linear",
                 compute_dtype: str = "fp32", double_quant: bool = True, seed: int = 0) -> nn.Module:
    """A new head (``head`` is never changed) with LoRA on ``target``; for ``qlora`` the target's weight is NF4."""
    from peft import get_peft_model

    if arm not in ARMS:
        raise ValueError(f"arm = {arm!r} is not known; allowed: {list(ARMS)}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype = {compute_dtype!r} is not allowed; allowed: {sorted(COMPUTE_DTYPES)}")
    config = lora_config(head, rank, alpha, dropout, [target], rank_above_layer=True)
    model = copy.deepcopy(head)
    if arm == "qlora":
        nf4.quantize_linear_layers(model, COMPUTE_DTYPES[compute_dtype], double_quant)
    torch.manual_seed(seed)
    return get_peft_model(model, config)


def effective_update_rank(model: nn.Module) -> int:
    """Rank of the LoRA update ``B @ A`` of the (single) adapted layer; at most ``min(in, out)`` whatever r is."""
    a = next(p for n, p in model.named_parameters() if "lora_A" in n)
    b = next(p for n, p in model.named_parameters() if "lora_B" in n)
    return int(torch.linalg.matrix_rank((b @ a).detach().float()))


def frozen_weight_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The head's frozen (non-LoRA) tensors, NF4 codes and statistics included, for comparing farmers."""
    out = {k: v for k, v in model.state_dict().items() if "lora_" not in k}
    for name, mod in model.named_modules():
        state = getattr(getattr(mod, "weight", None), "quant_state", None)
        if state is not None:
            out[f"{name}.absmax"] = state.absmax
    return out
