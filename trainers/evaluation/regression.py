"""Valence-arousal regression metrics and the ``ValenceArousal`` evaluator.

For predictions ``x`` and targets ``y`` of one dimension (valence, then arousal):

* ``pearson_r`` and ``pearson_p`` (two-sided p-value), as ``scipy.stats.pearsonr``;
* ``spearman_rho``, as ``scipy.stats.spearmanr``;
* ``ccc``: Lin's concordance correlation ``2 cov(x, y) / (var x + var y + (mean x - mean y)^2)``
  with population moments;
* ``mse`` and ``mae``.

A correlation is 0 (p-value 1) when either side is constant or there are fewer than 2 samples.
Keys are ``valence_<metric>`` and ``arousal_<metric>`` (plain values, not percentages), plus
percentages when classes can be checked:

* ``va_class_accuracy``: the predicted VA converted back to the closest category (cosine or
  Euclidean, :mod:`trainers.components.nrc_vad`) is a true class of the sample (its label; the
  dominant classes of its distribution; or, for multi-label data, one of its labels);
* ``class_accuracy``: the argmax of the class logits (multi-task models) is a true class;
* ``class_weighted_jaccard`` (multi-label data, multi-task models): Jaccard index per class of
  ``sigmoid(logits) > threshold`` against the labels, averaged with the classes' support as
  weights (``sklearn.metrics.jaccard_score(average="weighted")``).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from utils.errors import ConfigError, EmoLabError
from trainers.components.nrc_vad import dominant_mask, label_va, lexicon_class_va, va_to_class

from .base import EVALUATOR_REGISTRY, EvaluatorBase, log_result, pct

logger = logging.getLogger(__name__)

DIM_METRICS = ("pearson_r", "pearson_p", "spearman_rho", "ccc", "mse", "mae")
#: metric-name endings where a lower value is better
LOWER_IS_BETTER_SUFFIXES = ("_mse", "_mae", "_pearson_p")


def _constant(v: np.ndarray) -> bool:
    return len(v) < 2 or bool(np.all(v == v[0]))


def pearson(x: np.ndarray, y: np.ndarray) -> tuple:
    """``(r, two-sided p)``; ``(0, 1)`` for constant input."""
    from scipy import stats

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if _constant(x) or _constant(y):
        return 0.0, 1.0
    r, p = stats.pearsonr(x, y)
    return float(r), float(p)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy import stats

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if _constant(x) or _constant(y):
        return 0.0
    return float(stats.spearmanr(x, y)[0])


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's concordance correlation coefficient (population moments)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) == 0:
        return 0.0
    cov = ((x - x.mean()) * (y - y.mean())).mean()
    den = x.var() + y.var() + (x.mean() - y.mean()) ** 2
    return float(2 * cov / den) if den > 0 else 0.0


def dimension_metrics(pred: np.ndarray, target: np.ndarray) -> "OrderedDict[str, float]":
    """The :data:`DIM_METRICS` of one dimension (``[N]`` predictions and targets)."""
    out: "OrderedDict[str, float]" = OrderedDict()
    r, p = pearson(pred, target)
    out["pearson_r"], out["pearson_p"] = r, p
    out["spearman_rho"] = spearman(pred, target)
    out["ccc"] = ccc(pred, target)
    err = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    out["mse"] = float((err**2).mean()) if len(err) else 0.0
    out["mae"] = float(np.abs(err).mean()) if len(err) else 0.0
    return out


def weighted_jaccard(pred: np.ndarray, target: np.ndarray) -> float:
    """Support-weighted mean over classes of TP / (TP + FP + FN) for ``[N, C]`` 0/1 arrays (fraction)."""
    pred, target = pred.astype(bool), target.astype(bool)
    tp = (pred & target).sum(0).astype(np.float64)
    den = tp + (pred & ~target).sum(0) + (~pred & target).sum(0)
    j = np.divide(tp, den, out=np.zeros_like(tp), where=den > 0)
    support = target.sum(0).astype(np.float64)
    return float((j * support).sum() / support.sum()) if support.sum() > 0 else 0.0


def higher_is_better(metric: str) -> bool:
    from .ldl import LOWER_IS_BETTER

    return not (metric in LOWER_IS_BETTER or metric.endswith(LOWER_IS_BETTER_SUFFIXES) or metric == "error")


@EVALUATOR_REGISTRY.register()
class ValenceArousal(EvaluatorBase):
    """VA metrics (module docstring) of model outputs ``[B, 2]`` (valence, arousal) or
    ``[B, 2 + C]`` (then class logits).

    Args:
        classnames: the C classes of the evaluated data.
        class_va: ``[C, 2]`` category VA for back-conversion and for targets of batches without
            ``va`` (then the lexicon VA of the labels, see :func:`label_va`); None = neither.
        back_conversion: ``cosine`` | ``euclidean``; center: subtracted before cosine similarity.
        task: ``single_label`` (true class = label, else dominant classes) | ``multi_label`` (labels).
        main_metric: the key used for best-model selection (higher must be better).
        threshold: sigmoid threshold of ``class_weighted_jaccard``.
    """

    def __init__(self, classnames: List[str], class_va: Optional[Sequence[Sequence[float]]] = None,
                 back_conversion: str = "cosine", center: float = 0.0, task: str = "single_label",
                 main_metric: str = "valence_pearson_r", threshold: float = 0.5, **kwargs: Any) -> None:
        self.class_va = torch.as_tensor(class_va, dtype=torch.float32) if class_va is not None else None
        self.back_conversion, self.center, self.task = back_conversion, float(center), task
        self.main_metric, self.threshold = main_metric, float(threshold)
        self._warned = False
        super().__init__(classnames, **kwargs)

    def reset(self) -> None:
        super().reset()
        self._rows: Dict[str, List[Tensor]] = {"out": [], "va": [], "pos": []}

    def _positives(self, batch: Dict[str, Any]) -> Optional[Tensor]:
        """``[B, C]`` true classes of each sample, or None when the batch has no class targets."""
        c = self.num_classes
        if self.task == "multi_label" and "labels" in batch:
            return torch.as_tensor(batch["labels"]).float() > 0.5
        if "label" in batch:
            label = torch.as_tensor(batch["label"]).long().view(-1)
            return torch.nn.functional.one_hot(label.clamp_min(0), c).bool() & (label >= 0)[:, None]
        if "dist" in batch:
            return dominant_mask(torch.as_tensor(batch["dist"]).float())
        if "labels" in batch:
            return torch.as_tensor(batch["labels"]).float() > 0.5
        return None

    def _va_targets(self, batch: Dict[str, Any], pos: Optional[Tensor]) -> Tensor:
        if "va" in batch:
            return torch.as_tensor(batch["va"]).float()
        if self.class_va is None or pos is None:
            raise EmoLabError("the ValenceArousal evaluator needs 'va' targets (or class labels and a lexicon)")
        if not self._warned:
            logger.info("no VA targets in the evaluation data: using the lexicon VA of the labels")
            self._warned = True
        dist = torch.as_tensor(batch["dist"]).float() if "dist" in batch and self.task != "multi_label" else None
        return label_va(self.class_va, labels=pos.float() if dist is None else None, dist=dist)[0]

    def process(self, outputs: Tensor, batch: Dict[str, Any]) -> None:
        outputs = outputs.detach().float().cpu()
        if outputs.dim() != 2 or outputs.shape[1] not in (2, 2 + self.num_classes):
            raise EmoLabError(f"ValenceArousal: outputs of shape {tuple(outputs.shape)}, expected [B, 2] or "
                              f"[B, {2 + self.num_classes}]")
        pos = self._positives(batch)
        va = self._va_targets(batch, pos)
        index = batch.get("index")
        keep = list(range(len(outputs)))
        if index is not None:  # a sample already processed is not counted twice
            keep = []
            for i, idx in enumerate(torch.as_tensor(index).view(-1).tolist()):
                if idx not in self._seen:
                    self._seen.add(idx)
                    keep.append(i)
        k = torch.tensor(keep, dtype=torch.long)
        self._rows["out"].append(outputs[k])
        self._rows["va"].append(va[k])
        self._rows["pos"].append(pos[k] if pos is not None else torch.zeros(len(k), 0, dtype=torch.bool))

    def metric_names(self) -> List[str]:
        names = [f"{d}_{m}" for d in ("valence", "arousal") for m in DIM_METRICS]
        if self.class_va is not None:
            names.append("va_class_accuracy")
        return names + ["class_accuracy", "class_weighted_jaccard"]

    def describe(self, outputs: Tensor, task: str, threshold: float) -> List[Dict[str, Any]]:
        """``valence`` / ``arousal`` of each row (the model's two regression outputs)."""
        return [{"valence": float(row[0]), "arousal": float(row[1])} for row in outputs]

    def plots(self, ctx: Any, results: Dict[str, float]) -> List[Optional[str]]:
        """``va_scatter_<split>.png`` (predicted vs true valence and arousal), then the base figures."""
        from trainers.engine import plots as P

        out: List[Optional[str]] = []
        if self._rows["out"]:
            pred, true = torch.cat(self._rows["out"])[:, :2], torch.cat(self._rows["va"])
            out.append(P.plot_va_scatter(pred, true, ctx.directory, ctx.split, ctx.title, ctx.writer))
        return out + super().plots(ctx, results)

    def evaluate(self) -> "OrderedDict[str, float]":
        out = torch.cat(self._rows["out"]) if self._rows["out"] else torch.zeros(0, 2)
        va = torch.cat(self._rows["va"]) if self._rows["va"] else torch.zeros(0, 2)
        pos = torch.cat(self._rows["pos"]) if self._rows["pos"] else torch.zeros(0, 0, dtype=torch.bool)
        n = len(out)
        if n == 0:
            logger.warning("evaluating on an empty set: all metrics are 0")
        results: "OrderedDict[str, float]" = OrderedDict()
        for j, dim in enumerate(("valence", "arousal")):
            for k, v in dimension_metrics(out[:, j].numpy(), va[:, j].numpy()).items():
                results[f"{dim}_{k}"] = v
        has_pos = pos.shape[1] == self.num_classes and n > 0
        if self.class_va is not None and has_pos:
            pred = va_to_class(out[:, :2], self.class_va, self.back_conversion, self.center)
            results["va_class_accuracy"] = 100.0 * float(pos[torch.arange(n), pred].float().mean())
        if out.shape[1] > 2 and has_pos:
            logits = out[:, 2:]
            results["class_accuracy"] = 100.0 * float(pos[torch.arange(n), logits.argmax(1)].float().mean())
            if self.task == "multi_label":
                pred_sets = (logits.sigmoid() > self.threshold).numpy()
                results["class_weighted_jaccard"] = 100.0 * weighted_jaccard(pred_sets, pos.numpy())
        lines = OrderedDict([("total", f"{n:,}")])
        for k, v in results.items():
            lines[k] = pct(v) if k.startswith(("va_class", "class_")) else (f"{v:.4g}" if k.endswith("_p") else f"{v:.4f}")
        log_result(lines)
        self._state = {"total": n}
        return results

    @classmethod
    def from_config(cls, cfg: Any, classnames: List[str]) -> "ValenceArousal":
        """TEST.THRESHOLD; with a TRAINER.VA node: its lexicon, back-conversion and validation metric."""
        kwargs: Dict[str, Any] = {"threshold": float(cfg.TEST.THRESHOLD)}
        node = cfg.TRAINER.get("VA")
        if node is not None:
            kwargs["class_va"] = class_va_from_config(cfg, classnames)
            kwargs["back_conversion"] = node.BACK_CONVERSION
            if higher_is_better(node.VAL_METRIC):
                kwargs["main_metric"] = node.VAL_METRIC
        return cls(classnames, task=cfg.DATASET.TASK or "single_label", **kwargs)


def class_va_from_config(cfg: Any, classnames: Sequence[str], required: bool = False) -> Optional[torch.Tensor]:
    """``[C, 2]`` lexicon VA of ``classnames`` from ``TRAINER.VA``; None when no lexicon is set
    (ConfigError instead when ``required``)."""
    node = cfg.TRAINER.VA
    if not node.LEXICON:
        if required:
            raise ConfigError("TRAINER.VA.LEXICON is empty: one_stage needs the NRC-VAD lexicon file")
        return None
    return lexicon_class_va(node.LEXICON, classnames, node.LEXICON_SCALE, node.LEXICON_OFFSET, node.LEXICON_WORDS)
