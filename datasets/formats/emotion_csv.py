"""EmoCoOp's multi-label CSV format: ``EmotionDataset`` (the released config keys, unchanged).

Files: a training CSV (DATASET.CSV_PATH) and a test CSV (DATASET.TEST_CSV) with the columns
``filename,label``; ``label`` joins class names with ``_`` (``calm_positive``). Training images
are ``<DATASET.ROOT>/<filename>``, test images ``<DATASET.TEST_ROOT>/<filename>`` (TEST_ROOT ""
= ROOT); no filename may leave its folder. CSV_PATH, TEST_CSV and TEST_ROOT are used as given
when absolute; relative ones are looked up from the working directory (as the released code
does) and then from DATASET.ROOT.

Classes: DATASET.LABEL_MAPPING ``{name: index}`` (a yaml mapping, as in the released
``emotion_dataset.yaml``); empty = the 13 Dongba labels approval .. worried.

Split: every training row is used (the released code silently drops 15%): val gets
``VAL_RATIO / (TRAIN_RATIO + VAL_RATIO)`` of the training CSV, stratified by the first class,
seeded by DATASET.SPLIT_SEED, saved to ``<ROOT>/split_emotion_dataset.json`` and reused; test
is the whole TEST_CSV. A label outside the class list is an error (the released code ignores it).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Sequence, Tuple

from yacs.config import CfgNode as CN

from utils.errors import ConfigError, DatasetError
from configs.registry import register_config

from datasets.formats.annotations import read_table
from datasets.base import DATASET_REGISTRY, DatasetBase, Datum
from datasets.formats.csv_dataset import check_root
from datasets.formats.image_check import screen_from_config
from datasets.formats.common import NativeOptions, saved_split
from datasets.splits import resolve_path, split_train_val

logger = logging.getLogger(__name__)

DONGBA_LABELS = ("approval", "bloom", "calm", "devil", "fly", "guard", "negative", "neutral", "positive", "rest", "wilt", "work", "worried")
PATH_COLUMNS = ("filename", "path", "image", "impath", "file")
SPLIT_FILE = "split_emotion_dataset.json"


@register_config
def add_emotion_dataset_config(cfg: CN) -> None:
    """The released EmoCoOp keys DATASET.{CSV_PATH, TEST_CSV, TEST_ROOT, TRAIN_RATIO, VAL_RATIO, LABEL_MAPPING}."""
    cfg.DATASET.CSV_PATH = ""  # training CSV (filename,label); images under DATASET.ROOT
    cfg.DATASET.TEST_CSV = ""  # test CSV (filename,label); images under TEST_ROOT
    cfg.DATASET.TEST_ROOT = ""  # test image folder ("" = DATASET.ROOT)
    cfg.DATASET.TRAIN_RATIO = 0.7  # train : val proportion of the training CSV (with VAL_RATIO; nothing is dropped)
    cfg.DATASET.VAL_RATIO = 0.15  # val share = VAL_RATIO / (TRAIN_RATIO + VAL_RATIO) of the training CSV
    cfg.DATASET.LABEL_MAPPING = CN(new_allowed=True)  # {class name: index}; empty = the 13 Dongba labels


def classes_from_mapping(mapping: Dict[str, Any]) -> List[str]:
    """Class names in index order; the indices must be 0..C-1, each once."""
    if not mapping:
        return list(DONGBA_LABELS)
    try:
        pairs = sorted((int(v), str(k)) for k, v in mapping.items())
    except (TypeError, ValueError):
        raise ConfigError(f"DATASET.LABEL_MAPPING values must be class indices, got {dict(mapping)}") from None
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise ConfigError(f"DATASET.LABEL_MAPPING indices must be 0..{len(pairs) - 1}, each once; got {sorted(i for i, _ in pairs)}")
    return [name for _, name in pairs]


def find_path(value: str, root: str, key: str, want_dir: bool = False) -> str:
    """``value`` as given if absolute, else from the working directory, else from ``root``."""
    if not value:
        raise DatasetError(f"{key} is empty")
    value = os.path.expanduser(value)
    tried = [value] if os.path.isabs(value) else [os.path.abspath(value), os.path.join(root, value)]
    for path in tried:
        if os.path.isdir(path) if want_dir else os.path.isfile(path):
            return os.path.abspath(path)
    raise DatasetError(f"{key} not found: {' or '.join(tried)}")


def parse_label(value: str, index: Dict[str, int], where: str) -> Tuple[int, ...]:
    """Class indices of one label cell: a class name, or names joined by ``_``."""
    if value in index:
        return (index[value],)
    parts = [p for p in value.split("_") if p]
    if not parts:
        raise DatasetError(f"{where}: empty label")
    for p in parts:
        if p not in index:
            shown = ", ".join(list(index)[:13]) + (", ..." if len(index) > 13 else "")
            raise DatasetError(f"{where}: label {p!r} is not in the class list ({len(index)} classes: {shown})")
    return tuple(sorted(set(index[p] for p in parts)))


def read_label_csv(csv_path: str, image_root: str, classnames: Sequence[str]) -> List[Datum]:
    """Multi-label Datums of one ``filename,label`` CSV; images under ``image_root``."""
    df = read_table(csv_path)
    pcol = next((c for c in PATH_COLUMNS if c in df.columns), None)
    if pcol is None or "label" not in df.columns:
        raise DatasetError(f"{csv_path}: expected columns filename,label (got {', '.join(df.columns)})")
    index = {c: i for i, c in enumerate(classnames)}
    out = []
    for i, row in enumerate(df.to_dict("records")):
        where = f"{csv_path} line {i + 2}"
        if not row[pcol]:
            raise DatasetError(f"{where}: empty image path")
        impath = resolve_path(row[pcol], image_root, where)
        labels = parse_label(row["label"], index, where)
        out.append(Datum(impath=impath, labels=labels, classname="_".join(classnames[k] for k in labels)))
    return out


@DATASET_REGISTRY.register()
class EmotionDataset(DatasetBase):
    """Multi-label images listed in ``filename,label`` CSVs (module docstring)."""

    @classmethod
    def load(
        cls,
        root: str,
        csv_path: str,
        test_csv: str,
        *,
        test_root: str = "",
        classnames: Sequence[str] = DONGBA_LABELS,
        train_ratio: float = 0.7,
        val_ratio: float = 0.15,
        split_seed: int = 42,
        name: str = "EmotionDataset",
    ) -> "EmotionDataset":
        if train_ratio <= 0 or val_ratio < 0:
            raise ConfigError(f"DATASET.TRAIN_RATIO must be > 0 and DATASET.VAL_RATIO >= 0, got {train_ratio} and {val_ratio}")
        root = check_root(root)
        train_csv = find_path(csv_path, root, "DATASET.CSV_PATH")
        if not test_csv:
            raise DatasetError(f"{name}: DATASET.TEST_CSV is empty; the test split comes from TEST_CSV (images under TEST_ROOT)")
        test_csv = find_path(test_csv, root, "DATASET.TEST_CSV")
        test_dir = find_path(test_root, root, "DATASET.TEST_ROOT", want_dir=True) if test_root else root
        names = list(classnames)
        data = read_label_csv(train_csv, root, names)
        test = read_label_csv(test_csv, test_dir, names)
        val_share = val_ratio / (train_ratio + val_ratio)
        meta = {"format": "EmotionDataset", "csv": os.path.basename(train_csv), "val_share": val_share, "seed": split_seed}
        s = saved_split(root, SPLIT_FILE, data, meta, lambda d: _carve(d, val_share, split_seed), name)
        logger.info("%s: %d training rows -> train %d, val %d (nothing dropped); test %d rows from %s",
                    name, len(data), len(s["train"]), len(s["val"]), len(test), test_csv)
        if not test:
            raise DatasetError(f"{name}: {test_csv} has no rows")
        return cls(s["train"], s["val"], test, names, {"labels"}, task="multi_label", name=name, root=root)

    @classmethod
    def from_config(cls, cfg: Any) -> "EmotionDataset":
        d = cfg.DATASET
        ds = cls.load(
            d.ROOT, d.CSV_PATH, d.TEST_CSV, test_root=d.TEST_ROOT, classnames=classes_from_mapping(dict(d.LABEL_MAPPING)),
            train_ratio=float(d.TRAIN_RATIO), val_ratio=float(d.VAL_RATIO), split_seed=NativeOptions.from_config(cfg).split_seed,
            name=d.NAME or "EmotionDataset",
        )
        return screen_from_config(ds, cfg)


def _carve(data: Sequence[Datum], val_share: float, seed: int) -> Dict[str, List[Datum]]:
    train, val = split_train_val(data, val_share, seed)
    return {"train": train, "val": val, "test": []}
