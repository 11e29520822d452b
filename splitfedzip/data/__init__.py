"""Data sets (synthetic and real), client partitions, augmentation and the federated bundle."""

from .build import (
    ClientData,
    FederatedData,
    build_federated_data,
    client_data,
    folder_dataset,
    num_classes_for,
)
from .folders import BlastocystFolder, DataError, HAM10000Folder
from .partition import partition_indices, segmentation_strata, train_val_split
from .synthetic import SyntheticBlastocyst, SyntheticLesion
from .transforms import MEAN, STD, Augmented, denormalize, normalize

__all__ = [
    "MEAN",
    "STD",
    "Augmented",
    "BlastocystFolder",
    "ClientData",
    "DataError",
    "FederatedData",
    "HAM10000Folder",
    "SyntheticBlastocyst",
    "SyntheticLesion",
    "build_federated_data",
    "client_data",
    "denormalize",
    "folder_dataset",
    "normalize",
    "num_classes_for",
    "partition_indices",
    "segmentation_strata",
    "train_val_split",
]
