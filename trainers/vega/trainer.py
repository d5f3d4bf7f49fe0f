"""VEGA: multimodal emotion recognition in conversation grounded on CLIP visual anchors
(Hu, Kollias, Yang, ACM MM 2025). Keys under TRAINER.VEGA.

Data: a conversation-features dataset (``IEMOCAPFeatures``, ``MELDFeatures``, ``ConversationFeatures``,
``SyntheticConversation``) batched by dialogue (:mod:`datasets.conversation.loader`). Model:
:class:`trainers.vega.model.VEGANet`. Anchors: an anchor file (:mod:`trainers.components.anchors`,
built by ``tools/build_anchors.py``). Losses: :func:`trainers.vega.model.vega_loss`. Evaluation:
the ``Conversation`` evaluator over real utterances, the best validation model kept; with
``PATIENCE`` > 0 training stops once more than that many validated epochs in a row brought no better
score (``PATIENCE + 1`` of them), as the released code counts.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from utils.errors import CheckpointError, ConfigError
from configs.registry import register_config
from datasets import DATASET_REGISTRY
from datasets.conversation.features import ConversationFeatures
from datasets.conversation.loader import build_dialogue_loader
from trainers.components.anchors import AnchorBank, describe, load_anchors, match_anchors
from trainers.engine import EarlyStoppingHook, HookBase, TrainerBase
from trainers.engine.data import LoaderOptions, build_data_bundle
from trainers.registry import TRAINER_REGISTRY
from trainers.vega.model import MODALITIES, VEGALossSettings, VEGANet, vega_loss

logger = logging.getLogger(__name__)


@register_config
def add_vega_config(cfg: CN) -> None:
    d = VEGALossSettings()
    cfg.TRAINER.VEGA = v = CN()
    v.HIDDEN = 768  # hidden size H of every transformer and head
    v.HEADS = 4  # attention heads
    v.LAYERS = 1  # layers in each of the nine (intra- and cross-modal) transformers
    v.FF_DIM = 0  # feed-forward width (0 = HIDDEN)
    v.DROPOUT = 0.1  # dropout rate of the input projections, the nine transformers and (by default) the heads
    v.TRANSFORMER_DROPOUT = -1.0  # dropout of the input projections and transformers (< 0 = DROPOUT); released IEMOCAP: 0.53
    v.HEAD_DROPOUT = -1.0  # dropout inside the classification heads (< 0 = DROPOUT); released IEMOCAP: 0.3963
    v.ANCHOR_DROPOUT = 0.0  # dropout after the ELU of the anchor projections; released IEMOCAP: 0.374
    v.ANCHOR_FILE = ""  # anchor file (tools/build_anchors.py); absolute, or relative to the working dir, else to DATASET.ROOT
    v.CLIP_DIM = 0  # anchor (CLIP) dimension D of the projections; 0 = the anchor file's, else it must match
    v.ANCHOR_SCALE = 100.0  # anchor logits = ANCHOR_SCALE * norm(z) @ anchors^T
    v.EXEMPLAR_PROB = 0.4  # per training batch: chance of one random exemplar per class instead of the centres
    v.TEMP_INIT = 2.0  # initial distillation temperature T (six learnable ones, one per modality and loss)
    v.LEARN_TEMP = True  # learn the distillation temperatures
    v.DETACH_TEACHER = True  # stop gradients into the fused (teacher) logits in KL terms (False = released code)
    v.CLASS_WEIGHTS = []  # CE class weights in class order ([] = all 1); IEMOCAP: [2.853, 1.706, 1.083, 1.676, 1.776, 1.0]
    v.PREDICT = "head"  # prediction: head (fused classification logits) | anchor (fused anchor logits vs centres)
    v.PATIENCE = 30  # early stopping: stop when MORE than this many validated epochs in a row bring no better score (0 = off)
    v.PREC = "amp"  # fp32 | fp16 | bf16 | amp (CPU runs fp32)
    v.LOSS = L = CN()
    L.CE = d.ce  # class-weighted CE on the fused and unimodal logits
    L.CE_WEIGHT = d.ce_weight  # weight of the CE term
    L.CE_MODALITY_WEIGHTS = d.ce_modality  # (all, text, audio, visual)
    L.KL = d.kl  # distillation fused -> unimodal logits
    L.KL_WEIGHT = d.kl_weight  # weight of the KL term
    L.KL_MODALITY_WEIGHTS = d.kl_modality  # (text, audio, visual)
    L.ANCHOR_CE = d.anchor_ce  # CE on the anchor logits
    L.ANCHOR_CE_WEIGHT = d.anchor_ce_weight  # weight of the anchor CE term
    L.ANCHOR_CE_MODALITY_WEIGHTS = d.anchor_ce_modality  # (all, text, audio, visual)
    L.ANCHOR_KL = d.anchor_kl  # distillation fused -> unimodal anchor logits
    L.ANCHOR_KL_WEIGHT = d.anchor_kl_weight  # weight of the anchor KL term
    L.ANCHOR_KL_MODALITY_WEIGHTS = d.anchor_kl_modality  # (text, audio, visual)


def loss_settings_from_config(node: CN) -> VEGALossSettings:
    """:class:`VEGALossSettings` from ``TRAINER.VEGA`` (checks the weight list lengths)."""
    L = node.LOSS
    for key, n in (("CE", 4), ("KL", 3), ("ANCHOR_CE", 4), ("ANCHOR_KL", 3)):
        if len(L[f"{key}_MODALITY_WEIGHTS"]) != n:
            order = "all, text, audio, visual" if n == 4 else "text, audio, visual"
            got = list(L[f"{key}_MODALITY_WEIGHTS"])
            raise ConfigError(f"TRAINER.VEGA.LOSS.{key}_MODALITY_WEIGHTS needs {n} values ({order}), got {got}")
    if not (L.CE or L.KL or L.ANCHOR_CE or L.ANCHOR_KL):
        raise ConfigError("TRAINER.VEGA.LOSS: every loss is off")
    return VEGALossSettings(
        ce=bool(L.CE), ce_weight=float(L.CE_WEIGHT), ce_modality=tuple(map(float, L.CE_MODALITY_WEIGHTS)),
        kl=bool(L.KL), kl_weight=float(L.KL_WEIGHT), kl_modality=tuple(map(float, L.KL_MODALITY_WEIGHTS)),
        anchor_ce=bool(L.ANCHOR_CE), anchor_ce_weight=float(L.ANCHOR_CE_WEIGHT),
        anchor_ce_modality=tuple(map(float, L.ANCHOR_CE_MODALITY_WEIGHTS)), anchor_kl=bool(L.ANCHOR_KL),
        anchor_kl_weight=float(L.ANCHOR_KL_WEIGHT), anchor_kl_modality=tuple(map(float, L.ANCHOR_KL_MODALITY_WEIGHTS)),
        detach_teacher=bool(node.DETACH_TEACHER),
    )


def resolve_anchor_file(path: str, root: str) -> str:
    """``path`` if absolute or found from the working directory, else ``root/path``."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(root, path) if root and os.path.exists(os.path.join(root, path)) else path


