"""Linear probe: a linear classifier on frozen, L2-normalised CLIP image features."""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from configs.registry import register_config
from trainers.clip_prompting.base import ClipTrainerBase, build_clip_backbone
from trainers.registry import TRAINER_REGISTRY


@register_config
def add_linear_probe_config(cfg) -> None:
    from yacs.config import CfgNode as CN

    cfg.TRAINER.LINEAR_PROBE = CN()
    cfg.TRAINER.LINEAR_PROBE.PREC = "bf16"  # precision on CUDA (CPU runs fp32)


class ProbeModel(nn.Module):
    """``logits = W norm(clip.encode_image(x)) + b``; CLIP frozen and in eval mode."""

    def __init__(self, clip, num_classes: int) -> None:
        super().__init__()
        self.clip = clip
        self.head = nn.Linear(clip.embed_dim, num_classes)

    def train(self, mode: bool = True) -> "ProbeModel":
        super().train(mode)
        self.clip.eval()
        return self

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(images), dim=-1)

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        """Logits [B, C] from images, or from normalised image features [B, E]."""
        return self.head((x if features else self.image_features(x)).float())


@TRAINER_REGISTRY.register()
class LinearProbeCLIP(ClipTrainerBase):
    """Trains only a linear head on frozen CLIP image features (single- or multi-label)."""

    supports_feature_cache = True  # the model has image_features() and forward(x, features=True)

    def precision_setting(self) -> str:
        return self.cfg.TRAINER.LINEAR_PROBE.PREC

    def build_model(self) -> None:
        self.model = ProbeModel(build_clip_backbone(self.cfg, self.device), self.num_classes)
        self.register_model("head", self.model.head)

    def compute_loss(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        return {"loss": self.classification_loss(self.forward_batch(batch), batch)}
