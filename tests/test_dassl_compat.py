"""Dassl / CoOp conventions exactly: STEPSIZE, warm-up, CTX_INIT, the log's end line, and
prompt-learner checkpoints crossing over both ways with the official code's layout."""
from __future__ import annotations

import logging
import os
import re
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR, MultiStepLR, StepLR, _LRScheduler

from conftest import COCOOP_CFG, COOP_CFG, SMALL_DATA, SYN_CFG, engine_lrs, run_cli, step_lrs
from trainers.engine.optim import lr_factor_fn


# ----------------------------------------------------------------------- Dassl's schedulers
class _DasslWarmup(_LRScheduler):
    """Dassl's ``_BaseWarmupScheduler`` semantics (optim/lr_scheduler.py), keyword arguments only."""

    def __init__(self, optimizer, successor, warmup_epoch, last_epoch=-1):
        self.successor, self.warmup_epoch = successor, warmup_epoch
        super().__init__(optimizer, last_epoch)

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)


class _DasslConstant(_DasslWarmup):
    def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
        self.cons_lr = cons_lr
        super().__init__(optimizer, successor, warmup_epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]


class _DasslLinear(_DasslWarmup):
    def __init__(self, optimizer, successor, warmup_epoch, min_lr):
        self.min_lr = min_lr
        super().__init__(optimizer, successor, warmup_epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        if self.last_epoch == 0:
            return [self.min_lr for _ in self.base_lrs]
        return [lr * self.last_epoch / self.warmup_epoch for lr in self.base_lrs]


def _dassl_lrs(lr, sched, max_epoch, stepsize, gamma, warmup_epoch, warmup_type, cons_lr, min_lr):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    if sched == "cosine":
        s = CosineAnnealingLR(opt, T_max=float(max_epoch))
    elif sched == "single_step":
        step = stepsize[-1] if stepsize[-1] > 0 else max_epoch
        s = StepLR(opt, step_size=step, gamma=gamma)
    else:
        s = MultiStepLR(opt, milestones=list(stepsize), gamma=gamma)
    if warmup_epoch > 0:
        s = (_DasslConstant(opt, s, warmup_epoch, cons_lr) if warmup_type == "constant"
             else _DasslLinear(opt, s, warmup_epoch, min_lr))
    return step_lrs(opt, s, max_epoch)


def _emolab_lrs(lr, sched, max_epoch, stepsize, gamma, warmup_epoch, warmup_type, cons_lr, min_lr):
    return engine_lrs(["OPTIM.NAME", "sgd", "OPTIM.LR", str(lr), "OPTIM.LR_SCHEDULER", sched,
                       "OPTIM.MAX_EPOCH", str(max_epoch), "OPTIM.STEPSIZE", str(tuple(stepsize)),
                       "OPTIM.GAMMA", str(gamma), "OPTIM.WARMUP_EPOCH", str(warmup_epoch),
                       "OPTIM.WARMUP_TYPE", warmup_type, "OPTIM.WARMUP_CONS_LR", str(cons_lr),
                       "OPTIM.WARMUP_MIN_LR", str(min_lr)], max_epoch)


@pytest.mark.parametrize("setting", [
    (0.002, "cosine", 20, (-1,), 0.1, 1, "constant", 1e-5, 1e-5),     # CoOp's configs
    (0.001, "cosine", 12, (-1,), 0.1, 5, "linear", 1e-3, 1e-5),       # EmoCoOp's (linear, 5 epochs)
    (0.1, "multi_step", 9, (2, 4), 0.5, 3, "linear", 1e-5, 0.01),
    (0.1, "single_step", 9, (-1,), 0.1, 2, "linear", 1e-5, 1e-4),     # STEPSIZE -1 = MAX_EPOCH
    (0.1, "single_step", 9, (2, 3), 0.1, 0, "linear", 1e-5, 1e-4),    # a list: Dassl takes the last
])
def test_schedules_match_dassl_epoch_by_epoch(setting):
    assert _emolab_lrs(*setting) == pytest.approx(_dassl_lrs(*setting), rel=1e-9)


def test_stepsize_non_positive_means_max_epoch():
    f = lr_factor_fn(1.0, "single_step", 10, stepsize=(-1,), gamma=0.1)
    assert [f(e) for e in range(10)] == [1.0] * 10
    f = lr_factor_fn(1.0, "multi_step", 10, stepsize=(0, 4), gamma=0.1)
    assert [f(e) for e in (0, 3, 4, 9)] == pytest.approx([1.0, 1.0, 0.1, 0.1])


def test_train_py_without_arguments_builds(tmp_path, data_root):
    """``python train.py`` alone (single_step, STEPSIZE -1 by default) gets past building."""
    assert run_cli(["--root", data_root, "--output-dir", str(tmp_path / "noargs"), "--no-train", *SMALL_DATA]) == 0


# ----------------------------------------------------------------------- CTX_INIT
def test_ctx_init_underscores_are_spaces_and_count_is_logged(tiny_clip, caplog):
    from trainers.components.prompt_learner import context_from_words

    with caplog.at_level(logging.INFO):
        a, n_a = context_from_words(tiny_clip, "a_photo_of_a")
    b, n_b = context_from_words(tiny_clip, "a photo of a")
    assert n_a == n_b == 4 and torch.equal(a, b)
    assert "context: 4 tokens initialised from the words 'a photo of a'" in caplog.text


# ----------------------------------------------------------------------- log: CoOp's parse_test_res.py
def _coop_parse_test_res(log_path: str, end_signal: str = "Finish training"):
    """CoOp's ``parse_test_res.py`` default mode: results after a line equal to ``end_signal``."""
    regex = re.compile(r"\* accuracy: ([\.\deE+-]+)%")
    good_to_go, found = False, []
    with open(log_path) as f:
        for line in f.readlines():
            line = line.strip()
            if line == end_signal:
                good_to_go = True
            match = regex.search(line)
            if match and good_to_go:
                found.append(float(match.group(1)))
    return found


def test_log_ends_training_with_dassls_line_and_coop_parser_reads_it(tmp_path, data_root):
    out = tmp_path / "seed1"
    args = ["--root", data_root, "--seed", "1", "--output-dir", str(out), "--config-file", COOP_CFG,
            "--dataset-config-file", SYN_CFG, *SMALL_DATA, "OPTIM.MAX_EPOCH", "1"]
    assert run_cli(args) == 0
    from conftest import final_test

    found = _coop_parse_test_res(str(out / "log.txt"))
    assert found and found[-1] == pytest.approx(final_test(str(out))["accuracy"], abs=0.051)


# ----------------------------------------------------------------------- checkpoints, official layout
def _build_trainer(tmp_path, data_root, cfg_file, trainer, *opts):
    from trainers import build_trainer
    from train import build_parser, setup_cfg

    args = build_parser().parse_args(["--root", data_root, "--seed", "1", "--output-dir", str(tmp_path / "run"),
                                      "--config-file", cfg_file, "--dataset-config-file", SYN_CFG,
                                      "--trainer", trainer, *SMALL_DATA,
                                      "CACHE.FEATURES", "off", *opts])
    return build_trainer(setup_cfg(args))


def _fake_dassl_scheduler(params):
    """A Dassl warm-up scheduler object as the official code pickles it (a class from a module
    ``dassl.optim.lr_scheduler`` that only exists while the file is written)."""
    mod = types.ModuleType("dassl.optim.lr_scheduler")

    class ConstantWarmupScheduler:
        pass

    ConstantWarmupScheduler.__module__ = mod.__name__
    ConstantWarmupScheduler.__qualname__ = "ConstantWarmupScheduler"
    mod.ConstantWarmupScheduler = ConstantWarmupScheduler
    for name in ("dassl", "dassl.optim"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules[mod.__name__] = mod
    opt = torch.optim.SGD(params, lr=0.002, momentum=0.9)
    sched = ConstantWarmupScheduler()
    sched.__dict__.update({"successor": CosineAnnealingLR(opt, T_max=10.0), "warmup_epoch": 1, "cons_lr": 1e-5,
                           "base_lrs": [0.002], "last_epoch": 3, "optimizer": opt})
    return sched, opt


def _write_official(path, state, params):
    sched, opt = _fake_dassl_scheduler(params)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save({"state_dict": state, "epoch": 4, "optimizer": opt.state_dict(), "scheduler": sched,
                    "val_result": 71.25}, path)
        with open(os.path.join(os.path.dirname(path), "checkpoint"), "w") as f:
            f.write(os.path.basename(path) + "\n")
    finally:
        for name in ("dassl.optim.lr_scheduler", "dassl.optim", "dassl"):
            sys.modules.pop(name, None)


def _official_prompts(clip, classnames, n_ctx, ctx):
    """CoOp's PromptLearner: token_prefix / token_suffix from "X X .. X name." and the full 77 tokens."""
    names = [c.replace("_", " ") for c in classnames]
    tokens = clip.tokenize([" ".join(["X"] * n_ctx) + " " + n + "." for n in names])
    with torch.no_grad():
        emb = clip.embed_tokens(tokens).float()
    prefix, suffix = emb[:, :1], emb[:, 1 + n_ctx:]
    return prefix, suffix, tokens.argmax(-1)


def _official_logits(clip, img, prefix, suffix, eot, ctx_per_image):
    """Logits of the official code: prompts = [prefix, ctx, suffix] per class (and image)."""
    out = []
    with torch.no_grad():
        feats = F.normalize(clip.encode_image(img), dim=-1)
        for i in range(img.shape[0]):
            ctx = ctx_per_image(feats[i])  # [n_ctx, D]
            c = prefix.shape[0]
            prompts = torch.cat([prefix, ctx.unsqueeze(0).expand(c, -1, -1), suffix], dim=1)
            txt = F.normalize(clip.encode_text_embeddings(prompts, eot), dim=-1)
            out.append(clip.logit_scale.exp() * feats[i] @ txt.t())
    return torch.stack(out)


@pytest.mark.parametrize("which", ["CoOp", "CoCoOp"])
def test_official_checkpoint_loads_without_pickled_code_and_gives_the_same_logits(which, tmp_path, data_root):
    n_ctx = 4
    cfg_file = COOP_CFG if which == "CoOp" else COCOOP_CFG
    node = "TRAINER.COOP" if which == "CoOp" else "TRAINER.COCOOP"
    trainer = _build_trainer(tmp_path, data_root, cfg_file, which, f"{node}.N_CTX", str(n_ctx),
                             f"{node}.CTX_INIT", "")
    clip = trainer.model.clip
    d, e = clip.text_width, clip.embed_dim
    g = torch.Generator().manual_seed(3)
    prefix, suffix, eot = _official_prompts(clip, trainer.classnames, n_ctx, None)
    state = {"ctx": torch.randn(n_ctx, d, generator=g).half(),  # official fp16 prompt learner
             "token_prefix": prefix.half(), "token_suffix": suffix.half()}
    if which == "CoCoOp":
        h = e // 16
        state.update({"meta_net.linear1.weight": torch.randn(h, e, generator=g) * 0.1,
                      "meta_net.linear1.bias": torch.randn(h, generator=g) * 0.1,
                      "meta_net.linear2.weight": torch.randn(d, h, generator=g) * 0.1,
                      "meta_net.linear2.bias": torch.randn(d, generator=g) * 0.1})
    official_dir = tmp_path / "official"
    ckpt = official_dir / "prompt_learner" / "model.pth.tar-4"
    _write_official(str(ckpt), state, [torch.nn.Parameter(state["ctx"].float())])
    with pytest.raises(Exception):  # what EmoLab did before: weights_only refuses the scheduler object
        torch.load(str(ckpt), weights_only=True)

    trainer.load_model(str(official_dir), epoch=4)
    ctx = state["ctx"].float()

    def ctx_for(feat):
        if which == "CoOp":
            return ctx
        w1, b1 = state["meta_net.linear1.weight"], state["meta_net.linear1.bias"]
        w2, b2 = state["meta_net.linear2.weight"], state["meta_net.linear2.bias"]
        return ctx + (F.relu(feat @ w1.t() + b1) @ w2.t() + b2)

    img = torch.randn(3, 3, clip.image_size, clip.image_size, generator=g)
    trainer.set_model_mode("eval")
    with torch.no_grad():
        ours = trainer.model(img)
    ref = _official_logits(clip, img, prefix, suffix, eot, ctx_for)
    assert (ours - ref).abs().max() < 1e-3

    # and back: the tool writes the official layout, readable with weights_only=True
    from tools.convert_coop_checkpoint import convert

    trainer.save_model(4)
    out_dir = tmp_path / "to_official"
    convert(str(tmp_path / "run"), str(out_dir) + "/")
    back = torch.load(str(out_dir / "prompt_learner" / "model.pth.tar-4"), weights_only=True)
    assert back["epoch"] == 4 and (out_dir / "prompt_learner" / "checkpoint").read_text().strip() == "model.pth.tar-4"
    expected = {"ctx": (n_ctx, d)}
    if which == "CoCoOp":
        expected.update({"meta_net.linear1.weight": (e // 16, e), "meta_net.linear1.bias": (e // 16,),
                         "meta_net.linear2.weight": (d, e // 16), "meta_net.linear2.bias": (d,)})
    assert {k: tuple(v.shape) for k, v in back["state_dict"].items()} == expected
    assert torch.allclose(back["state_dict"]["ctx"], ctx)


def test_refused_globals_are_named(tmp_path):
    """Anything outside the allow-list (here os.system via __reduce__) stops reading, unrun."""
    from utils.errors import CheckpointError
    from trainers.engine.checkpoint import load_checkpoint

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"ctx": torch.zeros(2, 3)}, "scheduler": Evil()}, str(path))
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(str(path))
    assert "posix.system" in str(exc.value) or "os.system" in str(exc.value)
    assert "\n" not in str(exc.value) and not (tmp_path / "pwned").exists()
