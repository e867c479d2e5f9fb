"""The one place that checks a LoRA setting against the model it adapts and builds peft's ``LoraConfig``.

Every adapter in the study (text classifiers, causal LMs, the weeds head) goes through :func:`lora_config`, so a
rank, alpha, dropout or target that does not fit gets the same clear error everywhere.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from torch import nn


def lora_config(model: nn.Module, rank: int, alpha: float, dropout: float, target_modules: Sequence[str],
                task_type: str | None = None, rank_above_layer: bool = False, **extra: Any):
    """peft ``LoraConfig`` for ``target_modules`` of ``model``, after checking every setting against it.

    ``rank`` must be an integer in [1, the smallest ``min(in, out)`` of the targeted layers]; with
    ``rank_above_layer`` up to their largest ``max(in, out)`` instead (the weeds seed's r 4 on a 3-class head is
    allowed, though ``B @ A`` still has rank at most ``min(in, out)``). ``alpha`` > 0 and finite (the adapter's
    scaling is ``alpha / rank``); ``dropout`` in [0, 1). A target names a module as peft matches it: the module's
    full name or a dotted suffix of it (``to_out.0``). ``extra`` goes to ``LoraConfig`` (``init_lora_weights``).
    """
    from peft import LoraConfig

    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}

    def matches(name: str, target: str) -> bool:
        return name == target or name.endswith("." + target)

    unknown = [t for t in target_modules if not any(matches(n, t) for n in linears)]
    if unknown or not target_modules:
        raise ValueError(f"target_modules {unknown or list(target_modules)} name no linear layer of {type(model).__name__}; "
                         f"its linear layers are {sorted({n.split('.')[-1] for n in linears})}")
    targeted = [m for n, m in linears.items() if any(matches(n, t) for t in target_modules)]
    if rank_above_layer:
        limit = max(max(m.in_features, m.out_features) for m in targeted)
    else:
        limit = min(min(m.in_features, m.out_features) for m in targeted)
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= limit:
        shapes = sorted({f"Linear({m.in_features}, {m.out_features})" for m in targeted})
        bound = "largest" if rank_above_layer else "smallest"
        raise ValueError(f"lora rank = {rank!r} is not allowed; it must be an integer in [1, {limit}] "
                         f"(the {bound} dimension of the targeted layers {', '.join(shapes)})")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"lora alpha = {alpha!r} is not allowed; it must be a finite number > 0")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"lora dropout = {dropout!r} is not allowed; it must be in [0, 1)")
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), task_type=task_type,
                      **extra)
