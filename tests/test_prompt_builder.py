"""The shared prompt-learner builder: CoOp, CoCoOp and EmoCoOp build their prompt learner with
``build_prompt_learner``, and a CoOp variant with its own prompt learner is one file and one yaml."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import ROOT, SMALL_DATA, SYN_CFG, final_test
from utils.errors import ConfigError
from trainers import get_cfg
from trainers.components.context import ConditionalContext, StaticContext
from trainers.components.prompt_learner import PROMPT_LEARNERS, PromptedCLIP, PromptLearner, build_prompt_learner

CLASSES = ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"]
ML_DATA = os.path.join(ROOT, "configs/datasets/synthetic_emotion_ml.yaml")


def _node(name, **opts):
    node = get_cfg().TRAINER[name].clone()
    for k, v in opts.items():
        setattr(node, k, v)
    return node


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    # the modules' own parameters and buffers (CoOp/CoCoOp checkpoints rename them to the official keys
    # through a state-dict hook; the learners themselves are the same)
    sa = {**dict(a.named_parameters()), **dict(a.named_buffers())}
    sb = {**dict(b.named_parameters()), **dict(b.named_buffers())}
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]), k


def test_emocoop_node_gives_the_learner_emocoop_assembled_by_hand(tiny_clip):
    """EmoCoOp's former code (a ConditionalContext with its meta-net settings, a PromptLearner with its
    class-token position) and the shared builder: same parameters, buffers, keys and logits."""
    node = _node("EMOCOOP", USE_GLOVE_INIT=False, CTX_INIT="a photo of a", CLASS_TOKEN_POSITION="middle")
    torch.manual_seed(7)
    built = build_prompt_learner(tiny_clip, CLASSES, node, "TRAINER.EMOCOOP")
    torch.manual_seed(7)
    init = tiny_clip.embed_tokens(tiny_clip.tokenize(["a photo of a"]))[0, 1:5].detach()
    gen = ConditionalContext(n_ctx=4, ctx_dim=tiny_clip.text_width, vis_dim=tiny_clip.embed_dim, n_cls=8, init=init,
                             hidden_ratio=8, dropout=0.1)
    by_hand = PromptLearner(tiny_clip, CLASSES, gen, 4, position="middle")
    _same_state(built, by_hand)
    assert [k for k, _ in built.named_buffers()] == [k for k, _ in by_hand.named_buffers()]
    for (_, x), (_, y) in zip(built.named_buffers(), by_hand.named_buffers()):
        assert torch.equal(x, y)
    assert [m.p for m in built.context.meta_net if isinstance(m, torch.nn.Dropout)] == [0.1]
    images = torch.randn(3, 3, 32, 32)
    a, b = PromptedCLIP(tiny_clip, built).eval(), PromptedCLIP(tiny_clip, by_hand).eval()
    assert torch.equal(a(images), b(images))


def test_glove_init_leaves_n_ctx_random_vectors_and_coop_node_reads_csc(tiny_clip):
    torch.manual_seed(0)
    glove = build_prompt_learner(tiny_clip, CLASSES, _node("EMOCOOP", N_CTX=5), "TRAINER.EMOCOOP", ctx_init="")
    assert glove.context.ctx.shape == (5, tiny_clip.text_width)  # GloVe overwrites these when training starts
    csc = build_prompt_learner(tiny_clip, CLASSES, _node("COOP", CSC=True, CTX_INIT="", N_CTX=3), "TRAINER.COOP")
    assert isinstance(csc.context, StaticContext) and csc.context.ctx.shape == (8, 3, tiny_clip.text_width)
    # CoCoOp's node has no CSC / CLASS_TOKEN_POSITION: the builder takes CoCoOp's fixed choices
    cocoop = build_prompt_learner(tiny_clip, CLASSES, _node("COCOOP", N_CTX=2), "TRAINER.COCOOP")
    assert list(cocoop.state_dict()) == ["context.ctx", "context.meta_net.0.weight", "context.meta_net.0.bias",
                                         "context.meta_net.2.weight", "context.meta_net.2.bias"]
    assert cocoop.context.meta_net[0].out_features == tiny_clip.embed_dim // 16


def test_bad_node_values_are_one_line_errors(tiny_clip):
    with pytest.raises(ConfigError, match=r"^TRAINER\.COOP\.N_CTX must be >= 1, got 0$"):
        build_prompt_learner(tiny_clip, CLASSES, _node("COOP", N_CTX=0, CTX_INIT=""), "TRAINER.COOP")
    with pytest.raises(ConfigError, match="unknown context generator 'StaticContxt'.*'StaticContext'"):
        build_prompt_learner(tiny_clip, CLASSES, _node("COOP", CONTEXT="StaticContxt"), "TRAINER.COOP")
    node = _node("COOP")
    node.PROMPT_LEARNER = "PromptLerner"
    with pytest.raises(ConfigError, match="unknown prompt learner 'PromptLerner'.*'PromptLearner'"):
        build_prompt_learner(tiny_clip, CLASSES, node, "TRAINER.COOP")
    assert "PromptLearner" in PROMPT_LEARNERS


def _trainer(data_root, tmp_path, trainer, cfg_file, data, *opts):
    from train import build_parser, setup_cfg
    from trainers import build_trainer

    args = ["--root", data_root, "--seed", "3", "--output-dir", str(tmp_path / trainer), "--trainer", trainer,
            "--config-file", cfg_file, "--dataset-config-file", data, "--no-train", *SMALL_DATA, *opts]
    return build_trainer(setup_cfg(build_parser().parse_args(args)))


def test_emocoop_and_cocoop_trainers_build_the_same_prompt_learner(tmp_path, data_root):
    """Same settings, same seed: EmoCoOp's prompt learner (its other parts off) and CoCoOp's have the same
    keys, shapes and values, and give the same logits (one builder, not two copies)."""
    same = {"N_CTX": "4", "CTX_INIT": "a_photo_of_a", "META_HIDDEN_RATIO": "8", "META_DROPOUT": "0.1", "PREC": "fp32"}
    emo = _trainer(data_root, tmp_path, "EmoCoOp", os.path.join(ROOT, "configs/trainers/EmoCoOp/tiny_synthetic.yaml"),
                   ML_DATA, *[x for k, v in same.items() for x in (f"TRAINER.EMOCOOP.{k}", v)],
                   "TRAINER.EMOCOOP.USE_GLOVE_INIT", "False", "TRAINER.EMOCOOP.USE_VISUAL_PROMPTS", "False",
                   "TRAINER.EMOCOOP.USE_AUX_HEAD", "False", "TRAINER.EMOCOOP.USE_COLOR_ANALYSIS", "False")
    co = _trainer(data_root, tmp_path, "CoCoOp", os.path.join(ROOT, "configs/trainers/CoCoOp/tiny_synthetic.yaml"),
                  ML_DATA, *[x for k, v in same.items() for x in (f"TRAINER.COCOOP.{k}", v)], "CACHE.FEATURES", "off")
    try:
        a, b = emo.model.prompt_learner, co.model.prompt_learner
        assert type(a) is type(b) is PromptLearner
        _same_state(a, b)
        assert list(emo._models) == list(co._models) == ["prompt_learner"]
        emo.model.eval(), co.model.eval()
        images = torch.randn(4, 3, *emo.cfg.INPUT.SIZE)
        with torch.no_grad():
            assert torch.allclose(emo.model(images)["logits"], co.model(images), atol=1e-6)
    finally:
        emo.close(), co.close()


VARIANT = '''
"""ScaledCoOp: CoOp whose context is scaled by a learned scalar, with a prompt learner of its own."""
import torch
import torch.nn as nn
from yacs.config import CfgNode as CN

from configs.registry import register_config
from trainers.clip_prompting.coop import CoOp
from trainers.components.context import CONTEXT_GENERATORS
from trainers.components.prompt_learner import PROMPT_LEARNERS, PromptLearner
from trainers.registry import TRAINER_REGISTRY


@register_config
def add_scaled_coop_config(cfg):
    cfg.TRAINER.SCALED_COOP = CN()
    cfg.TRAINER.SCALED_COOP.N_CTX = 4  # context vectors
    cfg.TRAINER.SCALED_COOP.CTX_INIT = ""  # words to initialise the context
    cfg.TRAINER.SCALED_COOP.PREC = "fp32"  # precision
    cfg.TRAINER.SCALED_COOP.CONTEXT = "ScaledContext"  # context generator
    cfg.TRAINER.SCALED_COOP.PROMPT_LEARNER = "EmotionPromptLearner"  # prompt learner
    cfg.TRAINER.SCALED_COOP.SCALE_INIT = 0.5  # start value of the context scale


@CONTEXT_GENERATORS.register()
class ScaledContext(nn.Module):
    def __init__(self, n_ctx, ctx_dim, init=None, scale_init=1.0, **_):
        super().__init__()
        self.ctx = nn.Parameter(torch.randn(1, n_ctx, ctx_dim) * 0.02 if init is None else init[None].clone())
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))

    @staticmethod
    def from_config(node):
        return {"scale_init": node.SCALE_INIT}

    def forward(self, img_feat=None):
        return (self.scale * self.ctx).unsqueeze(0)


@PROMPT_LEARNERS.register()
class EmotionPromptLearner(PromptLearner):
    def __init__(self, clip, classnames, context, n_ctx, position="end"):
        super().__init__(clip, classnames, context, n_ctx, position=position, suffix=" emotion.")


@TRAINER_REGISTRY.register()
class ScaledCoOp(CoOp):
    NODE = "SCALED_COOP"
'''

VARIANT_YAML = """
DATALOADER: {TRAIN_X: {BATCH_SIZE: 16}, TEST: {BATCH_SIZE: 50}, NUM_WORKERS: 0}
OPTIM: {NAME: sgd, LR: 0.02, MAX_EPOCH: 1}
MODEL: {BACKBONE: {NAME: emolab-tiny-vit}}
TRAINER: {SCALED_COOP: {SCALE_INIT: 0.25}}
"""


def test_a_coop_variant_with_its_own_prompt_learner_is_one_file_and_one_yaml(tmp_path, data_root):
    """A method kept outside the tree (its module and its yaml, nothing else edited) trains from the CLI,
    and its own context generator and prompt learner are what trains and is saved."""
    (tmp_path / "scaled_coop.py").write_text(textwrap.dedent(VARIANT))
    (tmp_path / "scaled.yaml").write_text(VARIANT_YAML)
    out = tmp_path / "run"
    args = [sys.executable, os.path.join(ROOT, "train.py"), "--import", "scaled_coop", "--trainer", "ScaledCoOp",
            "--config-file", "scaled.yaml", "--dataset-config-file", SYN_CFG, "--root", data_root,
            "--output-dir", str(out), "--seed", "1", *SMALL_DATA]
    r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT},
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "accuracy" in final_test(str(out))
    state = torch.load(out / "prompt_learner" / "model.pth.tar-1", weights_only=True)["state_dict"]
    assert sorted(state) == ["context.ctx", "context.scale"]
    assert state["context.scale"].item() != 0.25  # it trained from the yaml's start value
