"""Trainers, the engine they share, and their swappable components.

Importing the package imports every module in it (and in ``components/``), which is how
trainers, components, evaluators and their config extensions get registered: there is no
hand-kept list to update when a trainer is added.
"""
import importlib
import pkgutil

from .registry import TRAINER_REGISTRY


def _import_all(package: str, path) -> None:
    for info in pkgutil.iter_modules(path):
        mod = importlib.import_module(f"{package}.{info.name}")
        if info.ispkg:
            _import_all(mod.__name__, mod.__path__)


_import_all(__name__, __path__)


def build_trainer(cfg):
    """Instantiate the trainer named by ``cfg.TRAINER.NAME``."""
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)


__all__ = ["TRAINER_REGISTRY", "build_trainer"]
