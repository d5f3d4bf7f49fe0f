"""CLIP's ViT image encoder with optional extra prompt tokens (visual prompt tuning).

Order of open_clip's ``VisionTransformer.forward``, with the prompt insertion marked:
conv1 -> flatten -> [CLS] + patches -> + positional embedding -> patch dropout
-> **insert P prompt tokens after CLS** -> ln_pre -> transformer -> **drop the prompt tokens**
-> pool (``pool_type``: CLS token or patch mean, or the attentional pooler) -> ln_post -> proj.

Prompts join after patch dropout (an identity in eval mode) so that dropout can never remove
them; they pass ``ln_pre`` and every transformer layer like the image tokens do.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn as nn

from .text import run_transformer

#: a prompt tensor [B or 1, P, W], or ``f(tokens [B, 1+N, W]) -> [B, P, W]``
VisualPrompts = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], None]


def vit_tokens(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The token sequence a ViT feeds its transformer, before patch dropout and ``ln_pre``.

    Args:
        visual: an open_clip ``VisionTransformer``.
        images: [B, 3, H, W] normalised images at the model's input size.

    Returns:
        [B, 1 + N, W]: the class token then N patch tokens, positional embedding added.
    """
    x = visual.conv1(images)  # [B, W, gh, gw]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, N, W]
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    return x + visual.positional_embedding.to(x.dtype)


def _prompt_tokens(prompts: VisualPrompts, tokens: torch.Tensor) -> Optional[torch.Tensor]:
    """Resolve ``prompts`` to a [B, P, W] tensor (or None) for the sequence ``tokens``."""
    if prompts is None:
        return None
    p = prompts if isinstance(prompts, torch.Tensor) else prompts(tokens)
    b, _, width = tokens.shape
    if not isinstance(p, torch.Tensor) or p.ndim != 3 or p.shape[-1] != width or p.shape[0] not in (1, b):
        shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
        raise ValueError(f"visual prompts must be [{b} or 1, P, {width}], got {shape}")
    return p.to(tokens.dtype).expand(b, -1, -1)


def _pool(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled features [B, W'] of the transformer output [B, 1 + N, W] (before ``proj``)."""
    if hasattr(visual, "_pool"):  # open_clip >= 2.24
        return visual._pool(x)[0]
    if getattr(visual, "attn_pool", None) is not None:  # pragma: no cover - old open_clip
        raise ValueError("this open_clip version's attentional pooler is not supported with prompts")
    return visual._global_pool(visual.ln_post(x))[0]  # pragma: no cover - old open_clip


def encode_vit(visual: nn.Module, images: torch.Tensor, prompts: VisualPrompts = None) -> torch.Tensor:
    """Image features of a ViT, optionally with P prompt tokens inserted after the class token.

    Args:
        visual: an open_clip ``VisionTransformer``.
        images: [B, 3, H, W].
        prompts: None, a tensor [B or 1, P, W], or a callable receiving the [B, 1 + N, W]
            sequence of :func:`vit_tokens` and returning [B, P, W]. Gradients flow into them.

    Returns:
        [B, E] projected image features (not normalised); without prompts equal to
        ``visual(images)``.
    """
    x = vit_tokens(visual, images)
    p = _prompt_tokens(prompts, x)
    x = visual.patch_dropout(x)
    if p is not None:
        x = torch.cat([x[:, :1], p, x[:, 1:]], dim=1)
    x = visual.ln_pre(x)
    x = run_transformer(visual.transformer, x)
    if p is not None:
        x = torch.cat([x[:, :1], x[:, 1 + p.shape[1]:]], dim=1)
    pooled = _pool(visual, x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled
