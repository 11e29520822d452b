"""One folder per site from a shared data set: each client's share, and the tester's test set.

A run with ``data.root`` partitions one folder among the clients; a deployment has one folder
per hospital. :func:`write_site_folders` turns the first into the second, file for file, so the
two can be compared: the clients then train on the same samples in the same order
(:func:`~splitfedzip.data.build.client_data`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from torch.utils.data import Subset

from ..config import DataConfig
from .build import build_federated_data
from .folders import DataError, MaskFolder
from .transforms import Augmented


def _indices(dataset: Subset | Augmented) -> tuple[MaskFolder, list[int]]:
    """The folder and sample indices behind a client's (augmented) set or the test set."""
    subset = dataset.dataset if isinstance(dataset, Augmented) else dataset
    return subset.dataset, list(subset.indices)


def _copy(folder: MaskFolder, indices: list[int], out: Path) -> None:
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i in indices:
        image, mask = folder.pairs[i]
        shutil.copyfile(image, out / "images" / image.name)
        shutil.copyfile(mask, out / "masks" / mask.name)


def write_site_folders(cfg: DataConfig, seed: int, out: str | Path) -> tuple[list[Path], Path]:
    """Copy client i's training and validation files to ``out/client-i`` and the test set to
    ``out/test``, each in the data set's folder layout; returns (client folders, test folder)."""
    if cfg.root is None or cfg.client_roots:
        raise DataError("data.root: the shared folder to divide (and no data.client_roots)")
    out = Path(out)
    data = build_federated_data(cfg, seed)
    roots = []
    for c, client in enumerate(data.clients):
        folder, train = _indices(client.train)
        _, val = _indices(client.val)
        roots.append(out / f"client-{c}")
        _copy(folder, sorted(train + val), roots[-1])
    folder, test = _indices(data.test)
    _copy(folder, test, out / "test")
    return roots, out / "test"
