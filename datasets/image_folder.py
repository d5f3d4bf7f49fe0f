"""Class-per-folder datasets: ``<ROOT>/<DIR>/{train,val,test}/<class>/*.{jpg,jpeg,png,bmp,webp}``.

Class index = sorted folder names of ``train/``. Without ``val/`` a stratified, seeded share
(DATASET.VAL_PERCENT) of train becomes val; that split is saved to ``split_imagefolder.json``
(CoOp format, relative paths) in the dataset folder and reused while the files are unchanged.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Tuple

from yacs.config import CfgNode as CN

from configs.errors import DatasetError
from configs.registry import register_config

from .base import DATASET_REGISTRY, DatasetBase, Datum
from .csv_dataset import check_root
from .splits import read_split, read_split_json, relative_path, split_train_val, write_split

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SPLIT_FILE = "split_imagefolder.json"


@register_config
def add_image_folder_config(cfg: CN) -> None:
    """DATASET.IMAGE_FOLDER.* keys of :class:`ImageFolderDataset`."""
    cfg.DATASET.IMAGE_FOLDER = CN()
    cfg.DATASET.IMAGE_FOLDER.DIR = ""  # subfolder of DATASET.ROOT holding train/ [val/] test/ ("" = ROOT itself)


def _subdirs(path: str) -> List[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def list_split(split_dir: str, classnames: List[str], split: str) -> List[Datum]:
    """Datums of ``split_dir/<class>/*`` (sorted); DatasetError for a class folder not in train."""
    index = {c: i for i, c in enumerate(classnames)}
    out: List[Datum] = []
    for cname in _subdirs(split_dir):
        if cname not in index:
            raise DatasetError(f"class folder {os.path.join(split_dir, cname)} ({split}) is not a class of train/")
        folder = os.path.join(split_dir, cname)
        for fname in sorted(os.listdir(folder)):
            if fname.lower().endswith(IMAGE_EXTENSIONS) and not fname.startswith("."):
                out.append(Datum(impath=os.path.join(folder, fname), label=index[cname], classname=cname))
    return out


def _key(data: List[Datum], root: str) -> List[Tuple[str, int]]:
    return sorted((relative_path(d.impath, root), d.label) for d in data)


@DATASET_REGISTRY.register()
class ImageFolderDataset(DatasetBase):
    """Single-label images in class folders (UniEmoX / FI / Emotion6 layout)."""

    @classmethod
    def load(
        cls, dataset_dir: str, *, val_percent: float = 0.1, split_seed: int = 0, name: str = "ImageFolderDataset"
    ) -> "ImageFolderDataset":
        """Scan ``dataset_dir`` (train/ and test/ required, val/ optional)."""
        root = check_root(dataset_dir, "DATASET.ROOT / DATASET.IMAGE_FOLDER.DIR")
        train_dir, val_dir, test_dir = (os.path.join(root, s) for s in ("train", "val", "test"))
        for d in (train_dir, test_dir):
            if not os.path.isdir(d):
                raise DatasetError(f"{name}: folder {d} not found (expected {root}/{{train,val,test}}/<class>/)")
        classnames = _subdirs(train_dir)
        if not classnames:
            raise DatasetError(f"{name}: no class folders in {train_dir}")
        train = list_split(train_dir, classnames, "train")
        counts: Dict[int, int] = {}
        for d in train:
            counts[d.label] = counts.get(d.label, 0) + 1
        empty = [c for i, c in enumerate(classnames) if not counts.get(i)]
        if empty:
            raise DatasetError(f"{name}: class folder(s) without images in {train_dir}: {', '.join(empty[:5])}")
        test = list_split(test_dir, classnames, "test")
        if not test:
            raise DatasetError(f"{name}: no images in {test_dir}")
        if os.path.isdir(val_dir):
            val = list_split(val_dir, classnames, "val")
        else:
            train, val = cls._carve_val(root, train, test, val_percent, split_seed)
        return cls(train, val, test, classnames, {"label"}, task="single_label", name=name, root=root)

    @staticmethod
    def _carve_val(
        root: str, train: List[Datum], test: List[Datum], val_percent: float, seed: int
    ) -> Tuple[List[Datum], List[Datum]]:
        """Reuse ``split_imagefolder.json`` when it matches the files and settings, else split and save it."""
        path = os.path.join(root, SPLIT_FILE)
        meta = {"val_percent": val_percent, "seed": seed}
        if os.path.isfile(path) and read_split_json(path).get("meta") == meta:
            saved = read_split(path, root)
            if _key(saved["train"] + saved["val"], root) == _key(train, root) and _key(saved["test"], root) == _key(test, root):
                logger.info("train/val split read from %s", path)
                return saved["train"], saved["val"]
            logger.info("%s does not match the image folders; splitting again", path)
        train, val = split_train_val(train, val_percent, seed)
        try:
            write_split({"train": train, "val": val, "test": test}, path, root, meta=meta)
            logger.info("no val/ folder: %d of %d training images carved out for val, saved to %s", len(val), len(train) + len(val), path)
        except OSError as e:
            logger.warning("cannot write %s (%s); continuing without it", path, e)
        return train, val

    @classmethod
    def from_config(cls, cfg: Any) -> "ImageFolderDataset":
        root = check_root(cfg.DATASET.ROOT)
        return cls.load(
            os.path.join(root, cfg.DATASET.IMAGE_FOLDER.DIR), val_percent=float(cfg.DATASET.VAL_PERCENT),
            name=cfg.DATASET.NAME or "ImageFolderDataset",
        )
