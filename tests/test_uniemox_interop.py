"""UniEmoX files and numbers that are never silently changed (issue 20): evaluation heads, pooling,
the logged learning rate, the released fusion names, files the released ``--eval`` loads, the
default recipe, captions that keep the emotion, an exact caption cache, the detector differences."""
from __future__ import annotations

import argparse
import json
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from conftest import ROOT, final_test, run_cli
from utils.errors import CheckpointError

FT_CFG = os.path.join(ROOT, "configs/trainers/UniEmoX/tiny_synthetic.yaml")
FI = os.path.join(ROOT, "configs/datasets/fi.yaml")
FAST = ["DATALOADER.TRAIN_X.BATCH_SIZE", "8", "OPTIM.MAX_EPOCH", "1", "VERBOSE", "False"]
D, DEPTH, HEADS, C = 32, 2, 2, 6


def vit(num_classes=C, pool="avg"):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=D, depth=DEPTH, num_heads=HEADS,
                             num_classes=num_classes, global_pool=pool).eval()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from datasets.synthetic.native import NativeSettings, write_native

    r = tmp_path_factory.mktemp("uniemox_interop")
    write_native(str(r / "FI"), "folders", NativeSettings(2, 1, 2))
    return str(r)


def args(root, out, *opts, flags=()):
    return ["--root", root, "--seed", "1", "--trainer", "UniEmoX", "--config-file", FT_CFG, "--dataset-config-file", FI,
            "--output-dir", str(out), *flags, *FAST, *opts]


# ------------------------------------------------------------------ evaluation never gets a new head
def test_eval_only_with_a_file_without_a_fitting_head_is_refused(root, tmp_path, capsys):
    from trainers.uniemox.mae import MaskedAutoencoderViT

    pre = MaskedAutoencoderViT(32, 8, 64, 2, 2, 16, 1, 2).state_dict()  # a pre-trained file: no head
    torch.save({"model": pre}, tmp_path / "pre.pth")
    other = vit(num_classes=3).state_dict()  # fine-tuned for 3 classes; the data has 8
    torch.save(other, tmp_path / "three.pth")
    rc = [run_cli(args(root, tmp_path / n, "TRAINER.UNIEMOX.CUSTOM.EMBED_DIM", str(dim),
                       flags=("--eval-only", "--model-dir", str(tmp_path / f))))
          for n, f, dim in (("a", "pre.pth", 64), ("b", "three.pth", D))]
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == [2, 2] and len(err) == 2
    assert "no classification head (a pre-trained file)" in err[0] and "8 classes" in err[0]
    assert "a head for 3 classes" in err[1]


# ------------------------------------------------------------------ pooling
def test_cls_token_file_into_a_global_pool_model_is_refused_and_loads_where_it_fits(tmp_path):
    from trainers.uniemox.checkpoints import load_into_classifier

    token = vit(pool="token")
    with torch.no_grad():
        token.norm.weight.normal_()
    torch.save({"model": token.state_dict()}, tmp_path / "cls.pth")
    with pytest.raises(CheckpointError, match="cls-token pooling.*GLOBAL_POOL False"):
        load_into_classifier(vit(pool="avg"), str(tmp_path / "cls.pth"), global_pool=True)
    fresh = vit(pool="token")
    assert "fine-tuned" in load_into_classifier(fresh, str(tmp_path / "cls.pth"), global_pool=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), token(x))
    torch.save(vit(pool="avg").state_dict(), tmp_path / "avg.pth")
    with pytest.raises(CheckpointError, match="global average pooling.*GLOBAL_POOL True"):
        load_into_classifier(vit(pool="token"), str(tmp_path / "avg.pth"), global_pool=False)


# ------------------------------------------------------------------ logged learning rate
def test_logged_lr_is_the_largest_groups():
    from trainers.engine.trainer import TrainerBase

    p = [nn.Parameter(torch.zeros(1)) for _ in range(3)]
    opt = torch.optim.AdamW([{"params": [p[0]], "lr": 4.2e-4}, {"params": [p[1]], "lr": 1e-3},
                             {"params": [p[2]], "lr": 7.5e-4}])
    assert TrainerBase.current_lr(SimpleNamespace(optimizers=lambda: [opt])) == 1e-3


def test_logged_lr_with_layer_decay_is_the_base_schedule(root, tmp_path):
    lrs = []
    for on in ("False", "True"):
        out = tmp_path / f"ld_{on}"
        assert run_cli(args(root, out, "TRAINER.UNIEMOX.LAYER_DECAY_ENABLED", on, "OPTIM.MAX_EPOCH", "2")) == 0
        recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        lrs.append([r["lr"] for r in recs if r.get("split") == "train"])
    assert len(lrs[0]) == 2 and lrs[0] == pytest.approx(lrs[1], rel=1e-9)


# ------------------------------------------------------------------ released fusion names
def test_released_fusion_names_read_and_written(tmp_path):
    from trainers.components.fusion import build_fusion
    from trainers.uniemox.checkpoints import load_into_mae
    from trainers.uniemox.mae import MaskedAutoencoderViT

    fusion = build_fusion("released", 16)
    assert set(fusion.state_dict()) == {"bn.weight", "bn.bias", "linear.weight", "linear.bias"}
    torch.manual_seed(3)
    released = {"bn.weight": torch.rand(16), "bn.bias": torch.rand(16), "linear.weight": torch.randn(16, 16),
                "linear.bias": torch.randn(16)}  # the released AttentionFusion (easyfusion, channels 16)
    mae = MaskedAutoencoderViT(32, 8, D, DEPTH, HEADS, 16, 1, 2)
    torch.save({"model": {f"module.{k}": v for k, v in mae.state_dict().items()},
                "att_fusion": {f"module.{k}": v for k, v in released.items()}, "epoch": 100,
                "args": argparse.Namespace(use_fusion="easyfusion")}, tmp_path / "checkpoint.pth")
    fresh = build_fusion("released", 16)
    load_into_mae(MaskedAutoencoderViT(32, 8, D, DEPTH, HEADS, 16, 1, 2), str(tmp_path / "checkpoint.pth"), fresh)
    assert torch.equal(fresh.linear.weight, released["linear.weight"])
    old = build_fusion("released", 16)  # a file written before the rename
    old.load_state_dict({"bn.weight": released["bn.weight"], "bn.bias": released["bn.bias"],
                         "fc.weight": released["linear.weight"], "fc.bias": released["linear.bias"]})
    assert torch.equal(old.linear.bias, released["linear.bias"])


