"""Shared base of the trainers that fine-tune an ImageNet CNN (EW-MTCNN, VARegression).

* :class:`CNNTrainerBase`: fills ``MODEL.BACKBONE.NAME`` / ``INPUT.SIZE`` defaults, builds the
  backbone from ``MODEL.BACKBONE`` / ``MODEL.CNN`` and registers a model with two learning
  rates (backbone vs heads, ``MODEL.CNN.BACKBONE_LR_MULT``), and adds early stopping;
* :class:`EarlyStoppingHook`: stops training when a validation metric has not improved for
  more than ``patience`` evaluations in a row (sets ``trainer.stop_training``).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence

import torch.nn as nn

from utils.errors import ConfigError
from utils.registry import closest
from trainers.cnn.backbones import CNNBackbone, build_backbone_from_config, param_groups
from trainers.engine import TrainerBase
from trainers.engine.hooks import HookBase
from trainers.engine.optim import build_optimizer

logger = logging.getLogger(__name__)

EARLY_STOP_MODES = ("auto", "max", "min")


def add_early_stop_keys(node, metric: str, patience: int) -> None:
    """Early-stopping keys of a trainer's config node."""
    node.EARLY_STOP_METRIC = metric  # validation metric watched by early stopping
    node.EARLY_STOP_PATIENCE = patience  # stop when MORE than this many evaluations in a row did not improve (0 = off)
    node.EARLY_STOP_MODE = "auto"  # auto (from the metric's name) | max | min
    node.EARLY_STOP_MIN_DELTA = 0.0  # an improvement must exceed this


class EarlyStoppingHook(HookBase):
    """After each validation (put it after :class:`EvalHook`): once ``metric`` of ``trainer.last_val``
    has not improved by more than ``min_delta`` for more than ``patience`` evaluations in a row
    (``patience + 1``, as the released VA and VEGA code count), set ``trainer.stop_training``
    (the engine ends training after the epoch)."""

    def __init__(self, metric: str, patience: int, mode: str = "max", min_delta: float = 0.0) -> None:
        if mode not in ("max", "min"):
            raise ConfigError(f"early-stopping mode must be max or min, got {mode!r}")
        if patience < 1:
            raise ConfigError(f"early-stopping patience must be >= 1, got {patience}")
        self.metric, self.patience, self.mode, self.min_delta = metric, int(patience), mode, float(min_delta)
        self.best: Optional[float] = None
        self.bad = 0

    def before_train(self) -> None:
        t = self.trainer
        names = getattr(t.evaluator, "metric_names", lambda: None)()
        if names is not None and self.metric not in names:
            hint = closest(self.metric, names)
            raise ConfigError(f"early-stopping metric {self.metric!r} is not reported by {type(t.evaluator).__name__}"
                              + (f" (did you mean {hint!r}?)" if hint else f" (reported: {', '.join(names)})"))
        if not t.has_val or t.cfg.TRAIN.EVAL_FREQ <= 0:
            logger.warning("early stopping is on but there is no validation: it will never stop training")

    def after_epoch(self) -> None:
        t = self.trainer
        if not t.last_val:
            return
        if self.metric not in t.last_val:
            raise ConfigError(f"early-stopping metric {self.metric!r} not in the validation results "
                              f"({', '.join(t.last_val)})")
        value = float(t.last_val[self.metric])
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.bad = value, 0
            return
        self.bad += 1
        if self.bad > self.patience:  # as the released VA code: stop after MORE than `patience` bad evaluations
            logger.info(f"early stopping: val {self.metric} has not improved for {self.bad} evaluations "
                        f"(best {self.best:.4f})")
            t.stop_training = True

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best, self.bad = state.get("best"), int(state.get("bad", 0))


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

    def early_stopping_hook(self) -> Optional[EarlyStoppingHook]:
        node = self.node()
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
        es = self.early_stopping_hook()
        return hooks + ([es] if es is not None else [])
