"""Single-label classification metrics (Dassl's ``Classification`` evaluator)."""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from utils.errors import EmoLabError

from .base import EVALUATOR_REGISTRY, EvaluatorBase, log_result, pct

logger = logging.getLogger(__name__)


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``[C, C]`` counts; row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def macro_f1_from_confusion(cm: np.ndarray, classes: np.ndarray) -> float:
    """Mean F1 (fraction) over ``classes``; a class never predicted nor true has F1 0."""
    if len(classes) == 0:
        return 0.0
    tp = np.diag(cm)[classes].astype(np.float64)
    fp = cm[:, classes].sum(0) - tp
    fn = cm[classes, :].sum(1) - tp
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1.mean())


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Accuracy, error, macro-F1, balanced accuracy, per-class accuracy, confusion matrix.

    Prediction = argmax of the logits. Values are percentages. ``macro_f1`` and
    ``balanced_accuracy`` (mean per-class accuracy, Dassl's "average" of the per-class
    block) average over the classes present in the ground truth, as Dassl does
    (``f1_score(..., average="macro", labels=np.unique(y_true))``).

    Logged lines (readable by CoOp's ``parse_test_res.py``)::

        => result
        * total: 1,000
        * correct: 713
        * accuracy: 71.3%
        * error: 28.7%
        * macro_f1: 65.2%
        * balanced_accuracy: 66.0%

    ``state()`` holds ``per_class`` (always) and, with ``compute_cmat``, ``confusion_matrix``
    (counts, rows = true class) and ``confusion_matrix_normalized`` (rows sum to 1).
    """

    main_metric = "accuracy"

    def __init__(
        self, classnames: List[str], per_class: bool = False, compute_cmat: bool = False, **kwargs: Any
    ) -> None:
        self.per_class = per_class
        self.compute_cmat = compute_cmat
        super().__init__(classnames, **kwargs)

    def _targets_from(self, batch: Dict[str, Any]) -> Tensor:
        if "label" in batch:
            return torch.as_tensor(batch["label"]).long().view(-1)
        for key in ("dist", "labels"):  # distributions / multi-hot: the dominant class
            if key in batch:
                return torch.as_tensor(batch[key]).float().argmax(dim=1)
        raise EmoLabError("the Classification evaluator needs a 'label' entry in the batch")

    def plots(self, ctx: Any, results: Dict[str, float]) -> List[Optional[str]]:
        """``confusion_matrix_<split>.png`` (+ ``.csv``), ``cmat.pt`` with ``compute_cmat``, then the base figures."""
        from trainers.engine import plots as P

        out: List[Optional[str]] = []
        if self._logits:
            pred, true = torch.cat(self._logits).argmax(1), torch.cat(self._targets)
            out.append(P.plot_confusion(pred, true, self.classnames, ctx.directory, ctx.split, ctx.title, ctx.writer))
            if self.compute_cmat:
                out.append(P.save_cmat(pred, true, self.num_classes, ctx.output_dir))
        return out + super().plots(ctx, results)

    def evaluate(self) -> "OrderedDict[str, float]":
        logits, y_true = self._collected()
        y_true = y_true.astype(np.int64)
        total = len(y_true)
        if total and (y_true.min() < 0 or y_true.max() >= self.num_classes):
            raise EmoLabError(f"labels outside [0, {self.num_classes - 1}] in the evaluation data")
        y_pred = logits.argmax(1) if total else np.zeros(0, dtype=np.int64)
        correct = int((y_pred == y_true).sum())
        cm = confusion_counts(y_true, y_pred, self.num_classes)
        present = np.flatnonzero(cm.sum(1) > 0)
        if total == 0:
            logger.warning("evaluating on an empty set: all metrics are 0")
        acc = 100.0 * correct / total if total else 0.0
        support = cm.sum(1)
        class_acc = np.divide(100.0 * np.diag(cm), support, out=np.zeros(self.num_classes), where=support > 0)

        results: "OrderedDict[str, float]" = OrderedDict()
        results["accuracy"] = acc
        results["error"] = 100.0 - acc if total else 0.0
        results["macro_f1"] = 100.0 * macro_f1_from_confusion(cm, present)
        results["balanced_accuracy"] = float(class_acc[present].mean()) if len(present) else 0.0

        log_result(
            OrderedDict(
                [("total", f"{total:,}"), ("correct", f"{correct:,}")]
                + [(k, pct(v)) for k, v in results.items()]
            )
        )
        per_class = [
            {"label": c, "classname": self.classnames[c], "total": int(support[c]),
             "correct": int(cm[c, c]), "accuracy": float(class_acc[c])}
            for c in present
        ]
        if self.per_class:
            logger.info("=> per-class result")
            for r in per_class:
                logger.info(
                    f"* class: {r['label']} ({r['classname']})\ttotal: {r['total']:,}\t"
                    f"correct: {r['correct']:,}\tacc: {r['accuracy']:.1f}%"
                )
            logger.info(f"* average: {pct(results['balanced_accuracy'])}")
        self._state = {"per_class": per_class, "total": total, "correct": correct}
        if self.compute_cmat:
            rows = np.maximum(support, 1)[:, None]
            self._state["confusion_matrix"] = cm.tolist()
            self._state["confusion_matrix_normalized"] = (cm / rows).tolist()
            self._state["classnames"] = list(self.classnames)
        return results
