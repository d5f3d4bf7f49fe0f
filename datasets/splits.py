"""Split files (CoOp JSON format), a stratified train/val split and few-shot sampling.

Split JSON: ``{"train": [[rel_path, label, classname], ...], "val": [...], "test": [...]}``
with paths relative to the dataset folder. An entry may carry a 4th element, a dict with
``labels`` / ``dist`` / ``va``; the first three stay CoOp-compatible. Other top-level keys
(e.g. ``"meta"``) are ignored by readers.
"""
from __future__ import annotations

import json
import logging
import os
import random
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from utils.errors import DatasetError
from utils.fileio import atomic_write

from .base import Datum

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def atomic_write_json(obj: Any, path: str) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)

    atomic_write(path, write)


def relative_path(impath: str, root: str) -> str:
    """``impath`` relative to ``root`` with "/" separators; DatasetError if it is outside ``root``."""
    return relative_paths([impath], root)[0]


def relative_paths(impaths: Sequence[str], root: str) -> List[str]:
    """:func:`relative_path` of each path (the root is resolved once: start-up matches 100k paths)."""
    root_abs = os.path.abspath(root)
    prefix = root_abs.rstrip(os.sep) + os.sep
    n = len(prefix)
    out = []
    for impath in impaths:
        if impath.startswith(prefix) and os.path.normpath(impath) == impath:  # fast path: normalised, inside
            out.append(impath[n:].replace(os.sep, "/") if os.sep != "/" else impath[n:])
            continue
        abs_path = os.path.abspath(impath)
        if os.path.commonpath([root_abs, abs_path]) != root_abs:
            raise DatasetError(f"image {impath} is outside the dataset folder {root_abs}")
        out.append(os.path.relpath(abs_path, root_abs).replace(os.sep, "/"))
    return out


def resolve_path(rel_path: str, root: str, source: str) -> str:
    """Absolute path of ``rel_path`` under ``root``; DatasetError if it is absolute or escapes ``root``."""
    root_abs = os.path.abspath(root)
    if os.path.isabs(rel_path):
        if os.path.commonpath([root_abs, os.path.abspath(rel_path)]) != root_abs:
            raise DatasetError(f"{source}: path {rel_path!r} escapes the dataset root {root_abs}")
        return os.path.abspath(rel_path)
    full = os.path.abspath(os.path.join(root_abs, rel_path))
    if os.path.commonpath([root_abs, full]) != root_abs:
        raise DatasetError(f"{source}: path {rel_path!r} escapes the dataset root {root_abs}")
    return full


def datum_to_entry(d: Datum, root: str) -> list:
    """``[rel_path, label, classname]`` plus a dict of labels/dist/va when the datum has them."""
    entry: list = [relative_path(d.impath, root), d.label, d.classname]
    extra: Dict[str, Any] = {}
    if d.labels:
        extra["labels"] = list(d.labels)
    if d.dist is not None:
        extra["dist"] = list(d.dist)
    if d.va is not None:
        extra["va"] = list(d.va)
    if extra:
        entry.append(extra)
    return entry


def entry_to_datum(entry: Sequence[Any], root: str, source: str) -> Datum:
    """Inverse of :func:`datum_to_entry`."""
    if not isinstance(entry, (list, tuple)) or len(entry) < 3:
        raise DatasetError(f"{source}: malformed split entry {entry!r} (expected [rel_path, label, classname])")
    rel, label, cname = entry[0], entry[1], entry[2]
    extra = entry[3] if len(entry) > 3 and isinstance(entry[3], dict) else {}
    dist = extra.get("dist")
    va = extra.get("va")
    return Datum(
        impath=resolve_path(str(rel), root, source),
        label=int(label),
        classname=str(cname),
        labels=tuple(int(k) for k in extra.get("labels", ())),
        dist=tuple(float(p) for p in dist) if dist is not None else None,
        va=(float(va[0]), float(va[1])) if va is not None else None,
    )


def write_split(splits: Dict[str, List[Datum]], path: str, root: str, meta: Optional[dict] = None) -> None:
    """Write a split JSON (paths relative to ``root``) atomically; ``meta`` goes under key "meta"."""
    obj: Dict[str, Any] = {k: [datum_to_entry(d, root) for d in splits.get(k, [])] for k in SPLITS}
    if meta is not None:
        obj["meta"] = meta
    atomic_write_json(obj, path)


