"""Conversation-features datasets (keys under DATASET.CONVERSATION): IEMOCAP, MELD and others.

``IEMOCAPFeatures`` / ``MELDFeatures`` / ``ConversationFeatures`` read the pickled features tuple
described in :mod:`datasets.conversation.format` (``DATASET.CONVERSATION.FILE``, relative to
``DATASET.ROOT``). The test split is the file's ``testVid``; a seeded share
(``DATASET.VAL_PERCENT``) of the ``trainVid`` dialogues becomes the validation split, so the test
set never selects a model. That split is saved as JSON beside the pickle
(``split_<file stem>.json``: ``{"train": [ids], "val": [ids], "test": [ids], "meta": {...}}``)
and reused while it matches the file and settings.

These datasets hold dialogues of utterance features, not images: image trainers cannot use
them (``from_config`` says so); conversation trainers call :meth:`ConversationFeatures.features_from_cfg`
and batch dialogues with :func:`datasets.conversation.loader.build_dialogue_loader`.
"""
from __future__ import annotations

import json
import logging
import os
import random
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from yacs.config import CfgNode as CN

from utils.errors import ConfigError, DatasetError
from configs.registry import register_config

from datasets.base import DATASET_REGISTRY
from datasets.conversation.format import IEMOCAP_CLASSES, MELD_CLASSES, Dialogue, load_pickle, parse_conversation, sort_ids
from datasets.splits import atomic_write_json

logger = logging.getLogger(__name__)


def conversation_node(cfg: CN) -> CN:
    """``cfg.DATASET.CONVERSATION``, created when missing (the synthetic keys live under it too)."""
    if "CONVERSATION" not in cfg.DATASET:
        cfg.DATASET.CONVERSATION = CN()
    return cfg.DATASET.CONVERSATION


@register_config
def add_conversation_config(cfg: CN) -> None:
    """DATASET.CONVERSATION.* keys of the conversation-features datasets."""
    node = conversation_node(cfg)
    node.FILE = ""  # features pickle, relative to DATASET.ROOT or absolute ("" = the dataset's own, e.g. IEMOCAP.pkl)
    node.CLASSNAMES = []  # class names in label order ([] = the dataset's own list; ConversationFeatures: class<k>)
    node.SPLIT_SEED = 0  # seed choosing the validation dialogues (DATASET.VAL_PERCENT of trainVid)


def split_dialogues(train_ids: Sequence[Any], val_percent: float, seed: int) -> Tuple[List[Any], List[Any]]:
    """Seeded split of training dialogue ids into (train, val), both in sorted id order.

    ``round(n * val_percent)`` dialogues go to val, at least one when ``val_percent > 0`` and
    there are two or more, never all of them.
    """
    if not 0.0 <= val_percent < 1.0:
        raise ConfigError(f"DATASET.VAL_PERCENT must be in [0, 1), got {val_percent}")
    ids = sort_ids(train_ids)
    order = ids[:]
    random.Random(f"conversation-val-{seed}").shuffle(order)
    n_val = int(round(len(ids) * val_percent))
    if val_percent > 0 and len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    val = set(order[:n_val])
    return [v for v in ids if v not in val], [v for v in ids if v in val]


def _split_matches(obj: Any, meta: dict, train_ids: Iterable[Any], test_ids: Iterable[Any]) -> bool:
    if not isinstance(obj, dict) or obj.get("meta") != meta:
        return False
    try:
        saved_train = set(obj["train"]) | set(obj["val"])
        return saved_train == set(train_ids) and set(obj["test"]) == set(test_ids) and not set(obj["train"]) & set(obj["val"])
    except (KeyError, TypeError):
        return False


def load_or_make_split(
    split_path: str, meta: dict, train_ids: Sequence[Any], test_ids: Sequence[Any], val_percent: float, seed: int
) -> Tuple[List[Any], List[Any]]:
    """(train, val) dialogue ids: read from ``split_path`` when it matches, else split and save it."""
    if os.path.isfile(split_path):
        try:
            with open(split_path, encoding="utf-8") as f:
                obj = json.load(f)
        except (OSError, json.JSONDecodeError):
            obj = None
        if _split_matches(obj, meta, train_ids, test_ids):
            logger.info("validation dialogues read from %s", split_path)
            return list(obj["train"]), list(obj["val"])
        logger.info("%s does not match the features file or settings; splitting again", split_path)
    train, val = split_dialogues(train_ids, val_percent, seed)
    try:
        atomic_write_json({"train": train, "val": val, "test": sort_ids(test_ids), "meta": meta}, split_path)
        logger.info("%d of %d training dialogues held out for validation, saved to %s", len(val), len(train_ids), split_path)
    except OSError as e:
        logger.warning("cannot write %s (%s); continuing without it", split_path, e)
    return train, val


