"""Assemble per-client train/validation sets and the shared test set from a ``DataConfig``."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from torch.utils.data import Dataset, Subset

from ..config import DataConfig
from .folders import BlastocystFolder, HAM10000Folder
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
        raise ValueError(f"dataset {cfg.dataset!r} needs a root folder")
    folder_cls = HAM10000Folder if cfg.dataset == "ham10000" else BlastocystFolder
    full = folder_cls(cfg.root, cfg.image_size)
    if cfg.test_samples >= len(full):
        raise ValueError(
            f"{cfg.root}: test_samples={cfg.test_samples} leaves no training data "
            f"out of {len(full)} samples"
        )
    perm = np.random.default_rng(_stream(seed, _SPLIT)).permutation(len(full))
    test = Subset(full, sorted(perm[: cfg.test_samples].tolist()))
    return full, sorted(perm[cfg.test_samples :].tolist()), test


def build_federated_data(cfg: DataConfig, seed: int) -> FederatedData:
    """Build the clients' (augmented) train sets, their val sets and the test set."""
    num_classes = num_classes_for(cfg.dataset)
    dataset, pool, test = _pool_and_test(cfg, seed)
    strata = None
    if cfg.partition.kind == "dirichlet":
        strata = segmentation_strata((dataset.load_mask(i) for i in pool), num_classes)
    try:
        parts = partition_indices(len(pool), cfg.partition, _stream(seed, _PARTITION), strata)
    except ValueError as e:
        raise ValueError(
            f"{cfg.dataset}: {e} (after holding out {cfg.test_samples} for test)"
        ) from e
    clients = []
    for c, part in enumerate(parts):
        train, val = train_val_split(
            [pool[i] for i in part], cfg.val_fraction, _stream(seed, _VAL, c)
        )
        rng = np.random.default_rng(_stream(seed, _AUGMENT, c))
        clients.append(
            ClientData(Augmented(Subset(dataset, train), rng, cfg.augment), Subset(dataset, val))
        )
    return FederatedData(clients=clients, test=test, num_classes=num_classes)
