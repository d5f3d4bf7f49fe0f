"""Label-distribution sets with vote CSVs: FlickrLDL and TwitterLDL (keys under DATASET.LDL).

Layouts of ``<ROOT>/<DIR>`` (both with a CSV of an image column and one vote column per class,
e.g. ``flickrldl_config.csv``: ``image,amusement,awe,contentment,excitement,anger,disgust,fear,sadness``)::

    train/<image>, test/<image>   split as distributed; each image's row is found by its name
                                  under train/ or test/; val carved from train (DATASET.VAL_PERCENT)
    images/<image>                unsplit (IMAGE_DIR): DATASET.SPLIT_RATIOS (train, val, test)

Vote columns are matched to CLASSNAMES case-insensitively, in CLASSNAMES order (extra columns
are ignored). Targets: ``dist`` = votes / their sum, ``labels`` = the dominant class(es) (ties
kept as multi-hot). LABEL ``dominant`` makes the task multi-label; LABEL ``argmax`` adds a single
``label`` (ties broken towards the lower class index; their count is logged) and makes it
single-label. Splits the framework makes use DATASET.SPLIT_SEED, are stratified by the first
dominant class and are saved to ``split_ldl.json``. Registered as ``LDLDataset``,
``FlickrLDL`` and ``TwitterLDL``.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, List, Sequence, Tuple

from yacs.config import CfgNode as CN

from utils.errors import ConfigError, DatasetError
from configs.registry import register_config

from datasets.formats.annotations import read_table
from datasets.base import DATASET_REGISTRY, DatasetBase, Datum, missing_files_error
from datasets.formats.csv_dataset import check_root
from datasets.formats.image_check import screen_from_config
from datasets.formats.common import (
    DEFAULT_SPLIT_RATIOS,
    NativeOptions,
    dominant,
    list_images,
    report_ignored,
    saved_split,
    split_three,
)
from datasets.splits import resolve_path, split_train_val

logger = logging.getLogger(__name__)

MIKELS = ("amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness")
LABEL_MODES = ("dominant", "argmax")
SPLIT_FILE = "split_ldl.json"


@register_config
def add_ldl_config(cfg: CN) -> None:
    """DATASET.LDL.* keys of :class:`LDLDataset`."""
    cfg.DATASET.LDL = CN()
    cfg.DATASET.LDL.DIR = ""  # dataset folder under DATASET.ROOT, e.g. "FlickrLDL" ("" = ROOT itself)
    cfg.DATASET.LDL.CSV_FILE = ""  # vote CSV in the dataset folder, e.g. "flickrldl_config.csv"
    cfg.DATASET.LDL.IMAGE_COLUMN = "image"  # column with the image file name
    cfg.DATASET.LDL.CLASSNAMES = list(MIKELS)  # vote columns = classes, in index order
    cfg.DATASET.LDL.IMAGE_DIR = "images"  # image folder when there are no train/ test/ folders
    cfg.DATASET.LDL.LABEL = "dominant"  # dominant (multi-label, ties kept) | argmax (adds a single label)


def parse_votes(path: str, image_column: str, classnames: Sequence[str]) -> List[Tuple[str, Tuple[float, ...], int]]:
    """[(image name, distribution, CSV line)] of a vote CSV.

    Raises:
        DatasetError: missing columns, an empty name, or a row that is not a distribution
        (non-numbers, negative votes or no votes at all), naming file and line.
    """
    df = read_table(path)
    lower = {c.lower(): c for c in df.columns}
    if image_column.lower() not in lower:
        raise DatasetError(f"{path}: image column {image_column!r} not found (columns: {', '.join(df.columns)})")
    missing = [c for c in classnames if c.lower() not in lower]
    if missing:
        raise DatasetError(f"{path}: vote column(s) {', '.join(missing)} not found (columns: {', '.join(df.columns)})")
    icol = lower[image_column.lower()]
    vcols = [lower[c.lower()] for c in classnames]
    out = []
    for i, row in enumerate(df.to_dict("records")):
        where = f"{path} line {i + 2}"
        name = row[icol]
        if not name:
            raise DatasetError(f"{where}: empty image name")
        shown = ", ".join(f"{c}={row[col]}" for c, col in zip(classnames, vcols))
        try:
            votes = [float(row[c]) for c in vcols]
        except ValueError:
            raise DatasetError(f"{where}: votes must be numbers, got {shown}") from None
        total = sum(votes)
        if not all(math.isfinite(v) and v >= 0 for v in votes) or total <= 0:
            raise DatasetError(f"{where}: votes {shown} are not a distribution (need >= 0 with a positive sum)")
        out.append((name.replace("\\", "/"), tuple(v / total for v in votes), i + 2))
    return out


def _carve(data: Sequence[Datum], val_percent: float, seed: int) -> Dict[str, List[Datum]]:
    train, val = split_train_val(data, val_percent, seed)
    return {"train": train, "val": val, "test": []}


class LDLDataset(DatasetBase):
    """Images with vote distributions (module docstring)."""

    @classmethod
    def load(
        cls,
        dataset_dir: str,
        csv_file: str,
        *,
        image_column: str = "image",
        classnames: Sequence[str] = MIKELS,
        image_dir: str = "images",
        label_mode: str = "dominant",
        val_percent: float = 0.1,
        split_ratios: Tuple[float, float, float] = DEFAULT_SPLIT_RATIOS,
        split_seed: int = 42,
        name: str = "LDLDataset",
    ) -> "LDLDataset":
        if label_mode not in LABEL_MODES:
            raise ConfigError(f"DATASET.LDL.LABEL must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}")
        if not classnames:
            raise ConfigError("DATASET.LDL.CLASSNAMES is empty; list the vote columns")
        root = check_root(dataset_dir, "DATASET.ROOT / DATASET.LDL.DIR")
        if not csv_file:
            raise DatasetError(f"{name}: DATASET.LDL.CSV_FILE is empty; set it to the vote CSV (e.g. flickrldl_config.csv)")
        csv_path = os.path.join(root, csv_file)
        rows = parse_votes(csv_path, image_column, classnames)
        names = list(classnames)
        argmax = label_mode == "argmax"
        data: Dict[str, List[Datum]] = {"train": [], "val": [], "test": []}
        split_dirs = [s for s in ("train", "test") if os.path.isdir(os.path.join(root, s))]
        if split_dirs:
            if len(split_dirs) != 2:
                raise DatasetError(f"{name}: {root} has {split_dirs[0]}/ but not the other of train/ and test/")
            placed = cls._place(root, rows, csv_path, name)
            for split in ("train", "test"):
                data[split] = [cls._datum(p, dist, names, argmax) for p, dist in placed[split]]
            meta = {"format": "LDL", "layout": "train_test", "val_percent": val_percent, "seed": split_seed}
            carved = saved_split(root, SPLIT_FILE, data["train"], meta, lambda d: _carve(d, val_percent, split_seed), name)
            data["train"], data["val"] = carved["train"], carved["val"]
        else:
            every = []
            for rel, dist, line in rows:
                impath = resolve_path(os.path.join(image_dir, rel), root, f"{csv_path} line {line}")
                every.append(cls._datum(impath, dist, names, argmax))
            missing = [d.impath for d in every if not os.path.isfile(d.impath)]
            if missing:
                raise missing_files_error(missing, len(every))
            meta = {"format": "LDL", "layout": "images", "ratios": list(split_ratios), "seed": split_seed}
            data = saved_split(root, SPLIT_FILE, every, meta, lambda d: split_three(d, split_ratios, split_seed), name)
        if not data["train"] or not data["test"]:
            raise DatasetError(f"{name}: the dataset needs training and test images (train {len(data['train'])}, test {len(data['test'])})")
        ties = sum(len(d.labels) > 1 for s in data.values() for d in s)
        if ties:
            logger.info("%s: %d image(s) have tied dominant classes%s", name, ties,
                        "; their single label is the lower class index (LABEL argmax)" if argmax else " (kept as multi-hot labels)")
        targets = {"dist", "labels"} | ({"label"} if argmax else set())
        return cls(data["train"], data["val"], data["test"], names, targets,
                   task="single_label" if argmax else "multi_label", name=name, root=root)

    @staticmethod
    def _datum(impath: str, dist: Tuple[float, ...], names: List[str], argmax: bool) -> Datum:
        top = dominant(dist)
        label = top[0] if argmax else -1
        cname = names[label] if argmax else "_".join(names[k] for k in top)
        return Datum(impath=impath, label=label, classname=cname, labels=top, dist=dist)

    @staticmethod
    def _place(root: str, rows: list, csv_path: str, name: str) -> Dict[str, List[Tuple[str, Tuple[float, ...]]]]:
        """Match the images of train/ and test/ with CSV rows by path relative to the split folder."""
        by_name: Dict[str, Tuple[Tuple[float, ...], int]] = {}
        for rel, dist, line in rows:
            if rel in by_name:
                raise DatasetError(f"{csv_path} line {line}: image {rel!r} is listed twice (first on line {by_name[rel][1]})")
            for split in ("train", "test"):
                resolve_path(rel, os.path.join(root, split), f"{csv_path} line {line}")  # no escape from the split folders
            by_name[rel] = (dist, line)
        placed: Dict[str, List[Tuple[str, Tuple[float, ...]]]] = {"train": [], "test": []}
        unlisted: List[str] = []
        found = set()
        for split in ("train", "test"):
            split_dir = os.path.join(root, split)
            images, other = list_images(split_dir)
            report_ignored(name, f"entr(ies) of {split_dir} that are not image files", other)
            for f in images:
                if f in by_name:
                    if f in found:
                        raise DatasetError(f"{name}: image {f!r} is in both train/ and test/")
                    found.add(f)
                    placed[split].append((os.path.join(split_dir, f), by_name[f][0]))
                else:
                    unlisted.append(os.path.join(split_dir, f))
        if unlisted:
            shown = ", ".join(unlisted[:3]) + (", ..." if len(unlisted) > 3 else "")
            raise DatasetError(f"{name}: {len(unlisted)} image(s) have no row in {csv_path}, e.g. {shown}")
        missing = [rel for rel in by_name if rel not in found]
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise DatasetError(
                f"{name}: {len(missing)} image file(s) missing (of {len(by_name)} rows of {csv_path}): in neither "
                f"train/ nor test/, e.g. {shown}"
            )
        return placed

    @classmethod
    def from_config(cls, cfg: Any) -> "LDLDataset":
        c = cfg.DATASET.LDL
        opts = NativeOptions.from_config(cfg)
        ds = cls.load(
            os.path.join(check_root(cfg.DATASET.ROOT), c.DIR), c.CSV_FILE, image_column=c.IMAGE_COLUMN,
            classnames=list(c.CLASSNAMES), image_dir=c.IMAGE_DIR, label_mode=str(c.LABEL), val_percent=opts.val_percent,
            split_ratios=opts.split_ratios, split_seed=opts.split_seed, name=cfg.DATASET.NAME or "LDLDataset",
        )
        return screen_from_config(ds, cfg)


for _name in ("LDLDataset", "FlickrLDL", "TwitterLDL"):
    DATASET_REGISTRY.register(LDLDataset, name=_name)
