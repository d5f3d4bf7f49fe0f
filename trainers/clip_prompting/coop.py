"""CoOp: learnable context vectors for a frozen CLIP (Zhou et al., IJCV 2022)."""
from __future__ import annotations

import logging
from typing import Any, Dict

import torch

from configs.registry import register_config
from trainers.clip_prompting.base import ClipTrainerBase, build_clip_backbone
from trainers.clip_prompting.coop_checkpoint import use_official_names
from trainers.components.context import CONTEXT_GENERATORS
from trainers.components.prompt_learner import PromptedCLIP, PromptLearner, context_from_words
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


def build_prompted_clip(clip, classnames, node, context_name: str, **gen_kwargs: Any) -> PromptedCLIP:
    """PromptedCLIP from a trainer's config node (N_CTX, CTX_INIT) and a context generator name."""
    init, n_ctx = (None, node.N_CTX)
    if node.CTX_INIT:
        init, n_ctx = context_from_words(clip, node.CTX_INIT)  # logs the number of context tokens
    else:
        logger.info(f"context: {n_ctx} tokens, random init N(0, 0.02^2)")
    gen = CONTEXT_GENERATORS.get(context_name)(
        n_ctx=n_ctx, ctx_dim=clip.text_width, vis_dim=clip.embed_dim, n_cls=len(classnames), init=init, **gen_kwargs
    )
    position = getattr(node, "CLASS_TOKEN_POSITION", "end")
    return PromptedCLIP(clip, PromptLearner(clip, classnames, gen, n_ctx, position=position))


@TRAINER_REGISTRY.register()
class CoOp(ClipTrainerBase):
    """Context optimisation: only the prompt learner trains and is saved."""

    supports_feature_cache = True  # the model has image_features() and forward(x, features=True)

    def node(self):
        return self.cfg.TRAINER.COOP

    def precision_setting(self) -> str:
        return self.node().PREC

    def build_model(self) -> None:
        clip = build_clip_backbone(self.cfg, self.device)
        node = self.node()
        csc = getattr(node, "CSC", False)
        if csc and node.CTX_INIT:  # the official PromptLearner ignores CSC when CTX_INIT is given
            logger.warning("CSC True with CTX_INIT: one context shared by all classes, initialised from the words "
                           "(the official CoOp ignores CSC when CTX_INIT is given); unset CTX_INIT for class-specific")
            csc = False
        self.model = build_prompted_clip(clip, self.classnames, node, node.CONTEXT, csc=csc)
        self.register_model("prompt_learner", use_official_names(self.model.prompt_learner))

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
