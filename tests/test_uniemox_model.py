"""UniEmoX parts against hand-computed values: masking, patchify, losses, fusion, captions, top-k,
layer-decay groups and the learning-rate schedule."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainers.components.fusion import build_fusion
from trainers.evaluation.topk import ClassificationTopK, topk_accuracy
from trainers.uniemox.captions import build_caption, join_objects
from trainers.uniemox.losses import contrastive_similarity_loss, similarity_loss
from trainers.uniemox.mae import (MaskedAutoencoderViT, masked_reconstruction_loss, patchify, random_masking,
                                  sincos_pos_embed_2d, unpatchify)
from trainers.uniemox.optim import param_groups, warmup_cosine


# ---------------------------------------------------------------- masking and patches
def test_random_masking_keeps_the_fraction_and_restores_order():
    torch.manual_seed(0)
    x = torch.arange(2 * 16 * 3, dtype=torch.float32).view(2, 16, 3)
    kept, mask, ids_restore = random_masking(x, 0.75)
    assert kept.shape == (2, 4, 3) and mask.shape == (2, 16)
    assert mask.sum(1).tolist() == [12.0, 12.0]  # int(16 * 0.25) = 4 kept
    for b in range(2):  # the kept tokens are exactly the unmasked positions, in shuffled order
        assert sorted(((kept[b, :, 0] - 48 * b) / 3).long().tolist()) == torch.nonzero(mask[b] == 0).flatten().tolist()
    # restore: kept tokens + placeholders, gathered with ids_restore, give the original sequence back
    full = torch.cat([kept, torch.full((2, 12, 3), -1.0)], dim=1)
    restored = torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(-1, -1, 3))
    assert torch.equal(restored[mask == 0], x[mask == 0]) and bool((restored[mask == 1] == -1).all())


def test_masking_follows_the_noise_and_released_rounding():
    x = torch.randn(1, 196, 4)
    noise = torch.linspace(0, 1, 196).flip(0).unsqueeze(0)  # lowest noise = last tokens kept
    kept, mask, _ = random_masking(x, 0.90, noise)
    assert kept.shape[1] == 19  # int(196 * 0.1) = 19 visible, 177 masked (the released numbers)
    assert mask[0, -19:].sum() == 0 and mask[0, :-19].sum() == 177
    assert torch.equal(kept[0], x[0, -19:].flip(0))


def test_patchify_round_trip_and_layout():
    img = torch.randn(2, 3, 32, 48)
    with pytest.raises(ValueError):
        unpatchify(patchify(img, 8), 8)  # 4 x 6 grid is not square
    img = torch.randn(2, 3, 32, 32)
    p = patchify(img, 8)
    assert p.shape == (2, 16, 8 * 8 * 3)
    assert torch.equal(unpatchify(p, 8), img)
    # patch 1 (row 0, column 1), pixel (0, 0), channel 2 sits at index (0 * 8 + 0) * 3 + 2
    assert p[0, 1, 2] == img[0, 2, 0, 8] and p[0, 4, 3] == img[0, 0, 8, 1]


def test_masked_reconstruction_loss_by_hand():
    pred = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [2.0, 0.0]]])
    target = torch.zeros(1, 3, 2)
    mask = torch.tensor([[1.0, 0.0, 1.0]])  # patches 0 and 2 masked: errors 1 and 2
    assert masked_reconstruction_loss(pred, target, mask).item() == pytest.approx(1.5)
    # norm_pix: each target patch standardised by its mean and unbiased variance (+1e-6)
    target = torch.tensor([[[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]]])
    t0 = torch.tensor([-1.0, 1.0]) / math.sqrt(2.0 + 1e-6)
    want = (((pred[0, 0] - t0) ** 2).mean() + (pred[0, 2] ** 2).mean()) / 2
    assert masked_reconstruction_loss(pred, target, mask, norm_pix=True).item() == pytest.approx(want.item(), rel=1e-5)


def test_mae_uses_patch_predictions_and_student_is_decoder_embed_of_cls():
    torch.manual_seed(0)
    mae = MaskedAutoencoderViT(32, 8, 32, 1, 2, 16, 1, 2).eval()
    img = torch.randn(2, 3, 32, 32)
    out = mae(img, 0.75)
    assert out.pred.shape == (2, 16, 192) and out.student.shape == (2, 16)
    torch.manual_seed(1)
    latent, mask, _ = mae.forward_encoder(img, 0.75)
    torch.manual_seed(1)
    again = mae(img, 0.75)
    assert torch.allclose(again.student, mae.decoder_embed(latent)[:, 0])
    want = masked_reconstruction_loss(again.pred, patchify(img, 8), again.mask)
    assert again.loss.item() == pytest.approx(want.item())
    # pos tables: fixed sin-cos with a zero CLS row, not trained
    assert not mae.pos_embed.requires_grad and torch.equal(mae.pos_embed[0, 0], torch.zeros(32))
    assert np.allclose(mae.pos_embed[0].numpy(), sincos_pos_embed_2d(32, 4), atol=1e-6)


# ---------------------------------------------------------------- CLIP losses
S = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
C = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
T = torch.tensor([[1.0, 0.0], [1.0, 1.0]])


def test_similarity_loss_by_hand():
    cos = [1 / math.sqrt(2), 1.0]
    assert similarity_loss(S, C).item() == pytest.approx(1 - sum(cos) / 2, rel=1e-6)


def test_contrastive_similarity_loss_by_hand_and_scale_free():
    r = 1 / math.sqrt(2)
    a = [[1.0, r], [0.0, r]]  # S_hat T_hat^T
    c = [[r, 1.0], [0.0, r]]  # C_hat T_hat^T
    cos0 = (a[0][0] * c[0][0] + a[0][1] * c[0][1]) / (math.hypot(*a[0]) * math.hypot(*c[0]))
    cos1 = 1.0  # both rows are (0, r)
    want = 1 - (cos0 + cos1) / 2
    for scale in (1.0, 100.0, torch.tensor(4.6052).exp()):
        assert contrastive_similarity_loss(S, C, T, scale).item() == pytest.approx(want, rel=1e-5)


def test_released_fusion_formula():
    torch.manual_seed(0)
    fusion = build_fusion("released", 4)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    ln = fusion.bn
    want = F.elu(fusion.linear(ln(a) + ln(b)))
    assert torch.allclose(fusion(a, b), want)
    assert sorted(k for k in fusion.state_dict()) == ["bn.bias", "bn.weight", "linear.bias", "linear.weight"]
    assert torch.equal(fusion.linear.bias, torch.zeros(4))
    assert torch.allclose(build_fusion("mean", 4)(a, b), (a + b) / 2)
    for name in ("concat_linear", "gated"):
        assert build_fusion(name, 4)(a, b).shape == (3, 4)


# ---------------------------------------------------------------- captions
def test_caption_builder_on_fixture_annotations():
    full = {"scene": "amusement_park", "object": ["Human face", "Alarm clock", "Dog"], "brightness": 0.5,
            "colorfulness": 0.3, "facial_expression": "happy", "human_action": "using remote controller (not gaming)"}
    assert build_caption(full, "amusement") == (
        "The scene type of this photo is amusement_park. The main subjects are Human face, Alarm clock and Dog. "
        "The image has a brightness of 0.5 and color saturation of 0.3. Human facial expression is happy. "
        "The action being performed is using remote controller (not gaming). The overall emotion conveyed is amusement.")
    sparse = {"scene": None, "object": ["Human face"], "brightness": 0.0, "colorfulness": None,
              "facial_expression": None, "human_action": None}
    assert build_caption(sparse, "fear") == ("The main subjects are Human face. The image has a brightness of 0.0. "
                                             "The overall emotion conveyed is fear.")
    assert build_caption({"colorfulness": 1, "object": []}, "awe") == (
        "The image has a color saturation of 1.0. The overall emotion conveyed is awe.")
    assert join_objects(["a", "b"]) == "a and b" and join_objects([]) == ""


def test_long_captions_are_cut_to_the_context(tiny_clip):
    from trainers.uniemox.captions import caption_embeddings

    many = {"scene": "bakery/shop", "object": [f"Object number {i}" for i in range(40)]}
    text = build_caption(many, "contentment")
    tokens = tiny_clip.tokenize([text])
    assert tokens.shape == (1, 77) and int(tiny_clip.eot_positions(tokens)[0]) < 76  # shortened, not cut by the tokenizer
    assert text.endswith("The overall emotion conveyed is contentment.")
    feats = caption_embeddings(tiny_clip, [text, "short.", text])
    assert feats.shape == (3, tiny_clip.embed_dim) and torch.allclose(feats[0], feats[2])
    assert torch.allclose(feats.norm(dim=-1), torch.ones(3), atol=1e-5)


# ---------------------------------------------------------------- metrics, groups, schedule
def test_top3_accuracy_by_hand():
    logits = np.array([[0.9, 0.5, 0.3, 0.1], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.0, 1.0, 0.5, 0.7]])
    labels = np.array([2, 0, 0, 0])  # rank 3, rank 4, rank 1, rank 4
    assert topk_accuracy(logits, labels, 3) == pytest.approx(50.0)
    ev = ClassificationTopK(["a", "b", "c", "d"], topk=(1, 3))
    ev.process(torch.tensor(logits), {"label": torch.tensor(labels)})
    res = ev.evaluate()
    assert res["accuracy"] == pytest.approx(25.0) and res["top3_accuracy"] == pytest.approx(50.0)


def test_layer_decay_group_scales_follow_the_formula():
    from timm.models.vision_transformer import VisionTransformer

    depth, decay = 3, 0.75
    vit = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=depth, num_heads=2, num_classes=4,
                            global_pool="avg")
    groups = param_groups(vit, 0.05, decay, enabled=True)
    scale_of = {}
    for g in groups:
        for p in g["params"]:
            scale_of[id(p)] = (g["lr_scale"], g["weight_decay"])
    named = dict(vit.named_parameters())
    assert scale_of[id(named["patch_embed.proj.weight"])] == (pytest.approx(decay ** (depth + 1)), 0.05)
    assert scale_of[id(named["cls_token"])] == (pytest.approx(decay ** (depth + 1)), 0.0)
    for i in range(depth):
        assert scale_of[id(named[f"blocks.{i}.attn.qkv.weight"])] == (pytest.approx(decay ** (depth - i)), 0.05)
        assert scale_of[id(named[f"blocks.{i}.norm1.weight"])][1] == 0.0
    assert scale_of[id(named["head.weight"])] == (1.0, 0.05) and scale_of[id(named["fc_norm.bias"])] == (1.0, 0.0)
    released = param_groups(vit, 0.05, decay, enabled=False)  # cls_token / pos_embed decayed, every scale 1
    decayed = {id(p) for g in released if g["weight_decay"] > 0 for p in g["params"]}
    assert id(named["cls_token"]) in decayed and id(named["pos_embed"]) in decayed
    assert all(g["lr_scale"] == 1.0 for g in released)


def test_warmup_cosine_schedule_values():
    f = warmup_cosine(1e-3, 1e-6, 5, 100)
    assert f(0) == 0 and f(2.5) == pytest.approx(0.5)
    assert f(5) == pytest.approx(1.0)
    mid = 1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 47.5 / 95))
    assert f(52.5) * 1e-3 == pytest.approx(mid) and f(100) * 1e-3 == pytest.approx(1e-6)
