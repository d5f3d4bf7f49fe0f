"""UniEmoX optimisation: parameter groups, AdamW, and the per-iteration warm-up + half-cycle cosine.

Schedule (MAE's ``adjust_learning_rate``, evaluated at every iteration with the fractional
epoch ``e = epoch + it / iters_per_epoch``)::

    lr(e) = LR * e / W                                               e < W
    lr(e) = MIN + (LR - MIN) * 0.5 * (1 + cos(pi * (e - W) / (E - W)))  otherwise

and every group's lr is multiplied by its ``lr_scale`` (layer decay). It is a ``LambdaLR`` with
``per_iter = True`` (the engine's LR hook steps it after every iteration), so its state is one
integer and resuming is exact.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Dict, List

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

logger = logging.getLogger(__name__)


def warmup_cosine(lr: float, min_lr: float, warmup: float, epochs: float) -> Callable[[float], float]:
    """``f(e) = lr(e) / lr`` of the schedule in the module docstring."""

    def f(e: float) -> float:
        if warmup > 0 and e < warmup:
            return e / warmup
        span = max(epochs - warmup, 1e-12)
        t = min(max(e - warmup, 0.0), span)
        value = min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t / span))
        return value / lr if lr > 0 else 0.0

    return f


def build_schedule(optimizer: torch.optim.Optimizer, lr: float, min_lr: float, warmup: float, epochs: float,
                   iters_per_epoch: int) -> LambdaLR:
    """LambdaLR over ``optimizer`` whose groups carry ``lr = LR * lr_scale`` at construction."""
    f = warmup_cosine(lr, min_lr, warmup, epochs)
    n = max(1, iters_per_epoch)
    sched = LambdaLR(optimizer, lambda step: f(step / n))
    sched.per_iter = True  # type: ignore[attr-defined]
    return sched


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float, enabled: bool) -> List[Dict]:
    """AdamW groups with no decay on 1-D parameters and biases.

    ``enabled``: timm's ``param_groups_layer_decay`` (block i scaled ``layer_decay ** (depth - i)``,
    the stem ``** (depth + 1)``, head and ``fc_norm`` 1; ``cls_token`` and ``pos_embed`` not decayed,
    as MAE). Otherwise the released grouping (``param_groups_weight_decay`` with an empty
    skip list: ``cls_token`` and ``pos_embed`` ARE decayed; every ``lr_scale`` 1).
    """
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    if enabled:
        nwd = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
        groups = param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=nwd,
                                          layer_decay=layer_decay)
    else:
        groups = param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=())
    for g in groups:
        g.setdefault("lr_scale", 1.0)
    return [g for g in groups if g["params"]]


def adamw(groups: List[Dict], lr: float, betas=(0.9, 0.999), fused: bool = False) -> torch.optim.AdamW:
    """AdamW over ``groups``; each group's lr is ``lr * lr_scale``."""
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    extra = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, **extra)
