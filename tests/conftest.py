"""Shared fixtures: a small synthetic dataset, a tiny random CLIP, and an in-process CLI runner."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import List

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

#: small synthetic-data settings used by CLI tests (8 classes)
SMALL_DATA = [
    "DATASET.SYNTHETIC.N_TRAIN_PER_CLASS", "4",
    "DATASET.SYNTHETIC.N_VAL_PER_CLASS", "2",
    "DATASET.SYNTHETIC.N_TEST_PER_CLASS", "3",
    "CACHE.DIR", tempfile.mkdtemp(prefix="emolab_cache_"),
]
COOP_CFG = os.path.join(ROOT, "configs/trainers/CoOp/tiny_synthetic.yaml")
COCOOP_CFG = os.path.join(ROOT, "configs/trainers/CoCoOp/tiny_synthetic.yaml")
SYN_CFG = os.path.join(ROOT, "configs/datasets/synthetic_emotion.yaml")


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> str:
    """A dataset root shared by the whole session (the synthetic data is generated on first use)."""
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_clip():
    """The tiny ViT CLIP with random weights (deterministic)."""
    from clip import load_clip

    torch.manual_seed(0)
    return load_clip("emolab-tiny-vit", pretrained="")


def run_cli(args: List[str]) -> int:
    """Run ``train.py`` in this process; returns its exit code."""
    import train

    return train.main(args)


def read_metrics(out_dir: str) -> List[dict]:
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def final_test(out_dir: str) -> dict:
    recs = [r for r in read_metrics(out_dir) if r.get("final")]
    assert recs, f"no final record in {out_dir}"
    return recs[-1]["metrics"]


def step_lrs(opt, sched, epochs: int) -> List[float]:
    """The learning rate of ``opt`` in each of ``epochs`` epochs, stepping ``sched`` once per epoch."""
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def engine_lrs(opts: List[str], epochs: int) -> List[float]:
    """Per-epoch learning rates of EmoLab's optimiser and scheduler for the ``OPTIM.*`` ``opts``."""
    from configs.config import merge_from_list
    from trainers import get_cfg
    from trainers.engine.optim import build_lr_scheduler, build_optimizer

    cfg = get_cfg(with_extensions=False)
    merge_from_list(cfg, opts)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.OPTIM)
    return step_lrs(opt, build_lr_scheduler(opt, cfg.OPTIM), epochs)


def project_trainers():
    """Names of the trainers registered by the project's own packages (``trainers.*``); test modules
    may register trainers of their own (e.g. test_cli's NaNAtStepTwo) when they are collected."""
    from trainers import TRAINER_REGISTRY

    return [name for name, cls in TRAINER_REGISTRY.items() if cls.__module__.split(".")[0] == "trainers"]
