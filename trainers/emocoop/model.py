"""EmoCoOp's model: a frozen CLIP with text prompts, visual prompts, V-T coupling, an auxiliary
emotion head and a chromatic branch, each optional (None = that part is off).

Forward for images [B, 3, H, W] (normalised as the data loader gives them):

1. visual prompts (if any): ``P_dyn = P + g(mean patch)``; with coupling
   ``P' = P_dyn + MHA(P_dyn, proj(text context))``, inserted after CLS by ``encode_image``;
2. ``img = normalize(encode_image(images, prompts))`` [B, E];
3. chromatic branch (if any) on the *un-normalised* RGB in [0, 1]: ``fusion`` mode replaces
   ``img`` by ``normalize(img + W c)``;
4. text features per image from the prompt learner (meta-net conditioned on ``img``), pooled at
   the EOT token; ``logits = exp(logit_scale) * img . txt`` [B, C];
5. chromatic ``residual`` mode adds ``W c`` to the logits;
6. auxiliary head (if any) on ``img``: ``aux_logits`` [B, C].
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainers.components.prompt_learner import PromptedCLIP, PromptLearner


class EmoCoOpModel(PromptedCLIP):
    """See the module docstring. ``forward(images) -> {"logits", ["aux_logits"]}``.

    Args:
        clip: frozen ``ClipBackbone`` (kept in eval mode).
        prompt_learner: text prompts around a context generator.
        visual_prompts: ``DynamicVisualPrompts`` or None (needs a ViT).
        aux_head: ``AuxiliaryEmotionHead`` or None.
        chromatic: ``ChromaticBranch`` or None.
        loss_weighting: kept here so that it moves with the model (not used in ``forward``).
        pixel_mean, pixel_std: the normalisation applied by the data pipeline.
        normalized_train, normalized_test: whether training / evaluation batches are normalised.
    """

    def __init__(
        self, clip, prompt_learner: PromptLearner, visual_prompts: Optional[nn.Module] = None,
        aux_head: Optional[nn.Module] = None, chromatic: Optional[nn.Module] = None,
        loss_weighting: Optional[nn.Module] = None, pixel_mean: Sequence[float] = (0.0, 0.0, 0.0),
        pixel_std: Sequence[float] = (1.0, 1.0, 1.0), normalized_train: bool = True, normalized_test: bool = True,
    ) -> None:
        super().__init__(clip, prompt_learner)
        self.visual_prompts = visual_prompts
        self.aux_head = aux_head
        self.chromatic = chromatic
        self.loss_weighting = loss_weighting
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.normalized_train, self.normalized_test = normalized_train, normalized_test

    def text_context(self) -> torch.Tensor:
        """The learned (image-independent) text context [T, D] the visual prompts couple with."""
        ctx = self.prompt_learner.context.ctx
        return ctx.reshape(-1, ctx.shape[-1])

    def rgb01(self, images: torch.Tensor) -> torch.Tensor:
        """Images as RGB in [0, 1]: the data pipeline's normalisation undone (when it applied one)."""
        normalized = self.normalized_train if self.training else self.normalized_test
        x = images.float()
        if normalized:
            x = x * self.pixel_std + self.pixel_mean
        return x.clamp(0.0, 1.0)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features [B, E], with the visual prompts inserted when there are any."""
        prompts = None
        if self.visual_prompts is not None:
            text_ctx = self.text_context() if getattr(self.visual_prompts, "coupling", None) is not None else None
            prompts = lambda tokens: self.visual_prompts(tokens, text_ctx)  # noqa: E731
        return F.normalize(self.clip.encode_image(images, prompts=prompts), dim=-1)

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:  # type: ignore[override]
        img = self.image_features(images)
        chroma = None
        if self.chromatic is not None:
            chroma = self.chromatic.analyze(self.rgb01(images))  # [B, 34]
            img = self.chromatic.fusion.fuse_image(img, chroma)
        logits = self.logits_from_features(img)
        if chroma is not None:
            logits = self.chromatic.fusion.fuse_logits(logits, chroma)
        out = {"logits": logits}
        if self.aux_head is not None:
            out["aux_logits"] = self.aux_head(img)
        return out
