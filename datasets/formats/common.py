"""Shared pieces of the native-format readers: split keys, saved splits, folder listing.

Keys (``DATASET.*``, read by every reader in its ``from_config``):
    SPLIT_SEED     seed of every split the framework makes itself (train/val/test carving)
    SPLIT_RATIOS   (train, val, test) shares when a dataset comes as one unsplit set
    IMAGE_CHECK / SKIP_BAD_IMAGES  start-up image screening (see :mod:`datasets.formats.image_check`)

A split the framework makes is stratified, seeded, saved as a CoOp split JSON in the dataset
folder (relative paths, settings under ``"meta"``) and reused while it covers exactly the
current items with the same settings; items are never dropped by a split.
"""
from __future__ import annotations

import json
import logging
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple

from yacs.config import CfgNode as CN

from utils.errors import ConfigError, DatasetError
from configs.registry import register_config

from datasets.base import Datum
from datasets.splits import SPLITS, read_split_json, relative_paths, write_split

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
IMAGE_CHECKS = ("exists", "header", "decode")
DEFAULT_SPLIT_SEED = 42
DEFAULT_SPLIT_RATIOS = (0.7, 0.1, 0.2)
DEFAULT_IMAGE_CHECK = "header"


@register_config
def add_native_config(cfg: CN) -> None:
    """DATASET.{SPLIT_SEED, SPLIT_RATIOS, IMAGE_CHECK, SKIP_BAD_IMAGES}."""
    cfg.DATASET.SPLIT_SEED = DEFAULT_SPLIT_SEED  # seed of the train/val/test splits the framework makes (saved to JSON)
    cfg.DATASET.SPLIT_RATIOS = DEFAULT_SPLIT_RATIOS  # (train, val, test) shares for datasets that come unsplit
    cfg.DATASET.IMAGE_CHECK = DEFAULT_IMAGE_CHECK  # start-up image check: exists | header (open) | decode (full read)
    cfg.DATASET.SKIP_BAD_IMAGES = False  # unreadable images: False = error naming them, True = skip and log the count


@dataclass(frozen=True)
class NativeOptions:
    """The shared keys as plain values."""

    split_seed: int = DEFAULT_SPLIT_SEED
    split_ratios: Tuple[float, float, float] = DEFAULT_SPLIT_RATIOS
    image_check: str = DEFAULT_IMAGE_CHECK
    skip_bad_images: bool = False
    val_percent: float = 0.1

    @classmethod
    def from_config(cls, cfg: Any) -> "NativeOptions":
        """Read and check the keys; a config built without :func:`add_native_config` gets the defaults."""
        d = cfg.DATASET
        ratios = tuple(float(r) for r in d.get("SPLIT_RATIOS", DEFAULT_SPLIT_RATIOS))
        check = str(d.get("IMAGE_CHECK", DEFAULT_IMAGE_CHECK))
        return cls(
            split_seed=int(d.get("SPLIT_SEED", DEFAULT_SPLIT_SEED)), split_ratios=check_ratios(ratios),
            image_check=check_image_mode(check), skip_bad_images=bool(d.get("SKIP_BAD_IMAGES", False)),
            val_percent=float(d.VAL_PERCENT),
        )


