"""Parameter counts of a model."""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers such as BatchNorm running statistics excluded); with
    ``trainable_only``, only those with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def training_checkpoint_bytes(model: nn.Module, optimizer: str = "adam") -> int:
    """Bytes of ``torch.save({"model": state_dict, "optimizer": state})`` for a checkpoint that resumes training:
    the weights plus the optimizer's per-parameter state (Adam: two moments, so about 3x the weights). Measured on a
    copy, after one zero-gradient step that creates the optimizer state without moving any weight."""
    import copy
    import io

    import torch

    optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    if optimizer not in optimizers:
        raise ValueError(f"optimizer = {optimizer!r} is not supported; use one of {sorted(optimizers)}")
    clone = copy.deepcopy(model)
    params = [p for p in clone.parameters() if p.requires_grad]
    opt = optimizers[optimizer](params, lr=1e-3, **({"momentum": 0.9} if optimizer == "sgd" else {}))
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    buffer = io.BytesIO()
    torch.save({"model": clone.state_dict(), "optimizer": opt.state_dict()}, buffer)
    return buffer.getbuffer().nbytes
