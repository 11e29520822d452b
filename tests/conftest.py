"""Shared test settings: small, deterministic, CPU."""

import numpy as np
import pytest
import torch
from PIL import Image

from splitfedzip.data import SyntheticLesion


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny runs are fastest so, and leave the other core free."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def lesion_folder(tmp_path):
    """Write ``n`` synthetic lesions, all different, in HAM10000's layout under tmp_path/name."""

    def write(name: str, n: int, size: int = 32):
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        source = SyntheticLesion(n, size, seed=3)
        for i in range(n):
            image, mask = source.raw(i)
            pixels = (image.transpose(1, 2, 0) * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / f"ISIC_{i:07d}.jpg")
            Image.fromarray(mask * 255).save(root / "masks" / f"ISIC_{i:07d}_segmentation.png")
        return root

    return write
