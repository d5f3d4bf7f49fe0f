"""Metrics of emotion recognition in conversation (``Conversation`` evaluator).

Computed over real (non-padded) utterances: targets of -1 are padding and are dropped.
Values are percentages, as sklearn would give them times 100:

* ``weighted_f1``        = sum_c (n_c / N) F1_c          (``f1_score(average="weighted")``; main metric)
* ``accuracy``           = correct / N                   (true accuracy)
* ``weighted_precision`` = sum_c (n_c / N) precision_c   (``precision_score(average="weighted")``; what
  the released VEGA code logs as "acc"); a class never predicted has precision 0
* ``macro_f1``           = mean F1 over the classes present in the ground truth
* ``f1_<class>``         = F1 of each class (0 for a class neither true nor predicted)
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from typing import Any, Dict, List

import numpy as np
import torch
from torch import Tensor

from utils.errors import EmoLabError

from .base import EVALUATOR_REGISTRY, EvaluatorBase, log_result, pct
from .classification import confusion_counts

logger = logging.getLogger(__name__)


def metric_name(classname: str) -> str:
    """``f1_<classname>`` with characters outside [A-Za-z0-9_.-] replaced by "_"."""
    return "f1_" + re.sub(r"[^A-Za-z0-9_.\-]", "_", classname)


def conversation_metrics(cm: np.ndarray) -> Dict[str, Any]:
    """Fractions (not %) from a confusion matrix ``cm`` [C, C] (rows true, columns predicted)."""
    support = cm.sum(1).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    tp = np.diag(cm).astype(np.float64)
    total = support.sum()
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    share = support / total if total else np.zeros_like(support)
    present = support > 0
    return {
        "weighted_f1": float((share * f1).sum()),
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "weighted_precision": float((share * precision).sum()),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "f1": f1,
        "support": support,
    }


@EVALUATOR_REGISTRY.register()
class Conversation(EvaluatorBase):
    """Weighted F1, accuracy, weighted precision, macro F1 and per-class F1 (see the module docstring)."""

    main_metric = "weighted_f1"

    def __init__(self, classnames: List[str], compute_cmat: bool = False, **kwargs: Any) -> None:
        self.compute_cmat = compute_cmat
        kwargs.pop("per_class", None)  # per-class F1 is always reported
        super().__init__(classnames, **kwargs)

    def _targets_from(self, batch: Dict[str, Any]) -> Tensor:
        if "label" not in batch:
            raise EmoLabError("the Conversation evaluator needs a 'label' entry in the batch")
        return torch.as_tensor(batch["label"]).long().view(-1)

    def evaluate(self) -> "OrderedDict[str, float]":
        logits, y_true = self._collected()
        y_true = y_true.astype(np.int64)
        real = y_true >= 0
        logits, y_true = logits[real], y_true[real]
        total = len(y_true)
        if total and y_true.max() >= self.num_classes:
            raise EmoLabError(f"labels outside [0, {self.num_classes - 1}] in the evaluation data")
        if total == 0:
            logger.warning("evaluating on an empty set: all metrics are 0")
        y_pred = logits.argmax(1) if total else np.zeros(0, dtype=np.int64)
        cm = confusion_counts(y_true, y_pred, self.num_classes)
        m = conversation_metrics(cm)
        results: "OrderedDict[str, float]" = OrderedDict(
            (k, 100.0 * m[k]) for k in ("weighted_f1", "accuracy", "weighted_precision", "macro_f1")
        )
        correct = int(np.trace(cm))
        lines = [("total", f"{total:,}"), ("correct", f"{correct:,}")] + [(k, pct(v)) for k, v in results.items()]
        log_result(OrderedDict(lines))
        logger.info("=> per-class F1")
        for c, name in enumerate(self.classnames):
            results[metric_name(name)] = 100.0 * float(m["f1"][c])
            logger.info(f"* {metric_name(name)}: {pct(results[metric_name(name)])}\tsupport: {int(m['support'][c]):,}")
        self._state = {
            "per_class": [
                {"label": c, "classname": n, "total": int(m["support"][c]), "f1": 100.0 * float(m["f1"][c])}
                for c, n in enumerate(self.classnames)
            ],
            "total": total,
            "correct": correct,
        }
        if self.compute_cmat:
            self._state["confusion_matrix"] = cm.tolist()
            self._state["classnames"] = list(self.classnames)
        return results
