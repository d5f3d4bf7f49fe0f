"""Dynamic visual prompts of EmoCoOp (shallow VPT with an image-conditioned offset).

P prompt tokens of the ViT width W join the image sequence right after the class token (after
the positional embedding, see ``clip.image``) and are dropped after the transformer:

* static part ``P`` [P, W]: learned; initialised by k-means centres of deep visual features
  of the training images (``visual_clusters.py``) or ``N(0, 0.02^2)``;
* dynamic offset ``g(mean patch embedding)`` with ``g = Linear(W, 2W)-ReLU-Linear(2W, W)``,
  the same offset for every prompt of an image: ``P_dyn = P + g(mean_n x_n)``;
* optional V-T coupling (``coupling.py``) applied to ``P_dyn`` with the text context.

``forward(tokens, text_ctx)`` is the callable ``ClipBackbone.encode_image(images, prompts=...)``
expects: ``tokens`` [B, 1 + N, W] is the CLS + patch sequence with positions added.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


class DynamicVisualPrompts(nn.Module):
    """Static + dynamic (+ coupled) visual prompt tokens.

    Args:
        n_prompts: P.
        width: W, the ViT width.
        dynamic: add the image-conditioned offset ``g(mean patch)``.
        coupling: a :class:`~trainers.components.coupling.VisionTextCoupling` or None.
        init_std: std of the random static init (replaced by k-means centres when clustering).
    """

    def __init__(
        self, n_prompts: int, width: int, dynamic: bool = True, coupling: Optional[nn.Module] = None,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if n_prompts < 1:
            raise ValueError(f"need at least one visual prompt, got {n_prompts}")
        self.n_prompts, self.width = n_prompts, width
        self.prompts = nn.Parameter(torch.randn(n_prompts, width) * init_std)  # [P, W]
        self.meta_net = (
            nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(inplace=True), nn.Linear(2 * width, width))
            if dynamic else None
        )
        self.coupling = coupling

    @torch.no_grad()
    def set_static(self, centres: torch.Tensor) -> None:
        """Overwrite the static prompts with ``centres`` [P, W]."""
        if tuple(centres.shape) != tuple(self.prompts.shape):
            raise ValueError(f"centres {tuple(centres.shape)} do not fit the prompts {tuple(self.prompts.shape)}")
        self.prompts.copy_(centres.to(self.prompts))

    def forward(self, tokens: torch.Tensor, text_ctx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Prompt tokens [B, P, W] for the image sequence ``tokens`` [B, 1 + N, W].

        ``text_ctx`` [T, D] is used only with a coupling module (and required then).
        """
        b = tokens.shape[0]
        p = self.prompts.unsqueeze(0).expand(b, -1, -1)  # [B, P, W]
        if self.meta_net is not None:
            mean_patch = tokens[:, 1:].mean(dim=1).to(self.prompts.dtype)  # [B, W]
            p = p + self.meta_net(mean_patch).unsqueeze(1)
        if self.coupling is not None:
            if text_ctx is None:
                raise ValueError("the V-T coupling needs the text context")
            p = self.coupling(p, text_ctx)
        return p
