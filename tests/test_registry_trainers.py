"""Every registered trainer, driven by the registry: build it on its tiny config, train one short
epoch, evaluate, and load its checkpoint back.

The list of trainers comes from ``TRAINER_REGISTRY``, so a new trainer is checked without touching
this file; it only needs ``configs/trainers/<Name>/tiny_synthetic.yaml`` (its absence fails the
test). Only public entry points are used: ``trainers.get_cfg``, ``trainers.build_trainer``,
``trainer.train()`` / ``trainer.test()`` / ``trainer.load_model()`` and the files the run writes
into ``OUTPUT_DIR``.
"""
from __future__ import annotations

import glob
import math
import os

import pytest

from conftest import ROOT, project_trainers, read_metrics
from configs.config import merge_from_file, merge_from_list
from trainers import build_trainer, get_cfg

TRAINERS = project_trainers()
DS = os.path.join(ROOT, "configs", "datasets")

#: the dataset a trainer's tiny config is meant for, where it is not the synthetic emotion images; a data
#: folder is written in that dataset's on-disk layout where it is not generated on first use
DATASET_OF = {
    "EmoCoOp": ("synthetic_emotion_ml.yaml", None),
    "VEGA": ("synthetic_conversation.yaml", None),
    "UniEmoX": ("fi.yaml", "folders"),
    "UniEmoXPretrain": ("emoset.yaml", "emoset"),
}
DEFAULT_DATASET = ("synthetic_emotion.yaml", None)

#: small sizes for every run (keys that a config lacks are skipped)
TINY = {
    "OPTIM.MAX_EPOCH": 1,
    "OPTIM.WARMUP_EPOCH": 0,
    "DATALOADER.TRAIN_X.BATCH_SIZE": 8,
    "DATALOADER.TEST.BATCH_SIZE": 32,
    "DATALOADER.NUM_WORKERS": 0,
    "TRAIN.PRINT_FREQ": 1,
    "DATASET.SYNTHETIC.N_TRAIN_PER_CLASS": 2,
    "DATASET.SYNTHETIC.N_VAL_PER_CLASS": 1,
    "DATASET.SYNTHETIC.N_TEST_PER_CLASS": 2,
    "DATASET.CONVERSATION.SYNTHETIC.N_TRAIN_DIALOGUES": 6,
    "DATASET.CONVERSATION.SYNTHETIC.N_TEST_DIALOGUES": 3,
    "DATASET.CONVERSATION.SYNTHETIC.MIN_LEN": 3,
    "DATASET.CONVERSATION.SYNTHETIC.MAX_LEN": 5,
    "VERBOSE": False,
}


def tiny_config(name: str) -> str:
    return os.path.join(ROOT, "configs", "trainers", name, "tiny_synthetic.yaml")


