"""Pieces of the valence-arousal trainer (:mod:`trainers.va_regression.trainer`): config node, model,
masked losses, stage-1 checkpoint loading and the mixing of categorical and dimensional items."""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.errors import CheckpointError
from utils.fileio import optional_path
from configs.registry import register_config
from datasets import Datum
from trainers.cnn.backbones import CNNBackbone
from trainers.cnn.base import add_early_stop_keys
from trainers.engine.checkpoint import checkpoint_path, load_checkpoint

logger = logging.getLogger(__name__)

MODES = ("one_stage", "two_stage")
TASKS = ("single", "multi")
NAN_VA = (float("nan"), float("nan"))


@register_config
def add_va_config(cfg) -> None:
    from yacs.config import CfgNode as CN

    cfg.TRAINER.VA = CN()
    cfg.TRAINER.VA.MODE = "one_stage"  # one_stage: VA from class labels via the lexicon | two_stage: ground-truth VA
    cfg.TRAINER.VA.TASK = "single"  # single: a VA head | multi: a VA head and a class head (loss mixed by ALPHA)
    cfg.TRAINER.VA.LEXICON = ""  # NRC-VAD lexicon file (tab-separated word, valence, arousal, dominance)
    cfg.TRAINER.VA.LEXICON_SCALE = 8.0  # lexicon values are rescaled v * SCALE + OFFSET (0..1 -> 1..9)
    cfg.TRAINER.VA.LEXICON_OFFSET = 1.0  # see LEXICON_SCALE
    cfg.TRAINER.VA.LEXICON_WORDS = ()  # "class:word" where a class name is not its lexicon word
    cfg.TRAINER.VA.ALPHA = 0.5  # multi: loss = ALPHA * classification + (1 - ALPHA) * VA MSE
    cfg.TRAINER.VA.STAGE1_CHECKPOINT = ""  # two_stage: a stage-1 OUTPUT_DIR (best, else last model) or checkpoint file
    cfg.TRAINER.VA.CATEGORICAL_DATASET = ""  # two_stage/multi: registered dataset mixed in as categorical items
    cfg.TRAINER.VA.BACK_CONVERSION = "cosine"  # VA -> class for evaluation: cosine | euclidean
    cfg.TRAINER.VA.BACK_CONVERSION_CENTER = 0.0  # subtracted from VA before cosine similarity (0 = as published)
    cfg.TRAINER.VA.VAL_METRIC = "valence_pearson_r"  # validation metric for the best model (higher is better)
    add_early_stop_keys(cfg.TRAINER.VA, "valence_pearson_r", 5)


class VANet(nn.Module):
    """images ``[B, 3, H, W]`` -> (VA ``[B, 2]``, class logits ``[B, C]`` or None).

    Heads on the backbone features: ReLU -> Linear(D, 2) (bias initialised to ``va_init``, the
    middle of the scale) and, with ``num_classes`` > 0, Linear(D, C).
    """

    def __init__(self, backbone: CNNBackbone, num_classes: int = 0, va_init: Tuple[float, float] = (5.0, 5.0)) -> None:
        super().__init__()
        self.backbone = backbone
        self.va_head = nn.Sequential(nn.ReLU(), nn.Linear(backbone.out_dim, 2))
        with torch.no_grad():
            self.va_head[1].bias.copy_(torch.tensor(va_init))
        self.cls_head = nn.Linear(backbone.out_dim, num_classes) if num_classes > 0 else None

    def heads(self) -> List[nn.Module]:
        return [self.va_head] + ([self.cls_head] if self.cls_head is not None else [])

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        f = self.backbone(images)
        logits = self.cls_head(f) if self.cls_head is not None else None
        return self.va_head(f), logits


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[mask]`` (``[B]`` each); 0 (still part of the graph) when the mask is empty."""
    m = mask.to(values.dtype)
    return (torch.where(mask, values, torch.zeros_like(values)) * m).sum() / m.sum().clamp_min(1.0)


def va_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked MSE over the items with a VA target (``[B, 2]`` each, ``mask`` ``[B]``); NaN-free."""
    target = torch.where(mask[:, None], target, pred.detach())
    return masked_mean(((pred.float() - target.float()) ** 2).mean(1), mask)


def classification_loss(logits: torch.Tensor, label: Optional[torch.Tensor], labels: Optional[torch.Tensor]) -> torch.Tensor:
    """CE on ``label`` (-1 = none) or, given multi-hot ``labels``, BCE; mean over the items with a class."""
    logits = logits.float()
    if labels is not None:
        mask = labels.sum(1) > 0
        per = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").mean(1)
        return masked_mean(per, mask)
    mask = label >= 0
    return masked_mean(F.cross_entropy(logits, label.clamp_min(0), reduction="none"), mask)


def resolve_stage1(path: str, model_name: str = "model") -> str:
    """A checkpoint file from a stage-1 OUTPUT_DIR, its ``<model_name>`` folder, or a file."""
    path = optional_path(path)
    if os.path.isfile(path):
        return path
    if os.path.isdir(os.path.join(path, model_name)):
        return checkpoint_path(path, model_name, None)
    if os.path.isdir(path):
        return checkpoint_path(os.path.dirname(os.path.abspath(path)), os.path.basename(os.path.abspath(path)), None)
    raise CheckpointError(f"stage-1 checkpoint not found: {path} (give a stage-1 OUTPUT_DIR or a checkpoint file)")


def load_stage1(model: VANet, path: str) -> str:
    """Load a stage-1 checkpoint into ``model``: backbone and VA head must fit; the class head is
    taken when both have one of the same shape. Returns the file read."""
    file = resolve_stage1(path)
    state = load_checkpoint(file)["state_dict"]
    own = model.state_dict()
    cls_keys = [k for k in own if k.startswith("cls_head.")]
    take_cls = bool(cls_keys) and all(k in state and state[k].shape == own[k].shape for k in cls_keys)
    missing = [k for k in own if k not in state and k not in cls_keys]
    unexpected = [k for k in state if k not in own and not k.startswith("cls_head.")]
    wrong = [k for k in own if k in state and k not in cls_keys and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        bad = (missing or unexpected or wrong)[:3]
        raise CheckpointError(f"stage-1 checkpoint {file} does not fit the model (e.g. {', '.join(bad)})")
    load = {k: v for k, v in state.items() if k in own and (take_cls or k not in cls_keys)}
    model.load_state_dict(load, strict=False)
    note = "with" if take_cls else "without"
    logger.info(f"loaded stage-1 weights from {file} ({note} the class head)")
    return file


def as_dimensional(items: Sequence[Datum]) -> List[Datum]:
    """Items that only carry their VA target (no class targets)."""
    return [dataclasses.replace(d, label=-1, labels=(), dist=None) for d in items]


def as_categorical(items: Sequence[Datum], multi_label: bool) -> List[Datum]:
    """Items that only carry a class target (VA = NaN, ignored by :func:`va_mse`)."""
    out = []
    for d in items:
        if multi_label:
            out.append(dataclasses.replace(d, label=-1, dist=None, va=NAN_VA))
        else:
            out.append(dataclasses.replace(d, labels=(), dist=None, va=NAN_VA))
    return out
