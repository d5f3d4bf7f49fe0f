"""CoCoOp: image-conditioned context from a meta-network (Zhou et al., CVPR 2022).

All B x C prompts of a batch go through the text encoder in one pass (the reference code
loops over images, which is why its configs use batch size 1).
"""
from __future__ import annotations

from configs.registry import register_config
from trainers.clip_prompting.base import build_clip_backbone
from trainers.clip_prompting.coop import CoOp, build_prompted_clip
from trainers.clip_prompting.coop_checkpoint import use_official_names
from trainers.registry import TRAINER_REGISTRY


@register_config
def add_cocoop_config(cfg) -> None:
    from yacs.config import CfgNode as CN

    cfg.TRAINER.COCOOP = CN()
    cfg.TRAINER.COCOOP.N_CTX = 16  # number of context tokens (ignored when CTX_INIT is given)
    cfg.TRAINER.COCOOP.CTX_INIT = ""  # words to initialise the context
    cfg.TRAINER.COCOOP.PREC = "bf16"  # bf16 | fp16 | fp32 | amp (autocast on CUDA; CPU runs fp32)
    cfg.TRAINER.COCOOP.CONTEXT = "ConditionalContext"  # context generator
    cfg.TRAINER.COCOOP.META_HIDDEN_RATIO = 16  # meta-net hidden width = vis_dim // ratio
    cfg.TRAINER.COCOOP.META_DROPOUT = 0.0  # dropout inside the meta-net


@TRAINER_REGISTRY.register()
class CoCoOp(CoOp):
    """Conditional context optimisation (same prompt learner, conditional context generator)."""

    def node(self):
        return self.cfg.TRAINER.COCOOP

    def build_model(self) -> None:
        clip = build_clip_backbone(self.cfg, self.device)
        node = self.node()
        self.model = build_prompted_clip(
            clip, self.classnames, node, node.CONTEXT,
            hidden_ratio=node.META_HIDDEN_RATIO, dropout=node.META_DROPOUT,
        )
        self.register_model("prompt_learner", use_official_names(self.model.prompt_learner))
