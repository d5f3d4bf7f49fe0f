"""The data contract: :class:`Datum`, :class:`DatasetBase` and the dataset registry.

A dataset is three lists of :class:`Datum` (train_x, val, test) plus its class names and the
set of targets it provides. Parsers build one from files with plain typed arguments; each
registered class has a ``from_config(cfg)`` classmethod that reads the yacs config.
"""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Collection, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from utils.errors import DatasetError
from utils.registry import Registry

logger = logging.getLogger(__name__)

#: Registered dataset classes; ``DATASET_REGISTRY.get(cfg.DATASET.NAME).from_config(cfg)``.
DATASET_REGISTRY = Registry("dataset")

#: Every target kind a dataset can provide (batch keys of the same name).
TARGET_KINDS = frozenset({"label", "labels", "dist", "va"})
TASKS = ("single_label", "multi_label")


@dataclass
class Datum:
    """One sample.

    Attributes:
        impath: absolute path of the image.
        label: single class index, -1 when the dataset has none.
        classname: name of ``label`` (for multi-label data: the positive names joined by "_").
        labels: positive class indices for multi-label data.
        dist: label distribution over the C classes (sums to 1), or None.
        va: (valence, arousal), or None.
        domain: domain index (Dassl compatibility).
        attrs: free-form annotations.
    """

    impath: str
    label: int = -1
    classname: str = ""
    labels: Tuple[int, ...] = ()
    dist: Optional[Tuple[float, ...]] = None
    va: Optional[Tuple[float, float]] = None
    domain: int = 0
    attrs: Dict[str, Any] = field(default_factory=dict)


def _validate(data: Sequence[Datum], split: str, num_classes: int, name: str) -> None:
    """Raise :class:`DatasetError` for targets outside ``[0, num_classes)`` or of the wrong size."""
    for d in data:
        bad = None
        if d.label >= num_classes or d.label < -1:
            bad = f"label {d.label}"
        elif any(not 0 <= k < num_classes for k in d.labels):
            bad = f"labels {d.labels}"
        elif d.dist is not None and len(d.dist) != num_classes:
            bad = f"a distribution of length {len(d.dist)}"
        elif d.va is not None and len(d.va) != 2:
            bad = f"va {d.va}"
        if bad:
            raise DatasetError(f"dataset {name} ({split}): {d.impath} has {bad} but there are {num_classes} classes")


