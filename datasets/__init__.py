"""Datasets: the data contract, splits and few-shot sampling, transforms and data loaders.

The top level holds the contract every dataset and trainer relies on; ``formats/`` reads the
public datasets' native layouts, ``conversation/`` the conversation features, ``synthetic/``
generates data. Importing the package imports every module in it and its sub-packages (found
with pkgutil, no hand-kept list), so each dataset class and config extension registers itself.
"""
from utils.registry import import_submodules

from .base import DATASET_REGISTRY, DatasetBase, Datum, check_images
from .build import build_dataset
from .loader import build_data_loader
from .transforms import build_transform

import_submodules(__name__, __path__)

__all__ = [
    "DATASET_REGISTRY",
    "DatasetBase",
    "Datum",
    "build_dataset",
    "build_data_loader",
    "build_transform",
    "check_images",
]
