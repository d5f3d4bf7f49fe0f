"""Every YAML file shipped under ``configs/`` loads: each dataset config on the defaults, each trainer
config merged with a dataset config it is meant for, completed by its trainer's ``finalize_config``
and checked as ``train.py`` does (no model is built, nothing is downloaded).

The lists come from the file tree, so a new config file is checked without touching this test; a
trainer folder must be named after a registered trainer.
"""
from __future__ import annotations

import glob
import os

import pytest

from configs.config import merge_from_file
from configs.validate import check_config
from conftest import ROOT
from datasets import DATASET_REGISTRY
from trainers import TRAINER_REGISTRY, get_cfg

CONFIGS = os.path.join(ROOT, "configs")
DATASET_YAMLS = sorted(glob.glob(os.path.join(CONFIGS, "datasets", "*.yaml")))
TRAINER_YAMLS = sorted(glob.glob(os.path.join(CONFIGS, "trainers", "*", "*.yaml")))

#: the dataset config a trainer's configs are checked with (default: the synthetic emotion images) ...
DATASET_OF_TRAINER = {
    "EmoCoOp": "synthetic_emotion_ml.yaml",
    "VEGA": "synthetic_conversation.yaml",
    "UniEmoX": "fi.yaml",
    "UniEmoXPretrain": "emoset.yaml",
}
#: ... or of one file, where the file names the dataset it was written for
DATASET_OF_FILE = {
    "VEGA/iemocap.yaml": "iemocap_features.yaml",
    "EWMTCNN/vgg19bn_emotion6.yaml": "emotion6.yaml",
    "CoCoOp/vit_emotion.yaml": "emotion_dataset.yaml",
}


def _rel(path: str) -> str:
    return os.path.relpath(path, os.path.join(CONFIGS, "trainers")).replace(os.sep, "/")


def test_every_shipped_yaml_is_checked():
    every = sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True)
                   + glob.glob(os.path.join(CONFIGS, "**", "*.yml"), recursive=True))
    assert every == sorted(DATASET_YAMLS + TRAINER_YAMLS), "a YAML outside configs/datasets and configs/trainers/<Name>"
    assert len(DATASET_YAMLS) >= 20 and len(TRAINER_YAMLS) >= 49
    folders = sorted({_rel(p).split("/")[0] for p in TRAINER_YAMLS})
    assert [f for f in folders if f not in TRAINER_REGISTRY] == []
    assert [f for f in DATASET_OF_FILE if not os.path.isfile(os.path.join(CONFIGS, "trainers", f))] == []


@pytest.mark.parametrize("path", DATASET_YAMLS, ids=os.path.basename)
def test_dataset_config_loads(path):
    cfg = get_cfg()
    merge_from_file(cfg, path)
    assert cfg.DATASET.NAME in DATASET_REGISTRY, f"{path}: unknown DATASET.NAME {cfg.DATASET.NAME!r}"
    check_config(cfg)


@pytest.mark.parametrize("path", TRAINER_YAMLS, ids=_rel)
def test_trainer_config_loads_with_its_dataset(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name shipped files (GloVe subset, lexicons) relative to the repository
    name = _rel(path).split("/")[0]
    dataset = DATASET_OF_FILE.get(_rel(path), DATASET_OF_TRAINER.get(name, "synthetic_emotion.yaml"))
    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(CONFIGS, "datasets", dataset))
    cfg.TRAINER.NAME = name
    merge_from_file(cfg, path)
    assert cfg.TRAINER.NAME == name, f"{path} sets TRAINER.NAME {cfg.TRAINER.NAME!r} inside the {name} folder"
    trainer_cls = TRAINER_REGISTRY.get(name)
    DATASET_REGISTRY.get(cfg.DATASET.NAME)
    trainer_cls.finalize_config(cfg)
    check_config(cfg)
    cfg.freeze()
    assert cfg.is_frozen() and cfg.TRAINER.NAME == name