class DatasetBase:
    """Train / val / test lists of :class:`Datum`, class names, targets and task.

    Args:
        train_x, val, test: the splits (``val`` may be empty).
        classnames: C class names; index = label.
        targets: the target kinds every datum carries, a subset of {"label","labels","dist","va"}.
        task: "single_label" or "multi_label" (which target the trainers' main loss uses).
        name: dataset name used in messages.
        root: the dataset folder; split files and few-shot caches live here and the paths in
            them are relative to it.
    """

    def __init__(
        self,
        train_x: List[Datum],
        val: List[Datum],
        test: List[Datum],
        classnames: List[str],
        targets: Set[str],
        task: str = "single_label",
        name: str = "",
        root: str = "",
    ) -> None:
        unknown = set(targets) - TARGET_KINDS
        if unknown:
            raise DatasetError(f"dataset {name}: unknown target kinds {sorted(unknown)} (known: {sorted(TARGET_KINDS)})")
        if task not in TASKS:
            raise DatasetError(f"dataset {name}: unknown task {task!r} (expected one of {TASKS})")
        self._train_x = list(train_x)
        self._val = list(val)
        self._test = list(test)
        self._classnames = list(classnames)
        self._targets = set(targets)
        self._task = task
        self._name = name or type(self).__name__
        self._root = os.path.abspath(root) if root else ""
        self._existing: Collection[str] = frozenset()  # image files this start found (with_existing)
        for split, data in (("train", self._train_x), ("val", self._val), ("test", self._test)):
            _validate(data, split, len(self._classnames), self._name)

    def check_not_empty(self) -> None:
        """A dataset a run uses must have training and test samples (a metric over none means nothing);
        intermediate datasets (a k-fold pool) may be empty, so this is checked when a run builds its data."""
        empty = [split for split, data in (("train", self._train_x), ("test", self._test)) if not data]
        if empty:
            raise DatasetError(f"dataset {self._name}: the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} "
                               f"hold{'' if len(empty) > 1 else 's'} no samples (check the split files and DATASET.* "
                               "settings that select samples)")

    @property
    def train_x(self) -> List[Datum]:
        return self._train_x

    @property
    def val(self) -> List[Datum]:
        return self._val

    @property
    def test(self) -> List[Datum]:
        return self._test

    @property
    def classnames(self) -> List[str]:
        return self._classnames

    @property
    def num_classes(self) -> int:
        return len(self._classnames)

    @property
    def lab2cname(self) -> Dict[int, str]:
        return dict(enumerate(self._classnames))

    @property
    def targets(self) -> Set[str]:
        return set(self._targets)

    @property
    def task(self) -> str:
        return self._task

    @property
    def name(self) -> str:
        return self._name

    @property
    def root(self) -> str:
        return self._root

    def require(self, targets: Iterable[str]) -> None:
        """Raise :class:`DatasetError` unless this dataset provides every target in ``targets``."""
        needed = set(targets)
        if not needed <= self._targets:
            raise DatasetError(
                f"dataset {self._name} provides targets {sorted(self._targets)}; trainer needs {sorted(needed)} "
                f"(missing: {sorted(needed - self._targets)})"
            )

    @property
    def existing_files(self) -> Collection[str]:
        """Image paths the start-up screening found as regular files in this process (a later
        existence check skips them; every other path is checked on disk)."""
        return self._existing

    def with_existing(self, paths: Collection[str]) -> "DatasetBase":
        """This dataset, remembering that ``paths`` exist (see :attr:`existing_files`)."""
        new = copy.copy(self)
        new._existing = paths
        return new

    def replace(self, **changes: Any) -> "DatasetBase":
        """A shallow copy of this dataset (same class) with some fields replaced and re-validated.

        Keys: train_x, val, test, classnames, targets, task.
        """
        new = copy.copy(self)
        for key, value in changes.items():
            if key not in ("train_x", "val", "test", "classnames", "targets", "task"):
                raise TypeError(f"cannot replace {key!r}")
            setattr(new, "_" + key, list(value) if isinstance(value, list) else value)
        if new._task not in TASKS:
            raise DatasetError(f"dataset {new._name}: unknown task {new._task!r} (expected one of {TASKS})")
        for split, data in (("train", new._train_x), ("val", new._val), ("test", new._test)):
            _validate(data, split, len(new._classnames), new._name)
        return new

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self._name!r}, classes={self.num_classes}, train={len(self._train_x)}, "
            f"val={len(self._val)}, test={len(self._test)}, targets={sorted(self._targets)}, task={self._task!r})"
        )

    @classmethod
    def from_config(cls, cfg: Any) -> "DatasetBase":
        """Build the full (not few-shot) dataset from the yacs config; defined by each dataset."""
        raise NotImplementedError(f"{cls.__name__} does not implement from_config")


def missing_files_error(missing: Sequence[str], total: int, what: str = "image file(s)", max_shown: int = 3) -> DatasetError:
    """The one-line error for files an annotation or a split names but the disk lacks."""
    shown = ", ".join(missing[:max_shown]) + (", ..." if len(missing) > max_shown else "")
    return DatasetError(f"{len(missing)} {what} missing (of {total}), e.g. {shown}")


def check_images(data: Iterable[Datum], max_shown: int = 3, known: Collection[str] = frozenset()) -> None:
    """Cheap start-up check that every image file exists (``known``: paths found this start already).

    Raises:
        DatasetError: "N image files are missing (of M), e.g. a, b, c".
    """
    data = list(data)
    missing = [d.impath for d in data if d.impath not in known and not os.path.isfile(d.impath)]
    if missing:
        raise missing_files_error(missing, len(data), max_shown=max_shown)
