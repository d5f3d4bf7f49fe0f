"""Shared base of the trainers that fine-tune an ImageNet CNN (EW-MTCNN, VARegression).

* :class:`CNNTrainerBase`: fills ``MODEL.BACKBONE.NAME`` / ``INPUT.SIZE`` defaults, builds the
  backbone from ``MODEL.BACKBONE`` / ``MODEL.CNN`` and registers a model with two learning
  rates (backbone vs heads, ``MODEL.CNN.BACKBONE_LR_MULT``), and adds the engine's
  :class:`~trainers.engine.hooks.EarlyStoppingHook` from the ``EARLY_STOP_*`` keys of its node.
"""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence

import torch.nn as nn

from utils.errors import ConfigError
from trainers.cnn.backbones import CNNBackbone, build_backbone_from_config, param_groups
from trainers.engine import TrainerBase
from trainers.engine.hooks import EarlyStoppingHook, HookBase
from trainers.engine.optim import build_optimizer

logger = logging.getLogger(__name__)

EARLY_STOP_MODES = ("auto", "max", "min")


def add_early_stop_keys(node, metric: str, patience: int) -> None:
    """Early-stopping keys of a trainer's config node."""
    node.EARLY_STOP_METRIC = metric  # validation metric watched by early stopping
    node.EARLY_STOP_PATIENCE = patience  # stop when MORE than this many evaluations in a row did not improve (0 = off)
    node.EARLY_STOP_MODE = "auto"  # auto (from the metric's name) | max | min
    node.EARLY_STOP_MIN_DELTA = 0.0  # an improvement must exceed this


class CNNTrainerBase(TrainerBase):
    """A trainer fine-tuning a torchvision / timm backbone (see :mod:`trainers.cnn.backbones`)."""

    DEFAULT_BACKBONE = "resnet18"
    #: name of the trainer's config node under TRAINER (holds the early-stopping keys)
    NODE = ""

    @classmethod
    def finalize_config(cls, cfg) -> None:
        if not cfg.MODEL.BACKBONE.NAME:
            cfg.MODEL.BACKBONE.NAME = cls.DEFAULT_BACKBONE
        if not cfg.INPUT.SIZE:
            cfg.INPUT.SIZE = (224, 224)

    def node(self):
        return self.cfg.TRAINER[self.NODE]

    def build_backbone(self, weights_from_checkpoint: bool = False) -> CNNBackbone:
        return build_backbone_from_config(self.cfg, weights_from_checkpoint=weights_from_checkpoint)

    def register_cnn(self, name: str, model: nn.Module, backbone: CNNBackbone, heads: Sequence[nn.Module]) -> None:
        """Register ``model`` with an optimiser over two groups: backbone and heads (``param_groups``)."""
        c = self.cfg
        groups = param_groups(backbone, heads, c.OPTIM.LR, c.MODEL.CNN.BACKBONE_LR_MULT, list(c.MODEL.CNN.HEAD_LR_STAGES))
        for g in groups:
            logger.info(f"param group {g['name']}: {sum(p.numel() for p in g['params']):,} parameters, lr {g['lr']:.3g}")
        fused = bool(c.OPTIM.FUSED) and self.device.type == "cuda"
        self.register_model(name, model, optim=build_optimizer(groups, c.OPTIM, fused=fused))

    def build_early_stopping_hook(self) -> Optional[EarlyStoppingHook]:
        """The engine's early-stopping hook from ``TRAINER.<NODE>.EARLY_STOP_*`` (None when off)."""
        node = self.cfg.TRAINER[self.NODE]
        if node.EARLY_STOP_PATIENCE <= 0:
            return None
        from trainers.evaluation.regression import higher_is_better

        mode = node.EARLY_STOP_MODE
        if mode not in EARLY_STOP_MODES:
            raise ConfigError(f"TRAINER.{self.NODE}.EARLY_STOP_MODE must be one of {EARLY_STOP_MODES}, got {mode!r}")
        if mode == "auto":
            mode = "max" if higher_is_better(node.EARLY_STOP_METRIC) else "min"
        return EarlyStoppingHook(node.EARLY_STOP_METRIC, node.EARLY_STOP_PATIENCE, mode, node.EARLY_STOP_MIN_DELTA)

    def build_hooks(self) -> List[HookBase]:
        hooks = super().build_hooks()
        es = self.build_early_stopping_hook()
        return hooks + ([es] if es is not None else [])
