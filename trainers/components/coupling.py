"""Vision-text (V-T) coupling of EmoCoOp: visual prompts attend to the text context."""
from __future__ import annotations

import torch
import torch.nn as nn

from utils.errors import ConfigError


class VisionTextCoupling(nn.Module):
    """``P' = P_dyn + MultiheadAttention(query=P_dyn, key=value=Linear(text_ctx))``.

    Args:
        text_dim: D, the width of the text context vectors (CLIP token width).
        vis_dim: W, the width of the visual prompt tokens (ViT width).
        heads: attention heads (must divide W).
        dropout: attention dropout.

    ``forward(prompts [B, P, W], text_ctx [T, D]) -> [B, P, W]``: every image's P prompts
    attend to the same T projected context vectors (the learned, image-independent text context).
    """

    def __init__(self, text_dim: int, vis_dim: int, heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if vis_dim % heads:
            raise ConfigError(f"TRAINER.EMOCOOP.COUPLING_HEADS {heads} must divide the ViT width {vis_dim}")
        self.text_proj = nn.Linear(text_dim, vis_dim)
        self.attn = nn.MultiheadAttention(vis_dim, heads, dropout=dropout, batch_first=True)

    def forward(self, prompts: torch.Tensor, text_ctx: torch.Tensor) -> torch.Tensor:
        if text_ctx.ndim != 2:
            raise ValueError(f"text context must be [T, D], got {tuple(text_ctx.shape)}")
        kv = self.text_proj(text_ctx.to(self.text_proj.weight.dtype))
        kv = kv.unsqueeze(0).expand(prompts.shape[0], -1, -1)
        q = prompts.to(kv.dtype)
        out, _ = self.attn(q, kv, kv, need_weights=False)
        return prompts + out.to(prompts.dtype)
