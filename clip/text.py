"""CLIP's text encoder, fed with token *embeddings* so that prompt vectors can be learned.

The function below repeats open_clip's ``CLIP.encode_text`` from the token embeddings on:
positional embedding, causal transformer, ``ln_final``, the row at the EOT token, projection.
Because the attention mask is causal, no token after a sequence's EOT can change the EOT row,
so the batch is cut right after the last EOT (a 20-token prompt runs 20 positions, not 77).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


def run_transformer(transformer: nn.Module, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run an open_clip ``Transformer`` on a batch-first sequence.

    Args:
        transformer: the text or vision transformer stack.
        x: [N, L, D] token sequence.
        attn_mask: optional additive mask [L, L].

    Returns:
        [N, L, D]. open_clip >= 2.24 transformers carry ``batch_first`` and take [N, L, D]
        whatever its value (they transpose inside when it is False); older ones take [L, N, D].
    """
    if hasattr(transformer, "batch_first"):
        return transformer(x, attn_mask=attn_mask)
    return transformer(x.permute(1, 0, 2), attn_mask=attn_mask).permute(1, 0, 2)


def text_cast_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the text transformer computes in (its weights' dtype)."""
    transformer = model.transformer
    if hasattr(transformer, "get_cast_dtype"):
        return transformer.get_cast_dtype()
    return next(transformer.parameters()).dtype


def project_text(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply ``text_projection`` (a Parameter [D, E], an ``nn.Linear`` or None) to [N, D]."""
    proj = model.text_projection
    if proj is None:
        return x
    if isinstance(proj, nn.Linear):
        return proj(x)
    return x @ proj


def encode_text_embeddings(
    model: nn.Module, x: torch.Tensor, eot_positions: torch.Tensor, truncate: bool = True
) -> torch.Tensor:
    """Text features of sequences given as token embeddings.

    Args:
        model: an open_clip ``CLIP`` (built-in text transformer).
        x: [N, L, D] token embeddings (SOS, prompt / word tokens, EOT, padding), L <= context length.
        eot_positions: [N] index of each sequence's EOT token (the pooled position).
        truncate: cut all sequences after the last EOT first (exact with a causal mask).

    Returns:
        [N, E] projected text features (not normalised).
    """
    if x.ndim != 3:
        raise ValueError(f"text embeddings must be [N, L, D], got shape {tuple(x.shape)}")
    n, length, _ = x.shape
    eot = eot_positions.to(device=x.device, dtype=torch.long).reshape(-1)
    if eot.numel() != n:
        raise ValueError(f"{eot.numel()} EOT positions for {n} sequences")
    max_len = model.positional_embedding.shape[0]
    if length > max_len:
        raise ValueError(f"text sequence of {length} tokens exceeds the context length {max_len}")
    last = int(eot.max())
    if last >= length or int(eot.min()) < 0:
        raise ValueError(f"EOT position {last} outside sequences of {length} tokens")
    mask = model.attn_mask
    if truncate and mask is not None and last + 1 < length:
        length = last + 1
        x = x[:, :length]
    cast = text_cast_dtype(model)
    x = x.to(cast) + model.positional_embedding[:length].to(cast)
    x = run_transformer(model.transformer, x, None if mask is None else mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(n, device=x.device), eot]
    return project_text(model, x)
