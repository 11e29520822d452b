"""Loaders for the real data sets laid out as image and mask folders."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UserError
from .transforms import resize_image, resize_mask, to_sample

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg")
# Grey level -> class id of the blastocyst masks (two annotation batches use different levels).
BLASTOCYST_LEVELS = MappingProxyType({0: 0, 64: 1, 105: 1, 128: 2, 192: 3, 226: 3, 255: 4})
HAM_THRESHOLD = 100  # mask pixels above this are lesion


class DataError(UserError):
    """A data file or folder cannot be used; the message names it."""


def _read(path: Path, mode: str) -> Image.Image:
    """The image at ``path`` converted to ``mode``, or a :class:`DataError` naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except Exception as e:  # PIL raises many kinds (OSError, SyntaxError, struct.error, ...)
        raise DataError(f"{path}: not a readable image ({e})") from None


def probe(path: Path) -> tuple[int, int]:
    """Decode the image at ``path`` once (JPEG at 1/8 scale: every byte is still read); its
    width and height, or a :class:`DataError` naming the file: empty, truncated, not an image."""
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: an empty file, not an image")
        with Image.open(path) as im:
            size = im.size
            if im.format == "JPEG":
                im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: not a readable image ({e})") from None
    if 0 in size:
        raise DataError(f"{path}: an empty image ({size[0]}x{size[1]} pixels)")
    return size


def _first_dir(root: Path, names: Sequence[str]) -> Path:
    """The first of ``root/name`` that is a directory, or a clear error listing all tried."""
    for name in names:
        if (root / name).is_dir():
            return root / name
    tried = ", ".join(str(root / n) for n in names)
    raise FileNotFoundError(f"no folder found; tried {tried}")


def _list_images(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Image files in ``folder`` (case-insensitive suffix), sorted by name."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(suffixes)}) found")
    return files


class MaskFolder(Dataset):
    """Pairs of (image, mask) files, resized to ``image_size``; masks decoded by a subclass."""

    num_classes = 2

    def __init__(self, pairs: list[tuple[Path, Path]], image_size: int):
        self.pairs = pairs
        self.image_size = image_size
        self.check()

    def check(self) -> None:
        """Read every image and mask once, so that a bad file stops the run before training
        starts; a :class:`DataError` names the first one."""
        start = time.perf_counter()
        for index, (image, mask) in enumerate(self.pairs):
            image_size, mask_size = probe(image), probe(mask)
            if image_size != mask_size:
                raise DataError(
                    f"{image}: image is {image_size[0]}x{image_size[1]} but its mask {mask} is "
                    f"{mask_size[0]}x{mask_size[1]} (width x height)"
                )
            self._read_mask(index)  # its grey levels must be known ones
        log.info(
            "checked %d images and masks in %.1f s", len(self.pairs), time.perf_counter() - start
        )

    def decode_mask(self, grey: np.ndarray, path: Path) -> np.ndarray:
        """Class ids (uint8) from the mask file's grey levels."""
        raise NotImplementedError

    def _read_mask(self, index: int) -> tuple[np.ndarray, Path]:
        path = self.pairs[index][1]
        return self.decode_mask(np.asarray(_read(path, "L")), path), path

    def load_mask(self, index: int) -> np.ndarray:
        """The resized class-id mask of sample ``index`` (without reading the image)."""
        return resize_mask(self._read_mask(index)[0], self.image_size)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` as (CHW float32 image in [0, 1], HW uint8 mask), resized."""
        image_path = self.pairs[index][0]
        mask, mask_path = self._read_mask(index)
        image = _read(image_path, "RGB")
        if image.size != (mask.shape[1], mask.shape[0]):
            raise DataError(
                f"{image_path}: image is {image.size[0]}x{image.size[1]} but its mask "
                f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} (width x height)"
            )
        pixels = np.asarray(resize_image(image, self.image_size), dtype=np.float32) / 255.0
        return pixels.transpose(2, 0, 1), resize_mask(mask, self.image_size)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_sample(*self.raw(index))


def _pair(
    images: list[Path], mask_dir: Path, mask_name: Callable[[Path], str]
) -> list[tuple[Path, Path]]:
    """Match every image with its mask file, failing on the first image without one."""
    pairs = []
    for image in images:
        mask = mask_dir / mask_name(image)
        if not mask.is_file():
            raise FileNotFoundError(f"{image}: mask {mask} not found")
        pairs.append((image, mask))
    return pairs


class HAM10000Folder(MaskFolder):
    """HAM10000 / ISIC 2018 task 1: ``*.jpg`` images and ``<stem>_segmentation.png`` masks."""

    num_classes = 2

    def __init__(self, root: str | Path, image_size: int):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"data root {root} is not a folder")
        image_dir = _first_dir(root, ("images", "ISIC2018_Task1-2_Training_Input"))
        mask_dir = _first_dir(root, ("masks", "ISIC2018_Task1_Training_GroundTruth"))
        images = _list_images(image_dir, (".jpg", ".jpeg"))
        super().__init__(
            _pair(images, mask_dir, lambda p: f"{p.stem}_segmentation.png"), image_size
        )

    def decode_mask(self, grey: np.ndarray, path: Path) -> np.ndarray:
        """Lesion (1) where the grey level exceeds 100, background (0) elsewhere."""
        return (grey > HAM_THRESHOLD).astype(np.uint8)


class BlastocystFolder(MaskFolder):
    """Blastocyst: images (.bmp/.png/.jpg) and greyscale BMP masks with the same stem."""

    num_classes = 5

    def __init__(self, root: str | Path, image_size: int):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"data root {root} is not a folder")
        images = _list_images(_first_dir(root, ("images",)), IMAGE_SUFFIXES)
        mask_dir = _first_dir(root, ("masks",))
        super().__init__(_pair(images, mask_dir, self._mask_name(mask_dir)), image_size)

    @staticmethod
    def _mask_name(mask_dir: Path) -> Callable[[Path], str]:
        """Mask file name for an image: ``<stem>.bmp``, whatever the suffix's case on disk."""
        by_stem = {p.stem: p.name for p in mask_dir.iterdir() if p.suffix.lower() == ".bmp"}
        return lambda image: by_stem.get(image.stem, f"{image.stem}.bmp")

    def decode_mask(self, grey: np.ndarray, path: Path) -> np.ndarray:
        """Class ids from the grey levels 0, 64/105, 128, 192/226, 255."""
        lut = np.full(256, 255, dtype=np.uint8)
        for level, cls in BLASTOCYST_LEVELS.items():
            lut[level] = cls
        mask = lut[grey]
        if (mask == 255).any():
            found = sorted(np.unique(grey).tolist())
            known = sorted(BLASTOCYST_LEVELS)
            raise DataError(f"{path}: unknown mask grey level(s); found {found}, known {known}")
        return mask
