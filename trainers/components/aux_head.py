"""EmoCoOp's auxiliary emotion head on the normalised image feature."""
from __future__ import annotations

import torch
import torch.nn as nn

from utils.errors import ConfigError


class AuxiliaryEmotionHead(nn.Module):
    """``Linear(E, E/2)-ReLU-Drop-Linear(E/2, E/4)-ReLU-Drop -> MultiheadAttention(E/4) -> Linear(E/4, C)``.

    With CLIP ViT-B/16 (E = 512) the widths are 256 and 128, as in the paper. The attention
    runs over the one-token sequence of each image's feature, as the released head does (so it
    acts as a learned value/output projection; images never attend to each other).

    Args:
        in_dim: E, the image feature width.
        n_cls: C, the number of classes.
        dropout: dropout after each hidden layer and inside the attention.
        heads: attention heads (must divide E / 4).

    ``forward(img [B, E]) -> logits [B, C]``.
    """

    def __init__(self, in_dim: int, n_cls: int, dropout: float = 0.3, heads: int = 4) -> None:
        super().__init__()
        h1, h2 = max(1, in_dim // 2), max(1, in_dim // 4)
        if h2 % heads:
            raise ConfigError(f"TRAINER.EMOCOOP.AUX_HEADS {heads} must divide the aux head width {h2} (= E / 4)")
        self.proj = nn.Sequential(
            nn.Linear(in_dim, h1), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(h1, h2), nn.ReLU(inplace=True), nn.Dropout(dropout),
        )
        self.attn = nn.MultiheadAttention(h2, heads, dropout=dropout, batch_first=True)
        self.classifier = nn.Linear(h2, n_cls)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.proj(img.float()).unsqueeze(1)  # [B, 1, E/4]
        x, _ = self.attn(x, x, x, need_weights=False)
        return self.classifier(x.squeeze(1))
