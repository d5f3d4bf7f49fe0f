"""``SyntheticEmotion``: the generated demo dataset (keys under DATASET.SYNTHETIC).

The data lives in ``<DATASET.ROOT>/synthetic_emotion`` and is (re)generated when it is missing
or its ``meta.json`` differs from the requested settings. Generation writes to a temporary
folder and renames it into place under a file lock, so concurrent processes (DDP ranks) are safe.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any

from yacs.config import CfgNode as CN

from utils.errors import ConfigError, DatasetError
from utils.fileio import file_lock
from configs.registry import register_config

from datasets.formats.annotations import parse_table, read_table
from datasets.base import DATASET_REGISTRY, DatasetBase
from datasets.synthetic.images import CLASSNAMES, SyntheticSettings, difficulty_level, write_synthetic

logger = logging.getLogger(__name__)

DATASET_DIR = "synthetic_emotion"



@register_config
def add_synthetic_config(cfg: CN) -> None:
    """DATASET.SYNTHETIC.* keys of :class:`SyntheticEmotion`."""
    d = SyntheticSettings()
    cfg.DATASET.SYNTHETIC = CN()
    cfg.DATASET.SYNTHETIC.N_TRAIN_PER_CLASS = d.n_train_per_class  # training images per class
    cfg.DATASET.SYNTHETIC.N_VAL_PER_CLASS = d.n_val_per_class  # validation images per class
    cfg.DATASET.SYNTHETIC.N_TEST_PER_CLASS = d.n_test_per_class  # test images per class
    cfg.DATASET.SYNTHETIC.IMAGE_SIZE = d.image_size  # image side in pixels
    cfg.DATASET.SYNTHETIC.DIFFICULTY = d.difficulty  # easy | medium | hard | a number in [0, 1] (quoted)
    cfg.DATASET.SYNTHETIC.GEN_SEED = d.seed  # generator seed (same seed and settings -> same bytes)
    cfg.DATASET.SYNTHETIC.MULTI_LABEL_RATE = d.multi_label_rate  # share of images blending a second emotion


def _meta_matches(dataset_dir: str, settings: SyntheticSettings) -> bool:
    path = os.path.join(dataset_dir, "meta.json")
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(dataset_dir, "annotations.csv")):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f) == json.loads(json.dumps(settings.meta()))
    except (OSError, json.JSONDecodeError):
        return False



def ensure_synthetic(root: str, settings: SyntheticSettings) -> str:
    """``<root>/synthetic_emotion``, generated first if missing or made with other settings."""
    if not root:
        raise DatasetError("DATASET.ROOT is empty; set it to the folder where synthetic_emotion/ is (or will be) generated")
    difficulty_level(settings.difficulty)  # ValueError before touching the disk
    target = os.path.join(os.path.abspath(root), DATASET_DIR)
    if _meta_matches(target, settings):
        return target
    os.makedirs(root, exist_ok=True)
    with file_lock(os.path.join(root, f".{DATASET_DIR}.lock")):
        if _meta_matches(target, settings):  # another process made it meanwhile
            return target
        if os.path.isdir(target) and os.listdir(target) and not os.path.isfile(os.path.join(target, "meta.json")):
            raise DatasetError(f"{target} exists but has no meta.json (not generated here); move it or choose another DATASET.ROOT")
        logger.info("generating synthetic emotion data in %s", target)
        tmp = tempfile.mkdtemp(prefix=f".{DATASET_DIR}.tmp.", dir=root)
        old = ""
        try:
            write_synthetic(tmp, settings)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private
            if os.path.exists(target):
                old = tempfile.mkdtemp(prefix=f".{DATASET_DIR}.old.", dir=root)
                os.rename(target, os.path.join(old, DATASET_DIR))
            os.rename(tmp, target)
        finally:
            for path in (tmp, old):
                if path and os.path.exists(path):
                    shutil.rmtree(path, ignore_errors=True)
    return target


def load_synthetic(dataset_dir: str, name: str = "SyntheticEmotion", task: str = "single_label") -> "SyntheticEmotion":
    """Parse a generated ``synthetic_emotion`` folder (all four targets)."""
    csv_path = os.path.join(dataset_dir, "annotations.csv")
    parsed = parse_table(read_table(csv_path), csv_path, root=dataset_dir, image_dir="", classnames=list(CLASSNAMES))
    s = parsed.splits
    return SyntheticEmotion(s["train"], s["val"], s["test"], list(CLASSNAMES), parsed.targets, task=task, name=name, root=dataset_dir)


@DATASET_REGISTRY.register()
class SyntheticEmotion(DatasetBase):
    """Generated images of Mikels' 8 emotions with label, labels, dist and va targets."""

    @staticmethod
    def settings_from_cfg(cfg: Any) -> SyntheticSettings:
        c = cfg.DATASET.SYNTHETIC
        try:
            difficulty_level(c.DIFFICULTY)
        except ValueError as e:
            raise ConfigError(f"DATASET.SYNTHETIC.DIFFICULTY: {e}") from None
        for key in ("N_TRAIN_PER_CLASS", "N_VAL_PER_CLASS", "N_TEST_PER_CLASS", "IMAGE_SIZE"):
            if int(c[key]) < (8 if key == "IMAGE_SIZE" else 1):
                raise ConfigError(f"DATASET.SYNTHETIC.{key} is too small: {c[key]}")
        if not 0.0 <= float(c.MULTI_LABEL_RATE) <= 1.0:
            raise ConfigError(f"DATASET.SYNTHETIC.MULTI_LABEL_RATE must be in [0, 1], got {c.MULTI_LABEL_RATE}")
        return SyntheticSettings(
            n_train_per_class=int(c.N_TRAIN_PER_CLASS), n_val_per_class=int(c.N_VAL_PER_CLASS),
            n_test_per_class=int(c.N_TEST_PER_CLASS), image_size=int(c.IMAGE_SIZE), difficulty=str(c.DIFFICULTY),
            seed=int(c.GEN_SEED), multi_label_rate=float(c.MULTI_LABEL_RATE),
        )

    @classmethod
    def from_config(cls, cfg: Any) -> "SyntheticEmotion":
        dataset_dir = ensure_synthetic(cfg.DATASET.ROOT, cls.settings_from_cfg(cfg))
        return load_synthetic(dataset_dir, name=cfg.DATASET.NAME or "SyntheticEmotion")
