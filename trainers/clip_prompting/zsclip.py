"""Zero-shot CLIP: hand-written prompt templates, nothing trains."""
from __future__ import annotations

import logging
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from configs.registry import register_config
from trainers.clip_prompting.base import ClipTrainerBase, build_clip_backbone
from trainers.registry import TRAINER_REGISTRY

logger = logging.getLogger(__name__)


@register_config
def add_zsclip_config(cfg) -> None:
    from yacs.config import CfgNode as CN

    cfg.TRAINER.ZSCLIP = CN()
    cfg.TRAINER.ZSCLIP.TEMPLATES = ("a photo of {}.",)  # templates; text features are averaged over them
    cfg.TRAINER.ZSCLIP.PREC = "bf16"  # precision on CUDA


class ZeroshotModel(nn.Module):
    """Logits of a frozen CLIP against fixed class text features [C, E]."""

    def __init__(self, clip, text_features: torch.Tensor) -> None:
        super().__init__()
        self.clip = clip.eval()
        self.register_buffer("text_features", text_features, persistent=False)

    def train(self, mode: bool = True) -> "ZeroshotModel":
        super().train(mode)
        self.clip.eval()
        return self

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(images), dim=-1)

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        """Logits [B, C] from images, or from normalised image features [B, E]."""
        img = x if features else self.image_features(x)
        return self.clip.logit_scale.exp() * img @ self.text_features.to(img.dtype).t()


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(ClipTrainerBase):
    """Evaluates CLIP with prompt templates; ``train()`` only runs the final test."""

    supports_feature_cache = True  # the model has image_features() and forward(x, features=True)
    #: nothing trains and nothing random happens at test time: the seed cannot change the results, so
    #: tools/sweep.py runs one seed for all (tests/test_sweeps.py checks two seeds give the same numbers)
    SEED_INDEPENDENT = True

    def precision_setting(self) -> str:
        return self.cfg.TRAINER.ZSCLIP.PREC

    @torch.no_grad()
    def build_model(self) -> None:
        clip = build_clip_backbone(self.cfg, self.device)
        feats = []
        for template in self.cfg.TRAINER.ZSCLIP.TEMPLATES:
            texts = [template.format(c.replace("_", " ")) for c in self.classnames]
            feats.append(F.normalize(clip.encode_text(clip.tokenize(texts).to(self.device)), dim=-1))
        text = F.normalize(torch.stack(feats).mean(0), dim=-1)
        logger.info(f"zero-shot prompts, e.g. {self.cfg.TRAINER.ZSCLIP.TEMPLATES[0].format(self.classnames[0])!r}")
        self.model = ZeroshotModel(clip, text)

    def compute_loss(self, batch) -> Dict[str, torch.Tensor]:  # pragma: no cover - nothing trains
        raise RuntimeError("ZeroshotCLIP does not train")

    def train(self) -> Dict[str, float]:
        return self.final_test()
