import hashlib
import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from fedpeft.core.integrity import DataFileError, require_data_file
from fedpeft.data.eurosat import (
    EUROSAT_CLASSES,
    generate_landcover_images,
    load_eurosat_hub,
    load_eurosat_zip,
    normalize_batch,
    random_split,
    stratified_split,
)


def test_generated_images_are_deterministic_and_balanced():
    a, b = generate_landcover_images(5, seed=1), generate_landcover_images(5, seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (50, 3, 64, 64) and a.images.dtype == torch.uint8
    assert a.class_counts().tolist() == [5] * 10
    assert not torch.equal(a.images, generate_landcover_images(5, seed=2).images)


def test_normalize_matches_seed_convention():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1)
    assert torch.allclose(normalize_batch(x).flatten(), torch.tensor([-1.0, 1.0, -0.6]))


def test_splits_are_disjoint_complete_and_seeded():
    labels = np.repeat(np.arange(4), 25)
    tr, te = stratified_split(labels, 0.2, seed=0)
    assert len(te) == 20 and len(set(tr) | set(te)) == 100 and not set(tr) & set(te)
    assert np.bincount(labels[te]).tolist() == [5, 5, 5, 5]
    tr2, te2 = random_split(100, 0.2, seed=0)
    assert len(te2) == 20 and np.array_equal(te2, random_split(100, 0.2, seed=0)[1])


def _jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def eurosat_root(tmp_path):
    """A two-class data root in the official layout, with a manifest."""
    zpath = tmp_path / "eurosat" / "EuroSAT_RGB.zip"
    zpath.parent.mkdir()
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as zf:
        for cls, colour in (("Forest", (0, 120, 0)), ("SeaLake", (0, 0, 200))):
            for i in range(1, 4):
                zf.writestr(f"2750/{cls}/{cls}_{i}.jpg", _jpeg(colour))
    digest = hashlib.sha256(zpath.read_bytes()).hexdigest()
    (tmp_path / "MANIFEST.sha256").write_text(f"{digest}  ./eurosat/EuroSAT_RGB.zip\n")
    return tmp_path


def test_zip_loader_reads_layout_and_caches(eurosat_root, tmp_path):
    cache = tmp_path / "cache"
    data = load_eurosat_zip(eurosat_root, cache, progress=False)
    assert len(data) == 6 and data.images.shape[1:] == (3, 64, 64)
    assert sorted(set(data.labels.tolist())) == [EUROSAT_CLASSES.index("Forest"), EUROSAT_CLASSES.index("SeaLake")]
    forest = data.images[data.labels == EUROSAT_CLASSES.index("Forest")].float().mean(dim=(0, 2, 3))
    assert forest[1] > 100 and forest[2] < 20  # green, decoded as RGB
    assert len(list(cache.glob("*.npz"))) == 1
    again = load_eurosat_zip(eurosat_root, cache, progress=False)
    assert torch.equal(again.images, data.images)


def test_missing_file_names_path_and_remedy(tmp_path):
    with pytest.raises(DataFileError, match=r"data file not found: .*eurosat/EuroSAT_RGB.zip.*FEDPEFT_DATA_ROOT"):
        load_eurosat_zip(tmp_path, None)


def test_corrupt_file_is_detected(eurosat_root):
    path = eurosat_root / "eurosat" / "EuroSAT_RGB.zip"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DataFileError, match="is corrupt.*records"):
        require_data_file(eurosat_root, "eurosat/EuroSAT_RGB.zip")


def test_hub_loader_on_a_local_copy_in_the_same_format(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(EUROSAT_CLASSES))})
    imgs = [Image.new("RGB", (64, 64), (i * 20, 0, 0)) for i in range(4)]
    split = lambda: datasets.Dataset.from_dict({"image": imgs, "label": [0, 1, 2, 3]}, features=features)
    datasets.DatasetDict({"train": split(), "test": split()}).save_to_disk(str(tmp_path / "eurosat_hub"))
    train, test = load_eurosat_hub(str(tmp_path / "eurosat_hub"))
    assert len(train) == len(test) == 4
    assert train.class_names == EUROSAT_CLASSES
    assert train.labels.tolist() == [0, 1, 2, 3]
    assert train.images[3, 0].float().mean().item() == pytest.approx(60, abs=1)
