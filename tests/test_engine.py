"""Engine pieces: LR schedules, optimisers, checkpoints."""
from __future__ import annotations

import math
import os
import pickle

import pytest
import torch

from configs.config import merge_from_list

from trainers import get_cfg
from utils.errors import CheckpointError, ConfigError
from trainers.engine.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, save_checkpoint
from trainers.engine.optim import build_lr_scheduler, build_optimizer, lr_factor_fn
from conftest import engine_lrs


def test_cosine_with_constant_warmup_matches_dassl():
    lrs = engine_lrs(["OPTIM.NAME", "sgd", "OPTIM.LR", "0.002", "OPTIM.MAX_EPOCH", "4", "OPTIM.LR_SCHEDULER", "cosine",
                "OPTIM.WARMUP_EPOCH", "1", "OPTIM.WARMUP_TYPE", "constant", "OPTIM.WARMUP_CONS_LR", "1e-5"], 4)
    expected = [1e-5] + [0.002 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(3)]
    assert lrs == pytest.approx(expected)


def test_linear_warmup_then_multistep():
    lrs = engine_lrs(["OPTIM.LR", "0.1", "OPTIM.LR_SCHEDULER", "multi_step", "OPTIM.STEPSIZE", "(2, 3)",
                "OPTIM.WARMUP_EPOCH", "2", "OPTIM.WARMUP_TYPE", "linear", "OPTIM.WARMUP_MIN_LR", "0.01",
                "OPTIM.MAX_EPOCH", "7"], 7)
    assert lrs == pytest.approx([0.01, 0.05, 0.1, 0.1, 0.01, 0.001, 0.001])  # Dassl: base_lr * e / WARMUP_EPOCH


def test_single_step_and_per_iteration_schedule():
    f = lr_factor_fn(1.0, "single_step", 10, stepsize=(3,), gamma=0.5)
    assert [f(e) for e in (0, 2.9, 3, 6)] == [1.0, 1.0, 0.5, 0.25]
    cfg = get_cfg(with_extensions=False)
    merge_from_list(cfg, ["OPTIM.LR_SCHEDULER", "cosine", "OPTIM.MAX_EPOCH", "2", "OPTIM.STEP_PER_ITER", "True"])
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.OPTIM)
    sched = build_lr_scheduler(opt, cfg.OPTIM, iters_per_epoch=4)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.OPTIM.LR * 0.5)  # half-way after one epoch of 4 steps


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_optimizers(name, cls):
    cfg = get_cfg(with_extensions=False)
    merge_from_list(cfg, ["OPTIM.NAME", name, "OPTIM.WEIGHT_DECAY", "0.01"])
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg.OPTIM)
    assert isinstance(opt, cls) and opt.param_groups[0]["weight_decay"] == 0.01


def test_unknown_optimizer_and_scheduler():
    cfg = get_cfg(with_extensions=False)
    merge_from_list(cfg, ["OPTIM.NAME", "adamm"])
    with pytest.raises(ConfigError, match=r"unknown OPTIM.NAME 'adamm' \(did you mean 'adam'\?\)"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.OPTIM)
    with pytest.raises(ConfigError, match="unknown OPTIM.LR_SCHEDULER 'cosin'"):
        lr_factor_fn(1.0, "cosin", 10)


def test_checkpoint_layout_atomic_and_safe(tmp_path):
    d = str(tmp_path / "prompt_learner")
    state = {"state_dict": {"w": torch.ones(2)}, "epoch": 3, "optimizer": None, "scheduler": None, "val_result": None}
    save_checkpoint(state, d, is_best=True)
    assert sorted(os.listdir(d)) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-3"]
    assert open(os.path.join(d, "checkpoint")).read().strip() == "model.pth.tar-3"
    assert latest_checkpoint(d).endswith("model.pth.tar-3")
    assert torch.equal(load_checkpoint(os.path.join(d, "model.pth.tar-3"))["state_dict"]["w"], torch.ones(2))
    assert checkpoint_path(str(tmp_path), "prompt_learner", None).endswith("model-best.pth.tar")
    assert checkpoint_path(str(tmp_path), "prompt_learner", 3).endswith("model.pth.tar-3")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "x": Evil()}, str(path), pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*evil.pth.tar"):
        load_checkpoint(str(path))
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope"):
        load_checkpoint(str(tmp_path / "nope"))


def test_log_file_lines_are_timestamped_with_the_level_after_the_time(tmp_path):
    import logging
    import re

    from trainers.engine.logger import setup_logging

    setup_logging(str(tmp_path), True)
    log = logging.getLogger("trainers.test_log_format")
    log.info("plain line")
    log.warning("careful")
    log.info("Finish training", extra={"bare": True})
    for h in logging.getLogger().handlers:
        h.flush()
    lines = (tmp_path / "log.txt").read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert any(re.fullmatch(stamp + r" plain line", line) for line in lines), lines
    assert any(re.fullmatch(stamp + r" WARNING careful", line) for line in lines), lines
    assert "Finish training" in lines  # bare: exactly Dassl's line
