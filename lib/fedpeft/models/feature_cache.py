"""Features of a frozen backbone computed once: per image, and per augmented view for training.

When only the head is adapted the backbone never needs a backward pass, and its forward pass gives the same
output for the same input, so the study runs it once per (image, augmented view) and trains the head on the
stored 1280-dimensional features. Training then samples a view of each image per step, as an augmenting data
loader would; the number of distinct views is a parameter (an uncached loader draws a new one every time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torchvision.transforms import v2
from tqdm.auto import tqdm

from fedpeft.models.backbones import Backbone


def seed_augmentations() -> v2.Compose:
    """The seed's training augmentations on float images in [0, 1]: horizontal and vertical flips, rotation 15,
    a small affine (translate 10 %, scale 0.9-1.1) and colour jitter (0.2 brightness, contrast, saturation).
    Random erasing (torchvision's defaults: p 0.5) follows normalization, in :func:`augmented_batch`."""
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomRotation(15),
        v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
    ])


_ERASE = v2.RandomErasing()


def augmented_batch(backbone: Backbone, images: torch.Tensor, augment: v2.Compose) -> torch.Tensor:
    """One independently augmented, normalized view of each uint8 image (each image draws its own parameters)."""
    views = torch.stack([augment(img.float() / 255.0) for img in images])
    x = (views - torch.tensor(backbone.mean).view(1, 3, 1, 1)) / torch.tensor(backbone.std).view(1, 3, 1, 1)
    return torch.stack([_ERASE(v) for v in x])


@dataclass
class CacheStats:
    images: int
    views: int
    seconds: float

    @property
    def seconds_per_image(self) -> float:
        """Seconds of augmentation and backbone forward per image view."""
        return self.seconds / max(self.images * max(self.views, 1), 1)


@torch.inference_mode()
def extract_features(backbone: Backbone, images: torch.Tensor, views: int = 0, seed: int = 0, batch_size: int = 64,
                     progress: bool = False, description: str = "features") -> tuple[torch.Tensor, CacheStats]:
    """Backbone features of uint8 ``images``: ``views = 0`` gives the plain images' features (N, D); ``views >= 1``
    gives that many augmented views per image (N, views, D), reproducible from ``seed``."""
    if views < 0:
        raise ValueError(f"views = {views!r} is not allowed; it must be an integer >= 0 (0: no augmentation)")
    if len(images) == 0:
        raise ValueError("no images to extract features from")
    augment = seed_augmentations()
    start = time.perf_counter()
    rounds = max(views, 1)
    out = torch.empty(len(images), rounds, backbone.feature_dim)
    bar = tqdm(total=len(images) * rounds, desc=description, disable=not progress, leave=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for v in range(rounds):
            for s in range(0, len(images), batch_size):
                batch = images[s : s + batch_size]
                x = augmented_batch(backbone, batch, augment) if views else backbone.normalize(batch)
                out[s : s + len(batch), v] = backbone.features(x).float()
                bar.update(len(batch))
    bar.close()
    stats = CacheStats(len(images), views, time.perf_counter() - start)
    return (out if views else out[:, 0]), stats
