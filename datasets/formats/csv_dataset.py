"""CSV-annotated datasets: ``CSVDataset`` (keys under DATASET.CSV).

The dataset folder is ROOT/DIR: FILE, TEST_FILE and IMAGE_DIR are relative to it, the image
paths in the CSVs are relative to its IMAGE_DIR and must stay inside it (few-shot caches are
written there too). Without a
split column every row of FILE is training data; a missing val split is carved from train
(stratified, seeded, DATASET.VAL_PERCENT); the test split comes from TEST_FILE or the split
column. Columns: see :mod:`datasets.formats.annotations`.
"""
from __future__ import annotations

import logging
import os
from typing import Any, List, Optional, Sequence

from yacs.config import CfgNode as CN

from utils.errors import DatasetError
from configs.registry import register_config

from datasets.formats.annotations import CSVSpec, infer_classnames, parse_table, read_table
from datasets.base import DATASET_REGISTRY, DatasetBase
from datasets.formats.image_check import screen_from_config
from datasets.splits import split_train_val

logger = logging.getLogger(__name__)


@register_config
def add_csv_dataset_config(cfg: CN) -> None:
    """DATASET.CSV.* keys of :class:`CSVDataset`."""
    cfg.DATASET.CSV = CN()
    cfg.DATASET.CSV.DIR = ""  # dataset folder under DATASET.ROOT ("" = ROOT itself); no image may leave it
    cfg.DATASET.CSV.FILE = ""  # annotation CSV, relative to the dataset folder (or absolute)
    cfg.DATASET.CSV.TEST_FILE = ""  # CSV holding the test split ("" = rows of FILE whose split column is test)
    cfg.DATASET.CSV.IMAGE_DIR = ""  # folder under the dataset folder that the CSV image paths start from
    cfg.DATASET.CSV.PATH_COLUMN = ""  # image path column ("" = first of path, impath, image, filename, file)
    cfg.DATASET.CSV.LABEL_COLUMN = ""  # label column: class name or index, or names joined by SEPARATOR ("" = label)
    cfg.DATASET.CSV.SEPARATOR = "_"  # joins class names of multi-label rows (column labels, or LABEL_COLUMN)
    cfg.DATASET.CSV.SPLIT_COLUMN = "split"  # optional column with train / val / test
    cfg.DATASET.CSV.CLASSNAMES = []  # class list in index order ([] = inferred: dist_<c> columns, else sorted names)


def check_root(root: str, key: str = "DATASET.ROOT") -> str:
    """Absolute ``root``; DatasetError naming ``key`` when it is empty or not a folder."""
    if not root:
        raise DatasetError(f"{key} is empty; set it to the dataset folder")
    if not os.path.isdir(root):
        raise DatasetError(f"dataset folder not found: {root} ({key})")
    return os.path.abspath(root)


@DATASET_REGISTRY.register()
class CSVDataset(DatasetBase):
    """Images listed in CSV files; single-label, multi-label, distribution and VA targets."""

    @classmethod
    def load(
        cls,
        root: str,
        file: str,
        *,
        test_file: str = "",
        image_dir: str = "",
        classnames: Optional[Sequence[str]] = None,
        spec: CSVSpec = CSVSpec(),
        val_percent: float = 0.1,
        split_seed: int = 0,
        task: str = "",
        name: str = "CSVDataset",
    ) -> "CSVDataset":
        """Parse ``root/file`` (and ``root/test_file``).

        Args:
            classnames: class list in index order; None infers it from the CSVs.
            task: "" = multi_label if the data only has multi-label targets, else single_label.
        """
        root = check_root(root, "DATASET.ROOT / DATASET.CSV.DIR")
        if not file:
            raise DatasetError("DATASET.CSV.FILE is empty; set it to the annotation CSV")
        main_path = os.path.join(root, file)
        frames = [(main_path, read_table(main_path))]
        if test_file:
            test_path = os.path.join(root, test_file)
            frames.append((test_path, read_table(test_path)))
        names: List[str] = list(classnames) if classnames else infer_classnames(frames, spec)
        splits = {"train": [], "val": [], "test": []}
        targets: Optional[set] = None
        for i, (path, df) in enumerate(frames):
            is_test = i == 1
            parsed = parse_table(
                df, path, root=root, image_dir=image_dir, classnames=names, spec=spec,
                default_split="test" if is_test else "train", force_split=is_test,
            )
            for key, data in parsed.splits.items():
                splits[key] += data
            targets = parsed.targets if targets is None else targets & parsed.targets
        if not splits["train"]:
            raise DatasetError(f"{main_path}: no training rows")
        if not splits["test"]:
            raise DatasetError(f"{main_path}: no test rows; set DATASET.CSV.TEST_FILE or add a split column with test rows")
        if not splits["val"]:
            splits["train"], splits["val"] = split_train_val(splits["train"], val_percent, split_seed)
            logger.info("%s: no val split; %d of %d training rows carved out for val", name, len(splits["val"]), len(splits["val"]) + len(splits["train"]))
        targets = targets or set()
        if not task:
            task = "multi_label" if "labels" in targets and "label" not in targets else "single_label"
        return cls(splits["train"], splits["val"], splits["test"], names, targets, task=task, name=name, root=root)

    @classmethod
    def from_config(cls, cfg: Any) -> "CSVDataset":
        c = cfg.DATASET.CSV
        spec = CSVSpec(path_column=c.PATH_COLUMN, label_column=c.LABEL_COLUMN, separator=c.SEPARATOR, split_column=c.SPLIT_COLUMN)
        ds = cls.load(
            os.path.join(check_root(cfg.DATASET.ROOT), c.DIR), c.FILE, test_file=c.TEST_FILE, image_dir=c.IMAGE_DIR, classnames=list(c.CLASSNAMES) or None,
            spec=spec, val_percent=float(cfg.DATASET.VAL_PERCENT), name=cfg.DATASET.NAME or "CSVDataset",
        )
        return screen_from_config(ds, cfg)
