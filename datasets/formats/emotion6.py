"""Emotion6 as distributed (Peng et al., CVPR 2015): ``Emotion6`` (keys under DATASET.EMOTION6).

Layout of ``<ROOT>/<DIR>``::

    ground_truth.txt          tab-separated, one header line, then per image:
                              <class>/<n>.jpg  valence  arousal  p_anger p_disgust p_fear p_joy p_sadness p_surprise p_neutral
    images/<class>/<n>.jpg    6 class folders (anger, disgust, fear, joy, sadness, surprise)

Targets: ``dist`` (label distribution), ``label`` and ``labels`` (dominant emotion(s)),
``va`` (valence, arousal on the 1..9 SAM scale, as in the file).

NUM_CLASSES 7 keeps neutral as a 7th class. NUM_CLASSES 6 drops it: the six emotion
probabilities are renormalised to sum 1; an image whose whole mass is on neutral (0/0) follows
NEUTRAL_POLICY: ``drop`` (removed; the count is logged), ``uniform`` (1/6 each, label = its
folder) or ``folder`` (one-hot on its folder class).
LABEL ``dominant``: argmax of the distribution; on a tie the folder class if it is among the
maxima, else the lowest index; ``labels`` keeps every tied class. LABEL ``folder``: the folder
(the keyword the image was found with).
Emotion6 has no official split: DATASET.SPLIT_RATIOS / SPLIT_SEED, stratified by folder,
saved to ``split_emotion6.json``. The split is made on all images before the neutral policy,
so the 6- and 7-class settings share their test images.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from yacs.config import CfgNode as CN

from utils.errors import ConfigError, DatasetError
from configs.registry import register_config

from datasets.base import DATASET_REGISTRY, DatasetBase, Datum
from datasets.formats.csv_dataset import check_root
from datasets.formats.image_check import screen_from_config
from datasets.formats.common import DEFAULT_SPLIT_RATIOS, NativeOptions, dominant, list_images, report_ignored, saved_split, split_three
from datasets.splits import resolve_path

logger = logging.getLogger(__name__)

EMOTIONS = ("anger", "disgust", "fear", "joy", "sadness", "surprise")
NEUTRAL = "neutral"
POLICIES = ("drop", "uniform", "folder")
LABEL_MODES = ("dominant", "folder")
SPLIT_FILE = "split_emotion6.json"
SUM_TOLERANCE = 0.01


@register_config
def add_emotion6_config(cfg: CN) -> None:
    """DATASET.EMOTION6.* keys of :class:`Emotion6`."""
    cfg.DATASET.EMOTION6 = CN()
    cfg.DATASET.EMOTION6.DIR = "Emotion6"  # dataset folder under DATASET.ROOT
    cfg.DATASET.EMOTION6.GT_FILE = "ground_truth.txt"  # annotation file in the dataset folder
    cfg.DATASET.EMOTION6.IMAGE_DIR = "images"  # folder the image paths of GT_FILE start from
    cfg.DATASET.EMOTION6.NUM_CLASSES = 6  # 6 (neutral dropped) | 7 (neutral is a class)
    cfg.DATASET.EMOTION6.NEUTRAL_POLICY = "drop"  # 6 classes, all mass on neutral: drop | uniform | folder
    cfg.DATASET.EMOTION6.LABEL = "dominant"  # single label: dominant (argmax of dist) | folder


@dataclass(frozen=True)
class Emotion6Row:
    """One line of ground_truth.txt."""

    path: str  # as written, e.g. "disgust/1.jpg"
    folder: str
    valence: float
    arousal: float
    probs: Tuple[float, ...]  # 7: anger, disgust, fear, joy, sadness, surprise, neutral
    line: int


def _is_header(fields: List[str]) -> bool:
    try:
        float(fields[1])
        return False
    except (ValueError, IndexError):
        return True


def read_ground_truth(path: str) -> List[Emotion6Row]:
    """Parse ground_truth.txt (tab- or space-separated, optional header line).

    Raises:
        DatasetError: naming file and line for a wrong field count, a non-number, a folder that
        is not one of the six emotions, or probabilities that are not a distribution.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"Emotion6 annotation file not found: {path}")
    rows: List[Emotion6Row] = []
    first_line: Dict[str, int] = {}
    with open(path, encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    for i, raw in enumerate(lines, start=1):
        fields = raw.split("\t") if "\t" in raw else raw.split()
        fields = [x.strip() for x in fields if x.strip()]
        if not fields or (i == 1 and _is_header(fields)):
            continue
        where = f"{path} line {i}"
        if len(fields) != 10:
            raise DatasetError(f"{where}: expected 10 fields (image, valence, arousal, 7 probabilities), got {len(fields)}")
        try:
            values = [float(x) for x in fields[1:]]
        except ValueError:
            raise DatasetError(f"{where}: valence, arousal and probabilities must be numbers, got {fields[1:]}") from None
        if not all(math.isfinite(v) for v in values):
            raise DatasetError(f"{where}: values must be finite numbers, got {fields[1:]}")
        probs = tuple(values[2:])
        if min(probs) < 0 or max(probs) > 1 or abs(sum(probs) - 1.0) > SUM_TOLERANCE:
            raise DatasetError(
                f"{where}: the 7 probabilities are not a distribution (each in [0, 1], sum {sum(probs):.4g}, expected 1): {fields[3:]}"
            )
        rel = fields[0].replace("\\", "/")
        folder = rel.split("/")[0] if "/" in rel else ""
        if folder not in EMOTIONS:
            raise DatasetError(
                f"{where}: image {rel!r} is not in a class folder of the class list ({', '.join(EMOTIONS)})"
            )
        if rel in first_line:
            raise DatasetError(f"{where}: image {rel!r} is listed twice (first on line {first_line[rel]})")
        first_line[rel] = i
        rows.append(Emotion6Row(rel, folder, values[0], values[1], probs, i))
    if not rows:
        raise DatasetError(f"{path} has no annotation rows")
    return rows


def class_targets(
    probs: Tuple[float, ...], folder_idx: int, num_classes: int, policy: str, label_mode: str
) -> Optional[Tuple[Tuple[float, ...], int, Tuple[int, ...]]]:
    """(dist, label, dominant labels) over ``num_classes`` classes; None = drop the image (policy)."""
    part = probs[:num_classes]
    total = sum(part)
    if total <= 0:  # all mass on neutral, neutral dropped
        if policy == "drop":
            return None
        dist = tuple(1.0 / num_classes for _ in range(num_classes)) if policy == "uniform" else tuple(
            1.0 if k == folder_idx else 0.0 for k in range(num_classes)
        )
    else:
        dist = tuple(p / total for p in part)
    top = dominant(dist)
    if label_mode == "folder":
        label = folder_idx
    else:
        label = folder_idx if folder_idx in top else top[0]
    return dist, label, top


@DATASET_REGISTRY.register()
class Emotion6(DatasetBase):
    """Emotion6 with label, labels (dominant), dist and va targets."""

    @classmethod
    def load(
        cls,
        dataset_dir: str,
        *,
        gt_file: str = "ground_truth.txt",
        image_dir: str = "images",
        num_classes: int = 6,
        neutral_policy: str = "drop",
        label_mode: str = "dominant",
        split_ratios: Tuple[float, float, float] = DEFAULT_SPLIT_RATIOS,
        split_seed: int = 42,
        name: str = "Emotion6",
    ) -> "Emotion6":
        """Read ``dataset_dir`` (module docstring); see :func:`class_targets` for the targets."""
        if num_classes not in (6, 7):
            raise ConfigError(f"DATASET.EMOTION6.NUM_CLASSES must be 6 or 7, got {num_classes}")
        if neutral_policy not in POLICIES:
            raise ConfigError(f"DATASET.EMOTION6.NEUTRAL_POLICY must be one of {', '.join(POLICIES)}, got {neutral_policy!r}")
        if label_mode not in LABEL_MODES:
            raise ConfigError(f"DATASET.EMOTION6.LABEL must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}")
        root = check_root(dataset_dir, "DATASET.ROOT / DATASET.EMOTION6.DIR")
        rows = read_ground_truth(os.path.join(root, gt_file))
        image_root = os.path.join(root, image_dir)
        data: List[Datum] = []
        for r in rows:
            impath = resolve_path(os.path.join(image_dir, r.path), root, f"{gt_file} line {r.line}")
            data.append(Datum(impath=impath, label=EMOTIONS.index(r.folder), classname=r.folder, dist=r.probs, va=(r.valence, r.arousal)))
        cls._report_unlisted(image_root, {d.impath for d in data}, name)
        meta = {"format": "Emotion6", "ratios": list(split_ratios), "seed": split_seed}
        splits = saved_split(root, SPLIT_FILE, data, meta, lambda d: split_three(d, split_ratios, split_seed), name)
        classnames = list(EMOTIONS) + ([NEUTRAL] if num_classes == 7 else [])
        out: Dict[str, List[Datum]] = {}
        dropped: Dict[str, int] = {}
        for split, items in splits.items():
            out[split], dropped[split] = [], 0
            for d in items:
                t = class_targets(d.dist, d.label, num_classes, neutral_policy, label_mode)
                if t is None:
                    dropped[split] += 1
                    continue
                dist, label, top = t
                out[split].append(Datum(d.impath, label, classnames[label], top, dist, d.va))
        n_neutral = sum(1 for d in data if sum(d.dist[:6]) <= 0)
        if num_classes == 6 and n_neutral:
            logger.info(
                "%s: %d image(s) have all their mass on neutral; NEUTRAL_POLICY %s%s", name, n_neutral, neutral_policy,
                f": dropped train {dropped['train']}, val {dropped['val']}, test {dropped['test']}" if neutral_policy == "drop" else "",
            )
        if not out["train"]:
            raise DatasetError(f"{name}: no training images left (split {split_ratios}, NEUTRAL_POLICY {neutral_policy})")
        if not out["test"]:
            raise DatasetError(f"{name}: no test images (DATASET.SPLIT_RATIOS {tuple(split_ratios)})")
        return cls(out["train"], out["val"], out["test"], classnames, {"label", "labels", "dist", "va"},
                   task="single_label", name=name, root=root)

    @staticmethod
    def _report_unlisted(image_root: str, listed: set, name: str) -> None:
        """Log images under the image folder that ground_truth.txt does not mention (they are not used)."""
        if not os.path.isdir(image_root):
            return
        unlisted: List[str] = []
        for folder in sorted(e.path for e in os.scandir(image_root) if e.is_dir()):
            images, _ = list_images(folder)
            unlisted += [p for p in (os.path.join(folder, f) for f in images) if os.path.abspath(p) not in listed]
        report_ignored(name, "image(s) without a row in the annotation file", unlisted)

    @classmethod
    def from_config(cls, cfg: Any) -> "Emotion6":
        c = cfg.DATASET.EMOTION6
        opts = NativeOptions.from_config(cfg)
        ds = cls.load(
            os.path.join(check_root(cfg.DATASET.ROOT), c.DIR), gt_file=c.GT_FILE, image_dir=c.IMAGE_DIR,
            num_classes=int(c.NUM_CLASSES), neutral_policy=str(c.NEUTRAL_POLICY), label_mode=str(c.LABEL),
            split_ratios=opts.split_ratios, split_seed=opts.split_seed, name=cfg.DATASET.NAME or "Emotion6",
        )
        return screen_from_config(ds, cfg)
