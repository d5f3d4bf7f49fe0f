"""Few-shot sampling with a JSON cache, and base/new class subsampling (CoOp semantics).

Written once for every dataset: :func:`datasets.build.build_dataset` calls these after a
dataset's ``from_config`` returned its full splits.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

from utils.errors import DatasetError

from .base import Datum
from .splits import (
    atomic_write_json,
    check_nonempty,
    read_split_json,
    relative_path,
    sample_multi_label,
    sample_single_label,
)

logger = logging.getLogger(__name__)

CACHE_VERSION = 1


def fewshot_cache_path(root: str, num_shots: int, seed: int, multi_label: bool) -> str:
    """``<root>/split_fewshot/shot_{N}-seed_{S}.json`` (``-multi_label`` suffix for multi-label sampling)."""
    suffix = "-multi_label" if multi_label else ""
    return os.path.join(root, "split_fewshot", f"shot_{num_shots}-seed_{seed}{suffix}.json")


def _fingerprint(train: Sequence[Datum], val: Sequence[Datum], root: str, multi_label: bool) -> str:
    """Hash of the full splits the sample was drawn from; a changed dataset invalidates the cache."""
    h = hashlib.sha1(f"v{CACHE_VERSION}-ml{int(multi_label)}".encode())
    for split, data in (("train", train), ("val", val)):
        items = [[relative_path(d.impath, root), d.label, sorted(d.labels)] for d in data]
        h.update(json.dumps([split, items]).encode())
    return h.hexdigest()


def _lookup(entries: list, data: Sequence[Datum], root: str) -> Optional[List[Datum]]:
    """Map cached ``[rel_path, label, ...]`` entries back to the full split's Datums (None if any is missing)."""
    by_path: Dict[str, List[Datum]] = defaultdict(list)
    for d in data:
        by_path[relative_path(d.impath, root)].append(d)
    out: List[Datum] = []
    for entry in entries:
        candidates = by_path.get(str(entry[0]))
        if not candidates:
            return None
        out.append(candidates.pop(0))
    return out


def sample_fewshot(
    train: Sequence[Datum],
    val: Sequence[Datum],
    *,
    num_shots: int,
    seed: int,
    classnames: Sequence[str],
    multi_label: bool,
    root: str = "",
    name: str = "",
) -> Tuple[List[Datum], List[Datum]]:
    """``num_shots`` per class from ``train`` and ``min(num_shots, 4)`` per class from ``val``.

    Single-label data: a seeded random choice per class. Multi-label data: a greedy seeded
    subset in which every class has at least that many positives. With ``root`` the result is
    cached as JSON (relative paths) under ``<root>/split_fewshot`` and reused while the full
    splits are unchanged.

    Raises:
        DatasetError: NUM_SHOTS larger than a class's training images, or a class left empty.
    """
    if num_shots <= 0:
        return list(train), list(val)
    cache = fewshot_cache_path(root, num_shots, seed, multi_label) if root else ""
    fp = _fingerprint(train, val, root, multi_label) if root else ""
    if cache and os.path.isfile(cache):
        obj = read_split_json(cache)
        if obj.get("meta", {}).get("fingerprint") == fp:
            train_fs = _lookup(obj.get("train", []), train, root)
            val_fs = _lookup(obj.get("val", []), val, root)
            if train_fs is not None and val_fs is not None:
                logger.info("few-shot split read from %s", cache)
                return train_fs, val_fs
        logger.info("few-shot cache %s is stale (dataset changed); sampling again", cache)

    sampler = sample_multi_label if multi_label else sample_single_label
    train_fs = sampler(train, num_shots, seed, classnames, split="train", strict=True)
    val_fs = sampler(val, min(num_shots, 4), seed, classnames, split="val", strict=False) if val else []
    empty = check_nonempty(train_fs, classnames, "train", multi_label)
    if empty:
        raise DatasetError(f"dataset {name}: class(es) {empty} have no training images after few-shot sampling")
    if cache:
        meta = {"num_shots": num_shots, "seed": seed, "multi_label": multi_label, "fingerprint": fp}
        obj = {
            "train": [[relative_path(d.impath, root), d.label, d.classname] for d in train_fs],
            "val": [[relative_path(d.impath, root), d.label, d.classname] for d in val_fs],
            "test": [],
            "meta": meta,
        }
        try:
            atomic_write_json(obj, cache)
            logger.info("few-shot split saved to %s", cache)
        except OSError as e:
            logger.warning("cannot write few-shot cache %s (%s); continuing without it", cache, e)
    return train_fs, val_fs


def subsample_classes(
    splits: Sequence[Sequence[Datum]], classnames: Sequence[str], subsample: str, multi_label: bool
) -> Tuple[List[List[Datum]], List[str]]:
    """Keep the base (first ceil(C/2)) or new (the rest) classes and relabel them 0..

    Single-label items outside the kept classes are dropped; multi-label items are kept when
    they have a kept positive, and their ``labels`` are filtered. ``dist`` is restricted to the
    kept classes and renormalised (one-hot on the label if no mass is left).
    """
    subsample = subsample.lower()
    if subsample == "all":
        return [list(s) for s in splits], list(classnames)
    if subsample not in ("base", "new"):
        raise DatasetError(f"DATASET.SUBSAMPLE_CLASSES must be all, base or new, got {subsample!r}")
    n = len(classnames)
    m = (n + 1) // 2
    kept = list(range(m)) if subsample == "base" else list(range(m, n))
    remap = {old: new for new, old in enumerate(kept)}
    new_names = [classnames[c] for c in kept]
    out: List[List[Datum]] = []
    for data in splits:
        new_data: List[Datum] = []
        for d in data:
            labels = tuple(remap[k] for k in d.labels if k in remap)
            keep = bool(labels) if multi_label else d.label in remap
            if not keep:
                continue
            label = remap.get(d.label, -1)
            dist = None
            if d.dist is not None:
                part = [d.dist[c] for c in kept]
                total = sum(part)
                if total > 0:
                    dist = tuple(p / total for p in part)
                else:
                    pos = [label] if label >= 0 else list(labels)
                    dist = tuple(1.0 / len(pos) if i in pos else 0.0 for i in range(len(kept)))
            classname = new_names[label] if label >= 0 else "_".join(new_names[k] for k in labels)
            new_data.append(
                Datum(d.impath, label, classname, labels, dist, d.va, d.domain, dict(d.attrs))
            )
        out.append(new_data)
    return out, new_names
