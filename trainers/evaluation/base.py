"""Evaluator base class, registry and :func:`build_evaluator`.

Contract with the engine: the engine gathers the logits, targets and sample indices of all
processes itself, removes duplicates (samples a distributed sampler padded in twice) and calls
:meth:`EvaluatorBase.process` once on rank 0 with the whole concatenation. ``process`` therefore
accepts batches of any size and may also be called once per mini-batch; samples whose ``index``
was already seen are ignored, so a sample is never counted twice.

All metrics are percentages (x100), except counts.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from utils.errors import EmoLabError
from utils.registry import Registry

logger = logging.getLogger(__name__)

EVALUATOR_REGISTRY = Registry("evaluator")


class EvaluatorBase:
    """Accumulates ``(logits, targets)`` with :meth:`process`, then :meth:`evaluate` logs and returns metrics.

    Subclasses set :attr:`main_metric` (a key of :meth:`evaluate`'s result, higher is better)
    and implement :meth:`_targets` and :meth:`evaluate`.
    """

    main_metric: str = ""

    def __init__(self, classnames: List[str], **kwargs: Any) -> None:
        if kwargs:
            logger.debug("%s ignores options %s", type(self).__name__, sorted(kwargs))
        self.classnames = list(classnames)
        self.num_classes = len(self.classnames)
        self._state: Dict[str, Any] = {}
        self.reset()

    # ------------------------------------------------------------------ accumulation
    def reset(self) -> None:
        """Forget everything processed so far (call before each evaluation)."""
        self._logits: List[Tensor] = []
        self._targets: List[Tensor] = []
        self._seen: set = set()
        self._state = {}

    def process(self, logits: Tensor, batch: Dict[str, Any]) -> None:
        """Add a batch of any size.

        Args:
            logits: ``[B, C]`` raw scores (before softmax / sigmoid).
            batch: ``"label"`` LongTensor ``[B]`` (single-label) and/or ``"labels"`` FloatTensor
                ``[B, C]`` multi-hot (multi-label); optional ``"index"`` LongTensor ``[B]``.
        """
        logits = logits.detach().float().cpu()
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise EmoLabError(
                f"{type(self).__name__}: logits of shape {tuple(logits.shape)}, expected [B, {self.num_classes}]"
            )
        targets = self._targets_from(batch).detach().cpu()
        if targets.shape[0] != logits.shape[0]:
            raise EmoLabError(f"{targets.shape[0]} targets for {logits.shape[0]} logits")
        index = batch.get("index")
        if index is not None:
            keep = []
            for i, idx in enumerate(torch.as_tensor(index).view(-1).tolist()):
                if idx not in self._seen:
                    self._seen.add(idx)
                    keep.append(i)
            if len(keep) < logits.shape[0]:
                logger.debug("ignoring %d samples already processed", logits.shape[0] - len(keep))
                keep_t = torch.tensor(keep, dtype=torch.long)
                logits, targets = logits[keep_t], targets[keep_t]
        self._logits.append(logits)
        self._targets.append(targets)

    def _targets_from(self, batch: Dict[str, Any]) -> Tensor:
        """The targets this evaluator needs, taken from ``batch``."""
        raise NotImplementedError

    def _collected(self) -> tuple[np.ndarray, np.ndarray]:
        """All processed ``(logits [N, C], targets)`` as numpy arrays."""
        if not self._logits:
            return np.zeros((0, self.num_classes), dtype=np.float64), np.zeros((0,), dtype=np.int64)
        return torch.cat(self._logits).double().numpy(), torch.cat(self._targets).numpy()

    # ------------------------------------------------------------------ results
    def evaluate(self) -> "OrderedDict[str, float]":
        """Compute the metrics, log them (``* name: X%`` lines) and return them."""
        raise NotImplementedError

    def plots(self, ctx: Any, results: Dict[str, float]) -> List[Optional[str]]:
        """Draw the figures of the samples processed since the last :meth:`reset` (after :meth:`evaluate`).

        ``ctx`` is a :class:`trainers.engine.plots.FigureContext` (output folder, split, title, writer);
        ``results`` what :meth:`evaluate` returned. Returns the paths written (None for a figure that failed:
        each drawing helper turns its own failure into one warning line). The base class draws the
        per-class F1 bars when ``results`` has ``f1_<class>`` entries; subclasses add their task's
        figure first and call this.
        """
        from trainers.engine import plots as P

        if any(k.startswith("f1_") for k in results):
            return [P.plot_per_class_f1(results, ctx.directory, ctx.split, ctx.title, ctx.writer)]
        return []

    def describe(self, outputs: Tensor, task: str, threshold: float) -> List[Dict[str, Any]]:
        """One readable prediction per row of model outputs ``[N, C]`` (what ``trainer.predict`` returns).

        Single-label: ``classname``, ``label`` and ``probs`` (softmax); multi-label: ``classnames`` whose
        sigmoid exceeds ``threshold`` and ``probs``. An evaluator whose outputs are not class scores
        (valence / arousal regression) overrides this.
        """
        names = list(self.classnames)
        preds: List[Dict[str, Any]] = []
        for row in outputs:
            if task == "multi_label":
                p = row.sigmoid()
                preds.append({"classnames": [n for n, v in zip(names, p) if v > threshold],
                              "probs": {n: float(v) for n, v in zip(names, p)}})
            else:
                p = row.softmax(0)
                k = int(p.argmax())
                preds.append({"classname": names[k], "label": k, "probs": {n: float(v) for n, v in zip(names, p)}})
        return preds

    def state(self) -> Dict[str, Any]:
        """Non-scalar results of the last :meth:`evaluate` (JSON-serialisable), for the caller to save."""
        return dict(self._state)

    @classmethod
    def from_config(cls, cfg: Any, classnames: List[str]) -> "EvaluatorBase":
        """Build from ``cfg.TEST.*`` (PER_CLASS_RESULT, COMPUTE_CMAT, THRESHOLD, TOPK)."""
        test = cfg.TEST
        return cls(
            classnames,
            per_class=bool(test.get("PER_CLASS_RESULT", False)),
            compute_cmat=bool(test.get("COMPUTE_CMAT", False)),
            threshold=float(test.get("THRESHOLD", 0.5)),
            topk=tuple(int(k) for k in test.get("TOPK", (1, 2, 3))),
        )


def log_result(lines: "OrderedDict[str, str]", header: str = "=> result") -> None:
    """Log ``header`` then one ``* key: value`` line per entry (Dassl / CoOp layout); the header
    line is bare (no timestamp): CoOp's ``parse_test_res.py --test-log`` matches it exactly."""
    logger.info(header, extra={"bare": True})
    for key, value in lines.items():
        logger.info(f"* {key}: {value}")


def pct(x: float) -> str:
    """``71.25 -> '71.2%'`` (one decimal, as Dassl logs)."""
    return f"{x:.1f}%"


def build_evaluator(cfg: Any, classnames: List[str], task: Optional[str] = None) -> EvaluatorBase:
    """The evaluator named by ``cfg.TEST.EVALUATOR``.

    For ``task == "multi_label"`` the default ``"Classification"`` switches to ``"MultiLabel"``
    (an explicitly chosen evaluator is kept). Unknown names raise :class:`ConfigError`
    naming the closest registered one.
    """
    name = str(cfg.TEST.EVALUATOR)
    if task == "multi_label" and name == "Classification":
        logger.debug("multi-label task: using the MultiLabel evaluator")
        name = "MultiLabel"
    return EVALUATOR_REGISTRY.get(name).from_config(cfg, classnames)
