"""Label-distribution-learning metrics and the ``LabelDistribution`` evaluator.

For a target distribution ``d`` and a predicted one ``p = softmax(logits)`` (both ``[C]``, sum 1),
per sample (the evaluator reports the mean over samples):

* ``kl_divergence``: ``KL(d || p) = sum_c d_c ln(d_c / p_c)`` (terms with ``d_c = 0`` are 0;
  ``p`` is clipped at 1e-12); lower is better;
* ``kl_divergence_class_mean``: the same divided by C (the per-class average, as the unofficial
  EW-MTCNN code reports "KL");
* ``chebyshev``: ``max_c |d_c - p_c|`` (lower is better);
* ``clark``: ``sqrt(sum_c (d_c - p_c)^2 / (d_c + p_c)^2)`` (lower is better);
* ``canberra``: ``sum_c |d_c - p_c| / (d_c + p_c)`` (lower is better);
  in Clark and Canberra a term with ``d_c + p_c = 0`` is 0;
* ``cosine``: ``d . p / (|d| |p|)`` (higher is better);
* ``intersection``: ``sum_c min(d_c, p_c)`` (higher is better);
* ``accuracy``: percentage of samples whose predicted class (argmax of the logits) is a dominant
  emotion of the target (a class of maximal target probability; ties all count).

Only ``accuracy`` is a percentage; the distances are plain values (logged without ``%``).
"""
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

EPS = 1e-12
#: metrics where a lower value is better
LOWER_IS_BETTER = ("kl_divergence", "kl_divergence_class_mean", "chebyshev", "clark", "canberra")


def _check(d: np.ndarray, p: np.ndarray) -> tuple:
    d = np.asarray(d, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if d.shape != p.shape or d.ndim != 2:
        raise ValueError(f"distributions must both be [N, C], got {d.shape} and {p.shape}")
    return d, p


def kl_divergence(d: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``[N]`` KL(d || p) per sample (natural log)."""
    d, p = _check(d, p)
    terms = np.where(d > 0, d * (np.log(np.where(d > 0, d, 1.0)) - np.log(np.clip(p, EPS, None))), 0.0)
    return terms.sum(1)


def chebyshev(d: np.ndarray, p: np.ndarray) -> np.ndarray:
    d, p = _check(d, p)
    return np.abs(d - p).max(1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def clark(d: np.ndarray, p: np.ndarray) -> np.ndarray:
    d, p = _check(d, p)
    return np.sqrt(_ratio((d - p) ** 2, (d + p) ** 2).sum(1))


def canberra(d: np.ndarray, p: np.ndarray) -> np.ndarray:
    d, p = _check(d, p)
    return _ratio(np.abs(d - p), d + p).sum(1)


def cosine(d: np.ndarray, p: np.ndarray) -> np.ndarray:
    d, p = _check(d, p)
    norm = np.linalg.norm(d, axis=1) * np.linalg.norm(p, axis=1)
    return _ratio((d * p).sum(1), norm)


def intersection(d: np.ndarray, p: np.ndarray) -> np.ndarray:
    d, p = _check(d, p)
    return np.minimum(d, p).sum(1)


def dominant_hit(d: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``[N]`` booleans: the argmax of ``scores`` is a class of maximal target probability."""
    d, scores = _check(d, scores)
    pred = scores.argmax(1)
    return np.isclose(d[np.arange(len(d)), pred], d.max(1), rtol=0.0, atol=1e-9)


def ldl_metrics(d: np.ndarray, logits: np.ndarray) -> "OrderedDict[str, float]":
    """All metrics of the module docstring (means over the N samples) for targets ``d`` ``[N, C]``."""
    d, logits = _check(d, logits)
    p = torch.from_numpy(logits).softmax(dim=1).numpy()
    n, c = d.shape
    out: "OrderedDict[str, float]" = OrderedDict()
    if n == 0:
        for k in ("accuracy", "kl_divergence", "kl_divergence_class_mean", "chebyshev", "clark", "canberra",
                  "cosine", "intersection"):
            out[k] = 0.0
        return out
    kl = kl_divergence(d, p)
    out["accuracy"] = 100.0 * float(dominant_hit(d, logits).mean())
    out["kl_divergence"] = float(kl.mean())
    out["kl_divergence_class_mean"] = float(kl.mean() / c)
    out["chebyshev"] = float(chebyshev(d, p).mean())
    out["clark"] = float(clark(d, p).mean())
    out["canberra"] = float(canberra(d, p).mean())
    out["cosine"] = float(cosine(d, p).mean())
    out["intersection"] = float(intersection(d, p).mean())
    return out


def targets_as_distribution(batch: Dict[str, Any], num_classes: int) -> Tensor:
    """``dist`` of a batch, else normalised multi-hot ``labels``, else one-hot ``label``. ``[B, C]``."""
    if "dist" in batch:
        return torch.as_tensor(batch["dist"]).float()
    if "labels" in batch:
        m = torch.as_tensor(batch["labels"]).float()
        return m / m.sum(1, keepdim=True).clamp_min(1e-12)
    if "label" in batch:
        label = torch.as_tensor(batch["label"]).long().view(-1)
        return torch.nn.functional.one_hot(label.clamp_min(0), num_classes).float()
    raise EmoLabError("the LabelDistribution evaluator needs 'dist', 'labels' or 'label' in the batch")


@EVALUATOR_REGISTRY.register()
class LabelDistribution(EvaluatorBase):
    """LDL metrics of softmax(logits) against the target distributions (module docstring).

    Logged lines: ``* accuracy: 71.3%`` then ``* kl_divergence: 0.1234`` etc.; main metric
    ``accuracy``. Without ``dist`` in the batch, the target is the (normalised) label set.
    """

    main_metric = "accuracy"

    def _targets_from(self, batch: Dict[str, Any]) -> Tensor:
        return targets_as_distribution(batch, self.num_classes)

    def metric_names(self) -> List[str]:
        return list(ldl_metrics(np.zeros((0, 2)), np.zeros((0, 2))))

    def plots(self, ctx: Any, results: Dict[str, float]) -> List[Optional[str]]:
        """``distributions_<split>.png`` (mean and a few samples' predicted vs true distributions), then the base figures."""
        from trainers.engine import plots as P

        out: List[Optional[str]] = []
        if self._logits:
            pred, true = torch.cat(self._logits).softmax(1), torch.cat(self._targets)
            out.append(P.plot_distributions(pred, true, self.classnames, ctx.directory, ctx.split, ctx.title, ctx.writer))
        return out + super().plots(ctx, results)

    def evaluate(self) -> "OrderedDict[str, float]":
        logits, d = self._collected()
        d = d.astype(np.float64).reshape(len(logits), self.num_classes)
        if len(d) == 0:
            logger.warning("evaluating on an empty set: all metrics are 0")
        results = ldl_metrics(d, logits)
        lines = OrderedDict([("total", f"{len(d):,}")])
        for k, v in results.items():
            lines[k] = pct(v) if k == "accuracy" else f"{v:.4f}"
        log_result(lines)
        self._state = {"total": len(d)}
        return results