@DATASET_REGISTRY.register()
class ConversationFeatures:
    """Dialogues of per-utterance text / audio / visual features with one emotion label per utterance.

    Attributes:
        train_x, val, test: lists of :class:`~datasets.conversation.format.Dialogue`.
        classnames: C class names (index = label).
        dims: feature dimensions ``{"text": Dt, "audio": Da, "visual": Dv}``.
        num_speakers: size of the speaker vocabulary.
    """

    DEFAULT_CLASSES: Tuple[str, ...] = ()
    DEFAULT_FILE = ""
    task = "single_label"
    targets = frozenset({"label"})

    def __init__(
        self, train_x: List[Dialogue], val: List[Dialogue], test: List[Dialogue], classnames: Sequence[str],
        dims: Dict[str, int], num_speakers: int, name: str = "", root: str = "",
    ) -> None:
        self.train_x, self.val, self.test = list(train_x), list(val), list(test)
        self.classnames = list(classnames)
        self.dims = dict(dims)
        self.num_speakers = int(num_speakers)
        self.name = name or type(self).__name__
        self.root = root

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def lab2cname(self) -> Dict[int, str]:
        return dict(enumerate(self.classnames))

    def require(self, targets: Iterable[str]) -> None:
        """DatasetError unless every target in ``targets`` is provided (only ``label`` is)."""
        missing = set(targets) - set(self.targets)
        if missing:
            raise DatasetError(f"dataset {self.name} provides targets ['label']; trainer needs {sorted(missing)} too")

    def __repr__(self) -> str:
        n = {k: (len(v), sum(len(d) for d in v)) for k, v in (("train", self.train_x), ("val", self.val), ("test", self.test))}
        splits = ", ".join(f"{k}={a} dialogues/{b} utterances" for k, (a, b) in n.items())
        return f"{type(self).__name__}(name={self.name!r}, classes={self.num_classes}, {splits}, dims={self.dims})"

    @classmethod
    def load(
        cls, path: str, *, classnames: Optional[Sequence[str]] = None, val_percent: float = 0.1, split_seed: int = 0,
        name: str = "", split_path: str = "",
    ) -> "ConversationFeatures":
        """Read and check the features pickle at ``path`` and split off validation dialogues."""
        names = list(classnames or cls.DEFAULT_CLASSES)
        parsed = parse_conversation(load_pickle(path), path, num_classes=len(names) if names else None)
        if not names:
            names = [f"class{k}" for k in range(parsed.num_labels)]
        if len(set(names)) != len(names):
            raise ConfigError(f"DATASET.CONVERSATION.CLASSNAMES has duplicates: {names}")
        stem = os.path.splitext(os.path.basename(path))[0]
        split_path = split_path or os.path.join(os.path.dirname(os.path.abspath(path)), f"split_{stem}.json")
        meta = {"file": os.path.basename(path), "val_percent": val_percent, "seed": split_seed}
        train_ids, val_ids = load_or_make_split(split_path, meta, parsed.train_ids, parsed.test_ids, val_percent, split_seed)
        d = parsed.dialogues
        test_ids = list(parsed.test_ids)
        return cls(
            [d[v] for v in train_ids], [d[v] for v in val_ids], [d[v] for v in test_ids], names, parsed.dims,
            parsed.num_speakers, name=name or cls.__name__, root=os.path.dirname(os.path.abspath(path)),
        )

    @classmethod
    def features_path(cls, cfg: Any) -> str:
        """The pickle named by DATASET.CONVERSATION.FILE (or the class default) under DATASET.ROOT."""
        file = cfg.DATASET.CONVERSATION.FILE or cls.DEFAULT_FILE
        if not file:
            raise ConfigError(f"DATASET.CONVERSATION.FILE is empty: name the features pickle of {cfg.DATASET.NAME}")
        return file if os.path.isabs(file) else os.path.join(cfg.DATASET.ROOT, file)

    @classmethod
    def features_from_cfg(cls, cfg: Any) -> "ConversationFeatures":
        """The dataset from DATASET.{ROOT, VAL_PERCENT, CONVERSATION.*}; few-shot / subsampling are refused."""
        if cfg.DATASET.NUM_SHOTS > 0 or cfg.DATASET.SUBSAMPLE_CLASSES != "all":
            raise ConfigError("DATASET.NUM_SHOTS / SUBSAMPLE_CLASSES are not supported for conversation features")
        if cfg.DATASET.TASK not in ("", "single_label"):
            raise ConfigError(f"conversation features are single-label; DATASET.TASK {cfg.DATASET.TASK!r} is not supported")
        node = cfg.DATASET.CONVERSATION
        ds = cls.load(
            cls.features_path(cfg), classnames=list(node.CLASSNAMES) or None, val_percent=float(cfg.DATASET.VAL_PERCENT),
            split_seed=int(node.SPLIT_SEED), name=cfg.DATASET.NAME,
        )
        logger.info("%r", ds)
        return ds

    @classmethod
    def from_config(cls, cfg: Any) -> Any:
        raise DatasetError(
            f"dataset {cfg.DATASET.NAME} holds conversation features, not images: train it with a conversation "
            "trainer (--trainer VEGA)"
        )


@DATASET_REGISTRY.register()
class IEMOCAPFeatures(ConversationFeatures):
    """IEMOCAP (6 classes: happy, sad, neutral, anger, excited, frustration); VEGA's ``IEMOCAP.pkl``."""

    DEFAULT_CLASSES = IEMOCAP_CLASSES
    DEFAULT_FILE = "IEMOCAP.pkl"


@DATASET_REGISTRY.register()
class MELDFeatures(ConversationFeatures):
    """MELD (7 classes: neutral, surprise, fear, sad, happy, disgust, anger); ``MELD.pkl``."""

    DEFAULT_CLASSES = MELD_CLASSES
    DEFAULT_FILE = "MELD.pkl"
