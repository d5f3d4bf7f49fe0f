"""``SyntheticConversation``: generated conversation features in the pickled 7-tuple format.

Written to ``<DATASET.ROOT>/synthetic_conversation/features.pkl`` (+ ``meta.json``) on first use,
and again whenever a DATASET.CONVERSATION.SYNTHETIC setting changes. The data imitates IEMOCAP
at a small size (6 classes by default, class priors of IEMOCAP's test set, 'M'/'F' speakers):

* labels follow a sticky Markov chain within a dialogue (``STICKINESS``: keep the previous
  emotion), so context carries information;
* every modality m carries the label: ``x = SIGNAL_m * prototype_m[y] + noise``, with a random
  unit-variance prototype per class and modality and N(0, NOISE^2) noise per dimension;
* with probability ``CONFUSION`` an utterance's modality shows another class's prototype, so no
  single modality is reliable and fusing them helps.

Same settings -> identical files.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
from yacs.config import CfgNode as CN

from utils.errors import ConfigError, DatasetError
from utils.fileio import atomic_write, file_lock
from configs.registry import register_config

from datasets.base import DATASET_REGISTRY
from datasets.conversation.features import ConversationFeatures, conversation_node
from datasets.conversation.format import IEMOCAP_CLASSES

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
DATASET_DIR = "synthetic_conversation"
FILE_NAME = "features.pkl"
#: IEMOCAP test-set class shares (happy, sad, neutral, anger, excited, frustration)
IEMOCAP_PRIOR = (0.089, 0.151, 0.237, 0.105, 0.184, 0.234)



@dataclass(frozen=True)
class ConversationSettings:
    """Generator settings; all of them (and the version) go into meta.json."""

    n_train_dialogues: int = 80
    n_test_dialogues: int = 30
    min_len: int = 6
    max_len: int = 20
    text_dim: int = 32
    audio_dim: int = 24
    visual_dim: int = 16
    signal: Tuple[float, float, float] = (0.45, 0.35, 0.3)  # text, audio, visual
    noise: float = 1.0
    confusion: float = 0.25
    stickiness: float = 0.5
    classnames: Tuple[str, ...] = IEMOCAP_CLASSES
    seed: int = 0

    def meta(self) -> dict:
        return {"version": GENERATOR_VERSION, **json.loads(json.dumps(asdict(self)))}


@register_config
def add_conversation_synthetic_config(cfg: CN) -> None:
    """DATASET.CONVERSATION.SYNTHETIC.* keys of :class:`SyntheticConversation`."""
    d = ConversationSettings()
    node = conversation_node(cfg)
    node.SYNTHETIC = CN()
    node.SYNTHETIC.N_TRAIN_DIALOGUES = d.n_train_dialogues  # dialogues in trainVid (validation is carved from them)
    node.SYNTHETIC.N_TEST_DIALOGUES = d.n_test_dialogues  # dialogues in testVid
    node.SYNTHETIC.MIN_LEN = d.min_len  # fewest utterances per dialogue
    node.SYNTHETIC.MAX_LEN = d.max_len  # most utterances per dialogue
    node.SYNTHETIC.TEXT_DIM = d.text_dim  # text feature size (IEMOCAP: 1024)
    node.SYNTHETIC.AUDIO_DIM = d.audio_dim  # audio feature size (IEMOCAP: 1582, MELD: 300)
    node.SYNTHETIC.VISUAL_DIM = d.visual_dim  # visual feature size (IEMOCAP: 342)
    node.SYNTHETIC.SIGNAL = d.signal  # class-prototype strength per modality (text, audio, visual)
    node.SYNTHETIC.NOISE = d.noise  # per-dimension noise std
    node.SYNTHETIC.CONFUSION = d.confusion  # chance a modality shows another class's prototype
    node.SYNTHETIC.STICKINESS = d.stickiness  # chance an utterance keeps the previous utterance's emotion
    node.SYNTHETIC.GEN_SEED = d.seed  # generator seed


def _prior(n_classes: int) -> np.ndarray:
    if n_classes == len(IEMOCAP_PRIOR):
        p = np.array(IEMOCAP_PRIOR)
    else:
        p = np.ones(n_classes)
    return p / p.sum()


def _dialogue(
    rng: np.random.Generator, s: ConversationSettings, protos: List[np.ndarray], prior: np.ndarray
) -> Tuple[list, list, list]:
    """(labels, speakers, [text, audio, visual] arrays) of one dialogue."""
    n_cls = len(s.classnames)
    length = int(rng.integers(s.min_len, s.max_len + 1))
    labels: List[int] = []
    for i in range(length):
        if i and rng.random() < s.stickiness:
            labels.append(labels[-1])
        else:
            labels.append(int(rng.choice(n_cls, p=prior)))
    speakers, cur = [], str(rng.choice(["M", "F"]))
    for _ in range(length):
        speakers.append(cur)
        if rng.random() < 0.8:
            cur = "F" if cur == "M" else "M"
    feats = []
    for m, proto in enumerate(protos):
        shown = np.array(labels)
        confused = rng.random(length) < s.confusion
        shown[confused] = (shown[confused] + rng.integers(1, n_cls, size=int(confused.sum()))) % n_cls
        x = s.signal[m] * proto[shown] + rng.normal(0.0, s.noise, size=(length, proto.shape[1]))
        feats.append(x.astype(np.float32))
    return labels, speakers, feats


def generate_conversation(s: ConversationSettings) -> tuple:
    """The 7-tuple (videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, trainVid, testVid)."""
    n_cls = len(s.classnames)
    base = np.random.default_rng([GENERATOR_VERSION, s.seed])
    protos = [base.normal(0.0, 1.0, size=(n_cls, dim)) for dim in (s.text_dim, s.audio_dim, s.visual_dim)]
    prior = _prior(n_cls)
    speakers: Dict[str, list] = {}
    labels: Dict[str, list] = {}
    text: Dict[str, np.ndarray] = {}
    audio: Dict[str, np.ndarray] = {}
    visual: Dict[str, np.ndarray] = {}
    ids: Dict[str, List[str]] = {"train": [], "test": []}
    for code, (split, n) in enumerate((("train", s.n_train_dialogues), ("test", s.n_test_dialogues))):
        for k in range(n):
            vid = f"syn_{split}_{k:04d}"
            rng = np.random.default_rng([GENERATOR_VERSION, s.seed, code + 1, k])
            labels[vid], speakers[vid], (text[vid], audio[vid], visual[vid]) = _dialogue(rng, s, protos, prior)
            ids[split].append(vid)
    return speakers, labels, text, audio, visual, ids["train"], ids["test"]



def _meta_matches(folder: str, s: ConversationSettings) -> bool:
    try:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            return json.load(f) == s.meta() and os.path.isfile(os.path.join(folder, FILE_NAME))
    except (OSError, json.JSONDecodeError):
        return False


def write_conversation(path: str, s: ConversationSettings) -> None:
    """Generate the data and pickle the 7-tuple to ``path`` (atomically)."""
    data = generate_conversation(s)

    def dump(tmp: str) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(data, f, protocol=4)

    atomic_write(path, dump)


def ensure_conversation(root: str, s: ConversationSettings) -> str:
    """Path of ``<root>/synthetic_conversation/features.pkl``, generated first when missing or stale."""
    if not root:
        raise DatasetError("DATASET.ROOT is empty; set it to the folder where synthetic_conversation/ is (or will be) generated")
    folder = os.path.join(os.path.abspath(root), DATASET_DIR)
    path = os.path.join(folder, FILE_NAME)
    if _meta_matches(folder, s):
        return path
    os.makedirs(folder, exist_ok=True)
    with file_lock(os.path.join(folder, ".lock")):
        if not _meta_matches(folder, s):
            logger.info("generating synthetic conversation features in %s", folder)
            meta_path = os.path.join(folder, "meta.json")
            if os.path.exists(meta_path):
                os.remove(meta_path)
            write_conversation(path, s)
            with open(meta_path, "w", encoding="utf-8") as f:
                json.dump(s.meta(), f, indent=1, sort_keys=True)
    return path


@DATASET_REGISTRY.register()
class SyntheticConversation(ConversationFeatures):
    """Generated IEMOCAP-like conversation features (keys under DATASET.CONVERSATION.SYNTHETIC)."""

    DEFAULT_CLASSES = IEMOCAP_CLASSES
    DEFAULT_FILE = os.path.join(DATASET_DIR, FILE_NAME)

    @staticmethod
    def settings_from_cfg(cfg: Any, classnames: Sequence[str]) -> ConversationSettings:
        c = cfg.DATASET.CONVERSATION.SYNTHETIC
        for key in ("N_TRAIN_DIALOGUES", "N_TEST_DIALOGUES", "MIN_LEN", "TEXT_DIM", "AUDIO_DIM", "VISUAL_DIM"):
            if int(c[key]) < 1:
                raise ConfigError(f"DATASET.CONVERSATION.SYNTHETIC.{key} must be at least 1, got {c[key]}")
        if int(c.MAX_LEN) < int(c.MIN_LEN):
            raise ConfigError(f"DATASET.CONVERSATION.SYNTHETIC.MAX_LEN {c.MAX_LEN} is below MIN_LEN {c.MIN_LEN}")
        if len(c.SIGNAL) != 3:
            raise ConfigError(f"DATASET.CONVERSATION.SYNTHETIC.SIGNAL needs 3 values (text, audio, visual), got {list(c.SIGNAL)}")
        for key in ("CONFUSION", "STICKINESS"):
            if not 0.0 <= float(c[key]) <= 1.0:
                raise ConfigError(f"DATASET.CONVERSATION.SYNTHETIC.{key} must be in [0, 1], got {c[key]}")
        if len(classnames) < 2:
            raise ConfigError("SyntheticConversation needs at least 2 classes")
        return ConversationSettings(
            n_train_dialogues=int(c.N_TRAIN_DIALOGUES), n_test_dialogues=int(c.N_TEST_DIALOGUES), min_len=int(c.MIN_LEN),
            max_len=int(c.MAX_LEN), text_dim=int(c.TEXT_DIM), audio_dim=int(c.AUDIO_DIM), visual_dim=int(c.VISUAL_DIM),
            signal=tuple(float(v) for v in c.SIGNAL), noise=float(c.NOISE), confusion=float(c.CONFUSION),
            stickiness=float(c.STICKINESS), classnames=tuple(classnames), seed=int(c.GEN_SEED),
        )

    @classmethod
    def features_path(cls, cfg: Any) -> str:
        return cls.features_path_from_cfg(cfg)

    @classmethod
    def features_path_from_cfg(cls, cfg: Any) -> str:
        """The generated features file for the config's settings (generated on first use)."""
        if cfg.DATASET.CONVERSATION.FILE:
            raise ConfigError("SyntheticConversation generates its own file: leave DATASET.CONVERSATION.FILE empty")
        names = list(cfg.DATASET.CONVERSATION.CLASSNAMES) or list(cls.DEFAULT_CLASSES)
        return ensure_conversation(cfg.DATASET.ROOT, cls.settings_from_cfg(cfg, names))
