"""Single-label classification with top-k accuracy (``ClassificationTopK``).

Everything :class:`Classification` reports (``accuracy`` is the top-1 accuracy) plus
``top{k}_accuracy`` for each k > 1 in ``TEST.TOPK``: the percentage of samples whose true class
is among the k highest logits (ties broken by ``torch.topk``, as ``timm.utils.accuracy``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, List, Sequence

import numpy as np
import torch

from utils.errors import ConfigError

from .base import EVALUATOR_REGISTRY, log_result, pct
from .classification import Classification


def topk_accuracy(logits: np.ndarray, y_true: np.ndarray, k: int) -> float:
    """Percentage of rows of ``logits [N, C]`` whose label ``y_true [N]`` is among the top ``k``."""
    if len(y_true) == 0:
        return 0.0
    k = min(k, logits.shape[1])
    top = torch.topk(torch.as_tensor(logits), k, dim=1).indices.numpy()
    return float(100.0 * (top == y_true[:, None]).any(axis=1).mean())


def check_topk(ks: Sequence[int], num_classes: int) -> None:
    """A k beyond the class count is a metric every model scores 100 on: one line naming it instead."""
    over = [int(k) for k in ks if int(k) > num_classes]
    if over:
        raise ConfigError(f"TEST.TOPK holds {over[0]} but the dataset has {num_classes} classes: top-{over[0]} "
                          f"would be 100% for any model (use values up to {num_classes})")


@EVALUATOR_REGISTRY.register()
class ClassificationTopK(Classification):
    """:class:`Classification` plus ``top{k}_accuracy`` for k in ``topk`` (k > 1)."""

    def __init__(self, classnames: List[str], topk: Sequence[int] = (1, 3), **kwargs: Any) -> None:
        self.ks = sorted({int(k) for k in topk if int(k) > 1})
        check_topk(self.ks, len(classnames))
        super().__init__(classnames, **kwargs)

    def evaluate(self) -> "OrderedDict[str, float]":
        results = super().evaluate()
        logits, y_true = self._collected()
        extra = OrderedDict((f"top{k}_accuracy", topk_accuracy(logits, y_true.astype(np.int64), k)) for k in self.ks)
        log_result(OrderedDict((k, pct(v)) for k, v in extra.items()), header="=> top-k")
        results.update(extra)
        return results