def vega_dropouts(node) -> Dict[str, float]:
    """``VEGANet`` dropout arguments from ``TRAINER.VEGA``: ``TRANSFORMER_DROPOUT`` and
    ``HEAD_DROPOUT`` fall back to ``DROPOUT`` when negative; ``ANCHOR_DROPOUT`` as given."""
    base = float(node.DROPOUT)
    pick = lambda v: base if float(v) < 0 else float(v)  # noqa: E731
    return {"dropout": pick(node.TRANSFORMER_DROPOUT), "head_dropout": pick(node.HEAD_DROPOUT),
            "anchor_dropout": float(node.ANCHOR_DROPOUT)}


def dialogue_loaders(dialogues, is_train: bool, o: LoaderOptions, transform=None):
    """Loader factory of dialogue batches (:func:`datasets.conversation.loader.build_dialogue_loader`)."""
    if is_train:
        return build_dialogue_loader(dialogues, o.train_batch_size, is_train=True,
                                     shuffle=o.train_sampler == "RandomSampler", **o.common())
    return build_dialogue_loader(dialogues, o.test_batch_size, is_train=False, **o.common())


class VEGAModel(nn.Module):
    """The network plus its (non-persistent) anchor buffers, so both move to the device together."""

    def __init__(self, net: VEGANet, bank: Optional[AnchorBank]) -> None:
        super().__init__()
        self.net = net
        self.bank = bank

    def forward(self, batch: Dict[str, Any], anchors: Optional[torch.Tensor] = None, scale: float = 100.0):
        inputs = {m: batch[m] for m in MODALITIES}
        return self.net(inputs, batch["speaker"], batch["mask"], anchors=anchors, anchor_scale=scale)


