"""Two-stage dimensional (valence-arousal) emotion from categorical data (Lee et al., IEEE TCDS
2025; docs/METHODS.md, two-stage VA).

Four frameworks, ``TRAINER.VA.MODE`` x ``TRAINER.VA.TASK``:

* ``one_stage/single``: MSE between the predicted VA and the lexicon VA of each item's class
  (categorical data only; zero-shot VA on dimensional data);
* ``one_stage/multi``: ``ALPHA`` * CE (BCE for multi-label data) + (1 - ``ALPHA``) * MSE to the
  lexicon VA, on categorical data (paper: ALPHA 0.5);
* ``two_stage/single``: start from a stage-1 checkpoint (``STAGE1_CHECKPOINT``), freeze through
  ``MODEL.CNN.FREEZE_THROUGH`` (paper: layer3), MSE to the ground-truth VA;
* ``two_stage/multi``: as two_stage/single, plus the categorical items of
  ``CATEGORICAL_DATASET`` shuffled into the same batches: ``ALPHA`` * CE on the categorical items
  + (1 - ``ALPHA``) * MSE on the dimensional ones (paper: ALPHA 0.1). Each term is the mean over
  the items of its kind; a batch without one kind gets 0 for that term (never NaN). Without a
  categorical dataset, the main data's own labels feed the CE term.

Lexicon VA of categorical items: the class VA of ``label``; for multi-label data the mean over
the dominant categories of ``dist`` (or over the positive ``labels``). The model outputs
``[B, 2]`` VA, followed by ``[B, C]`` class logits in multi-task mode (when the class head's
classes are those of the evaluated data); the ``ValenceArousal`` evaluator reports the metrics.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import torch

from utils.errors import ConfigError
from datasets import DATASET_REGISTRY, check_images
from trainers.cnn.base import CNNTrainerBase
from trainers.engine.checkpoint import checkpoint_path, load_checkpoint
from trainers.engine.data import image_loaders
from trainers.components.nrc_vad import label_va
from trainers.evaluation.regression import ValenceArousal, class_va_from_config, higher_is_better
from trainers.registry import TRAINER_REGISTRY
from trainers.va_regression.common import (
    MODES, TASKS, VANet, as_categorical, as_dimensional, classification_loss, load_stage1, va_mse,
)

logger = logging.getLogger(__name__)


@TRAINER_REGISTRY.register()
class VARegression(CNNTrainerBase):
    """Valence-arousal regression trainer (module docstring)."""

    DEFAULT_BACKBONE = "resnet101"
    NODE = "VA"
    TASK_TARGETS = {"single_label": {"label"}, "multi_label": {"labels"}}

    @property
    def mode(self) -> str:
        return self.node().MODE

    @property
    def multi_task(self) -> bool:
        return self.node().TASK == "multi"

    def required_targets(self) -> set:
        node = self.node()
        if node.MODE not in MODES:
            raise ConfigError(f"TRAINER.VA.MODE must be one of {MODES}, got {node.MODE!r}")
        if node.TASK not in TASKS:
            raise ConfigError(f"TRAINER.VA.TASK must be one of {TASKS}, got {node.TASK!r}")
        if node.MODE == "two_stage":
            return {"va"}
        return set(self.TASK_TARGETS[self.task])

    # ------------------------------------------------------------------ data
    def build_data(self) -> None:
        super().build_data()
        node = self.node()
        self.head_classes = list(self.classnames)
        self.cat_multi_label = self.task == "multi_label"
        if node.CATEGORICAL_DATASET and not (node.MODE == "two_stage" and node.TASK == "multi"):
            logger.warning("TRAINER.VA.CATEGORICAL_DATASET is only used by two_stage/multi: ignored")
        if node.MODE != "two_stage" or node.TASK != "multi" or not node.CATEGORICAL_DATASET:
            return
        cat = DATASET_REGISTRY.get(node.CATEGORICAL_DATASET).from_config(self.cfg)
        self.cat_multi_label = cat.task == "multi_label"
        cat.require({"labels"} if self.cat_multi_label else {"label"})
        check_images(cat.train_x)
        self.head_classes = list(cat.classnames)
        items = as_dimensional(self.dataset.train_x) + as_categorical(cat.train_x, self.cat_multi_label)
        self.data.train_loader = image_loaders(len(self.head_classes))(items, True, self.data.options, self.tfm_train)
        logger.info(f"two_stage/multi: {len(self.dataset.train_x)} dimensional items of {self.dataset.name} mixed "
                    f"with {len(cat.train_x)} categorical items of {cat.name} ({len(self.head_classes)} classes)")

    def build_evaluator(self) -> ValenceArousal:
        node = self.node()
        self.class_va = class_va_from_config(self.cfg, self.classnames, required=node.MODE == "one_stage")
        main = node.VAL_METRIC if higher_is_better(node.VAL_METRIC) else "valence_pearson_r"
        if main != node.VAL_METRIC:
            logger.warning(f"TRAINER.VA.VAL_METRIC {node.VAL_METRIC} is lower-is-better: the best model uses {main}")
        return ValenceArousal(
            self.classnames, class_va=self.class_va, back_conversion=node.BACK_CONVERSION,
            center=node.BACK_CONVERSION_CENTER, task=self.task, main_metric=main, threshold=self.cfg.TEST.THRESHOLD,
        )

    # ------------------------------------------------------------------ model
    def build_model(self) -> None:
        node = self.node()
        if not 0.0 <= node.ALPHA <= 1.0:
            raise ConfigError(f"TRAINER.VA.ALPHA must be in [0, 1], got {node.ALPHA}")
        mid = float(node.LEXICON_OFFSET) + float(node.LEXICON_SCALE) / 2
        backbone = self.build_backbone(weights_from_checkpoint=node.MODE == "two_stage")  # stage 1 overwrites it
        n_cls = len(self.head_classes) if self.multi_task else 0
        self.model = VANet(backbone, n_cls, va_init=(mid, mid))
        if node.MODE == "two_stage":
            if not node.STAGE1_CHECKPOINT:
                raise ConfigError("TRAINER.VA.STAGE1_CHECKPOINT is empty: two_stage starts from a stage-1 run "
                                  "(give its OUTPUT_DIR or a checkpoint file)")
            load_stage1(self.model, node.STAGE1_CHECKPOINT)
        self.register_cnn("model", self.model, backbone, self.model.heads())

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """As the engine's; a class head trained on other classes (e.g. a multi-task stage-1 model
        from FI evaluated zero-shot on Emotion6) is loaded as it is, and only VA is evaluated."""
        if self.multi_task:
            w = load_checkpoint(checkpoint_path(directory, "model", epoch))["state_dict"].get("cls_head.weight")
            if w is not None and w.shape[0] != len(self.head_classes):
                logger.info(f"the checkpoint's class head has {w.shape[0]} classes, the data {self.num_classes}: "
                            "evaluating VA only")
                self.model_without_ddp.cls_head = torch.nn.Linear(w.shape[1], w.shape[0]).to(self.device)
                self.head_classes = [f"class{i}" for i in range(w.shape[0])]
        super().load_model(directory, epoch)

    def _va_targets(self, batch: Dict[str, Any]):
        """(targets ``[B, 2]``, mask ``[B]``): ground truth (two_stage) or lexicon VA of the classes."""
        if self.mode == "two_stage":
            va = batch["va"].float()
            return va, torch.isfinite(va).all(dim=1)
        cva = self.class_va.to(batch["img"].device)
        if self.task == "multi_label":
            return label_va(cva, labels=batch.get("labels"), dist=batch.get("dist"))
        return label_va(cva, label=batch["label"])

    def compute_loss(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        va_pred, logits = self.model(batch["img"])
        target, mask = self._va_targets(batch)
        mse = va_mse(va_pred, target, mask)
        if not self.multi_task:
            return {"loss": mse, "mse": mse}
        if self.cat_multi_label:
            cls = classification_loss(logits, None, batch["labels"])
        else:
            cls = classification_loss(logits, batch["label"], None)
        alpha = float(self.node().ALPHA)
        return {"loss": alpha * cls + (1.0 - alpha) * mse, "mse": mse, "cls": cls}

    def inference(self, batch: Dict[str, Any]) -> torch.Tensor:
        """``[B, 2]`` VA, or ``[B, 2 + C]`` with the class logits when the head has the data's classes."""
        va, logits = self.model(batch["img"])
        if logits is not None and self.head_classes == list(self.classnames):
            return torch.cat([va, logits], dim=1)
        return va