def check_ratios(ratios: Sequence[float], key: str = "DATASET.SPLIT_RATIOS") -> Tuple[float, float, float]:
    """(train, val, test) shares: three non-negative numbers summing to 1 with train > 0."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or ratios[0] <= 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise ConfigError(f"{key} must be three shares (train, val, test) >= 0 that sum to 1 with train > 0, got {tuple(ratios)}")
    return (float(ratios[0]), float(ratios[1]), float(ratios[2]))


def check_image_mode(mode: str) -> str:
    if mode not in IMAGE_CHECKS:
        raise ConfigError(f"DATASET.IMAGE_CHECK must be one of {', '.join(IMAGE_CHECKS)}, got {mode!r}")
    return mode


def _strat_key(d: Datum) -> int:
    if d.label >= 0:
        return d.label
    return min(d.labels) if d.labels else -1


def split_three(
    data: Sequence[Datum], ratios: Tuple[float, float, float], seed: int, key: Callable[[Datum], Any] = _strat_key
) -> Dict[str, List[Datum]]:
    """Seeded stratified split into train / val / test; every item lands in exactly one split.

    Per stratum of n items: ``round(n * r_test)`` test and ``round(n * r_val)`` val items (at
    least one each when the share is positive and the stratum is big enough to keep one
    training item), the rest train. Input order is kept inside each split.
    """
    groups: Dict[Any, List[int]] = defaultdict(list)
    for i, d in enumerate(data):
        groups[key(d)].append(i)
    rng = random.Random(f"split3-{seed}")
    where: Dict[int, str] = {}
    _, r_val, r_test = ratios
    for k in sorted(groups, key=str):
        idx = groups[k][:]
        rng.shuffle(idx)
        n = len(idx)
        n_test = int(round(n * r_test))
        n_val = int(round(n * r_val))
        if r_test > 0 and n >= 2:
            n_test = max(n_test, 1)
        if r_val > 0 and n >= 3:
            n_val = max(n_val, 1)
        while n_test + n_val > n - 1 and n_test + n_val > 0:  # keep one training item
            if n_val >= n_test and n_val > 0:
                n_val -= 1
            else:
                n_test -= 1
        for j, i in enumerate(idx):
            where[i] = "test" if j < n_test else ("val" if j < n_test + n_val else "train")
    out: Dict[str, List[Datum]] = {s: [] for s in SPLITS}
    for i, d in enumerate(data):
        out[where[i]].append(d)
    return out


def _keys(data: Sequence[Datum], root: str) -> List[Tuple[str, int]]:
    """(relative path, occurrence) per item, so repeated paths stay distinct."""
    seen: Dict[str, int] = defaultdict(int)
    out = []
    for rel in relative_paths([d.impath for d in data], root):
        out.append((rel, seen[rel]))
        seen[rel] += 1
    return out


def saved_split(
    root: str, filename: str, data: Sequence[Datum], meta: dict, make: Callable[[Sequence[Datum]], Dict[str, List[Datum]]], name: str
) -> Dict[str, List[Datum]]:
    """The split of ``data`` recorded in ``root/filename``, or a new one from ``make`` (then saved).

    The file is used while its ``meta`` equals ``meta`` and it lists exactly the items of
    ``data`` (by relative path); the items themselves always come from ``data``, so values
    parsed from the annotation files are never replaced by the JSON copy. A file that does
    not match is rewritten (logged).
    """
    path = os.path.join(root, filename)
    meta = json.loads(json.dumps(meta))
    keys = _keys(data, root)
    if os.path.isfile(path):
        obj = read_split_json(path)
        if obj.get("meta") == meta:
            member: Dict[Tuple[str, int], str] = {}
            seen: Dict[str, int] = defaultdict(int)
            for split in SPLITS:
                for entry in obj.get(split, []):
                    rel = str(entry[0]) if isinstance(entry, (list, tuple)) and entry else ""
                    member[(rel, seen[rel])] = split
                    seen[rel] += 1
            if set(member) == set(keys):
                out: Dict[str, List[Datum]] = {s: [] for s in SPLITS}
                for k, d in zip(keys, data):
                    out[member[k]].append(d)
                logger.info("%s: split read from %s (%s)", name, path, ", ".join(f"{s} {len(v)}" for s, v in out.items()))
                return out
        logger.info("%s: %s does not match the current files or settings; splitting again", name, path)
    out = make(data)
    try:
        write_split(out, path, root, meta=meta)
        logger.info("%s: split saved to %s (%s)", name, path, ", ".join(f"{s} {len(v)}" for s, v in out.items()))
    except OSError as e:
        logger.warning("%s: cannot write %s (%s); continuing without it", name, path, e)
    return out


def list_images(folder: str) -> Tuple[List[str], List[str]]:
    """(sorted image file names, other entries) of one folder; hidden entries are ignored."""
    images, other = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
            images.append(entry.name)
        else:
            other.append(os.path.join(folder, entry.name))
    return images, other


def report_ignored(name: str, what: str, paths: Sequence[str], max_shown: int = 3) -> None:
    """Log (WARNING) entries a reader did not use, with their count and the first few."""
    if paths:
        shown = ", ".join(paths[:max_shown]) + (", ..." if len(paths) > max_shown else "")
        logger.warning("%s: ignored %d %s, e.g. %s", name, len(paths), what, shown)


def dominant(dist: Sequence[float], rel_tol: float = 1e-6) -> Tuple[int, ...]:
    """Indices of the largest values of ``dist`` (ties within ``rel_tol`` kept), ascending."""
    top = max(dist)
    return tuple(i for i, p in enumerate(dist) if p >= top - rel_tol * max(abs(top), 1.0))
