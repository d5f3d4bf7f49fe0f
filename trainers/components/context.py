"""Context generators: the learnable part of a text prompt.

Calling contract (every registered generator): constructed with keyword arguments
``n_ctx, ctx_dim, vis_dim, n_cls, init`` (``init``: Tensor[n_ctx, ctx_dim] or None, plus
generator-specific ones) and called as ``gen(img_feat)`` with ``img_feat``: Tensor[B, vis_dim]
(L2-normalised image features; generators that ignore the image accept None). It returns the
context vectors Tensor[B', C', n_ctx, ctx_dim] with B' in {1, B} and C' in {1, n_cls}; the
prompt learner broadcasts them over images and classes.

A generator may define ``from_config(node) -> dict``: its own keyword arguments read from the
trainer's config node (keys the node does not have take the constructor's defaults). The shared
builder (:func:`trainers.components.prompt_learner.build_prompt_learner`) calls it, so a new
generator with new keys needs no change to any trainer's ``build_model``.

A generator whose output never depends on ``img_feat`` sets the class attribute
``image_independent = True``: evaluation then encodes the class prompts once instead of once per
batch (a generator without the attribute is treated as image-dependent).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from utils.registry import Registry

logger = logging.getLogger(__name__)

CONTEXT_GENERATORS = Registry("context generator")


def _init_ctx(n_rows: int, n_ctx: int, ctx_dim: int, init: Optional[torch.Tensor], std: float) -> torch.Tensor:
    if init is not None:
        return init.detach().clone().float().unsqueeze(0).repeat(n_rows, 1, 1)
    return torch.randn(n_rows, n_ctx, ctx_dim) * std


@CONTEXT_GENERATORS.register()
class StaticContext(nn.Module):
    """CoOp: learnable context shared by all classes, or class-specific (``csc``)."""

    #: the context ignores the image: class text features can be computed once per evaluation
    image_independent = True

    def __init__(
        self, n_ctx: int, ctx_dim: int, n_cls: int, init: Optional[torch.Tensor] = None,
        csc: bool = False, init_std: float = 0.02, **_: object,
    ) -> None:
        super().__init__()
        self.csc = csc
        self.ctx = nn.Parameter(_init_ctx(n_cls if csc else 1, n_ctx, ctx_dim, init, init_std))  # [C' , n_ctx, D]

    @staticmethod
    def from_config(node) -> Dict[str, Any]:
        """``CSC`` (class-specific context; False where the node has no such key, e.g. CoCoOp's)."""
        csc = bool(getattr(node, "CSC", False))
        if csc and getattr(node, "CTX_INIT", ""):  # the official PromptLearner ignores CSC when CTX_INIT is given
            logger.warning("CSC True with CTX_INIT: one context shared by all classes, initialised from the words "
                           "(the official CoOp ignores CSC when CTX_INIT is given); unset CTX_INIT for class-specific")
            csc = False
        return {"csc": csc}

    def forward(self, img_feat: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.ctx.unsqueeze(0)  # [1, C', n_ctx, D]


@CONTEXT_GENERATORS.register()
class ConditionalContext(nn.Module):
    """CoCoOp: shared context plus a per-image shift from a meta-network.

    ``meta_net = Linear(vis_dim, vis_dim // hidden_ratio) -> ReLU [-> Dropout] -> Linear(.., ctx_dim)``;
    ``ctx_i = ctx + meta_net(img_feat_i)`` for every context token.
    """

    image_independent = False

    def __init__(
        self, n_ctx: int, ctx_dim: int, vis_dim: int, init: Optional[torch.Tensor] = None,
        hidden_ratio: int = 16, dropout: float = 0.0, init_std: float = 0.02, **_: object,
    ) -> None:
        super().__init__()
        self.ctx = nn.Parameter(_init_ctx(1, n_ctx, ctx_dim, init, init_std)[0])  # [n_ctx, D]
        hidden = max(1, vis_dim // hidden_ratio)
        layers = [nn.Linear(vis_dim, hidden), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden, ctx_dim))
        self.meta_net = nn.Sequential(*layers)

    @staticmethod
    def from_config(node) -> Dict[str, Any]:
        """``META_HIDDEN_RATIO`` (default 16) and ``META_DROPOUT`` (default 0.0), as CoCoOp's."""
        return {"hidden_ratio": int(getattr(node, "META_HIDDEN_RATIO", 16)),
                "dropout": float(getattr(node, "META_DROPOUT", 0.0))}

    def forward(self, img_feat: Optional[torch.Tensor] = None) -> torch.Tensor:
        if img_feat is None:
            raise ValueError("ConditionalContext needs image features")
        bias = self.meta_net(img_feat.to(self.ctx.dtype))  # [B, D]
        return (self.ctx.unsqueeze(0) + bias.unsqueeze(1)).unsqueeze(1)  # [B, 1, n_ctx, D]
