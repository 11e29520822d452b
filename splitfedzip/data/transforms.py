"""Resizing, normalisation and paired flip augmentation for image/mask samples."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

# ImageNet statistics: fixed, dataset-independent constants, so every party normalises alike.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def resize_image(image: Image.Image, size: int) -> Image.Image:
    """Resize an RGB image to ``size`` x ``size`` with bilinear interpolation."""
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.BILINEAR)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a class-id mask to ``size`` x ``size`` with nearest-neighbour interpolation."""
    if mask.shape == (size, size):
        return mask
    # Class ids (< 256) survive a round trip through an 8-bit image exactly.
    resized = Image.fromarray(mask.astype(np.uint8)).resize((size, size), Image.NEAREST)
    return np.asarray(resized)


def normalize(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Map a [3, H, W] image in [0, 1] to a standardised float32 tensor."""
    t = torch.as_tensor(image, dtype=torch.float32)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    return (t - mean) / std


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Invert :func:`normalize` (for viewing), giving values in [0, 1]."""
    mean = torch.tensor(MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return image * std + mean


def to_sample(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a CHW float image in [0, 1] and an HW class mask into the sample tensors."""
    chw = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    return normalize(chw), torch.from_numpy(mask.astype(np.int64))


def random_flip(
    image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip image [C, H, W] and mask [H, W] together, each axis with probability 1/2."""
    horizontal, vertical = rng.random(2) < 0.5
    if horizontal:
        image, mask = image.flip(-1), mask.flip(-1)
    if vertical:
        image, mask = image.flip(-2), mask.flip(-2)
    return image, mask


class Augmented(Dataset):
    """Wrap a dataset with paired random flips drawn from an explicit generator."""

    def __init__(self, dataset: Dataset, generator: np.random.Generator, augment: bool = True):
        self.dataset = dataset
        self.generator = generator
        self.augment = augment

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.dataset[index]
        if self.augment:
            image, mask = random_flip(image, mask, self.generator)
        return image, mask