def read_split_json(path: str) -> dict:
    """The raw JSON object of a split file; DatasetError if unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"cannot read split file {path}: {e}") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"split file {path} must hold a JSON object with train/val/test lists")
    return obj


def read_split(path: str, root: str) -> Dict[str, List[Datum]]:
    """Read a split JSON; returns {"train": [...], "val": [...], "test": [...]} with absolute paths."""
    obj = read_split_json(path)
    return {k: [entry_to_datum(e, root, path) for e in obj.get(k, [])] for k in SPLITS}


def _strat_key(d: Datum) -> int:
    if d.label >= 0:
        return d.label
    return min(d.labels) if d.labels else -1


def split_train_val(data: Sequence[Datum], val_percent: float, seed: int = 0) -> Tuple[List[Datum], List[Datum]]:
    """Seeded stratified split of ``data`` into (train, val).

    Per class (single label, else the smallest positive index) ``round(n * val_percent)`` items
    go to val, at least one when the class has two or more items, never all of them.
    """
    if not 0.0 <= val_percent < 1.0:
        raise DatasetError(f"DATASET.VAL_PERCENT must be in [0, 1), got {val_percent}")
    groups: Dict[int, List[int]] = defaultdict(list)
    for i, d in enumerate(data):
        groups[_strat_key(d)].append(i)
    rng = random.Random(f"trainval-{seed}")
    val_idx = set()
    for key in sorted(groups):
        idx = groups[key][:]
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_percent))
        if val_percent > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val_idx.update(idx[:n_val])
    train = [d for i, d in enumerate(data) if i not in val_idx]
    val = [d for i, d in enumerate(data) if i in val_idx]
    return train, val


def _fail_or_warn(strict: bool, msg: str) -> None:
    if strict:
        raise DatasetError(msg)
    logger.warning(msg + "; using all of them")


def sample_single_label(
    data: Sequence[Datum], num_shots: int, seed: int, classnames: Sequence[str], split: str = "train", strict: bool = True
) -> List[Datum]:
    """``num_shots`` items per class, chosen at random (seeded) per class.

    ``strict``: a class with fewer items raises DatasetError; otherwise all its items are kept.
    """
    groups: Dict[int, List[Datum]] = defaultdict(list)
    for d in data:
        if d.label >= 0:
            groups[d.label].append(d)
    rng = random.Random(f"fewshot-{split}-{seed}")
    out: List[Datum] = []
    for c, name in enumerate(classnames):
        items = groups.get(c, [])
        if len(items) < num_shots:
            _fail_or_warn(strict, f"class {name!r} has {len(items)} {split} images; NUM_SHOTS={num_shots} needs {num_shots}")
            out.extend(items)
        else:
            out.extend(rng.sample(items, num_shots))
    return out


def sample_multi_label(
    data: Sequence[Datum], num_shots: int, seed: int, classnames: Sequence[str], split: str = "train", strict: bool = True
) -> List[Datum]:
    """A subset in which every class has at least ``num_shots`` positives (greedy, seeded).

    Classes are served from the rarest up; for each, shuffled candidates holding that class are
    added until the class has ``num_shots`` positives (counting positives of earlier picks).
    """
    positives: Dict[int, List[int]] = defaultdict(list)
    for i, d in enumerate(data):
        for k in set(d.labels):
            positives[k].append(i)
    for c, name in enumerate(classnames):
        if len(positives.get(c, [])) < num_shots:
            _fail_or_warn(
                strict, f"class {name!r} has {len(positives.get(c, []))} positive {split} images; NUM_SHOTS={num_shots} needs {num_shots}"
            )
    rng = random.Random(f"fewshot-ml-{split}-{seed}")
    order = list(range(len(data)))
    rng.shuffle(order)
    rank = {i: r for r, i in enumerate(order)}
    counts = [0] * len(classnames)
    chosen: set = set()
    for c in sorted(range(len(classnames)), key=lambda k: (len(positives.get(k, [])), k)):
        for i in sorted(positives.get(c, []), key=rank.__getitem__):
            if counts[c] >= num_shots:
                break
            if i in chosen:
                continue
            chosen.add(i)
            for k in set(data[i].labels):
                counts[k] += 1
    return [data[i] for i in sorted(chosen, key=rank.__getitem__)]


def check_nonempty(data: Sequence[Datum], classnames: Sequence[str], split: str, multi_label: bool) -> List[str]:
    """Names of classes without any (positive) item in ``data``."""
    present = set()
    for d in data:
        present.update(d.labels if multi_label else ([d.label] if d.label >= 0 else []))
    return [name for c, name in enumerate(classnames) if c not in present]
