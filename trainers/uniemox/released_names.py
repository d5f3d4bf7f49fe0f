"""Fine-tuned UniEmoX classifiers in the layout the released code's ``--eval --resume FILE`` loads.

The released evaluation calls ``model.load_state_dict(torch.load(FILE))`` with ``strict=True`` on
the raw object, so the file must be a bare state dict with exactly the released model's keys. The
names equal timm's ``VisionTransformer``'s; the difference is the final ``norm``: the released
global-pool model keeps ``norm.{weight,bias}`` (a LayerNorm it never applies: the patch mean goes
through ``fc_norm``), where timm's global-pool model has none. :func:`released_classifier_state`
adds them (the encoder's final norm of the initialising file when it had one, else a fresh
LayerNorm's ones / zeros: unused either way). A cls-token model's keys are timm's unchanged.

EmoLab reads such files back (``--eval-only --model-dir FILE``, ``TRAINER.UNIEMOX.INIT FILE``):
``norm.*`` is dropped for global pooling, as before.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)
RELEASED_FINETUNED_NAME = "uniemox_finetuned.pth"


def released_classifier_state(vit: nn.Module, global_pool: bool,
                              norm: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """The state dict of ``vit`` (a timm ViT classifier) under the released model's key set."""
    state = {k: v.detach().cpu().clone() for k, v in vit.state_dict().items()}
    if global_pool and "norm.weight" not in state:
        dim = state["fc_norm.weight"].shape[0]
        norm = norm or {}
        state["norm.weight"] = norm.get("norm.weight", torch.ones(dim)).detach().cpu().clone()
        state["norm.bias"] = norm.get("norm.bias", torch.zeros(dim)).detach().cpu().clone()
    return state


def write_released_classifier(path: str, vit: nn.Module, global_pool: bool,
                              norm: Optional[Dict[str, torch.Tensor]] = None) -> str:
    """Write :func:`released_classifier_state` to ``path`` (atomically); returns ``path``."""
    from utils.fileio import atomic_torch_save

    atomic_torch_save(released_classifier_state(vit, global_pool, norm), path)
    logger.info(f"wrote {path}: the tested classifier as a bare state dict the released --eval --resume loads")
    return path
