"""UniEmoX checkpoint layouts (fixtures written from the released key names and shapes) and
malicious pickles at every UniEmoX load site."""
from __future__ import annotations

import argparse
import os
import pathlib

import pytest
import torch

from utils.errors import CheckpointError, DatasetError
from trainers.components.fusion import build_fusion
from trainers.uniemox.checkpoints import load_into_classifier, load_into_mae, read_checkpoint
from trainers.uniemox.mae import MaskedAutoencoderViT

D, DEPTH, HEADS, C = 32, 2, 2, 6


def vit(num_classes=C, img=32, pool="avg"):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=img, patch_size=8, embed_dim=D, depth=DEPTH, num_heads=HEADS,
                             num_classes=num_classes, global_pool=pool).eval()


def released_finetuned_state(num_classes=C):
    """The u-emo fine-tuned keys: timm's, plus the unused ``norm.*`` of its global-pool model."""
    sd = vit(num_classes).state_dict()
    sd["norm.weight"], sd["norm.bias"] = torch.ones(D), torch.zeros(D)
    return sd


def mae_state(decoder=True):
    torch.manual_seed(1)
    sd = MaskedAutoencoderViT(32, 8, D, DEPTH, HEADS, 16, 1, 2).state_dict()
    return sd if decoder else {k: v for k, v in sd.items() if not (k.startswith("decoder_") or k == "mask_token")}


def test_vit_l_keys_and_shapes_match_the_released_files():
    from timm.models.vision_transformer import VisionTransformer

    with torch.device("meta"):
        m = VisionTransformer(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16, num_classes=8,
                              global_pool="avg")
    sd = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    want = {"cls_token": (1, 1, 1024), "pos_embed": (1, 197, 1024), "patch_embed.proj.weight": (1024, 3, 16, 16),
            "blocks.23.attn.qkv.weight": (3072, 1024), "blocks.0.mlp.fc1.weight": (4096, 1024),
            "fc_norm.weight": (1024,), "head.weight": (8, 1024)}
    assert all(sd[k] == v for k, v in want.items())
    per_block = {"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                 "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"}
    released = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "fc_norm.weight",
                "fc_norm.bias", "head.weight", "head.bias"} | {f"blocks.{i}.{k}" for i in range(24) for k in per_block}
    assert set(sd) == released  # u-emo's keys minus the unused norm.* the loader drops


@pytest.mark.parametrize("wrap", ["bare", "model_dict_module_prefix"])
def test_released_finetuned_file_loads_with_its_head(tmp_path, wrap):
    sd = released_finetuned_state()
    obj = sd if wrap == "bare" else {"model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {}, "epoch": 7,
                                     "scaler": {}, "args": argparse.Namespace(model="vit_large_patch16", nb_classes=C)}
    torch.save(obj, tmp_path / "ft.pth")
    m = vit()
    torch.nn.init.zeros_(m.head.weight)
    kind = load_into_classifier(m, str(tmp_path / "ft.pth"))
    assert "head included" in kind
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(m(x), vit()(x), atol=1e-6)


def test_released_pretrained_and_imagenet_mae_files_give_new_head_and_fc_norm(tmp_path):
    for name, sd in (("pretrained.pth", mae_state()), ("mae_encoder_only.pth", mae_state(decoder=False))):
        torch.save({"model": sd, "optimizer": {}, "epoch": 400, "args": argparse.Namespace(mask_ratio=0.9)}, tmp_path / name)
        m = vit(num_classes=8)
        kind = load_into_classifier(m, str(tmp_path / name))
        assert "fc_norm.weight" in kind and "head.weight" in kind
        assert torch.equal(m.blocks[1].attn.qkv.weight, sd["blocks.1.attn.qkv.weight"])
        assert torch.equal(m.fc_norm.weight, torch.ones(D)) and torch.equal(m.head.bias, torch.zeros(8))
        assert 0 < m.head.weight.detach().abs().max() < 1.5e-4 and 1e-5 < float(m.head.weight.detach().std()) < 3.5e-5  # std 2e-5
    # a fine-tuned file on other classes: the head is dropped and re-initialised as after pre-training
    torch.save(released_finetuned_state(num_classes=3), tmp_path / "other.pth")
    m = vit(num_classes=8)
    assert "head.weight" in load_into_classifier(m, str(tmp_path / "other.pth"))


def test_pos_embed_of_another_grid_is_resampled(tmp_path):
    torch.save({"model": mae_state()}, tmp_path / "p.pth")
    m = vit(img=48)
    load_into_classifier(m, str(tmp_path / "p.pth"))
    assert m.pos_embed.shape == (1, 1 + 36, D)


def test_pretraining_checkpoint_with_fusion_and_module_prefix(tmp_path):
    torch.manual_seed(2)
    fusion = build_fusion("released", 16)
    sd = mae_state()
    obj = {"model": {f"module.{k}": v for k, v in sd.items()}, "att_fusion": {f"module.{k}": v for k, v in fusion.state_dict().items()},
           "optimizer": {}, "epoch": 100, "args": argparse.Namespace(batch_size=2)}
    torch.save(obj, tmp_path / "checkpoint.pth")
    mae, fresh_fusion = MaskedAutoencoderViT(32, 8, D, DEPTH, HEADS, 16, 1, 2), build_fusion("released", 16)
    assert load_into_mae(mae, str(tmp_path / "checkpoint.pth"), fresh_fusion) == []
    assert torch.equal(mae.decoder_pred.weight, sd["decoder_pred.weight"])
    assert torch.equal(fresh_fusion.linear.weight, fusion.linear.weight)
    torch.save({"model": mae_state(decoder=False)}, tmp_path / "enc.pth")  # ImageNet MAE encoder only
    fresh = load_into_mae(MaskedAutoencoderViT(32, 8, D, DEPTH, HEADS, 16, 1, 2), str(tmp_path / "enc.pth"))
    assert "mask_token" in fresh and any(k.startswith("decoder_blocks") for k in fresh)


