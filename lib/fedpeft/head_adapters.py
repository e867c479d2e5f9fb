"""A classifier head with LoRA or QLoRA adapters, trained on cached backbone features.

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
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

from . import qlora
from .training import TrainStats, optimizer_step

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
    from peft import LoraConfig, get_peft_model

    if arm not in ARMS:
        raise ValueError(f"arm = {arm!r} is not known; allowed: {list(ARMS)}")
    linears = {n.split(".")[-1]: m for n, m in head.named_modules() if isinstance(m, nn.Linear)}
    if target not in linears:
        raise ValueError(f"target module = {target!r} is not a linear layer of the head; its linear layers: {sorted(linears)}")
    layer = linears[target]
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= max(layer.in_features, layer.out_features):
        raise ValueError(f"lora rank = {rank!r} is not allowed; it must be an integer in [1, {max(layer.in_features, layer.out_features)}] "
                         f"for Linear({layer.in_features}, {layer.out_features})")
    if not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ValueError(f"lora alpha = {alpha!r} is not allowed; it must be a number > 0")
    if not 0 <= dropout < 1:
        raise ValueError(f"lora dropout = {dropout!r} is not allowed; it must be in [0, 1)")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype = {compute_dtype!r} is not allowed; allowed: {sorted(COMPUTE_DTYPES)}")
    model = copy.deepcopy(head)
    if arm == "qlora":
        qlora.quantize_linear_layers(model, COMPUTE_DTYPES[compute_dtype], double_quant)
    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=[target]))


# --- data on cached features -----------------------------------------------------------------------------------

@dataclass
class FeatureViews:
    """A farmer's training data: ``features`` (N, views, D) of augmented views, ``labels`` (N,); ``local_steps``
    overrides the trainer's step budget for this farmer (heterogeneous devices)."""

    features: torch.Tensor
    labels: torch.Tensor
    cid: str = "all"
    local_steps: int | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FeatureSet:
    """Evaluation data: ``features`` (N, D) of the plain images, ``labels`` (N,)."""

    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ClassifierStats:
    loss: float  # mean cross-entropy per example (unweighted)
    accuracy: float  # fraction in [0, 1]
    macro_f1: float  # scikit-learn's macro F1 over the classes present in labels or predictions
    examples: int
    seconds: float


def inverse_frequency_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy class weights ``N / (K * count_k)`` (a class absent from ``labels`` gets weight 0)."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    weights = torch.where(counts > 0, len(labels) / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights


@dataclass
class HeadTrainer:
    """Trains a head for ``local_steps`` steps of ``batch_size`` (image, view) pairs drawn with replacement.

    Each farmer keeps its own AdamW and cosine schedule across rounds (keyed by its id), the schedule spanning
    ``rounds`` x its step budget, so one client over many rounds is exactly centralized training with periodic
    evaluation, and DiLoCo's inner optimizer keeps its state as in Douillard et al.
    """

    local_steps: int
    rounds: int
    batch_size: int
    lr: float
    class_weights: torch.Tensor | None = None
    weight_decay: float = 0.01
    _state: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("local_steps", "rounds", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)!r} is not allowed; it must be an integer >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr = {self.lr!r} is not allowed; it must be > 0")

    def _optimizer(self, model: nn.Module, cid: str, steps: int):
        params = [p for p in model.parameters() if p.requires_grad]
        key = (id(model), cid)
        if key not in self._state:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps * self.rounds)
            self._state[key] = (opt, sched)
        return self._state[key]

    def train(self, model: nn.Module, data: FeatureViews, generator: torch.Generator,
              extra_loss: Callable[[nn.Module], torch.Tensor | None] | None = None) -> TrainStats:
        if len(data) == 0:
            raise ValueError(f"farmer {data.cid} has no training examples")
        steps = data.local_steps or self.local_steps
        opt, sched = self._optimizer(model, data.cid, steps)
        model.train()
        n, views = data.features.shape[:2]
        total, start = 0.0, time.perf_counter()
        for _ in range(steps):
            idx = torch.randint(n, (self.batch_size,), generator=generator)
            view = torch.randint(views, (self.batch_size,), generator=generator)
            loss = F.cross_entropy(model(data.features[idx, view]), data.labels[idx], weight=self.class_weights)
            optimizer_step(opt, model, loss, extra_loss)
            sched.step()
            total += loss.item()
        return TrainStats(loss=total / steps, examples=steps * self.batch_size, seconds=time.perf_counter() - start)

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, data: FeatureSet) -> ClassifierStats:
        start = time.perf_counter()
        model.eval()
        logits = model(data.features).float()
        pred = logits.argmax(1)
        y = data.labels
        return ClassifierStats(loss=float(F.cross_entropy(logits, y)), accuracy=float((pred == y).float().mean()),
                               macro_f1=float(f1_score(y.numpy(), pred.numpy(), average="macro", zero_division=0)),
                               examples=len(y), seconds=time.perf_counter() - start)


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
