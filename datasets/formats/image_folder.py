"""Class-per-folder datasets (FI, Flickr, Instagram and the UniEmoX layouts).

Three layouts of ``<ROOT>/<DIR>`` are read (image files: jpg, jpeg, png, bmp, webp, gif, tif):
    {train,val,test}/<class>/*   splits as distributed
    {train,test}/<class>/*       val carved from train: DATASET.VAL_PERCENT, stratified, seeded
    <class>/*                    one unsplit set: DATASET.SPLIT_RATIOS (train, val, test), stratified
Class index = sorted folder names (of ``train/`` in the split layouts). Splits the framework
makes use DATASET.SPLIT_SEED and are saved to ``split_imagefolder.json`` (CoOp format,
relative paths) in the dataset folder and reused while the files and settings are unchanged.
Entries that are not images are never used silently: their count is logged.

Registered as ``ImageFolderDataset`` and, for the dataset configs in configs/datasets/, as
``FI``, ``Flickr``, ``Instagram``, ``UBE``, ``Emo8``, ``CAERS``, ``HECO`` and ``Emotion6Folders``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Tuple

from yacs.config import CfgNode as CN

from utils.errors import DatasetError
from configs.registry import register_config

from datasets.base import DATASET_REGISTRY, DatasetBase, Datum
from datasets.formats.csv_dataset import check_root
from datasets.formats.image_check import screen_from_config
from datasets.formats.common import DEFAULT_SPLIT_RATIOS, NativeOptions, list_images, report_ignored, saved_split, split_three
from datasets.splits import read_split, read_split_json, relative_paths, split_train_val, write_split

logger = logging.getLogger(__name__)

SPLIT_FILE = "split_imagefolder.json"
ALIASES = ("FI", "Flickr", "Instagram", "UBE", "Emo8", "CAERS", "HECO", "Emotion6Folders")


@register_config
def add_image_folder_config(cfg: CN) -> None:
    """DATASET.IMAGE_FOLDER.* keys of :class:`ImageFolderDataset`."""
    cfg.DATASET.IMAGE_FOLDER = CN()
    cfg.DATASET.IMAGE_FOLDER.DIR = ""  # subfolder of DATASET.ROOT holding train/ [val/] test/ or the class folders ("" = ROOT)


def _own(name: str) -> bool:
    """Hidden entries and the framework's own outputs (split_imagefolder.json, split_fewshot/)."""
    return name.startswith(".") or name == SPLIT_FILE or name == "split_fewshot"


def _subdirs(path: str) -> List[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not _own(e.name))


def scan_classes(split_dir: str, classnames: List[str], split: str, name: str = "ImageFolderDataset") -> List[Datum]:
    """Datums of ``split_dir/<class>/*`` (sorted); DatasetError for a class folder not in ``classnames``.

    Files directly in ``split_dir`` and non-image entries of the class folders are logged, not used.
    """
    index = {c: i for i, c in enumerate(classnames)}
    out: List[Datum] = []
    ignored: List[str] = []
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if _own(entry.name):
            continue
        if not entry.is_dir():
            ignored.append(entry.path)
            continue
        cname = entry.name
        if cname not in index:
            raise DatasetError(f"class folder {os.path.join(split_dir, cname)} ({split}) is not a class of train/")
        images, other = list_images(entry.path)
        ignored += other
        folder = entry.path + os.sep
        out += [Datum(impath=folder + f, label=index[cname], classname=cname) for f in images]
    report_ignored(name, f"entr(ies) in {split_dir} that are not images in a class folder", ignored)
    return out


def _key(data: List[Datum], root: str) -> List[Tuple[str, int]]:
    return sorted(zip(relative_paths([d.impath for d in data], root), (d.label for d in data)))


def _check_nonempty(data: List[Datum], classnames: List[str], folder: str, name: str) -> None:
    counts: Dict[int, int] = {}
    for d in data:
        counts[d.label] = counts.get(d.label, 0) + 1
    empty = [c for i, c in enumerate(classnames) if not counts.get(i)]
    if empty:
        raise DatasetError(f"{name}: class folder(s) without images in {folder}: {', '.join(empty[:5])}")


class ImageFolderDataset(DatasetBase):
    """Single-label images in class folders (module docstring for the layouts)."""

    @classmethod
    def load(
        cls,
        dataset_dir: str,
        *,
        val_percent: float = 0.1,
        split_seed: int = 0,
        split_ratios: Tuple[float, float, float] = DEFAULT_SPLIT_RATIOS,
        name: str = "ImageFolderDataset",
    ) -> "ImageFolderDataset":
        """Scan ``dataset_dir`` in whichever of the three layouts it has."""
        root = check_root(dataset_dir, "DATASET.ROOT / DATASET.IMAGE_FOLDER.DIR")
        train_dir, val_dir, test_dir = (os.path.join(root, s) for s in ("train", "val", "test"))
        if not os.path.isdir(train_dir):
            if os.path.isdir(test_dir) or os.path.isdir(val_dir):
                raise DatasetError(f"{name}: folder {train_dir} not found (expected {root}/{{train,val,test}}/<class>/)")
            return cls._load_single(root, split_ratios, split_seed, name)
        if not os.path.isdir(test_dir):
            raise DatasetError(
                f"{name}: {root} has train/ but no test/ folder (expected {{train,val,test}}/<class>/, {{train,test}}/<class>/ "
                "or only <class>/ folders)"
            )
        classnames = _subdirs(train_dir)
        if not classnames:
            raise DatasetError(f"{name}: no class folders in {train_dir}")
        train = scan_classes(train_dir, classnames, "train", name)
        _check_nonempty(train, classnames, train_dir, name)
        test = scan_classes(test_dir, classnames, "test", name)
        if not test:
            raise DatasetError(f"{name}: no images in {test_dir}")
        if os.path.isdir(val_dir):
            val = scan_classes(val_dir, classnames, "val", name)
        else:
            train, val = cls._carve_val(root, train, test, val_percent, split_seed)
        return cls(train, val, test, classnames, {"label"}, task="single_label", name=name, root=root)

    @classmethod
    def _load_single(cls, root: str, ratios: Tuple[float, float, float], seed: int, name: str) -> "ImageFolderDataset":
        """``root/<class>/*``: one set split by ``ratios`` (saved to split_imagefolder.json)."""
        classnames = _subdirs(root)
        if not classnames:
            raise DatasetError(f"{name}: no class folders in {root} (expected {{train,val,test}}/<class>/ or <class>/ folders)")
        data = scan_classes(root, classnames, "all", name)
        _check_nonempty(data, classnames, root, name)
        meta = {"layout": "class_folders", "ratios": list(ratios), "seed": seed}
        s = saved_split(root, SPLIT_FILE, data, meta, lambda d: split_three(d, ratios, seed), name)
        if not s["test"]:
            raise DatasetError(f"{name}: the split of {root} has no test images (DATASET.SPLIT_RATIOS {tuple(ratios)})")
        return cls(s["train"], s["val"], s["test"], classnames, {"label"}, task="single_label", name=name, root=root)

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
        opts = NativeOptions.from_config(cfg)
        ds = cls.load(
            os.path.join(root, cfg.DATASET.IMAGE_FOLDER.DIR), val_percent=opts.val_percent, split_seed=opts.split_seed,
            split_ratios=opts.split_ratios, name=cfg.DATASET.NAME or "ImageFolderDataset",
        )
        return screen_from_config(ds, cfg)


DATASET_REGISTRY.register(ImageFolderDataset)
for _alias in ALIASES:
    DATASET_REGISTRY.register(ImageFolderDataset, name=_alias)
