"""Data settings are read in one place: every trainer's loaders take their options from
``loader_options_from_cfg`` and the trainer receives them in one ``DataBundle`` (``trainer.data``)."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from conftest import COOP_CFG, ROOT, SMALL_DATA, SYN_CFG


def _tcfg(path: str) -> str:
    return os.path.join(ROOT, "configs/trainers", path)


CONV_DATA = os.path.join(ROOT, "configs/datasets/synthetic_conversation.yaml")
SMALL_CONV = ["DATASET.CONVERSATION.SYNTHETIC.N_TRAIN_DIALOGUES", "10", "DATASET.CONVERSATION.SYNTHETIC.N_TEST_DIALOGUES",
              "4", "DATASET.CONVERSATION.SYNTHETIC.MAX_LEN", "8", "TRAINER.VEGA.HIDDEN", "8", "TRAINER.VEGA.HEADS", "2"]
VA_TWO_STAGE = ["TRAINER.VA.MODE", "two_stage", "TRAINER.VA.TASK", "multi", "TRAINER.VA.CATEGORICAL_DATASET",
                "SyntheticEmotion", "TRAINER.VA.STAGE1_CHECKPOINT", "stage1-not-read", "INPUT.SIZE", "(16, 16)"]
#: trainer -> (config file, dataset config, options)
CASES = {
    "VEGA": (_tcfg("VEGA/tiny_synthetic_no_anchor_branch.yaml"), CONV_DATA, SMALL_CONV),
    "VARegression": (_tcfg("VARegression/tiny_synthetic.yaml"), SYN_CFG, SMALL_DATA + VA_TWO_STAGE),
    "UniEmoX": (_tcfg("UniEmoX/tiny_synthetic.yaml"), SYN_CFG, SMALL_DATA + ["DATALOADER.TRAIN_X.BATCH_SIZE", "8"]),
    "UniEmoXPretrain": (_tcfg("UniEmoXPretrain/tiny_synthetic_mae_only.yaml"), SYN_CFG, SMALL_DATA),
    "CoOp": (COOP_CFG, SYN_CFG, SMALL_DATA + ["CACHE.FEATURES", "off"]),
}


def _build(tmp_path, data_root, trainer, *extra):
    from train import build_parser, setup_cfg
    from trainers import build_trainer

    cfg_file, data_cfg, opts = CASES[trainer]
    args = build_parser().parse_args(["--root", data_root, "--seed", "1", "--output-dir", str(tmp_path / trainer),
                                      "--trainer", trainer, "--config-file", cfg_file, "--dataset-config-file", data_cfg,
                                      *opts, "VERBOSE", "False", *extra])
    return build_trainer(setup_cfg(args))


@pytest.fixture
def no_stage1(monkeypatch):
    """The VA two-stage trainer builds without a stage-1 run (only its data is looked at here)."""
    import trainers.va_regression.trainer as va

    monkeypatch.setattr(va, "load_stage1", lambda model, path: path)


def _loaders(trainer):
    return {k: getattr(trainer.data, k) for k in ("train_loader", "val_loader", "test_loader")
            if getattr(trainer.data, k) is not None}


@pytest.mark.parametrize("name", list(CASES))
def test_every_trainer_takes_its_loader_options_from_one_function(name, tmp_path, data_root, monkeypatch, no_stage1):
    import trainers.engine.data as data

    original = data.loader_options_from_cfg
    calls = []

    def marked(cfg, **kw):  # options no config could give: every loader must show them
        calls.append(kw)
        return dataclasses.replace(original(cfg, **kw), num_workers=1, prefetch_factor=7)

    monkeypatch.setattr(data, "loader_options_from_cfg", marked)
    trainer = _build(tmp_path, data_root, name)
    assert len(calls) == 1 and calls[0]["rank"] == 0 and calls[0]["world_size"] == 1
    loaders = _loaders(trainer)
    assert "train_loader" in loaders and "test_loader" in loaders
    for split, loader in loaders.items():
        assert (split, loader.num_workers, loader.prefetch_factor) == (split, 1, 7)
    # one bundle; the trainer's attributes are read-only views of it
    assert trainer.train_loader is trainer.data.train_loader and trainer.num_classes == trainer.data.dataset.num_classes
    assert trainer.classnames == trainer.data.dataset.classnames and trainer.task == trainer.data.dataset.task
    with pytest.raises(AttributeError):
        trainer.num_classes = 3


def test_va_two_stage_loader_honours_prefetch_factor(tmp_path, data_root, no_stage1):
    trainer = _build(tmp_path, data_root, "VARegression", "DATALOADER.NUM_WORKERS", "1",
                     "DATALOADER.PREFETCH_FACTOR", "3")
    train = trainer.data.train_loader
    # the mixed loader: the 32 dimensional + 32 categorical training items, classes of the categorical data
    assert len(train.dataset) == 2 * len(trainer.dataset.train_x) == 64
    assert (train.num_workers, train.prefetch_factor) == (1, 3)
    assert trainer.test_loader.prefetch_factor == 3 and trainer.val_loader.prefetch_factor == 3


def test_bundle_loaders_match_a_direct_build(tmp_path, data_root):
    """The engine's bundle gives the batches the plain loader builder gives (same order, same views)."""
    from datasets import build_data_loader

    trainer = _build(tmp_path, data_root, "CoOp", "DATALOADER.TRAIN_X.BATCH_SIZE", "8")
    d = trainer.data
    direct = build_data_loader(d.dataset.train_x, d.tfm_train, 8, is_train=True, num_classes=d.num_classes, seed=1,
                               sampler="RandomSampler")
    d.train_loader.sampler.set_epoch(2)
    direct.sampler.set_epoch(2)
    a, b = next(iter(d.train_loader)), next(iter(direct))
    assert torch.equal(a["index"], b["index"]) and torch.equal(a["img"], b["img"])
    assert d.has_val and d.options.seed == 1 and d.options.train_batch_size == 8

