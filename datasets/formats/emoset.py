"""EmoSet (Yang et al., ICCV 2023) as distributed: ``EmoSet`` (keys under DATASET.EMOSET).

Layout of ``<ROOT>/<DIR>`` (EmoSet-118K)::

    info.json                   {"emotion": {"label2idx": {"amusement": 0, ...}}, "scene": {...}, ...}
    train.json, val.json, test.json
                                lists of [emotion, image_id, image_path, annotation_path]
                                (also accepted: [emotion, image_path, annotation_path])
    image/<emotion>/<id>.jpg    annotation/<emotion>/<id>.json

Paths are relative to the dataset folder and may not leave it. Class order: info.json's emotion
``label2idx`` (else the 8 Mikels emotions alphabetically); NUM_CLASSES 2 maps them to
positive (amusement, awe, contentment, excitement) / negative.
With ATTRIBUTES True each annotation JSON is read and kept on ``Datum.attrs``: ``image_id``,
``scene``, ``facial_expression``, ``human_action`` (str or None), ``brightness``,
``colorfulness`` (float or None) and ``object`` (list of str) - the inputs of the UniEmoX
caption "The scene type of this photo is {scene}. ..." for trainers that build text.
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple

from yacs.config import CfgNode as CN

from utils.errors import ConfigError, DatasetError
from configs.registry import register_config

from datasets.base import DATASET_REGISTRY, DatasetBase, Datum, missing_files_error
from datasets.formats.csv_dataset import check_root
from datasets.formats.image_check import screen_from_config
from datasets.splits import SPLITS, resolve_path

logger = logging.getLogger(__name__)

MIKELS = ("amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness")
POSITIVE = ("amusement", "awe", "contentment", "excitement")
TEXT_ATTRIBUTES = ("scene", "facial_expression", "human_action")
NUMBER_ATTRIBUTES = ("brightness", "colorfulness")


@register_config
def add_emoset_config(cfg: CN) -> None:
    """DATASET.EMOSET.* keys of :class:`EmoSet`."""
    cfg.DATASET.EMOSET = CN()
    cfg.DATASET.EMOSET.DIR = "EmoSet-118K"  # dataset folder under DATASET.ROOT
    cfg.DATASET.EMOSET.NUM_CLASSES = 8  # 8 emotions | 2 (positive / negative)
    cfg.DATASET.EMOSET.ATTRIBUTES = True  # read the annotation JSONs into Datum.attrs


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"EmoSet {what} not found: {path}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read EmoSet {what} {path}: {str(e).splitlines()[0]}") from None


def emotion_classes(root: str) -> List[str]:
    """Emotion names in index order from info.json (the Mikels default without it)."""
    path = os.path.join(root, "info.json")
    if not os.path.isfile(path):
        logger.info("EmoSet: no info.json in %s; class order %s", root, ", ".join(MIKELS))
        return list(MIKELS)
    info = _read_json(path, "info file")
    try:
        l2i = info["emotion"]["label2idx"]
        names = sorted(l2i, key=lambda k: int(l2i[k]))
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{path}: expected {{\"emotion\": {{\"label2idx\": {{name: index}}}}}}") from None
    if sorted(int(v) for v in l2i.values()) != list(range(len(names))):
        raise DatasetError(f"{path}: emotion label2idx indices must be 0..{len(names) - 1}, got {sorted(l2i.values())}")
    return names


def read_attributes(path: str) -> Dict[str, Any]:
    """The attribute dict kept on a Datum, from one annotation JSON."""
    ann = _read_json(path, "annotation")
    if not isinstance(ann, dict):
        raise DatasetError(f"EmoSet annotation {path} must hold a JSON object")
    if not ann.get("emotion"):  # every EmoSet annotation names its emotion: {} is an emptied or foreign file
        raise DatasetError(f"EmoSet annotation {path} names no emotion (an emptied or foreign file): "
                           "restore it, or set DATASET.EMOSET.ATTRIBUTES False to train without attributes")
    attrs: Dict[str, Any] = {}
    for key in TEXT_ATTRIBUTES:
        value = ann.get(key)
        attrs[key] = str(value) if value not in (None, "") else None
    for key in NUMBER_ATTRIBUTES:
        value = ann.get(key)
        try:
            attrs[key] = float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            raise DatasetError(f"EmoSet annotation {path}: {key} must be a number, got {value!r}") from None
    objects = ann.get("object") or []
    attrs["object"] = [str(o) for o in (objects if isinstance(objects, list) else [objects])]
    return attrs


def parse_list(path: str, root: str, emotions: Sequence[str]) -> List[Tuple[Datum, str, str]]:
    """(Datum with the emotion index, image id, annotation path) per entry of a {phase}.json list."""
    entries = _read_json(path, "split list")
    if not isinstance(entries, list):
        raise DatasetError(f"{path} must hold a JSON list of [emotion, image_id, image_path, annotation_path]")
    index = {e: i for i, e in enumerate(emotions)}
    out = []
    for i, entry in enumerate(entries):
        where = f"{path} entry {i}"
        if not isinstance(entry, list) or len(entry) not in (3, 4) or not all(isinstance(x, str) for x in entry):
            raise DatasetError(f"{where}: expected [emotion, image_id, image_path, annotation_path], got {entry!r}")
        emotion, image_rel, ann_rel = entry[0], entry[-2], entry[-1]
        image_id = entry[1] if len(entry) == 4 else os.path.splitext(os.path.basename(image_rel))[0]
        if emotion not in index:
            raise DatasetError(f"{where}: emotion {emotion!r} is not in the class list ({', '.join(emotions)})")
        impath = resolve_path(image_rel, root, where)
        ann_path = resolve_path(ann_rel, root, where)
        out.append((Datum(impath=impath, label=index[emotion], classname=emotion), image_id, ann_path))
    return out


@DATASET_REGISTRY.register()
class EmoSet(DatasetBase):
    """EmoSet emotions (8 or 2 classes) with the attribute annotations on ``Datum.attrs``."""

    @classmethod
    def load(cls, dataset_dir: str, *, num_classes: int = 8, attributes: bool = True, name: str = "EmoSet") -> "EmoSet":
        if num_classes not in (8, 2):
            raise ConfigError(f"DATASET.EMOSET.NUM_CLASSES must be 8 or 2, got {num_classes}")
        root = check_root(dataset_dir, "DATASET.ROOT / DATASET.EMOSET.DIR")
        emotions = emotion_classes(root)
        parsed = {s: parse_list(os.path.join(root, f"{s}.json"), root, emotions) for s in SPLITS}
        every = [p for s in SPLITS for p in parsed[s]]
        missing = [d.impath for d, _, _ in every if not os.path.isfile(d.impath)]
        if missing:
            raise missing_files_error(missing, len(every))
        attrs: List[Optional[Dict[str, Any]]] = [None] * len(every)
        if attributes:
            lost = [a for _, _, a in every if not os.path.isfile(a)]
            if lost:
                raise missing_files_error(lost, len(every), "annotation file(s)")
            with ThreadPoolExecutor(max_workers=8) as pool:
                attrs = list(pool.map(read_attributes, [a for _, _, a in every]))
        if num_classes == 2:
            classnames = ["positive", "negative"]
            to_class = [0 if e in POSITIVE else 1 for e in emotions]
        else:
            classnames, to_class = list(emotions), list(range(len(emotions)))
        splits: Dict[str, List[Datum]] = {s: [] for s in SPLITS}
        k = 0
        for s in SPLITS:
            for d, image_id, _ in parsed[s]:
                extra = {"image_id": image_id, "emotion": d.classname, **(attrs[k] or {})}
                label = to_class[d.label]
                splits[s].append(Datum(d.impath, label, classnames[label], attrs=extra))
                k += 1
        if not splits["train"] or not splits["test"]:
            n_train, n_test = len(splits["train"]), len(splits["test"])
            raise DatasetError(f"{name}: train.json and test.json must list images (train {n_train}, test {n_test})")
        return cls(splits["train"], splits["val"], splits["test"], classnames, {"label"}, task="single_label", name=name, root=root)

    @classmethod
    def from_config(cls, cfg: Any) -> "EmoSet":
        c = cfg.DATASET.EMOSET
        ds = cls.load(os.path.join(check_root(cfg.DATASET.ROOT), c.DIR), num_classes=int(c.NUM_CLASSES),
                      attributes=bool(c.ATTRIBUTES), name=cfg.DATASET.NAME or "EmoSet")
        return screen_from_config(ds, cfg)
