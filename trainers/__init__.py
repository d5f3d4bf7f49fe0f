"""Trainers, the engine they share, and their swappable components.

Importing the package imports every module in it and in its sub-packages, which is how
trainers, components, evaluators and their config extensions get registered: there is no
hand-kept list to update when a trainer is added.
"""
import datasets  # noqa: F401  (registers datasets and their config nodes)
from configs.config import get_cfg as _get_cfg
from utils.registry import import_submodules

from .registry import TRAINER_REGISTRY

import_submodules(__name__, __path__)


def get_cfg(with_extensions: bool = True):
    """The default config with every registered trainer's, component's and dataset's node
    (only the core defaults with ``with_extensions=False``)."""
    return _get_cfg(with_extensions)


def build_trainer(cfg, setup_logs: bool = True, mode: str = "train"):
    """Instantiate the trainer named by ``cfg.TRAINER.NAME``.

    An unfrozen config is completed first (the trainer's ``finalize_config``, e.g. the input size
    of its backbone) and frozen. With ``setup_logs`` and no EmoLab log handler yet (a notebook or
    script), log lines go to stdout and ``OUTPUT_DIR/log.txt``, as with ``train.py``. ``mode``:
    ``"train"``, or ``"eval"`` for an evaluation-only trainer (``--eval-only``).
    """
    import logging
    import os

    cls = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
    if not cfg.is_frozen():
        cls.finalize_config(cfg)
        cfg.freeze()
    if setup_logs and not any(getattr(h, "_emolab", False) for h in logging.getLogger().handlers):
        from .engine.logger import setup_logging

        setup_logging(cfg.OUTPUT_DIR, int(os.environ.get("RANK", 0)) == 0)
    return cls(cfg) if mode == "train" else cls(cfg, mode=mode)


__all__ = ["TRAINER_REGISTRY", "build_trainer", "get_cfg"]
