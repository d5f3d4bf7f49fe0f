"""Periodic behaviour of the training loop, as hooks.

A hook sees the trainer and is called at ``before_train``, ``before_epoch``,
``after_step``, ``after_epoch`` and ``after_train``. The default hooks step the LR schedule,
print progress, evaluate on validation, keep the best model and write checkpoints; a trainer
adds its own (e.g. an adaptive loss weight, early stopping) in ``build_hooks``.

Order: every hook declares a ``priority`` (a name of :data:`PRIORITIES` or an int 0..100, as in
mmengine); the trainer calls hooks from the lowest number to the highest, hooks of equal priority
in the order they were registered. The defaults:

==============================  ===============  ==========================================
hook                            priority         why there
==============================  ===============  ==========================================
(one-off initialisers)          HIGHEST (0)      before anything else in ``before_train``
:class:`LRSchedulerHook`        VERY_HIGH (10)   steps the schedules first
:class:`EvalHook`               HIGH (30)        sets ``trainer.last_val`` / ``is_best``
readers of ``last_val``         ABOVE_NORMAL     e.g. :class:`EarlyStoppingHook` (40)
:class:`ProgressHook`           NORMAL (50)      the epoch's train record
:class:`CheckpointHook`         LOWEST (100)     commits the epoch after every other hook
==============================  ===============  ==========================================
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, Optional, Sequence, Union

from utils.errors import ConfigError

logger = logging.getLogger(__name__)

#: hook priorities by name (mmengine's levels); lower runs first
PRIORITIES: Dict[str, int] = {
    "HIGHEST": 0, "VERY_HIGH": 10, "HIGH": 30, "ABOVE_NORMAL": 40, "NORMAL": 50,
    "BELOW_NORMAL": 60, "LOW": 70, "VERY_LOW": 90, "LOWEST": 100,
}


def get_priority(priority: Union[int, str]) -> int:
    """The number of ``priority`` (a name of :data:`PRIORITIES` or an int in 0..100)."""
    if isinstance(priority, bool):
        raise ValueError(f"hook priority must be a name or an int in 0..100, got {priority!r}")
    if isinstance(priority, int):
        if not 0 <= priority <= 100:
            raise ValueError(f"hook priority must be in 0..100, got {priority}")
        return priority
    if isinstance(priority, str) and priority.upper() in PRIORITIES:
        return PRIORITIES[priority.upper()]
    raise ValueError(f"unknown hook priority {priority!r} (names: {', '.join(PRIORITIES)}, or an int 0..100)")


def insert_by_priority(hooks: list, hook: "HookBase", priority: Union[int, str, None] = None) -> int:
    """Insert ``hook`` into ``hooks`` (kept sorted by priority) after every hook of the same or a
    lower number, so ties keep registration order; returns the index. ``priority`` (if given)
    replaces the hook's declared one."""
    hook.priority = get_priority(hook.priority if priority is None else priority)
    at = len(hooks)
    while at > 0 and get_priority(hooks[at - 1].priority) > hook.priority:
        at -= 1
    hooks.insert(at, hook)
    return at


class HookBase:
    """No-op base class; ``self.trainer`` is set by the trainer, ``priority`` places it (see above)."""

    trainer: Any = None
    priority: Union[int, str] = "NORMAL"

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

    priority = "VERY_HIGH"

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

    priority = "NORMAL"

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

    priority = "HIGH"

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
    """Commits the epoch after every other hook's ``after_epoch`` (priority LOWEST):
    ``model.pth.tar-<epoch>`` of every module plus the run state that makes them visible at once
    (:mod:`trainers.engine.runstate`). The latest epoch and every ``period``-th one are kept;
    ``model-best.pth.tar`` follows validation. Only rank 0 writes."""

    priority = "LOWEST"

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


EARLY_STOP_MODES = ("max", "min")


class EarlyStoppingHook(HookBase):
    """Early stopping, for every trainer that stops early.

    After each validation (it runs after :class:`EvalHook`, priority ABOVE_NORMAL): a value of
    ``metric`` in ``trainer.last_val`` is an improvement when it beats the best so far by MORE than
    ``min_delta`` (``mode`` max: ``value - best > min_delta``; min: ``best - value > min_delta``; the
    first value always is). Once MORE than ``patience`` evaluations in a row brought no improvement
    (``patience + 1`` of them, as the released VA and VEGA code count), it sets
    ``trainer.stop_training`` and the engine ends training after the epoch. Epochs without a
    validation count for nothing. ``metric=None`` follows the evaluator's main metric.
    """

    priority = "ABOVE_NORMAL"

    def __init__(self, metric: Optional[str], patience: int, mode: str = "max", min_delta: float = 0.0) -> None:
        if mode not in EARLY_STOP_MODES:
            raise ConfigError(f"early-stopping mode must be max or min, got {mode!r}")
        if int(patience) < 1:
            raise ConfigError(f"early-stopping patience must be >= 1, got {patience}")
        if float(min_delta) < 0:
            raise ConfigError(f"early-stopping min_delta must be >= 0, got {min_delta}")
        self.metric, self.patience, self.mode, self.min_delta = metric, int(patience), mode, float(min_delta)
        self.best: Optional[float] = None
        self.bad = 0
        self._best_from_eval = False  # a VEGA checkpoint written before this hook kept no best of its own

    def _metric(self) -> str:
        return self.metric or self.trainer.evaluator.main_metric

    def before_train(self) -> None:
        t = self.trainer
        metric = self._metric()
        names = getattr(t.evaluator, "metric_names", lambda: None)()
        if names is not None and metric not in names:
            from utils.registry import closest

            hint = closest(metric, names)
            raise ConfigError(f"early-stopping metric {metric!r} is not reported by {type(t.evaluator).__name__}"
                              + (f" (did you mean {hint!r}?)" if hint else f" (reported: {', '.join(names)})"))
        evals = [h for h in getattr(t, "hooks", []) if isinstance(h, EvalHook)]
        if not t.has_val or not evals or all(h.period <= 0 for h in evals):
            logger.warning("early stopping is on but there is no validation: it will never stop training")
        if self._best_from_eval and self.best is None and evals and self.mode == "max":
            self.best = evals[0].best  # the old VEGA rule counted against EvalHook's best main metric

    def improved(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta``."""
        if self.best is None:
            return True
        sign = 1.0 if self.mode == "max" else -1.0
        return sign * (value - self.best) > self.min_delta

    def after_epoch(self) -> None:
        t = self.trainer
        if not t.last_val:
            return
        metric = self._metric()
        if metric not in t.last_val:
            raise ConfigError(f"early-stopping metric {metric!r} not in the validation results ({', '.join(t.last_val)})")
        value = float(t.last_val[metric])
        if self.improved(value):
            self.best, self.bad = value, 0
            return
        self.bad += 1
        if self.bad > self.patience:  # as the released code: stop after MORE than `patience` bad evaluations
            logger.info(f"early stopping: val {metric} has not improved for {self.bad} evaluations "
                        f"(best {self.best:.4f})")
            t.stop_training = True

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "bad_epochs" in state and "bad" not in state:  # VEGA's own hook, before it shared this one
            self.best, self.bad, self._best_from_eval = None, int(state["bad_epochs"]), True
            return
        self.best, self.bad = state.get("best"), int(state.get("bad", 0))

    #: state keys this hook also reads (older checkpoints), for matching hook states without names
    LEGACY_STATE_KEYS: Sequence[frozenset] = (frozenset({"bad_epochs"}),)
