"""CoOp: learnable context vectors for a frozen CLIP (Zhou et al., IJCV 2022)."""
from __future__ import annotations

import logging
from typing import Any, Dict

import torch

from configs.registry import register_config
from trainers.clip_prompting.base import ClipTrainerBase, build_clip_backbone
from trainers.clip_prompting.coop_checkpoint import use_official_names
from trainers.components.prompt_learner import PromptedCLIP, build_prompt_learner
from trainers.registry import TRAINER_REGISTRY

logger = logging.getLogger(__name__)


@register_config
def add_coop_config(cfg) -> None:
    from yacs.config import CfgNode as CN

    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16  # number of context tokens (ignored when CTX_INIT is given)
    cfg.TRAINER.COOP.CSC = False  # class-specific context
    cfg.TRAINER.COOP.CTX_INIT = ""  # words to initialise the context, e.g. "a photo of a"
    cfg.TRAINER.COOP.PREC = "bf16"  # bf16 | fp16 | fp32 | amp (autocast on CUDA; CPU runs fp32)
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"  # end | middle | front
    cfg.TRAINER.COOP.CONTEXT = "StaticContext"  # context generator (trainers/components/context.py)


@TRAINER_REGISTRY.register()
class CoOp(ClipTrainerBase):
    """Context optimisation: only the prompt learner trains and is saved.

    A variant (CoCoOp, or a method of your own) sets ``NODE`` to its config node under ``TRAINER``;
    the node's ``CONTEXT`` and ``PROMPT_LEARNER`` pick the registered parts
    (:func:`~trainers.components.prompt_learner.build_prompt_learner`), so a variant with a new
    context generator or prompt learner needs no ``build_model`` of its own.
    """

    NODE = "COOP"  #: config node under TRAINER
    supports_feature_cache = True  # the model has image_features() and forward(x, features=True)

    def precision_setting(self) -> str:  # the engine asks for it before build_model
        return self.cfg.TRAINER[self.NODE].PREC

    def build_model(self) -> None:
        clip = build_clip_backbone(self.cfg, self.device)
        node = self.cfg.TRAINER[self.NODE]
        learner = build_prompt_learner(clip, self.classnames, node, f"TRAINER.{self.NODE}")
        self.model = PromptedCLIP(clip, learner)
        # official CoOp/CoCoOp key names in the checkpoint (both layouts load)
        self.register_model("prompt_learner", use_official_names(learner))

    def compute_loss(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        return {"loss": self.classification_loss(self.forward_batch(batch), batch)}

    def _load_state_dict(self, module, state, path: str) -> None:
        """As the engine's; a prompt learner saved by the official CoOp / CoCoOp code
        (``ctx``, ``meta_net.linear1/2``, ``token_prefix/suffix``) is mapped to EmoLab's names."""
        from trainers.clip_prompting.coop_checkpoint import from_official, is_official

        if module is self._models.get("prompt_learner") and is_official(state):
            logger.info(f"{path}: official CoOp/CoCoOp layout, mapped to EmoLab's prompt learner")
            state = from_official(state, module, path)
        super()._load_state_dict(module, state, path)
