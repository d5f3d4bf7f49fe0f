"""Optimisers and learning-rate schedules (Dassl key semantics).

The schedule is a pure function of the (fractional) epoch, wrapped in ``LambdaLR`` so its
state is one integer and resuming is exact. Warm-up follows Dassl's ``ConstantWarmupScheduler``
and ``LinearWarmupScheduler`` exactly: ``constant`` holds ``WARMUP_CONS_LR`` for the warm-up
epochs; ``linear`` uses ``WARMUP_MIN_LR`` in epoch 0 and ``base_lr * e / WARMUP_EPOCH`` in
epochs ``e = 1 .. WARMUP_EPOCH - 1``; afterwards the main schedule restarts its count
(``WARMUP_RECOUNT``) as Dassl's warm-up wrapper does. ``STEPSIZE`` as in Dassl: a value <= 0
means ``MAX_EPOCH``; ``single_step`` uses the last entry of the tuple.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, List, Sequence, Union

import torch
from torch.optim.lr_scheduler import LambdaLR

from utils.errors import ConfigError
from utils.registry import closest

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("cosine", "single_step", "multi_step", "constant")


def build_optimizer(params: Union[Iterable, List[dict]], optim_cfg, fused: bool = False) -> torch.optim.Optimizer:
    """An optimiser over ``params`` (tensors or param groups with their own ``lr``)."""
    name = optim_cfg.NAME.lower()
    if name not in OPTIMIZERS:
        hint = closest(name, list(OPTIMIZERS))
        raise ConfigError(f"unknown OPTIM.NAME {optim_cfg.NAME!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
    params = list(params)
    if not params:
        raise ConfigError("the trainer has no trainable parameters for the optimiser")
    extra = {"fused": True} if fused else {}
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=optim_cfg.LR,
            momentum=optim_cfg.MOMENTUM,
            weight_decay=optim_cfg.WEIGHT_DECAY,
            dampening=optim_cfg.SGD_DAMPNING,
            nesterov=optim_cfg.SGD_NESTEROV,
            **extra,
        )
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(
        params,
        lr=optim_cfg.LR,
        weight_decay=optim_cfg.WEIGHT_DECAY,
        betas=(optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2),
        **extra,
    )


def lr_factor_fn(
    base_lr: float,
    scheduler: str,
    max_epoch: int,
    stepsize: Sequence[int] = (-1,),
    gamma: float = 0.1,
    warmup_epoch: int = 0,
    warmup_type: str = "linear",
    warmup_cons_lr: float = 1e-5,
    warmup_min_lr: float = 1e-5,
    recount: bool = True,
) -> Callable[[float], float]:
    """``f(epoch) -> lr / base_lr`` for a fractional epoch count (0 = start of training)."""
    scheduler = scheduler.lower()
    if scheduler not in SCHEDULERS:
        hint = closest(scheduler, list(SCHEDULERS))
        raise ConfigError(f"unknown OPTIM.LR_SCHEDULER {scheduler!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
    if warmup_type not in ("constant", "linear"):
        raise ConfigError(f"unknown OPTIM.WARMUP_TYPE {warmup_type!r} (constant or linear)")
    steps = [int(s) if int(s) > 0 else int(max_epoch) for s in stepsize]  # Dassl: <= 0 means MAX_EPOCH
    if scheduler in ("single_step", "multi_step") and not steps:
        raise ConfigError(f"OPTIM.STEPSIZE is empty: give the step epoch(s) for {scheduler} (<= 0 = MAX_EPOCH)")
    if scheduler == "single_step":
        steps = steps[-1:]  # Dassl takes the last entry of a list
    if scheduler in ("single_step", "multi_step") and min(steps) <= 0:
        raise ConfigError(f"OPTIM.STEPSIZE {tuple(stepsize)} with OPTIM.MAX_EPOCH {max_epoch}: no positive step epoch")

    def main(e: float) -> float:
        if scheduler == "cosine":
            e = min(e, max_epoch)
            return 0.5 * (1.0 + math.cos(math.pi * e / max_epoch))
        if scheduler == "constant":
            return 1.0
        if scheduler == "single_step":
            return gamma ** int(e // steps[0])
        return gamma ** sum(1 for s in steps if e >= s)

    def factor(e: float) -> float:
        if warmup_epoch > 0 and e < warmup_epoch:
            if warmup_type == "constant":
                return warmup_cons_lr / base_lr
            if e == 0:  # Dassl's LinearWarmupScheduler: min_lr at epoch 0, then base_lr * e / warmup_epoch
                return warmup_min_lr / base_lr
            return e / warmup_epoch
        return main(e - warmup_epoch if (warmup_epoch > 0 and recount) else e)

    return factor


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg, iters_per_epoch: int = 1) -> LambdaLR:
    """LambdaLR stepped once per epoch, or once per iteration when ``OPTIM.STEP_PER_ITER``."""
    per_iter = bool(getattr(optim_cfg, "STEP_PER_ITER", False))
    div = max(1, iters_per_epoch) if per_iter else 1
    f = lr_factor_fn(
        optim_cfg.LR,
        optim_cfg.LR_SCHEDULER,
        optim_cfg.MAX_EPOCH,
        optim_cfg.STEPSIZE,
        optim_cfg.GAMMA,
        optim_cfg.WARMUP_EPOCH,
        optim_cfg.WARMUP_TYPE,
        optim_cfg.WARMUP_CONS_LR,
        optim_cfg.WARMUP_MIN_LR,
        optim_cfg.WARMUP_RECOUNT,
    )
    sched = LambdaLR(optimizer, lambda step: f(step / div))
    sched.per_iter = per_iter  # type: ignore[attr-defined]
    return sched
