"""Configs that say "released" hold the released settings; early stopping counts as the released code."""
from __future__ import annotations

import glob
import os
from types import SimpleNamespace

import pytest
import torch.nn as nn

from configs.config import merge_from_file
from conftest import ROOT
from trainers import get_cfg

VA_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs/trainers/VARegression/rn101_*.yaml")))


def _dropouts(module: nn.Module):
    ps = {m.p for m in module.modules() if isinstance(m, nn.Dropout)}
    ps |= {m.dropout for m in module.modules() if isinstance(m, nn.MultiheadAttention)}
    return ps


def test_vega_iemocap_has_the_released_dropouts():
    from trainers.vega.model import VEGANet
    from trainers.vega.trainer import vega_dropouts

    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(ROOT, "configs/trainers/VEGA/iemocap.yaml"))
    drops = vega_dropouts(cfg.TRAINER.VEGA)
    assert drops == {"dropout": 0.53, "head_dropout": 0.3963, "anchor_dropout": 0.374}
    net = VEGANet({"text": 8, "audio": 6, "visual": 4}, 6, 2, hidden=16, heads=4, clip_dim=8, **drops)
    assert all(_dropouts(block) == {0.53} for block in net.blocks.values())
    assert net.in_drop.p == 0.53
    assert all(_dropouts(head) == {0.3963} for head in net.heads.values())
    assert all(_dropouts(proj) == {0.374} for proj in net.anchor_proj.values())
    # the anchor projections keep their weight names (Linear 0, Linear 2) with the dropout between
    assert {k for k in net.state_dict() if k.startswith("anchor_proj.all.")} == {
        "anchor_proj.all.0.weight", "anchor_proj.all.0.bias", "anchor_proj.all.2.weight", "anchor_proj.all.2.bias"}


def test_vega_single_dropout_key_keeps_its_meaning():
    from trainers.vega.trainer import vega_dropouts

    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(ROOT, "configs/trainers/VEGA/tiny_synthetic.yaml"))
    d = float(cfg.TRAINER.VEGA.DROPOUT)
    assert vega_dropouts(cfg.TRAINER.VEGA) == {"dropout": d, "head_dropout": d, "anchor_dropout": 0.0}


@pytest.mark.parametrize("path", VA_CONFIGS, ids=os.path.basename)
def test_va_configs_use_the_released_schedule_and_crop(path):
    from datasets import build_transform
    from torchvision.transforms import v2
    from trainers.engine.optim import lr_factor_fn

    cfg = get_cfg()
    merge_from_file(cfg, path)
    o = cfg.OPTIM
    assert (o.LR_SCHEDULER, tuple(o.STEPSIZE), o.GAMMA, o.STEP_PER_ITER) == ("multi_step", (10, 20, 30, 40, 50), 0.5, False)
    f = lr_factor_fn(o.LR, o.LR_SCHEDULER, o.MAX_EPOCH, o.STEPSIZE, o.GAMMA, o.WARMUP_EPOCH)
    assert [f(e) for e in (0, 9, 10, 19, 20, 49, 50, 99)] == [1, 1, 0.5, 0.5, 0.25, 0.0625, 0.03125, 0.03125]
    tfm = build_transform(cfg, is_train=True)
    crops = [t for t in tfm.transforms if isinstance(t, v2.RandomResizedCrop)]
    assert len(crops) == 1 and tuple(crops[0].size) == (448, 448)
    assert not any(isinstance(t, v2.Resize) for t in tfm.transforms)  # no squashing to 448 x 448


def _run_hook(hook, scores, best_of=max):
    """Feed validation scores to an early-stopping hook; the epoch (1-based) it stops after, or None."""
    best = None
    trainer = SimpleNamespace(stop_training=False, evaluator=SimpleNamespace(main_metric="m"), has_val=True,
                              cfg=SimpleNamespace(TRAIN=SimpleNamespace(EVAL_FREQ=1)))
    hook.trainer = trainer
    for epoch, s in enumerate(scores, 1):
        trainer.is_best = best is None or s > best
        best = s if trainer.is_best else best
        trainer.last_val = {"m": s}
        hook.after_epoch()
        if trainer.stop_training:
            return epoch
    return None


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stopping_stops_after_more_than_patience_bad_epochs(patience):
    from trainers.engine.hooks import EarlyStoppingHook  # the one hook VEGA and the CNN trainers share

    scores = [0.5, 0.6] + [0.1] * 10  # best at epoch 2, then only worse
    expected = 2 + patience + 1  # released: `if bad > patience: stop`
    assert _run_hook(EarlyStoppingHook(None, patience), scores) == expected  # VEGA: the main metric
    assert _run_hook(EarlyStoppingHook("m", patience, "max"), scores) == expected
