"""Field images labelled by their dominant plant class: generated fields, CWFID tiles and WeedsGalore.

Every source gives per-pixel semantic masks (0 = soil/background). A sample's class is the seed's rule: the most
frequent non-background class of its mask (ties: the lower class id), mapped by ``class_map`` to a label; classes
above the largest key map to that key's label (the seed's WeedsGalore map ``{1: 0, 2: 1, 3: 2}`` sends 3, 4 and 5
to label 2). A sample whose plant pixels cover less than ``min_plant_fraction`` of it has no dominant plant and is
left out. Images are kept as uint8 ``(N, 3, H, W)`` tensors with the id of the field they come from (``groups``),
so a field's tiles stay with one farmer and one split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fedpeft.core.integrity import decoding, require_data_file

CWFID_CLASSES = ("crop", "weed")
CWFID_CLASS_MAP = {1: 0, 2: 1}  # annotation colours: green = crop (1), red = weed (2)
SEED_CLASS_MAP = {1: 0, 2: 1, 3: 2}  # the seed's WeedsGalore rule {1->0, 2->1, 3+->2}
GENERATED_CLASSES = ("broadleaf", "grass", "rosette")


@dataclass
class FieldSamples:
    """Labelled field samples: ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N,), ``groups`` (N,) the field each
    sample was cut from, ``plant_fraction`` (N,) the share of plant pixels."""

    images: torch.Tensor
    labels: torch.Tensor
    groups: np.ndarray
    plant_fraction: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "FieldSamples":
        idx = np.asarray(indices, dtype=np.int64)
        t = torch.as_tensor(idx)
        return FieldSamples(self.images[t], self.labels[t], self.groups[idx], self.plant_fraction[idx], self.class_names)

    def in_groups(self, groups: Sequence) -> "FieldSamples":
        return self.subset(np.flatnonzero(np.isin(self.groups, list(groups))))

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels.numpy(), minlength=len(self.class_names))


def map_class(semantic_class: int, class_map: Mapping[int, int]) -> int:
    """The label of a semantic class under ``class_map`` (classes above the largest key take its label)."""
    if semantic_class in class_map:
        return class_map[semantic_class]
    top = max(class_map)
    if semantic_class > top:
        return class_map[top]
    raise ValueError(f"semantic class {semantic_class} has no label in class_map {dict(class_map)}")


def dominant_class(mask: np.ndarray, class_map: Mapping[int, int], min_plant_fraction: float = 0.0) -> int | None:
    """The label of ``mask`` (2-D array of semantic classes, 0 = background) by the dominant non-background class,
    or ``None`` when plants cover less than ``min_plant_fraction`` of it (or none at all)."""
    counts = np.bincount(np.asarray(mask, dtype=np.int64).ravel())
    plants = counts[1:]
    if plants.sum() == 0 or plants.sum() < min_plant_fraction * mask.size:
        return None
    return map_class(int(np.argmax(plants)) + 1, class_map)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, size, size), antialiased bilinear."""
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp_(0, 255).to(torch.uint8)