# ------------------------------------------------------------------ the released --eval loads EmoLab's file
class _ReleasedGlobalPoolViT(nn.Module):
    """The released fine-tuning model's parameter set: timm's global-pool ViT plus the unused ``norm``."""

    def __init__(self, num_classes):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                                     num_classes=num_classes, global_pool="avg")
        self.norm = nn.LayerNorm(64, eps=1e-6)

    def load_released(self, state):  # the released misc.load_model: load_state_dict(raw object), strict=True
        vit_state = {k: v for k, v in state.items() if not k.startswith("norm.")}
        self.vit.load_state_dict(vit_state, strict=True)
        self.norm.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("norm.")}, strict=True)
        assert set(state) == set(vit_state) | {"norm.weight", "norm.bias"}


def test_finetuned_run_writes_a_file_the_released_eval_loads(root, tmp_path):
    out = tmp_path / "ft"
    assert run_cli(args(root, out)) == 0
    path = out / "uniemox_finetuned.pth"
    state = torch.load(str(path), weights_only=True)  # a bare state dict, as --eval --resume loads it
    assert all(torch.is_tensor(v) for v in state.values()) and "norm.weight" in state and "fc_norm.weight" in state
    released = _ReleasedGlobalPoolViT(8)
    released.load_released(state)
    ev = tmp_path / "ev"
    assert run_cli(args(root, ev, flags=("--eval-only", "--model-dir", str(path)))) == 0
    assert final_test(str(ev)) == final_test(str(out))


# ------------------------------------------------------------------ default recipe
def test_default_recipe_is_the_released_one_and_mae_layer_decay_is_named():
    from configs.config import merge_from_file
    from trainers import get_cfg

    cfg = get_cfg()
    assert cfg.TRAINER.UNIEMOX.LAYER_DECAY_ENABLED is False
    for name, want in (("vit_l16.yaml", False), ("vit_b16.yaml", False), ("vit_h14.yaml", False),
                       ("vit_l16_mae_layer_decay.yaml", True)):
        c = get_cfg()
        merge_from_file(c, os.path.join(ROOT, "configs/trainers/UniEmoX", name))
        assert c.TRAINER.UNIEMOX.LAYER_DECAY_ENABLED is want, name
        assert c.TRAINER.UNIEMOX.LAYER_DECAY == 0.75
    text = open(os.path.join(ROOT, "docs/UNIEMOX.md"), encoding="utf-8").read()
    assert "stated setting" not in text and "vit_l16_mae_layer_decay.yaml" in text


# ------------------------------------------------------------------ captions
def test_long_captions_keep_the_emotion_sentence_and_cut_objects_first():
    from trainers.uniemox.captions import bpe_count, build_caption

    attrs = {"scene": "amusement_park", "brightness": 0.5, "colorfulness": 0.7, "facial_expression": "happy",
             "human_action": "riding a bike", "object": ["Human face", "Ferris wheel", "Roller coaster", "Balloon",
                                                         "Tree", "Building", "Car", "Bicycle", "Street light"]}
    cap = build_caption(attrs, "amusement")
    assert bpe_count(cap) <= 75 and cap.endswith("The overall emotion conveyed is amusement.")
    assert "riding a bike" in cap and "Human face" in cap  # the other sentences and the first objects stay
    kept = [o for o in attrs["object"] if o in cap]
    assert 0 < len(kept) < len(attrs["object"]) and kept == attrs["object"][:len(kept)]
    longer = dict(attrs, object=attrs["object"][:len(kept) + 1])  # one more object would not fit
    assert bpe_count(build_caption(longer, "amusement", max_tokens=10 ** 6)) > 75
    short = {"scene": "bakery/shop", "object": ["Cake"]}
    assert build_caption(short, "contentment") == ("The scene type of this photo is bakery/shop. The main subjects are "
                                                   "Cake. The overall emotion conveyed is contentment.")


def test_caption_cache_is_exact_at_emoset_size(tiny_clip, tmp_path):
    """Above 2^24 numbers (EmoSet) the first run and a cached run give the same float32 values."""
    from trainers.uniemox.captions import caption_embeddings

    captions = ["The overall emotion conveyed is awe.", "The overall emotion conveyed is fear."] * 65537
    first = caption_embeddings(tiny_clip, captions, str(tmp_path))
    assert first.numel() > 2 ** 24 and first.dtype == torch.float32
    again = caption_embeddings(tiny_clip, captions, str(tmp_path))
    assert torch.equal(first, again)
    assert sum(os.path.getsize(tmp_path / f) for f in os.listdir(tmp_path)) < 4 * 2 ** 20  # distinct rows + index


# ------------------------------------------------------------------ detector differences
def test_detector_differences_are_stated_in_the_docs():
    text = open(os.path.join(ROOT, "docs/UNIEMOX.md"), encoding="utf-8").read()
    for phrase in ("objectness", "merges", "`y1 >= 15`", "class score"):
        assert phrase in text, phrase
