"""Assemble per-client train/validation sets and the shared test set from a ``DataConfig``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from torch.utils.data import Dataset, Subset

from ..config import DataConfig
from .folders import BlastocystFolder, DataError, HAM10000Folder, MaskFolder
from .partition import partition_indices, segmentation_strata, train_val_split
from .synthetic import SyntheticBlastocyst, SyntheticLesion
from .transforms import Augmented

NUM_CLASSES = MappingProxyType(
    {"synthetic-lesion": 2, "synthetic-blastocyst": 5, "ham10000": 2, "blastocyst": 5}
)
# Synthetic test samples come from indices this far up, so they never repeat pool samples
# and stay the same whatever num_samples is.
TEST_OFFSET = 1 << 30
# Tags separating the random streams drawn from one seed.
_SPLIT, _PARTITION, _VAL, _AUGMENT = range(4)


@dataclass
class ClientData:
    """One client's training and validation sets."""

    train: Dataset
    val: Dataset


@dataclass
class FederatedData:
    """Every client's data, the shared test set and the number of classes."""

    clients: list[ClientData]
    test: Dataset
    num_classes: int


def num_classes_for(dataset_name: str) -> int:
    """Number of segmentation classes (background included) of a data set."""
    if dataset_name not in NUM_CLASSES:
        raise ValueError(f"unknown dataset {dataset_name!r}; known: {', '.join(NUM_CLASSES)}")
    return NUM_CLASSES[dataset_name]


def _stream(seed: int, *tags: int) -> list[int]:
    """Entropy for an independent random stream (seeds must be non-negative for numpy)."""
    return [int(seed) % (1 << 64), *tags]


def folder_dataset(cfg: DataConfig, root: str | Path) -> MaskFolder:
    """The folder data set of ``cfg.dataset`` at ``root``, every file checked."""
    if cfg.dataset.startswith("synthetic"):
        raise DataError(f"dataset {cfg.dataset!r} is generated: it has no folder to read")
    cls = HAM10000Folder if cfg.dataset == "ham10000" else BlastocystFolder
    return cls(root, cfg.image_size)


def client_data(cfg: DataConfig, seed: int, client: int, root: str | Path) -> ClientData:
    """Client ``client``'s sets from its own folder, split into training and validation here.

    The split and the augmentation draw from the same streams as :func:`build_federated_data`,
    so a folder holding exactly a client's share of a shared root gives that client the same
    sets, in the same order, as the shared root does.
    """
    folder = folder_dataset(cfg, root)
    try:
        train, val = train_val_split(
            range(len(folder)), cfg.val_fraction, _stream(seed, _VAL, client)
        )
    except ValueError as e:
        raise DataError(f"{root}: {e}") from None
    return _client(cfg, seed, client, folder, train, val)


def _client(
    cfg: DataConfig, seed: int, client: int, dataset: Dataset, train: list[int], val: list[int]
) -> ClientData:
    rng = np.random.default_rng(_stream(seed, _AUGMENT, client))
    return ClientData(Augmented(Subset(dataset, train), rng, cfg.augment), Subset(dataset, val))


def _pool_and_test(cfg: DataConfig, seed: int) -> tuple[Dataset, list[int], Dataset]:
    """(dataset, indices of the training pool in it, test set)."""
    p = cfg.partition
    if cfg.dataset.startswith("synthetic"):
        cls = SyntheticLesion if cfg.dataset == "synthetic-lesion" else SyntheticBlastocyst
        n = cfg.num_samples
        if p.kind == "counts" and p.counts:
            n = max(n, sum(p.counts))
        test = cls(cfg.test_samples, cfg.image_size, seed, offset=TEST_OFFSET)
        return cls(n, cfg.image_size, seed), list(range(n)), test
    if cfg.root is None:
        raise DataError(
            f"data.root: dataset {cfg.dataset!r} needs its folder (or data.client_roots, one "
            "folder per client)"
        )
    full = folder_dataset(cfg, cfg.root)
    if cfg.test_samples >= len(full):
        raise DataError(
            f"{cfg.root}: test_samples={cfg.test_samples} leaves no training data "
            f"out of {len(full)} samples"
        )
    perm = np.random.default_rng(_stream(seed, _SPLIT)).permutation(len(full))
    test = Subset(full, sorted(perm[: cfg.test_samples].tolist()))
    return full, sorted(perm[cfg.test_samples :].tolist()), test


def build_federated_data(cfg: DataConfig, seed: int) -> FederatedData:
    """Build the clients' (augmented) train sets, their val sets and the test set."""
    num_classes = num_classes_for(cfg.dataset)
    if cfg.client_roots:
        if cfg.test_root is None:
            raise DataError("data.test_root: with data.client_roots, the tester's test folder")
        clients = [client_data(cfg, seed, c, root) for c, root in enumerate(cfg.client_roots)]
        return FederatedData(clients, folder_dataset(cfg, cfg.test_root), num_classes)
    dataset, pool, test = _pool_and_test(cfg, seed)
    strata = None
    if cfg.partition.kind == "dirichlet":
        strata = segmentation_strata((dataset.load_mask(i) for i in pool), num_classes)
    try:
        parts = partition_indices(len(pool), cfg.partition, _stream(seed, _PARTITION), strata)
    except ValueError as e:
        raise DataError(
            f"{cfg.dataset}: {e} (after holding out {cfg.test_samples} for test)"
        ) from e
    clients = []
    for c, part in enumerate(parts):
        train, val = train_val_split(
            [pool[i] for i in part], cfg.val_fraction, _stream(seed, _VAL, c)
        )
        clients.append(_client(cfg, seed, c, dataset, train, val))
    return FederatedData(clients=clients, test=test, num_classes=num_classes)
