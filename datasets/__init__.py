"""Datasets: the data contract, splits and few-shot sampling, transforms and data loaders.

Importing the package imports every module in it (found with pkgutil, no hand-kept list), so
each dataset class and config extension registers itself.
"""
import importlib
import pkgutil

from .base import DATASET_REGISTRY, DatasetBase, Datum, check_images
from .build import build_dataset
from .loader import build_data_loader
from .transforms import build_transform

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module

__all__ = [
    "DATASET_REGISTRY",
    "DatasetBase",
    "Datum",
    "build_dataset",
    "build_data_loader",
    "build_transform",
    "check_images",
]
