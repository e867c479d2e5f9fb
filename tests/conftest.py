import os

import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_images():
    from fedpeft.data.eurosat import generate_landcover_images

    return generate_landcover_images(6, seed=0)  # 60 images, 10 classes
