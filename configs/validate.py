"""Checks of the engine's config values, run once on the merged config before anything is built.

Each problem is a one-line :class:`ConfigError` naming the key and the value. A trainer's own keys
are checked where the trainer reads them (before the first step); this covers the engine keys and
every engine key with a fixed set of choices, so nothing is rejected only after training.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from utils.errors import ConfigError
from utils.registry import closest

#: engine keys with a fixed set of values (compared case-insensitively where the code does)
CHOICES = {
    "TEST.FINAL_MODEL": ("last_step", "best_val"),
    "TEST.SPLIT": ("val", "test"),
    "OPTIM.NAME": ("sgd", "adam", "adamw"),
    "OPTIM.LR_SCHEDULER": ("cosine", "single_step", "multi_step", "constant"),
    "OPTIM.WARMUP_TYPE": ("constant", "linear"),
    "TRAIN.PRECISION": ("fp32", "fp16", "bf16", "amp"),
    "DATALOADER.DECODED_CACHE": ("auto", "memory", "gpu", "disk", "off"),
    "DATALOADER.TRAIN_X.SAMPLER": ("RandomSampler", "SequentialSampler"),
    "DATALOADER.TEST.SAMPLER": ("RandomSampler", "SequentialSampler"),
    "INPUT.INTERPOLATION": ("bilinear", "bicubic", "nearest"),
    "INPUT.TEST_RESIZE": ("pil", "tensor"),
    "DATASET.SUBSAMPLE_CLASSES": ("all", "base", "new"),
    "DATASET.TASK": ("", "single_label", "multi_label"),
}
LOWERCASED = {"OPTIM.NAME", "OPTIM.LR_SCHEDULER", "TRAIN.PRECISION", "DATALOADER.DECODED_CACHE"}


def _get(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        if part not in node:
            return None
        node = node[part]
    return node


def _number(cfg, key: str) -> Any:
    v = _get(cfg, key)
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{key} must be a finite number, got {v}")
    return v


def _at_least(cfg, key: str, low: float, what: str = "") -> None:
    v = _number(cfg, key)
    if v is not None and v < low:
        raise ConfigError(f"{key} must be >= {low}{what}, got {v}")


def _positive(cfg, key: str, what: str = "") -> None:
    v = _number(cfg, key)
    if v is not None and not v > 0:
        raise ConfigError(f"{key} must be > 0{what}, got {v}")


def check_choice(key: str, value: Any, choices: Sequence[str], lower: bool = False) -> None:
    v = str(value).lower() if lower else value
    if v not in choices:
        hint = closest(str(value), list(choices))
        raise ConfigError(f"{key} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}"
                          + (f" (did you mean {hint!r}?)" if hint else ""))


def check_config(cfg) -> None:
    """Raise a one-line ConfigError for the first bad engine value in ``cfg``."""
    for key, choices in CHOICES.items():
        v = _get(cfg, key)
        if v is not None:
            check_choice(key, v, choices, key in LOWERCASED)
    _positive(cfg, "OPTIM.LR", " (the base learning rate)")
    _at_least(cfg, "OPTIM.MAX_EPOCH", 1, " (number of training epochs)")
    _at_least(cfg, "OPTIM.WEIGHT_DECAY", 0)
    _at_least(cfg, "OPTIM.MOMENTUM", 0)
    _positive(cfg, "OPTIM.GAMMA")
    _at_least(cfg, "OPTIM.MAX_GRAD_NORM", 0, " (0 = off)")
    for key in ("OPTIM.WARMUP_CONS_LR", "OPTIM.WARMUP_MIN_LR"):
        _at_least(cfg, key, 0)
    _at_least(cfg, "DATALOADER.NUM_WORKERS", 0, " (0 = load in the main process)")
    _at_least(cfg, "DATALOADER.TRAIN_X.BATCH_SIZE", 1)
    _at_least(cfg, "DATALOADER.TEST.BATCH_SIZE", 1)
    _at_least(cfg, "DATALOADER.PREFETCH_FACTOR", 1)
    _positive(cfg, "DATALOADER.DECODED_CACHE_MAX_GB")
    _at_least(cfg, "TRAIN.CHECKPOINT_FREQ", 0, " (0 = keep the last epoch only)")
    _at_least(cfg, "TRAIN.EVAL_FREQ", 0, " (0 = never)")
    _at_least(cfg, "TRAIN.PRINT_FREQ", 1)
    _positive(cfg, "TRAIN.DIST_TIMEOUT", " (seconds)")
    for name in _get(cfg, "TRAIN.LOGGERS") or ():
        check_choice("TRAIN.LOGGERS", name, ("tensorboard", "wandb", "mlflow"))
    steps = _get(cfg, "OPTIM.STEPSIZE")
    if steps is not None and not all(isinstance(x, int) and not isinstance(x, bool) for x in steps):
        raise ConfigError(f"OPTIM.STEPSIZE must hold whole epochs, got {tuple(steps)}")
    seed = _get(cfg, "SEED")
    if seed is not None and seed > 2**32 - 1:
        raise ConfigError(f"SEED {seed} is out of range: use 0 .. {2**32 - 1} (or -1 for a random seed)")
    vp = _number(cfg, "DATASET.VAL_PERCENT")
    if vp is not None and not 0 <= vp < 1:
        raise ConfigError(f"DATASET.VAL_PERCENT must be in [0, 1), got {vp}")
    th = _number(cfg, "TEST.THRESHOLD")
    if th is not None and not 0 < th < 1:
        raise ConfigError(f"TEST.THRESHOLD must be in (0, 1), got {th}")
    size = _get(cfg, "INPUT.SIZE")
    if size:
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ConfigError(f"INPUT.SIZE must be two positive integers (H, W), got {tuple(size)}")
    for key in ("INPUT.PIXEL_MEAN", "INPUT.PIXEL_STD"):
        v = _get(cfg, key)
        if v is not None and len(v) != 3:
            raise ConfigError(f"{key} needs 3 values (R, G, B), got {list(v)}")
    std = _get(cfg, "INPUT.PIXEL_STD")
    if std is not None and any(not s > 0 for s in std):
        raise ConfigError(f"INPUT.PIXEL_STD values must be > 0, got {list(std)}")
    sc = _get(cfg, "INPUT.RRCROP_SCALE")
    if sc is not None and (len(sc) != 2 or not 0 < sc[0] <= sc[1] <= 1):
        raise ConfigError(f"INPUT.RRCROP_SCALE must be (low, high) with 0 < low <= high <= 1, got {tuple(sc)}")
