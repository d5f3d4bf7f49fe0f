"""Multi-label metrics: mAP, recall@k, hit@k and thresholded F1 / precision / recall.

Definitions (all values are percentages):

* ``mAP``: mean over the classes with at least one positive sample of the average precision
  of the sigmoid scores, computed exactly as ``sklearn.metrics.average_precision_score``
  (tied scores form one threshold; AP = sum_n (R_n - R_{n-1}) P_n). Classes without a
  positive are skipped (their AP is undefined). Ranking uses the logits, which order samples
  exactly as the sigmoid scores do but cannot saturate into spurious ties.
* ``recall@k``: pooled over the set, (true labels ranked in the top k) / (true labels).
* ``hit@k``: share of samples that have at least one true label in the top k, over the
  samples with at least one true label. EmoCoOp's paper and released code call hit@2
  "Recall@2"; its 82.21% headline number is this hit rate, not ``recall@2``.
* ``micro_precision``, ``micro_recall``, ``micro_f1``: predictions = sigmoid(logit) > THRESHOLD,
  counts pooled over all (sample, class) pairs.
* ``macro_f1``: mean per-class F1 at the same threshold over the classes with a positive
  (as ``f1_score(..., average="macro", labels=<classes with a positive>, zero_division=0)``).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from utils.errors import ConfigError, EmoLabError

from .base import EVALUATOR_REGISTRY, EvaluatorBase, log_result, pct

logger = logging.getLogger(__name__)


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Average precision (fraction) of one class, as sklearn's ``average_precision_score``.

    Args:
        scores: ``[N]`` scores, higher = more likely positive.
        positives: ``[N]`` booleans.
    Returns NaN when there is no positive.
    """
    positives = positives.astype(bool)
    n_pos = int(positives.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positives[order]
    tp = np.cumsum(y)
    # the last position of each run of equal scores is one threshold
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp = tp[last].astype(np.float64)
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def topk_metrics(scores: np.ndarray, targets: np.ndarray, k: int) -> tuple[float, float]:
    """``(recall@k, hit@k)`` as fractions for ``[N, C]`` scores and ``[N, C]`` 0/1 targets."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="mergesort")[:, :k]
    hits = np.take_along_axis(targets, top, axis=1).sum(1)
    n_true = targets.sum(1)
    has_true = n_true > 0
    recall = float(hits.sum() / n_true.sum()) if n_true.sum() > 0 else 0.0
    hit = float((hits[has_true] > 0).mean()) if has_true.any() else 0.0
    return recall, hit


def threshold_metrics(pred: np.ndarray, targets: np.ndarray) -> "OrderedDict[str, float]":
    """Micro F1 / precision / recall and macro F1 (fractions) of 0/1 ``[N, C]`` predictions."""
    tp = (pred & targets).sum(0).astype(np.float64)
    fp = (pred & ~targets).sum(0).astype(np.float64)
    fn = (~pred & targets).sum(0).astype(np.float64)
    TP, FP, FN = tp.sum(), fp.sum(), fn.sum()
    out: "OrderedDict[str, float]" = OrderedDict()
    out["micro_f1"] = 2 * TP / (2 * TP + FP + FN) if TP + FP + FN > 0 else 0.0
    present = targets.sum(0) > 0
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    out["macro_f1"] = float(f1[present].mean()) if present.any() else 0.0
    out["micro_precision"] = TP / (TP + FP) if TP + FP > 0 else 0.0
    out["micro_recall"] = TP / (TP + FN) if TP + FN > 0 else 0.0
    return out


@EVALUATOR_REGISTRY.register()
class MultiLabel(EvaluatorBase):
    """Multi-label evaluator (see the module docstring for the metric definitions).

    Scores are ``sigmoid(logits)``. Returned keys, in order: ``mAP``, ``recall@k`` for each k,
    ``hit@k`` for each k, ``micro_f1``, ``macro_f1``, ``micro_precision``, ``micro_recall``.
    ``state()`` holds ``per_class_ap`` (classname -> AP %, None without a positive).
    Single-label batches (``"label"`` only) are evaluated as one-hot targets.
    """

    main_metric = "mAP"

    def __init__(
        self,
        classnames: List[str],
        threshold: float = 0.5,
        topk: Sequence[int] = (1, 2, 3),
        per_class: bool = False,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"TEST.THRESHOLD must be in [0, 1] (a sigmoid score), got {threshold}")
        if not topk or any(int(k) < 1 for k in topk):
            raise ConfigError(f"TEST.TOPK must be positive integers, got {tuple(topk)}")
        from .topk import check_topk

        check_topk(topk, len(classnames))
        self.threshold = float(threshold)
        self.topk = tuple(dict.fromkeys(int(k) for k in topk))
        self.per_class = per_class
        super().__init__(classnames, **kwargs)

    def _targets_from(self, batch: Dict[str, Any]) -> Tensor:
        if "labels" in batch:
            return torch.as_tensor(batch["labels"]).float() > 0.5
        if "label" in batch:
            label = torch.as_tensor(batch["label"]).long().view(-1)
            return torch.nn.functional.one_hot(label, self.num_classes).bool()
        raise EmoLabError("the MultiLabel evaluator needs a 'labels' (multi-hot) entry in the batch")

    def plots(self, ctx: Any, results: Dict[str, float]) -> List[Optional[str]]:
        """``pr_curves_<split>.png`` (a precision-recall curve per class), then the base figures."""
        from trainers.engine import plots as P

        out: List[Optional[str]] = []
        if self._logits:
            scores, positives = torch.cat(self._logits).sigmoid(), torch.cat(self._targets).float()
            out.append(P.plot_pr_curves(scores, positives, self.classnames, ctx.directory, ctx.split, ctx.title, ctx.writer))
        return out + super().plots(ctx, results)

    def evaluate(self) -> "OrderedDict[str, float]":
        logits, targets = self._collected()
        targets = targets.astype(bool).reshape(len(logits), self.num_classes)
        # sigmoid is monotonic: rank by the logits (no float saturation ties), threshold the sigmoid
        scores = logits
        probs = torch.from_numpy(logits).sigmoid().numpy()
        n = len(scores)
        if n == 0:
            logger.warning("evaluating on an empty set: all metrics are 0")
        ap = np.array([average_precision(scores[:, c], targets[:, c]) for c in range(self.num_classes)])
        valid = ~np.isnan(ap)
        skipped = [self.classnames[c] for c in np.flatnonzero(~valid)]
        if skipped and n:
            logger.info(f"mAP skips {len(skipped)} classes without a positive sample: {', '.join(skipped)}")

        results: "OrderedDict[str, float]" = OrderedDict()
        results["mAP"] = 100.0 * float(ap[valid].mean()) if valid.any() else 0.0
        hits: Dict[str, float] = {}
        for k in self.topk:
            recall, hit = topk_metrics(scores, targets, k) if n else (0.0, 0.0)
            results[f"recall@{k}"] = 100.0 * recall
            hits[f"hit@{k}"] = 100.0 * hit
        results.update(hits)
        for key, v in threshold_metrics(probs > self.threshold, targets).items():
            results[key] = 100.0 * float(v)

        log_result(OrderedDict([("total", f"{n:,}")] + [(k, pct(v)) for k, v in results.items()]))
        per_class_ap = {
            name: (100.0 * float(a) if ok else None) for name, a, ok in zip(self.classnames, ap, valid)
        }
        if self.per_class:
            logger.info("=> per-class result")
            for c, name in enumerate(self.classnames):
                a = per_class_ap[name]
                shown = pct(a) if a is not None else "n/a (no positive)"
                logger.info(f"* class: {c} ({name})\tpositives: {int(targets[:, c].sum()):,}\tAP: {shown}")
        self._state = {
            "per_class_ap": per_class_ap,
            "skipped_classes": skipped,
            "total": n,
            "threshold": self.threshold,
        }
        return results
