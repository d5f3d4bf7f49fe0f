"""EW-MTCNN: emotion-wheel prior + multi-task CNN for emotion distribution learning
(Lai, Wan, Zeng 2022; docs/METHODS.md, EW-MTCNN).

Model: CNN features -> ``Linear(D, C)`` class scores -> prior layer ``W`` (``C x C``, no bias;
:mod:`trainers.components.emotion_wheel`) -> logits. Loss, with ``p = softmax(logits)``, ``y`` the
dominant class and ``d`` the target distribution::

    (1 - LAMBDA) * CE(logits, y) + LAMBDA * KL(d || p)

(KL per sample, averaged over the batch). Data without a ``dist`` target trains with
``LAMBDA = 0`` only. Evaluation: the ``LabelDistribution`` evaluator (accuracy against the
dominant emotion, KL per sample and per class, Chebyshev, Clark, Canberra, cosine,
intersection) when the data has distributions, else ``Classification``.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.errors import ConfigError
from configs.registry import register_config
from trainers.cnn.backbones import CNNBackbone
from trainers.cnn.base import CNNTrainerBase, add_early_stop_keys
from trainers.components.emotion_wheel import EmotionWheelPrior, build_prior, parse_pairs
from trainers.evaluation import EVALUATOR_REGISTRY, build_evaluator
from trainers.registry import TRAINER_REGISTRY

logger = logging.getLogger(__name__)


@register_config
def add_ewmtcnn_config(cfg) -> None:
    from yacs.config import CfgNode as CN

    cfg.TRAINER.EWMTCNN = CN()
    cfg.TRAINER.EWMTCNN.PRIOR_INIT = "wheel"  # wheel | identity | random | label_correlation | none
    cfg.TRAINER.EWMTCNN.PRIOR_TRAINABLE = False  # train the prior layer (False = frozen)
    cfg.TRAINER.EWMTCNN.SIGMA = 0.6  # width of the Gaussian over wheel distances (init wheel)
    cfg.TRAINER.EWMTCNN.LAMBDA = 0.7  # loss = (1 - LAMBDA) CE + LAMBDA KL(target || prediction)
    cfg.TRAINER.EWMTCNN.WHEEL_MAPPING = ()  # "class:wheel emotion" for classes not named as on Mikels' wheel
    add_early_stop_keys(cfg.TRAINER.EWMTCNN, "accuracy", 0)


def ewmtcnn_loss(logits: torch.Tensor, label: torch.Tensor, dist: Optional[torch.Tensor], lam: float) -> Dict[str, torch.Tensor]:
    """``{"loss", "ce", "kl"}`` for logits ``[B, C]``, dominant labels ``[B]``, targets ``[B, C]`` or None."""
    logits = logits.float()
    ce = F.cross_entropy(logits, label)
    if dist is None:
        return {"loss": ce, "ce": ce}
    logp = F.log_softmax(logits, dim=1)
    d = dist.float()
    kl = (torch.xlogy(d, d) - d * logp).sum(1).mean()
    return {"loss": (1.0 - lam) * ce + lam * kl, "ce": ce, "kl": kl}


class EWMTCNNNet(nn.Module):
    """images ``[B, 3, H, W]`` -> logits ``[B, C]`` = prior(classifier(backbone(images)))."""

    def __init__(self, backbone: CNNBackbone, num_classes: int, prior: Optional[EmotionWheelPrior]) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(backbone.out_dim, num_classes)
        self.prior = prior if prior is not None else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.prior(self.classifier(self.backbone(images)))


@TRAINER_REGISTRY.register()
class EWMTCNN(CNNTrainerBase):
    """EW-MTCNN (module docstring); single-label data with label distributions."""

    DEFAULT_BACKBONE = "vgg19_bn"
    NODE = "EWMTCNN"
    TASK_TARGETS = {"single_label": {"label"}}

    def required_targets(self) -> set:
        return {"dist"} if self.node().LAMBDA > 0 else {"label"}

    def build_evaluator(self):
        if "dist" in self.dataset.targets:
            return EVALUATOR_REGISTRY.get("LabelDistribution").from_config(self.cfg, self.classnames)
        return build_evaluator(self.cfg, self.classnames, self.task)

    def build_model(self) -> None:
        node = self.node()
        if not 0.0 <= node.LAMBDA <= 1.0:
            raise ConfigError(f"TRAINER.EWMTCNN.LAMBDA must be in [0, 1], got {node.LAMBDA}")
        self.lam = float(node.LAMBDA)  # read once: the loss mix of every step
        dists = None
        if node.PRIOR_INIT == "label_correlation":  # training distributions (one-hot labels where none)
            eye = torch.eye(self.num_classes)
            dists = [d.dist if d.dist is not None else eye[d.label].tolist() for d in self.dataset.train_x]
        prior = build_prior(
            node.PRIOR_INIT, self.classnames, parse_pairs(node.WHEEL_MAPPING, "TRAINER.EWMTCNN.WHEEL_MAPPING"),
            sigma=node.SIGMA, trainable=node.PRIOR_TRAINABLE, train_dists=dists,
        )
        logger.info(f"emotion-wheel prior: {node.PRIOR_INIT}" + (f" ({prior.extra_repr()})" if prior is not None else ""))
        backbone = self.build_backbone()
        self.model = EWMTCNNNet(backbone, self.num_classes, prior)
        heads = [self.model.classifier] + ([prior] if prior is not None else [])
        self.register_cnn("model", self.model, backbone, heads)

    def compute_loss(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        logits = self.model(batch["img"])
        dist = batch.get("dist")
        label = batch.get("label")
        if dist is not None:  # the dominant emotion where an item has no label
            label = dist.argmax(dim=1) if label is None else torch.where(label >= 0, label, dist.argmax(dim=1))
        return ewmtcnn_loss(logits, label, dist, self.lam)
