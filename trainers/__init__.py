"""Trainers, the engine they share, and their swappable components.

Importing the package imports every module in it and in its sub-packages, which is how
trainers, components, evaluators and their config extensions get registered: there is no
hand-kept list to update when a trainer is added.
"""
import datasets  # noqa: F401  (registers datasets and their config nodes)
from configs.config import get_cfg as _get_cfg
from configs.registry import import_submodules

from .registry import TRAINER_REGISTRY

import_submodules(__name__, __path__)


def get_cfg(with_extensions: bool = True):
    """The default config with every registered trainer's, component's and dataset's node
    (only the core defaults with ``with_extensions=False``)."""
    return _get_cfg(with_extensions)


def build_trainer(cfg):
    """Instantiate the trainer named by ``cfg.TRAINER.NAME``."""
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)


__all__ = ["TRAINER_REGISTRY", "build_trainer", "get_cfg"]
