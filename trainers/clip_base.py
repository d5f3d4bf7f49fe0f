"""Shared base for trainers built on a frozen CLIP backbone (CoOp, CoCoOp, zero-shot, ...)."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict

import torch
import torch.nn.functional as F

from configs.errors import ConfigError
from trainers.engine import TrainerBase

logger = logging.getLogger(__name__)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS_DIR = os.path.join(REPO_ROOT, "clip", "weights")


def default_weights(name: str) -> str:
    """The weights file shipped with the project for ``name`` (tiny synthetic CLIPs), or ""."""
    path = os.path.join(WEIGHTS_DIR, f"{name}.safetensors")
    return path if os.path.isfile(path) else ""


def resolve_pretrained(name: str, pretrained: str) -> str:
    """``""`` -> the shipped weights for project architectures, else random init (with a warning);
    ``"random"`` -> random init; anything else is passed to ``clip.load_clip``."""
    if pretrained == "random":
        return ""
    if pretrained:
        return pretrained
    shipped = default_weights(name)
    if shipped:
        return shipped
    logger.warning(
        f"CLIP {name} has RANDOM weights: set MODEL.BACKBONE.PRETRAINED to a checkpoint file or an open_clip tag"
    )
    return ""


def backbone_image_size(name: str) -> int:
    """Input resolution of a CLIP architecture, read from its config (no model is built)."""
    import open_clip

    from clip import resolve_model_name

    arch = resolve_model_name(name)
    conf = open_clip.get_model_config(arch) or {}
    size = conf.get("vision_cfg", {}).get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def build_clip_backbone(cfg, device: torch.device):
    """Load the frozen CLIP backbone named by ``cfg.MODEL.BACKBONE``."""
    from clip import load_clip

    name = cfg.MODEL.BACKBONE.NAME
    if not name:
        raise ConfigError("MODEL.BACKBONE.NAME is empty: name a CLIP architecture, e.g. ViT-B/16 or emolab-tiny-vit")
    weights = resolve_pretrained(name, cfg.MODEL.BACKBONE.PRETRAINED)
    logger.info(f"loading CLIP {name} ({weights or 'random init'})")
    return load_clip(name, pretrained=weights, device=device)


class ClipTrainerBase(TrainerBase):
    """A trainer whose backbone is a frozen CLIP; fills ``INPUT.SIZE`` from the architecture."""

    @classmethod
    def finalize_config(cls, cfg) -> None:
        """Fill INPUT.SIZE from the CLIP architecture (called by ``train.py`` before freezing)."""
        if not cfg.MODEL.BACKBONE.NAME:
            cfg.MODEL.BACKBONE.NAME = "emolab-tiny-vit"
        size = backbone_image_size(cfg.MODEL.BACKBONE.NAME)
        if not cfg.INPUT.SIZE:
            cfg.INPUT.SIZE = (size, size)
        elif tuple(cfg.INPUT.SIZE) != (size, size):
            raise ConfigError(
                f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} does not match the {size}x{size} input of backbone "
                f"{cfg.MODEL.BACKBONE.NAME}"
            )

    def classification_loss(self, logits: torch.Tensor, batch: Dict[str, Any]) -> torch.Tensor:
        """Cross-entropy on ``label`` (single-label) or BCE-with-logits on ``labels`` (multi-label)."""
        if self.task == "multi_label":
            return F.binary_cross_entropy_with_logits(logits.float(), batch["labels"].float())
        return F.cross_entropy(logits.float(), batch["label"])
