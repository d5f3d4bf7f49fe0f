"""Seeded, stratified k-fold cross-validation of any dataset (keys under DATASET.KFOLD).

With ``NUM_FOLDS = k >= 2`` the items are pooled, sorted by image path (so the folds do not
depend on the order a reader lists them in), and assigned to k folds per stratum (class)
after a shuffle seeded by ``SEED``: fold sizes differ by at most one overall and per class.
``FOLD`` is held out:

* ``HELDOUT: test``: pool = train + val + test; the held-out fold is the test split; the
  validation split is a stratified ``DATASET.VAL_PERCENT`` share of the other folds (0 = none);
* ``HELDOUT: val``: pool = train + val; the held-out fold is the validation split; test is kept.

Folds are a sweep axis: ``tools/sweep.py ... --grid DATASET.KFOLD.FOLD=0,1,2,3,4 --
DATASET.KFOLD.NUM_FOLDS 5``, aggregated with ``tools/parse_results.py --pool fold``.
The stratum of an item is its label, else the argmax of its distribution, else its first label.
"""
from __future__ import annotations

import logging
from typing import Any, List, Sequence, Tuple

import numpy as np

from utils.errors import ConfigError, DatasetError
from configs.registry import register_config

from .base import DatasetBase, Datum

logger = logging.getLogger(__name__)

HELDOUT = ("test", "val")


@register_config
def add_kfold_config(cfg) -> None:
    from yacs.config import CfgNode as CN

    cfg.DATASET.KFOLD = CN()
    cfg.DATASET.KFOLD.NUM_FOLDS = 0  # k-fold cross-validation: 0 = off, else the number of folds k >= 2
    cfg.DATASET.KFOLD.FOLD = 0  # the held-out fold, 0 .. k-1 (a sweep axis)
    cfg.DATASET.KFOLD.SEED = 0  # seed of the fold assignment (keep it fixed across folds)
    cfg.DATASET.KFOLD.HELDOUT = "test"  # test: pool all splits, held-out fold = test | val: pool train+val, fold = val


def stratum(d: Datum) -> int:
    if d.label >= 0:
        return d.label
    if d.dist is not None:
        return int(np.argmax(d.dist))
    return min(d.labels) if d.labels else 0


def stratified_assignment(strata: Sequence[int], k: int, seed: int) -> np.ndarray:
    """``[N]`` fold index (0..k-1) of each item: per stratum a seeded shuffle dealt round-robin,
    the dealing continuing from one stratum to the next (balanced fold sizes)."""
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    folds = np.empty(len(strata), dtype=np.int64)
    pos = 0
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        idx = idx[rng.permutation(len(idx))]
        folds[idx] = (pos + np.arange(len(idx))) % k
        pos += len(idx)
    return folds


def stratified_share(items: List[Datum], share: float, seed: int) -> Tuple[List[Datum], List[Datum]]:
    """(rest, held): ``round(n_c * share)`` items of each stratum (at least 1 of a stratum with 2+ items)."""
    if share <= 0:
        return items, []
    rng = np.random.default_rng(seed + 1)
    strata = np.array([stratum(d) for d in items])
    held = set()
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        n = int(round(len(idx) * share))
        n = max(n, 1) if len(idx) >= 2 else 0
        held.update(idx[rng.permutation(len(idx))[:n]].tolist())
    return [d for i, d in enumerate(items) if i not in held], [d for i, d in enumerate(items) if i in held]


def apply_kfold(ds: DatasetBase, num_folds: int, fold: int, seed: int = 0, heldout: str = "test",
                val_percent: float = 0.0) -> DatasetBase:
    """The dataset with fold ``fold`` of ``num_folds`` held out (module docstring)."""
    if num_folds < 2:
        raise ConfigError(f"DATASET.KFOLD.NUM_FOLDS must be 0 (off) or >= 2, got {num_folds}")
    if not 0 <= fold < num_folds:
        raise ConfigError(f"DATASET.KFOLD.FOLD must be in [0, {num_folds - 1}], got {fold}")
    if heldout not in HELDOUT:
        raise ConfigError(f"DATASET.KFOLD.HELDOUT must be one of {HELDOUT}, got {heldout!r}")
    pool = ds.train_x + ds.val + (ds.test if heldout == "test" else [])
    pool = sorted(pool, key=lambda d: d.impath)
    if len(pool) < num_folds:
        raise DatasetError(f"dataset {ds.name}: {len(pool)} items cannot make {num_folds} folds")
    folds = stratified_assignment([stratum(d) for d in pool], num_folds, seed)
    held = [d for d, f in zip(pool, folds) if f == fold]
    rest = [d for d, f in zip(pool, folds) if f != fold]
    if heldout == "test":
        train, val = stratified_share(rest, val_percent, seed)
        out = ds.replace(train_x=train, val=val, test=held)
    else:
        out = ds.replace(train_x=rest, val=held)
    logger.info(f"dataset {ds.name}: fold {fold} of {num_folds} held out as {heldout}: train {len(out.train_x)}, "
                f"val {len(out.val)}, test {len(out.test)}")
    return out


def kfold_from_cfg(ds: DatasetBase, cfg: Any) -> DatasetBase:
    """:func:`apply_kfold` with ``DATASET.KFOLD`` (and ``DATASET.VAL_PERCENT``); unchanged when off."""
    k = cfg.DATASET.get("KFOLD")
    if k is None or int(k.NUM_FOLDS) == 0:
        return ds
    return apply_kfold(ds, int(k.NUM_FOLDS), int(k.FOLD), int(k.SEED), str(k.HELDOUT), float(cfg.DATASET.VAL_PERCENT))

