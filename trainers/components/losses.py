"""Multi-label classification losses: BCE, asymmetric loss (ASL) and focal loss.

Calling contract (every registered loss): ``loss(logits, targets) -> scalar``, ``logits``
Tensor[B, C] (any float dtype; computed in float32), ``targets`` Tensor[B, C] of 0/1 values.
All losses average over the B x C elements, so their scale is comparable to
``F.binary_cross_entropy_with_logits`` (the default ``mean`` reduction).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.errors import ConfigError
from utils.registry import Registry

MULTILABEL_LOSSES = Registry("multi-label loss")


@MULTILABEL_LOSSES.register(name="bce")
class BCELoss(nn.Module):
    """Binary cross-entropy on sigmoid scores (EmoCoOp's loss)."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


@MULTILABEL_LOSSES.register(name="asl")
class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al., ICCV 2021) for label imbalance.

    With ``p = sigmoid(x)`` and the shifted negative probability ``p_m = max(p - clip, 0)``:
    ``L = -[y (1 - p)^gamma_pos log p + (1 - y) p_m^gamma_neg log(1 - p_m)]``, averaged.
    ``gamma_neg = gamma_pos = clip = 0`` gives plain BCE.
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05) -> None:
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0 or not 0.0 <= clip < 1.0:
            raise ConfigError(f"ASL needs gamma_neg, gamma_pos >= 0 and clip in [0, 1), got {gamma_neg}, {gamma_pos}, {clip}")
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x, y = logits.float(), targets.float()
        p = torch.sigmoid(x)
        log_p = F.logsigmoid(x)
        if self.clip > 0:
            p_m = (p - self.clip).clamp(min=0.0)
            log_1m = torch.log((1.0 - p_m).clamp(min=1e-8))
        else:
            p_m, log_1m = p, F.logsigmoid(-x)
        pos = y * log_p
        neg = (1.0 - y) * log_1m
        if self.gamma_pos > 0:
            pos = pos * (1.0 - p).pow(self.gamma_pos)
        if self.gamma_neg > 0:
            neg = neg * p_m.pow(self.gamma_neg)
        return -(pos + neg).mean()


@MULTILABEL_LOSSES.register(name="focal")
class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al., 2017): ``alpha_t (1 - p_t)^gamma BCE``, averaged.

    ``alpha < 0`` switches the class-balance factor off; ``gamma = 0, alpha < 0`` is plain BCE.
    """

    def __init__(self, gamma: float = 2.0, alpha: float = -1.0) -> None:
        super().__init__()
        if gamma < 0 or alpha > 1:
            raise ConfigError(f"focal loss needs gamma >= 0 and alpha <= 1 (negative = off), got {gamma}, {alpha}")
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x, y = logits.float(), targets.float()
        bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        p = torch.sigmoid(x)
        p_t = p * y + (1.0 - p) * (1.0 - y)
        loss = bce * (1.0 - p_t).pow(self.gamma)
        if self.alpha >= 0:
            loss = loss * (self.alpha * y + (1.0 - self.alpha) * (1.0 - y))
        return loss.mean()


def build_multilabel_loss(node) -> nn.Module:
    """The loss named by ``node.LOSS`` with its ``ASL_*`` / ``FOCAL_*`` settings (a trainer config node)."""
    name = str(node.LOSS).lower()
    cls = MULTILABEL_LOSSES.get(name)
    if cls is AsymmetricLoss:
        return cls(gamma_neg=float(node.ASL_GAMMA_NEG), gamma_pos=float(node.ASL_GAMMA_POS), clip=float(node.ASL_CLIP))
    if cls is FocalLoss:
        return cls(gamma=float(node.FOCAL_GAMMA), alpha=float(node.FOCAL_ALPHA))
    return cls()