def test_unknown_layout_is_one_line_naming_missing_and_unexpected_keys(tmp_path):
    sd = {"conv1.weight": torch.zeros(4, 3, 3, 3), **{k: v for k, v in mae_state().items() if not k.startswith("blocks.1")}}
    torch.save(sd, tmp_path / "odd.pth")
    for load in (lambda: load_into_classifier(vit(), str(tmp_path / "odd.pth")),
                 lambda: load_into_mae(MaskedAutoencoderViT(32, 8, D, DEPTH, HEADS, 16, 1, 2), str(tmp_path / "odd.pth"))):
        with pytest.raises(CheckpointError) as e:
            load()
        msg = str(e.value)
        assert "\n" not in msg and "missing keys [blocks.1.attn.proj.bias" in msg and "unexpected keys [conv1.weight]" in msg
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_into_classifier(vit(), str(tmp_path / "list.pth"))


# ---------------------------------------------------------------- malicious pickles
class Evil:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def evil_file(tmp_path, name="evil.pth", payload=None):
    marker = tmp_path / f"MARKER_{name}"
    obj = payload if payload is not None else {"model": {"cls_token": torch.zeros(1)}, "args": Evil(str(marker))}
    if payload is not None:
        obj = {**payload, "x": Evil(str(marker))}
    torch.save(obj, tmp_path / name)
    return str(tmp_path / name), marker


def assert_refused(call, marker):
    with pytest.raises(CheckpointError) as e:
        call()
    assert "\n" not in str(e.value) and "refusing" in str(e.value)
    assert not marker.exists()


def test_malicious_pickle_at_every_load_site(tmp_path, tiny_clip, monkeypatch):
    path, marker = evil_file(tmp_path)
    assert_refused(lambda: read_checkpoint(path), marker)
    assert_refused(lambda: load_into_classifier(vit(), path), marker)  # TRAINER.UNIEMOX.INIT, --model-dir FILE
    assert_refused(lambda: load_into_mae(MaskedAutoencoderViT(32, 8, D, DEPTH, HEADS, 16, 1, 2), path), marker)
    # the caption embedding cache
    from trainers.uniemox import captions

    cache = tmp_path / "cache"
    monkeypatch.setattr(captions, "_fingerprint", lambda clip, caps: "fixed")
    cache.mkdir()
    cpath, cmarker = evil_file(cache, "captions-fixed.pt", payload={"features": torch.zeros(1, 64)})
    assert_refused(lambda: captions.caption_embeddings(tiny_clip, ["a caption."], str(cache)), cmarker)
    # the detector weights of tools/detect_persons.py
    from tools.detect_persons import build_detector

    dpath, dmarker = evil_file(tmp_path, "detector.pth", payload={"state_dict": {}})
    assert_refused(lambda: build_detector("ssdlite320_mobilenet_v3_large", dpath, 0.8, 0.4), dmarker)
    # the CLI: exit 2, one line
    from conftest import run_cli

    rc = run_cli(["--trainer", "UniEmoX", "--config-file", "configs/trainers/UniEmoX/tiny_synthetic.yaml",
                  "--dataset-config-file", "configs/datasets/fi.yaml", "--root", str(tmp_path / "nodata"),
                  "--output-dir", str(tmp_path / "out"), "TRAINER.UNIEMOX.INIT", path])
    assert rc == 2 and not marker.exists()


def test_person_boxes_file_errors(tmp_path):
    from datasets.formats.person_boxes import read_person_boxes, write_person_boxes

    root = str(tmp_path)
    imgs = [os.path.join(root, "image", "a.jpg"), os.path.join(root, "image", "b.jpg")]
    with pytest.raises(DatasetError, match="person boxes file not found: .*detect_persons"):
        read_person_boxes(str(tmp_path / "none.json"), root, imgs)
    write_person_boxes(str(tmp_path / "pb.json"), {"image/a.jpg": [1, 2, 10, 12, 0.9]}, "test", 0.8)
    with pytest.raises(DatasetError, match=r"1 image\(s\) have no entry \(of 2\), e\.g\. image/b\.jpg"):
        read_person_boxes(str(tmp_path / "pb.json"), root, imgs)
    write_person_boxes(str(tmp_path / "pb.json"), {"image/a.jpg": [1, 2, 10, 12, 0.9], "image/b.jpg": None}, "test", 0.8)
    assert read_person_boxes(str(tmp_path / "pb.json"), root, imgs) == [(1.0, 2.0, 10.0, 12.0), None]
    write_person_boxes(str(tmp_path / "pb.json"), {"image/a.jpg": [5, 2, 1, 12], "image/b.jpg": None}, "test", 0.8)
    with pytest.raises(DatasetError, match="box of 'image/a.jpg' must be null or"):
        read_person_boxes(str(tmp_path / "pb.json"), root, imgs)
