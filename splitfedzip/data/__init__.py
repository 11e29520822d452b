"""Data sets (synthetic and real), client partitions, augmentation and the federated bundle."""

from .build import ClientData, FederatedData, build_federated_data, num_classes_for
from .folders import BlastocystFolder, HAM10000Folder
from .partition import partition_indices, segmentation_strata, train_val_split
from .synthetic import SyntheticBlastocyst, SyntheticLesion
from .transforms import MEAN, STD, Augmented, denormalize, normalize

__all__ = [
    "MEAN",
    "STD",
    "Augmented",
    "BlastocystFolder",
    "ClientData",
    "FederatedData",
    "HAM10000Folder",
    "SyntheticBlastocyst",
    "SyntheticLesion",
    "build_federated_data",
    "denormalize",
    "normalize",
    "num_classes_for",
    "partition_indices",
    "segmentation_strata",
    "train_val_split",
]