@TRAINER_REGISTRY.register()
class VEGA(TrainerBase):
    """VEGA-anchor trainer; see the module docstring."""

    TASK_TARGETS = {"single_label": {"label"}}
    find_unused_parameters = True  # switched-off losses leave heads / temperatures unused

    def precision_setting(self) -> str:
        return self.cfg.TRAINER.VEGA.PREC

    @classmethod
    def finalize_config(cls, cfg) -> None:
        super().finalize_config(cfg)
        if cfg.TEST.EVALUATOR == "Classification":
            cfg.TEST.EVALUATOR = "Conversation"
        if cfg.TRAINER.VEGA.PREDICT not in ("head", "anchor"):
            raise ConfigError(f"TRAINER.VEGA.PREDICT must be head or anchor, got {cfg.TRAINER.VEGA.PREDICT!r}")

    # ------------------------------------------------------------------ data
    def build_data(self) -> None:
        cfg = self.cfg
        cls = DATASET_REGISTRY.get(cfg.DATASET.NAME)
        if not (isinstance(cls, type) and issubclass(cls, ConversationFeatures)):
            raise ConfigError(
                f"trainer VEGA needs a conversation-features dataset (e.g. IEMOCAPFeatures), got {cfg.DATASET.NAME}"
            )
        dm = cls.features_from_cfg(cfg)
        if dm.task not in self.TASK_TARGETS:
            raise ConfigError(f"trainer VEGA does not support task {dm.task!r}")
        dm.require(self.TASK_TARGETS[dm.task])
        self.data = build_data_bundle(cfg, dm, dialogue_loaders, rank=self.rank, world_size=self.world_size,
                                      device=self.device)
        self.evaluator = self.build_evaluator()

    # ------------------------------------------------------------------ model
    def build_model(self) -> None:
        cfg, node = self.cfg, self.cfg.TRAINER.VEGA
        self.loss_settings = loss_settings_from_config(node)
        bank = None
        clip_dim = 0
        if node.ANCHOR_FILE:
            path = resolve_anchor_file(node.ANCHOR_FILE, cfg.DATASET.ROOT)
            if not os.path.isfile(path):
                raise CheckpointError(
                    f"anchor file not found: {node.ANCHOR_FILE} (looked from the working directory and under DATASET.ROOT "
                    f"{cfg.DATASET.ROOT}); build one with tools/build_anchors.py"
                )
            anchors = match_anchors(load_anchors(path), self.classnames, dim=int(node.CLIP_DIM), source=f"anchor file {path}")
            logger.info(f"anchors: {path}, {anchors.dim}-d, exemplars per class {describe(anchors)}")
            bank, clip_dim = AnchorBank(anchors), anchors.dim
        elif self.loss_settings.needs_anchors or node.PREDICT == "anchor":
            raise ConfigError("TRAINER.VEGA.ANCHOR_FILE is empty but the anchor losses or PREDICT anchor need anchors")
        weights = list(node.CLASS_WEIGHTS)
        if weights and len(weights) != self.num_classes:
            raise ConfigError(f"TRAINER.VEGA.CLASS_WEIGHTS has {len(weights)} values for {self.num_classes} classes")
        self.class_weights = torch.tensor(weights, dtype=torch.float32) if weights else None
        if int(node.HIDDEN) % int(node.HEADS):
            raise ConfigError(f"TRAINER.VEGA.HIDDEN {node.HIDDEN} is not divisible by HEADS {node.HEADS}")
        dm = self.dataset
        net = VEGANet(
            dm.dims, self.num_classes, dm.num_speakers, hidden=int(node.HIDDEN), heads=int(node.HEADS),
            n_layers=int(node.LAYERS), ff_dim=int(node.FF_DIM), clip_dim=clip_dim, temp_init=float(node.TEMP_INIT),
            learn_temp=bool(node.LEARN_TEMP), **vega_dropouts(node),
        )
        drops = vega_dropouts(node)
        logger.info(f"dropout: transformers {drops['dropout']}, heads {drops['head_dropout']}, "
                    f"anchor projections {drops['anchor_dropout']}")
        self.model = VEGAModel(net, bank)
        self.anchor_scale = float(node.ANCHOR_SCALE)
        self.exemplar_prob = float(node.EXEMPLAR_PROB)
        self.predict = str(node.PREDICT)
        self.register_model("vega", self.model)

    def build_hooks(self) -> List[HookBase]:
        hooks = super().build_hooks()
        patience = int(self.cfg.TRAINER.VEGA.PATIENCE)  # on the main metric, any gain counts (the released rule)
        return hooks + ([EarlyStoppingHook(None, patience, "max", 0.0)] if patience > 0 else [])

    # ------------------------------------------------------------------ steps
    def _bank(self) -> Optional[AnchorBank]:
        return self.model_without_ddp.bank

    def compute_loss(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        bank = self._bank()
        anchors = None
        if bank is not None and self.loss_settings.needs_anchors:
            use_exemplars = self.model.training and bool(torch.rand(()) < self.exemplar_prob)
            anchors = bank.select(use_exemplars)
        out = self.model(batch, anchors=anchors, scale=self.anchor_scale)
        temps = out["temperatures"]
        terms = vega_loss(out, batch["label_padded"], batch["mask"], temps, self.loss_settings, self.class_weights)
        terms["T_cls"] = torch.stack([temps[f"cls_{m}"] for m in MODALITIES]).mean().detach()
        terms["T_anchor"] = torch.stack([temps[f"anchor_{m}"] for m in MODALITIES]).mean().detach()
        return terms

    def inference(self, batch: Dict[str, Any]) -> torch.Tensor:
        """Logits [N, C] of the N real utterances of the batch (row-major order of ``mask``)."""
        if self.predict == "anchor":
            out = self.model(batch, anchors=self._bank().centers, scale=self.anchor_scale)
            logits = out["anchor_logits"]["all"]
        else:
            logits = self.model(batch)["logits"]["all"]
        return logits[batch["mask"]]
