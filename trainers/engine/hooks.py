"""Periodic behaviour of the training loop, as hooks.

A hook sees the trainer and is called at ``before_train``, ``before_epoch``,
``after_step``, ``after_epoch`` and ``after_train``. The default hooks step the LR schedule,
print progress, evaluate on validation, keep the best model and write checkpoints; a trainer
adds its own (e.g. an adaptive loss weight) in ``build_hooks``. Hook order matters: a hook
that reads ``trainer.last_val`` must come after :class:`EvalHook`.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, Optional

logger = logging.getLogger(__name__)


class HookBase:
    """No-op base class; ``self.trainer`` is set by the trainer."""

    trainer: Any = None

    def before_train(self) -> None: ...

    def before_epoch(self) -> None: ...

    def after_step(self) -> None: ...

    def after_epoch(self) -> None: ...

    def after_train(self) -> None: ...

    def state_dict(self) -> Dict[str, Any]:
        """State saved in checkpoints so a resumed run continues exactly."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...


class LRSchedulerHook(HookBase):
    """Steps every scheduler once per epoch, or once per iteration if it was built per-iteration."""

    def after_step(self) -> None:
        for s in self.trainer.schedulers():
            if getattr(s, "per_iter", False):
                s.step()

    def after_epoch(self) -> None:
        for s in self.trainer.schedulers():
            if not getattr(s, "per_iter", False):
                s.step()


class ProgressHook(HookBase):
    """Logs ``epoch [e/E] batch [i/N] loss LAST (EPOCH MEAN) lr ... eta`` every ``period`` iterations.

    The learning rate reported is the one the step used (``trainer.step_lr``, read before the
    schedulers step). TensorBoard gets the LR of every step and the loss every ``period`` steps
    (``train_iter/*``, x = global step); the epoch record of ``metrics.jsonl`` has ``lr`` = the LR of
    the epoch's first step and, for per-iteration schedules, ``lr_per_step``.
    """

    def __init__(self, period: int) -> None:
        self.period = max(1, period)

    def before_train(self) -> None:
        self.t0 = time.time()
        self.done = 0

    def before_epoch(self) -> None:
        self.t_epoch = time.time()
        self.lrs = []

    def after_step(self) -> None:
        t = self.trainer
        self.done += 1
        i, n = t.batch_idx + 1, t.num_batches
        lr = getattr(t, "step_lr", t.current_lr())
        self.lrs.append(lr)
        gstep = t.epoch * n + i
        t.writer.scalars("train_iter", {"lr": lr}, gstep)
        if i % self.period and i != n:
            return
        elapsed = time.time() - self.t0
        remaining = (t.max_epoch - t.epoch - 1) * n + (n - i)
        eta = elapsed / self.done * remaining
        from .utils import format_eta

        latest, means = t.meters.latest(), t.meters.averages()
        # Dassl's form: the last batch's value, then (in brackets) the mean over the epoch so far, which
        # is what metrics.jsonl and the training-curves figure hold for the whole epoch
        vals = " ".join(f"{k} {v:.4f} ({means.get(k, v):.4f})" for k, v in latest.items())
        t.writer.scalars("train_iter", latest, gstep)
        logger.info(
            f"epoch [{t.epoch + 1}/{t.max_epoch}] batch [{i}/{n}] {vals} lr {lr:.4e} eta {format_eta(eta)}"
        )

    def after_epoch(self) -> None:
        t = self.trainer
        avg = t.meters.averages()
        lr = self.lrs[0] if self.lrs else t.current_lr()
        rec = {"split": "train", "epoch": t.epoch + 1, "final": False, "metrics": avg, "lr": lr}
        if len(set(self.lrs)) > 1:
            rec["lr_per_step"] = self.lrs
        t.writer.write(rec)
        t.writer.scalars("train", {**avg, "lr": lr}, t.epoch + 1)


class EvalHook(HookBase):
    """Evaluates on the validation split every ``period`` epochs (and after the last) and
    tracks the best main metric; sets ``trainer.last_val`` and ``trainer.is_best``."""

    def __init__(self, period: int) -> None:
        self.period = period
        self.best: Optional[float] = None

    def after_epoch(self) -> None:
        t = self.trainer
        t.is_best = False
        t.last_val = None
        last = t.epoch + 1 == t.max_epoch
        if self.period <= 0 or not t.has_val or not ((t.epoch + 1) % self.period == 0 or last):
            return
        results = t.evaluate("val")
        t.last_val = results
        score = results[t.evaluator.main_metric]
        if self.best is None or score > self.best:
            self.best = score
            t.is_best = True

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best = state.get("best")


class CheckpointHook(HookBase):
    """Commits the epoch after every other hook's ``after_epoch`` (the engine puts it last):
    ``model.pth.tar-<epoch>`` of every module plus the run state that makes them visible at once
    (:mod:`trainers.engine.runstate`). The latest epoch and every ``period``-th one are kept;
    ``model-best.pth.tar`` follows validation. Only rank 0 writes."""

    def __init__(self, period: int) -> None:
        self.period = period
        self.prev: Optional[int] = None

    def after_epoch(self) -> None:
        t = self.trainer
        epoch = t.epoch + 1
        t.save_model(epoch, is_best=t.is_best, val_result=t.last_val)
        self.prev = epoch

    def state_dict(self) -> Dict[str, Any]:
        return {"prev": self.prev}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.prev = state.get("prev")