def samples_from_masks(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], groups: Sequence, class_map: Mapping[int, int],
                       class_names: Sequence[str], size: int, grid: tuple[int, int] = (1, 1),
                       min_plant_fraction: float = 0.0) -> FieldSamples:
    """Cut each (H, W, 3) uint8 image and its (H, W) mask into a ``grid`` of (rows, cols) tiles, label every tile by
    :func:`dominant_class`, keep the labelled ones resized to ``size`` x ``size``."""
    rows, cols = grid
    if rows < 1 or cols < 1:
        raise ValueError(f"tile grid = {grid!r} is not allowed; it must be two integers >= 1 (rows, cols)")
    tiles, labels, tile_groups, fractions = [], [], [], []
    for image, mask, group in zip(images, masks, groups, strict=True):
        if image.shape[:2] != mask.shape:
            raise ValueError(f"field {group}: image {image.shape[:2]} and mask {mask.shape} differ in size")
        h, w = mask.shape
        for r in range(rows):
            for c in range(cols):
                ys, xs = slice(r * h // rows, (r + 1) * h // rows), slice(c * w // cols, (c + 1) * w // cols)
                label = dominant_class(mask[ys, xs], class_map, min_plant_fraction)
                if label is None:
                    continue
                tile = torch.from_numpy(np.ascontiguousarray(image[ys, xs])).permute(2, 0, 1)[None]
                tiles.append(_resize(tile, size))
                labels.append(label)
                tile_groups.append(group)
                fractions.append(float((mask[ys, xs] > 0).mean()))
    if not tiles:
        raise ValueError(f"no tile of {len(images)} fields has plants covering >= {min_plant_fraction} of it")
    return FieldSamples(torch.cat(tiles), torch.tensor(labels, dtype=torch.long), np.asarray(tile_groups),
                        np.asarray(fractions), tuple(class_names))


# --- generated fields (the embedded profile) -------------------------------------------------------------------

def generated_fields(num_fields: int, size: int, seed: int, plants_per_field: tuple[int, int] = (3, 7)) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Field-like RGB images with semantic masks: noisy brown soil and three kinds of plant shapes, broad round
    leaves (class 1), thin grass blades (class 2) and star-shaped rosettes (class 3). Each field favours one
    kind, so the dominant class varies; the label still comes from the mask by the same rule as real data."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    colours = {1: (60, 150, 50), 2: (110, 170, 60), 3: (40, 110, 70)}
    images, masks = [], []
    for _ in range(num_fields):
        soil = np.array([120, 90, 60], np.float32) + rng.normal(0, 12, (size, size, 3)).astype(np.float32)
        mask = np.zeros((size, size), np.uint8)
        favourite = int(rng.integers(1, 4))
        for _ in range(int(rng.integers(*plants_per_field))):
            kind = favourite if rng.random() < 0.7 else int(rng.integers(1, 4))
            cy, cx = rng.uniform(0, size, 2)
            r = rng.uniform(0.08, 0.18) * size
            dy, dx = yy - cy, xx - cx
            if kind == 1:
                shape = dy**2 + dx**2 < r**2
            elif kind == 2:
                angle = rng.uniform(0, np.pi)
                along = dx * np.cos(angle) + dy * np.sin(angle)
                across = -dx * np.sin(angle) + dy * np.cos(angle)
                shape = (np.abs(along) < 1.6 * r) & (np.abs(across) < 0.12 * r)
            else:
                theta = np.arctan2(dy, dx)
                shape = np.hypot(dy, dx) < r * (0.45 + 0.55 * np.abs(np.cos(2.5 * theta)))
            mask[shape] = kind
        img = soil.copy()
        for kind, colour in colours.items():
            sel = mask == kind
            img[sel] = np.array(colour, np.float32) + rng.normal(0, 10, (int(sel.sum()), 3))
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        masks.append(mask)
    return images, masks


def load_generated(num_fields: int, size: int, seed: int = 0, min_plant_fraction: float = 0.0) -> FieldSamples:
    images, masks = generated_fields(num_fields, size, seed)
    return samples_from_masks(images, masks, list(range(num_fields)), SEED_CLASS_MAP, GENERATED_CLASSES, size,
                              min_plant_fraction=min_plant_fraction)


# --- CWFID (the local profile) ---------------------------------------------------------------------------------

def cwfid_mask(annotation: np.ndarray) -> np.ndarray:
    """CWFID's colour annotation (black soil, green (0,255,0) crop, red (255,0,0) weed) as classes 0 / 1 / 2."""
    r, g = annotation[..., 0].astype(np.int16), annotation[..., 1].astype(np.int16)
    mask = np.zeros(annotation.shape[:2], np.uint8)
    mask[(g > 127) & (r < 128)] = 1
    mask[(r > 127) & (g < 128)] = 2
    return mask


def cwfid_split(root: Path) -> dict[str, list[int]]:
    """The authors' train/test ids. Id 28 is in both of their lists; the study keeps it in test only, so no
    field is trained and tested on."""
    import yaml

    root = Path(root)
    path = require_data_file(root.parent, f"{root.name}/train_test_split.yaml")
    with decoding(path, "CWFID's train/test split (YAML with train and test id lists)"):
        split = yaml.safe_load(path.read_text())
        split = {"train": list(split["train"]), "test": list(split["test"])}
    test = [int(i) for i in split["test"]]
    train = [int(i) for i in split["train"] if int(i) not in test]
    return {"train": train, "test": test}


def load_cwfid(root: Path, size: int, grid: tuple[int, int], min_plant_fraction: float, ids: Sequence[int] | None = None) -> FieldSamples:
    """CWFID tiles labelled crop (0) or weed (1) by their dominant annotated class; ``groups`` are image ids."""
    root = Path(root)
    if ids is None:
        split = cwfid_split(root)
        ids = sorted(split["train"] + split["test"])
    images, masks = [], []
    for i in ids:
        img_path = require_data_file(root.parent, f"{root.name}/images/{i:03d}_image.jpg")
        ann_path = require_data_file(root.parent, f"{root.name}/annotations/{i:03d}_annotation.png")
        with decoding(img_path, "an RGB image"):
            images.append(np.asarray(Image.open(img_path).convert("RGB")))
        with decoding(ann_path, "an annotation mask"):
            masks.append(cwfid_mask(np.asarray(Image.open(ann_path).convert("RGB"))))
    return samples_from_masks(images, masks, list(ids), CWFID_CLASS_MAP, CWFID_CLASSES, size, grid, min_plant_fraction)


# --- WeedsGalore (the paper profile) ---------------------------------------------------------------------------

WEEDSGALORE_BANDS = ("R", "G", "B")


def weedsgalore_ids(root: Path, split: str) -> list[str]:
    """Image ids of a published split (``<root>/splits/<split>.txt``, one id such as ``2023-05-25_0001`` per line)."""
    root = Path(root)
    if not (root / "splits" / f"{split}.txt").is_file():
        raise FileNotFoundError(f"WeedsGalore split file not found: {root / 'splits' / f'{split}.txt'}; the release has "
                                "splits/train.txt, splits/val.txt and splits/test.txt beside its per-date folders")
    path = require_data_file(root.parent, f"{root.name}/splits/{split}.txt")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_weedsgalore(root: Path, split: str, size: int, class_map: Mapping[int, int] = SEED_CLASS_MAP,
                     min_plant_fraction: float = 0.0) -> FieldSamples:
    """One split of WeedsGalore: per-date folders ``<date>/images/<id>_{R,G,B}.png`` (single-band images stacked as
    RGB) and ``<date>/semantics/<id>.png``; each whole image is a sample labelled by its dominant class."""
    root = Path(root)
    images, masks, ids = [], [], weedsgalore_ids(root, split)
    for image_id in ids:
        date = image_id.split("_")[0]
        bands = []
        for band in WEEDSGALORE_BANDS:
            p = require_data_file(root.parent, f"{root.name}/{date}/images/{image_id}_{band}.png")  # the manifest's line
            with decoding(p, "a WeedsGalore band image"):
                bands.append(np.asarray(Image.open(p)))
        stacked = np.stack(bands, axis=-1)
        if stacked.dtype != np.uint8:  # 16-bit bands: scale each image to 8 bits
            stacked = (stacked.astype(np.float32) / max(float(stacked.max()), 1.0) * 255).astype(np.uint8)
        images.append(stacked)
        m = require_data_file(root.parent, f"{root.name}/{date}/semantics/{image_id}.png")
        with decoding(m, "a WeedsGalore semantic mask"):
            masks.append(np.asarray(Image.open(m)))
    names = tuple(f"class {k}+" if k == max(class_map) else f"class {k}" for k in sorted(class_map))
    return samples_from_masks(images, masks, ids, class_map, names, size, (1, 1), min_plant_fraction)
