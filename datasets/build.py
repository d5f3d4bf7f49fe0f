"""``build_dataset(cfg)``: the registered dataset, then few-shot, class subsampling and task."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from utils.errors import ConfigError, DatasetError
from utils.gcpause import gc_paused

from .base import DATASET_REGISTRY, TASKS, DatasetBase, check_images
from .fewshot import sample_fewshot, subsample_classes
from .kfold import kfold_from_cfg

logger = logging.getLogger(__name__)


def apply_task(ds: DatasetBase, task: str) -> DatasetBase:
    """Override the dataset's task ("" keeps it).

    ``multi_label`` on single-label data derives ``labels = (label,)``; ``single_label`` needs
    the dataset to provide ``label``.
    """
    if not task or task == ds.task:
        return ds
    if task not in TASKS:
        raise ConfigError(f"DATASET.TASK must be one of {('',) + TASKS}, got {task!r}")
    if task == "single_label" and "label" not in ds.targets:
        raise DatasetError(f"dataset {ds.name} has no single labels (targets {sorted(ds.targets)}); DATASET.TASK single_label needs them")
    if task == "multi_label" and "labels" not in ds.targets:
        def derive(data):  # noqa: ANN001, ANN202
            return [dataclasses.replace(d, labels=(d.label,) if d.label >= 0 else ()) for d in data]

        logger.info("dataset %s: multi-label targets derived from single labels", ds.name)
        return ds.replace(
            train_x=derive(ds.train_x), val=derive(ds.val), test=derive(ds.test), targets=ds.targets | {"labels"}, task=task
        )
    return ds.replace(task=task)


def prepare_dataset(
    ds: DatasetBase,
    *,
    num_shots: int = -1,
    seed: int = 0,
    subsample: str = "all",
    task: str = "",
    check_files: bool = True,
) -> DatasetBase:
    """Generic steps after a dataset's ``from_config``: task override, few-shot, subsampling.

    Few-shot sampling uses the final task (multi-label sampling for ``multi_label``) and is
    cached under ``<ds.root>/split_fewshot``; base/new subsampling follows (CoOp order).
    """
    ds = apply_task(ds, task)
    multi = ds.task == "multi_label"
    train, val = ds.train_x, ds.val
    if num_shots > 0:
        train, val = sample_fewshot(
            train, val, num_shots=num_shots, seed=max(seed, 0), classnames=ds.classnames,
            multi_label=multi, root=ds.root, name=ds.name,
        )
        logger.info("dataset %s: %d-shot split, %d train / %d val items", ds.name, num_shots, len(train), len(val))
    (train, val, test), names = subsample_classes([train, val, ds.test], ds.classnames, subsample, multi)
    if not train:
        raise DatasetError(f"dataset {ds.name}: no training items left (NUM_SHOTS={num_shots}, SUBSAMPLE_CLASSES={subsample})")
    ds = ds.replace(train_x=train, val=val, test=test, classnames=names)
    if check_files:
        check_images(ds.train_x + ds.val + ds.test, known=ds.existing_files)  # screened files: not again
    return ds


def build_dataset(cfg: Any) -> DatasetBase:
    """``DATASET_REGISTRY.get(cfg.DATASET.NAME).from_config(cfg)`` followed by :func:`prepare_dataset`.

    Reads DATASET.{NAME, NUM_SHOTS, SUBSAMPLE_CLASSES, TASK} and SEED (< 0 samples with seed 0).
    The cyclic garbage collector is paused meanwhile (``utils/gcpause.py``).
    """
    with gc_paused():  # hundreds of thousands of small objects: no full collections over torch's heap
        if not cfg.DATASET.NAME:
            raise ConfigError(f"DATASET.NAME is empty (registered datasets: {', '.join(DATASET_REGISTRY.names())})")
        cls = DATASET_REGISTRY.get(cfg.DATASET.NAME)
        ds = cls.from_config(cfg)
        ds = kfold_from_cfg(ds, cfg)  # DATASET.KFOLD (datasets/kfold.py); a no-op when off
        if cfg.DATASET.NUM_SHOTS > 0 and cfg.SEED < 0:
            logger.info("SEED < 0: the few-shot split uses seed 0")
        ds = prepare_dataset(
            ds,
            num_shots=int(cfg.DATASET.NUM_SHOTS),
            seed=int(cfg.SEED),
            subsample=str(cfg.DATASET.SUBSAMPLE_CLASSES),
            task=str(cfg.DATASET.TASK),
        )
        ds.check_not_empty()
        logger.info("%r", ds)
        return ds
