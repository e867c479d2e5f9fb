"""Image classification data held in memory as uint8 tensors, and the EuroSAT sources of each profile.

Images are kept as ``uint8`` (N, 3, H, W) tensors: 27,000 EuroSAT images take 332 MB this way, and a batch is
normalized on the fly (``normalize_batch``), which is much cheaper than a per-item ``DataLoader`` pipeline.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from fedpeft.core.integrity import decoding, require_data_file, sha256_of

EUROSAT_CLASSES = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)
EUROSAT_ZIP = "eurosat/EuroSAT_RGB.zip"


@dataclass
class ImageArrays:
    """A labelled image set: ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W); got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> "ImageArrays":
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageArrays(self.images[idx], self.labels[idx], self.class_names)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels.numpy(), minlength=len(self.class_names))


def normalize_batch(images: torch.Tensor, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """uint8 images -> float32 in the seed's ``Normalize((0.5,)*3, (0.5,)*3)`` convention, i.e. [-1, 1]."""
    return images.float().div_(255.0).sub_(mean).div_(std)


def stratified_split(labels: np.ndarray | torch.Tensor, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/test split (sorted), reproducible from ``seed``."""
    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    train, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(test)


def random_split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a plain random train/test split, as the seed's per-client ``train_test_split(0.2)``."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


# --- embedded profile: generated images ---------------------------------------------------------------------

def generate_landcover_images(images_per_class: int, seed: int, size: int = 64, num_classes: int = 10, noise: float = 0.35) -> ImageArrays:
    """Deterministic EuroSAT-like images: each class is a colour palette plus an oriented stripe texture.

    The texture's frequency and angle, the palette and the per-image jitter are chosen so that classes overlap
    (a small CNN reaches well under 100% in a few rounds), which keeps the embedded profile a real learning task.
    """
    g = torch.Generator().manual_seed(seed)
    n = images_per_class * num_classes
    labels = torch.arange(num_classes).repeat_interleave(images_per_class)
    class_rng = torch.Generator().manual_seed(12345)  # class definitions do not depend on the data seed
    palette = torch.rand(num_classes, 3, generator=class_rng) * 0.6 + 0.2
    angle = torch.rand(num_classes, generator=class_rng) * torch.pi
    freq = 2 + torch.rand(num_classes, generator=class_rng) * 6

    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    a = angle[labels] + torch.randn(n, generator=g) * 0.25
    f = freq[labels] * (1 + torch.randn(n, generator=g) * 0.15)
    phase = torch.rand(n, generator=g) * 2 * torch.pi
    proj = xx[None] * torch.cos(a)[:, None, None] + yy[None] * torch.sin(a)[:, None, None]
    texture = torch.sin(2 * torch.pi * f[:, None, None] * proj + phase[:, None, None])  # (n, H, W)
    colour = palette[labels] + torch.randn(n, 3, generator=g) * 0.12
    img = colour[:, :, None, None] * (0.75 + 0.25 * texture[:, None])
    img = img + torch.randn(n, 3, size, size, generator=g) * noise * 0.3
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    perm = torch.randperm(n, generator=g)
    return ImageArrays(images[perm].contiguous(), labels[perm].contiguous(), EUROSAT_CLASSES[:num_classes])


# --- local profile: the real EuroSAT RGB zip ----------------------------------------------------------------

def _decode_rgb(raw: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def load_eurosat_zip(data_root: Path, cache_dir: Path | None = None, verify: bool = True, progress: bool = True) -> ImageArrays:
    """Load all 27,000 EuroSAT RGB images from ``<data_root>/eurosat/EuroSAT_RGB.zip`` (layout ``2750/<Class>/*.jpg``).

    The zip is checked against the data root's manifest. Decoded arrays are cached in ``cache_dir`` under the
    zip's sha256, so later runs skip the JPEG decoding.
    """
    path = require_data_file(data_root, EUROSAT_ZIP, verify=verify)
    digest = sha256_of(path)[:16]
    cache = Path(cache_dir) / f"eurosat_rgb_{digest}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache) as npz:
            return ImageArrays(torch.from_numpy(npz["images"]), torch.from_numpy(npz["labels"]), EUROSAT_CLASSES)
    with decoding(path, "a zip archive"), zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith(".jpg"))
        images = np.empty((len(names), 64, 64, 3), dtype=np.uint8)
        labels = np.empty(len(names), dtype=np.int64)
        for i, name in enumerate(tqdm(names, desc="decode EuroSAT", disable=not progress, mininterval=2)):
            cls = Path(name).parent.name
            if cls not in EUROSAT_CLASSES:
                raise ValueError(f"{path}: unexpected class folder {cls!r} in {name}; expected one of {EUROSAT_CLASSES}")
            with decoding(f"{path}!{name}", "a JPEG image"):
                images[i] = _decode_rgb(zf.read(name))
            labels[i] = EUROSAT_CLASSES.index(cls)
    chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, images=chw, labels=labels)
        tmp.replace(cache)
    return ImageArrays(torch.from_numpy(chw), torch.from_numpy(labels), EUROSAT_CLASSES)


# --- paper profile: the hub's tanganke/eurosat ---------------------------------------------------------------

def hf_images_to_arrays(ds, image_column: str = "image", label_column: str = "label") -> ImageArrays:
    """Convert a Hugging Face ``datasets.Dataset`` of PIL images and integer labels into :class:`ImageArrays`."""
    names = tuple(ds.features[label_column].names) if hasattr(ds.features[label_column], "names") else EUROSAT_CLASSES
    images = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in ds[image_column]])
    labels = np.asarray(ds[label_column], dtype=np.int64)
    return ImageArrays(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))), torch.from_numpy(labels), names)


def load_eurosat_hub(name_or_path: str = "tanganke/eurosat") -> tuple[ImageArrays, ImageArrays]:
    """The seed's data: ``tanganke/eurosat`` from the hub (train, test), or a ``save_to_disk`` copy of it.

    A local folder (a ``DatasetDict`` saved with ``save_to_disk``) is read in the same format, which is how the
    loader is tested offline.
    """
    import datasets

    if Path(name_or_path).is_dir():
        dd = datasets.load_from_disk(name_or_path)
    else:
        dd = datasets.load_dataset(name_or_path)
    for split in ("train", "test"):
        if split not in dd:
            raise ValueError(f"{name_or_path}: expected splits 'train' and 'test', found {list(dd)}")
    return hf_images_to_arrays(dd["train"]), hf_images_to_arrays(dd["test"])