def _has(cfg, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        if part not in node:
            return False
        node = node[part]
    return True


def make_cfg(name: str, root: str, out: str, cache: str):
    ds_file, _ = DATASET_OF.get(name, DEFAULT_DATASET)
    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(DS, ds_file))
    merge_from_file(cfg, tiny_config(name))
    opts = ["TRAINER.NAME", name, "DATASET.ROOT", root, "OUTPUT_DIR", out, "SEED", "1", "CACHE.DIR", cache]
    for k, v in TINY.items():
        if _has(cfg, k):
            opts += [k, str(v)]
    for k in ("TRAINER.UNIEMOX_PRETRAIN.TEXT_CACHE_DIR", "TRAINER.EMOCOOP.CLUSTER_CACHE_DIR"):
        if _has(cfg, k):
            opts += [k, os.path.join(cache, k.split(".")[1].lower())]
    merge_from_list(cfg, opts)
    return cfg


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Data for every trainer: the generated datasets appear on first use, the native layouts are written here."""
    from datasets.synthetic.native import DEFAULT_DIRS, NativeSettings, write_native

    r = tmp_path_factory.mktemp("registry_data")
    for fmt in sorted({f for _, f in DATASET_OF.values() if f}):
        write_native(str(r / DEFAULT_DIRS[fmt]), fmt, NativeSettings(2, 1, 2))
    write_vega_anchors(str(r))
    return str(r)


def write_vega_anchors(root: str) -> None:
    """The anchor file VEGA's tiny config names (``anchors/synthetic_anchor.pt`` under DATASET.ROOT), built with
    tools/build_anchors.py from a few synthetic emotion images, as a user of the config would."""
    from datasets.synthetic.images import SyntheticSettings, write_synthetic
    from tools.build_anchors import main

    images = os.path.join(root, "anchor_images")
    write_synthetic(images, SyntheticSettings(n_train_per_class=1, n_val_per_class=1, n_test_per_class=1))
    classes = ["happy", "sad", "neutral", "anger", "excited", "frustration"]
    emotions = ["amusement", "sadness", "contentment", "anger", "excitement", "disgust"]
    assert main(["--image-list", os.path.join(images, "annotations.csv"), "--split", "train", "--classes", *classes,
                 "--map", *[f"{c}={e}" for c, e in zip(classes, emotions)],
                 "--output", os.path.join(root, "anchors", "synthetic_anchor.pt"), "--device", "cpu"]) == 0


def test_every_registered_trainer_has_a_tiny_config():
    missing = [n for n in TRAINERS if not os.path.isfile(tiny_config(n))]
    assert not missing, f"registered trainers without configs/trainers/<Name>/tiny_synthetic.yaml: {missing}"
    assert len(TRAINERS) >= 10


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4) or (a != a and b != b)


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_trains_evaluates_and_round_trips(name, root, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # tiny configs name shipped files (lexicon, GloVe subset) relative to the repository
    assert os.path.isfile(tiny_config(name)), f"{name}: no configs/trainers/{name}/tiny_synthetic.yaml"
    out, cache = str(tmp_path / "run"), str(tmp_path / "cache")
    trainer = build_trainer(make_cfg(name, root, out, cache))
    try:
        final = trainer.train()
    finally:
        trainer.close()
    # one epoch trained (where the method trains): a finite loss in the training record
    records = read_metrics(out)
    train = [r for r in records if r.get("split") == "train" and not r.get("final")]
    for r in train:
        assert r["epoch"] == 1 and r["metrics"], (name, r)
        bad = {k: v for k, v in r["metrics"].items() if not math.isfinite(v)}
        assert not bad, f"{name}: non-finite training values {bad}"
    # the final evaluation: named metrics, all numbers, the same as the final record written
    assert final and all(isinstance(k, str) and k for k in final), (name, final)
    assert all(isinstance(v, float) and (math.isfinite(v) or v != v) for v in final.values()), (name, final)
    finals = [r for r in records if r.get("final")]
    assert finals and finals[-1]["metrics"].keys() == final.keys()
    losses_only = all(k.startswith("loss") for k in final)  # a pre-training stage tests its held-out losses
    assert losses_only or trainer.evaluator.main_metric in final, (name, trainer.evaluator.main_metric, sorted(final))
    # the checkpoint written after the epoch loads into a freshly built trainer and gives the same results
    saved = sorted(glob.glob(os.path.join(out, "**", "model.pth.tar-1"), recursive=True))
    if train:
        assert saved, f"{name}: trained an epoch but wrote no model.pth.tar-1 under {out}"
    if saved:
        again = build_trainer(make_cfg(name, root, str(tmp_path / "again"), cache))
        try:
            again.load_model(out, epoch=1)
            res = again.test()
        finally:
            again.close()
        diff = {k: (final[k], res.get(k)) for k in final if k in res and not _close(final[k], res[k])}
        assert res.keys() == final.keys() and not diff, f"{name}: results after loading the checkpoint differ: {diff}"


def test_synthetic_formats_registry():
    """Each on-disk layout is registered beside its writer with a fixed seed key (the files never change)."""
    from datasets.synthetic import native

    assert native.FORMATS == ("emotion6", "folders", "sentiment_folders", "class_folders", "ldl", "ldl_images",
                              "emoset", "emotion_csv")
    assert [native.NATIVE_FORMATS.get(f).seed_key for f in native.FORMATS] == list(range(8))
    assert native.DEFAULT_DIRS["folders"] == "FI" and native.DEFAULT_DIRS["ldl_images"] == "TwitterLDL"
    with pytest.raises(ValueError, match="unknown format 'emotion7' \\(known: emotion6, folders"):
        native.write_native("/nonexistent", "emotion7")
    with pytest.raises(KeyError, match="seed key 3 is already used"):
        native.native_format("new_layout", "New", seed_key=3)(native.write_folders)
    assert "new_layout" not in native.NATIVE_FORMATS
