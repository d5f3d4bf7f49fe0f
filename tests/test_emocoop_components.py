"""EmoCoOp components: losses, loss weighting, chromatic module, GloVe init, k-means init,
visual prompts / coupling / auxiliary head, and where gradients go in the assembled model."""
from __future__ import annotations

import gzip
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.errors import ConfigError
from trainers.components import glove_init, visual_clusters
from trainers.components.aux_head import AuxiliaryEmotionHead
from trainers.components.chromatic import ChromaticAnalyzer, build_chromatic, low_frequency_energy
from trainers.components.context import ConditionalContext
from trainers.components.coupling import VisionTextCoupling
from trainers.components.loss_weighting import LOSS_WEIGHTINGS, UncertaintyWeighting, ValidationSchedule
from trainers.components.losses import AsymmetricLoss, FocalLoss, MULTILABEL_LOSSES
from trainers.components.prompt_learner import PromptLearner
from trainers.components.visual_prompts import DynamicVisualPrompts
from trainers.emocoop.model import EmoCoOpModel

CLASSES = ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"]


# ----------------------------------------------------------------------------------- losses
def test_asl_and_focal_match_hand_computed_values_and_reduce_to_bce():
    x, y = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    p0, p1 = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))
    pm = p1 - 0.05
    asl = -((1 - p0) * math.log(p0) + pm**4 * math.log(1 - pm)) / 2
    assert AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=0.05)(x, y).item() == pytest.approx(asl, rel=1e-5)

    x2 = torch.tensor([[1.5, -0.5]])
    q0, q1 = 1 / (1 + math.exp(-1.5)), 1 / (1 + math.exp(0.5))
    focal = (0.25 * (1 - q0) ** 2 * -math.log(q0) + 0.75 * q1**2 * -math.log(1 - q1)) / 2
    assert FocalLoss(gamma=2, alpha=0.25)(x2, y).item() == pytest.approx(focal, rel=1e-5)

    logits, targets = torch.randn(6, 5), (torch.rand(6, 5) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(AsymmetricLoss(0, 0, 0)(logits, targets), bce, atol=1e-6)
    assert torch.allclose(FocalLoss(0, -1)(logits, targets), bce, atol=1e-6)
    assert torch.allclose(MULTILABEL_LOSSES.get("bce")()(logits, targets), bce)


# ----------------------------------------------------------------------------- loss weighting
def _schedule(name="conservative", **kw):
    from yacs.config import CfgNode as CN

    node = CN(dict(AUX_LOSS_WEIGHT=0.3296, MIN_AUX_LOSS_WEIGHT=0.1, MAX_AUX_LOSS_WEIGHT=0.5, WEIGHT_PATIENCE=5,
                   IMPROVEMENT_THRESHOLD=0.005, DECAY_FACTOR=0.95, GROWTH_FACTOR=1.05, MIN_EPOCHS_BEFORE_ADJUST=3,
                   WEIGHT_STRATEGY=name, **kw))
    return LOSS_WEIGHTINGS.get(name).from_config(node)


def test_conservative_schedule_follows_its_rule_on_scripted_scores():
    s = _schedule("conservative")
    assert (s.threshold, s.patience, s.growth, s.decay) == (0.015, 10, 1.03, 0.97)  # preset beats the config
    w0 = 0.3296
    for epoch, score in [(1, 0.50), (2, 0.90), (3, 0.60)]:  # warm-up: no change, best follows the scores
        s.update(score, epoch)
        assert s.weight == w0
    assert s.best == 0.90
    s.update(0.91, 4)  # better, but not by 0.015: best moves, weight stays
    assert (s.weight, s.best, s.bad_count) == (w0, 0.91, 0)
    s.update(0.93, 5)  # +0.02 > 0.015: grow
    assert s.weight == pytest.approx(w0 * 1.03) and s.best == 0.93
    for e in range(6, 15):  # 9 validations without improvement: patience 10 not reached
        s.update(0.80, e)
    assert s.weight == pytest.approx(w0 * 1.03) and s.bad_count == 9
    s.update(0.80, 15)  # the 10th: decay, count restarts
    assert s.weight == pytest.approx(w0 * 1.03 * 0.97) and s.bad_count == 0
    assert [h["epoch"] for h in s.history] == list(range(1, 16))


def test_schedule_bounds_aggressive_preset_custom_values_and_state_roundtrip():
    s = _schedule("aggressive")
    assert (s.threshold, s.patience, s.growth, s.decay) == (0.005, 5, 1.1, 0.9)
    s.update(0.1, 1)
    for e in range(2, 20):  # keeps improving by 0.05: grows x1.1 until the upper bound
        s.update(0.1 + 0.05 * e, e + 3)
    assert s.weight == 0.5
    for e in range(30, 200):
        s.update(0.0, e)
    assert s.weight == 0.1  # lower bound
    c = _schedule("custom")
    assert (c.threshold, c.patience, c.growth, c.decay) == (0.005, 5, 1.05, 0.95)
    state = c.get_state()
    c.update(0.5, 4)
    c2 = _schedule("custom")
    c2.set_state(c.get_state())
    assert c2.get_state() == c.get_state() and c2.best == 0.5 and state["best"] is None
    fixed = _schedule("fixed")
    fixed.update(0.99, 10)
    assert fixed.weight == 0.3296
    with pytest.raises(ConfigError, match="weight bounds"):
        ValidationSchedule(min_weight=0.6, max_weight=0.5)


def test_uncertainty_weighting_formula_start_value_and_gradients():
    u = UncertaintyWeighting(initial_weight=0.25)
    assert u.weight == pytest.approx(0.25)
    main, aux = torch.tensor(0.8), torch.tensor(0.6)
    loss, logs = u.combine(main, aux)
    s_aux = -math.log(0.25)
    assert loss.item() == pytest.approx(0.8 + 0.0 + 0.25 * 0.6 + 0.5 * s_aux, rel=1e-6)
    assert logs["aux_weight"].item() == pytest.approx(0.25)
    loss.backward()
    # d/ds0 = -main + 1/2, d/ds1 = -0.25 aux + 1/2
    assert torch.allclose(u.log_vars.grad, torch.tensor([-0.8 + 0.5, -0.25 * 0.6 + 0.5]), atol=1e-6)


# ------------------------------------------------------------------------------- chromatic
def _flat(rgb, size=32):
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size).clone()


def test_red_is_warm_and_blue_is_cool_on_every_handmade_path():
    a = ChromaticAnalyzer()
    red, blue = a.paths(_flat((1.0, 0.0, 0.0))), a.paths(_flat((0.0, 0.0, 1.0)))
    # histogram: red cool 0.2 / warm 0.5, blue the other way round (order: cool, warm)
    assert torch.allclose(red["hist"][0], torch.tensor([0.2 / 0.7, 0.5 / 0.7]), atol=1e-6)
    assert torch.allclose(blue["hist"][0], torch.tensor([0.5 / 0.7, 0.2 / 0.7]), atol=1e-6)
    # Fourier: red has V = 0.615 and no blue-leaning chroma; blue has U = 0.436 and no red-leaning one
    assert torch.allclose(red["fourier"][0], torch.softmax(torch.tensor([0.0, 6.15]), 0), atol=1e-5)
    assert torch.allclose(blue["fourier"][0], torch.softmax(torch.tensor([4.36, 0.0]), 0), atol=1e-5)
    # the learned CNN path starts neutral, so the fused output agrees with the hand-made paths
    assert torch.allclose(red["cnn"], torch.full((1, 2), 0.5))
    assert red["fused"][0, 1] > 0.5 > blue["fused"][0, 1]
    assert red["feature"].shape == (1, 32) and torch.allclose(red["fused"].sum(1), torch.ones(1))


def _stripes(kind):
    """Blue/grey pattern with the same mean chroma: halves (low frequency) or a pixel checkerboard (high)."""
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    blue = (xx < 16) if kind == "low" else ((xx + yy) % 2 == 0)
    img = torch.full((1, 3, 32, 32), 0.5)  # grey has zero chroma
    img[0, :, blue] = torch.tensor([0.0, 0.0, 1.0]).view(3, 1)
    return img


def _numpy_energy(plane, shift=True):
    spec = np.abs(np.fft.fft2(plane))
    if shift:
        spec = np.fft.fftshift(spec)
    h, w = plane.shape
    yy, xx = np.mgrid[:h, :w]
    mask = np.sqrt((yy - h // 2) ** 2 + (xx - w // 2) ** 2) < min(h, w) / 8
    return float((spec * mask).sum() / (h * w))


def test_fourier_path_measures_low_frequencies():
    a = ChromaticAnalyzer()
    low, high = _stripes("low"), _stripes("high")
    e_low, e_high = a.fourier_energies(low)[0, 0].item(), a.fourier_energies(high)[0, 0].item()
    u = lambda img: (-0.147 * img[0, 0] - 0.289 * img[0, 1] + 0.436 * img[0, 2]).clamp(min=0).numpy()  # noqa: E731
    assert e_low == pytest.approx(_numpy_energy(u(low)), rel=1e-5)
    assert e_high == pytest.approx(_numpy_energy(u(high)), rel=1e-5)
    assert e_high == pytest.approx(0.218, abs=1e-6)  # only the mean (DC) is inside the disk
    assert e_low > e_high * 1.5  # the square wave's first harmonics fall inside the disk
    # the released code's disk, without fftshift, sits on the highest frequencies: it ranks them the other way
    assert _numpy_energy(u(high), shift=False) > _numpy_energy(u(low), shift=False)
    assert torch.allclose(low_frequency_energy(torch.ones(2, 8, 8)), torch.ones(2))


def test_fusion_modes_shapes_and_effect():
    img = F.normalize(torch.randn(4, 64), dim=-1)
    rgb = torch.rand(4, 3, 32, 32)
    fusion = build_chromatic("fusion", 64, 8)
    c = fusion.analyze(rgb)
    assert c.shape == (4, 34)
    fused = fusion.fusion.fuse_image(img, c)
    assert fused.shape == (4, 64) and torch.allclose(fused.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert not torch.allclose(fused, img) and torch.equal(fusion.fusion.fuse_logits(img[:, :8], c), img[:, :8])
    residual = build_chromatic("residual", 64, 8)
    logits = torch.randn(4, 8)
    c = residual.analyze(rgb)
    assert torch.allclose(residual.fusion.fuse_logits(logits, c), logits + residual.fusion.proj(c))
    with pytest.raises(ConfigError, match="did you mean 'fusion'"):
        build_chromatic("fusoin", 64, 8)


# ---------------------------------------------------------------------------------- GloVe
VECS = {"the": [0.1, -0.2, 0.3, 0.4, 0.5], "photo": [1.0, 0.0, -1.0, 0.5, 0.25], "are": [0.0, 0.3, 0.2, -0.1, 0.9]}


def _write_glove(path, header=False):
    lines = [f"{w} {' '.join(str(v) for v in vec)}" for w, vec in VECS.items()]
    if header:
        lines.insert(0, f"{len(VECS)} 5")
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def test_glove_init_reproduces_fixture_vectors_through_the_projection(tmp_path):
    glove = glove_init.load_word_vectors(_write_glove(tmp_path / "g.txt"))
    w2v = glove_init.load_word_vectors(_write_glove(tmp_path / "w.txt", header=True))
    glove.save(str(tmp_path / "g.kv"))
    kv = glove_init.load_word_vectors(str(tmp_path / "g.kv"))
    for vectors in (glove, w2v, kv):
        assert np.allclose(vectors["photo"], VECS["photo"])
    words = glove_init.context_words("The emotions in this Photo are.")
    assert words == ["the", "emotions", "in", "this", "photo", "are"]
    ctx, missing = glove_init.glove_context(words, glove, n_ctx=7, ctx_dim=16, seed=3)
    W = glove_init.xavier_projection(5, 16, 3)
    assert ctx.shape == (7, 16) and missing == ["emotions", "in", "this"]
    bound = math.sqrt(6 / 21)
    assert W.abs().max() <= bound and W.std() > bound / 3  # Xavier-uniform range
    for i, w in [(0, "the"), (4, "photo"), (5, "are")]:
        assert torch.allclose(ctx[i], W @ torch.tensor(VECS[w]), atol=1e-6)
    rand = ctx[[1, 2, 3, 6]]  # missing words and the position without a word: N(0, 0.02)
    assert rand.abs().max() < 0.1 and 0.005 < rand.std() < 0.05
    again, _ = glove_init.glove_context(words, glove, n_ctx=7, ctx_dim=16, seed=3)
    other, _ = glove_init.glove_context(words, glove, n_ctx=7, ctx_dim=16, seed=4)
    assert torch.equal(ctx, again) and not torch.allclose(ctx, other)


def test_glove_sources_names_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSIM_DATA_DIR", str(tmp_path / "gensim-data"))
    key = "TRAINER.EMOCOOP.GLOVE_MODEL"
    with pytest.raises(ConfigError) as e:
        glove_init.resolve_vectors_path("glove-wiki-gigaword-300", switch="TRAINER.EMOCOOP.USE_GLOVE_INIT")
    msg = str(e.value)
    assert "\n" not in msg and f"{key} 'glove-wiki-gigaword-300'" in msg and "USE_GLOVE_INIT False" in msg
    with pytest.raises(ConfigError, match=f"{key} 'missing/vectors.kv': file not found"):
        glove_init.resolve_vectors_path("missing/vectors.kv")
    (tmp_path / "gensim-data" / "tiny-glove").mkdir(parents=True)
    path = _write_glove(tmp_path / "gensim-data" / "tiny-glove" / "tiny-glove.gz", header=True)
    assert glove_init.resolve_vectors_path("tiny-glove") == path  # the gensim downloader's layout
    assert np.allclose(glove_init.load_word_vectors(path)["are"], VECS["are"])
    (tmp_path / "bad.txt").write_text("the 0.1 abc\nphoto 0.3 0.2\n")
    with pytest.raises(ConfigError, match="cannot read word vectors"):
        glove_init.load_word_vectors(str(tmp_path / "bad.txt"))


# --------------------------------------------------------------------------------- k-means
def test_kmeans_init_is_deterministic_per_seed_and_cached(tmp_path):
    rng = np.random.RandomState(0)
    feats = np.concatenate([rng.normal(c, 0.5, size=(20, 6)) for c in range(6)])
    a, b = visual_clusters.kmeans_centres(feats, 4, seed=3), visual_clusters.kmeans_centres(feats, 4, seed=3)
    assert a.shape == (4, 6) and np.array_equal(a, b)
    pa, pb = visual_clusters.project_centres(torch.tensor(a), 8, 3), visual_clusters.project_centres(torch.tensor(a), 8, 3)
    assert pa.shape == (4, 8) and torch.equal(pa, pb)
    assert not torch.allclose(pa, visual_clusters.project_centres(torch.tensor(a), 8, 4))

    class Ext(visual_clusters.FeatureExtractor):
        name, ident = "fake", "fake:1"

    calls = []
    path = visual_clusters.cache_file(str(tmp_path), "Data set", Ext(), 4, 3, ["b.png", "a.png"])
    assert os.path.basename(path).startswith("Data-set_fake_k4_seed3_")
    assert path != visual_clusters.cache_file(str(tmp_path), "Data set", Ext(), 4, 5, ["b.png", "a.png"])
    assert path != visual_clusters.cache_file(str(tmp_path), "Data set", Ext(), 4, 3, ["c.png", "a.png"])
    first = visual_clusters.cached_centres(path, lambda: calls.append(1) or a)
    second = visual_clusters.cached_centres(path, lambda: calls.append(1) or a * 0)
    assert calls == [1] and torch.equal(first, second) and torch.allclose(first, torch.tensor(a, dtype=torch.float32))
    assert visual_clusters.select_images(10, 4, 3) == visual_clusters.select_images(10, 4, 3)
    with pytest.raises(ConfigError, match="at least k images"):
        visual_clusters.kmeans_centres(feats[:3], 4, seed=0)


def test_torchvision_extractor_needs_local_weights_and_gives_pooled_features(tmp_path):
    import torchvision

    with pytest.raises(ConfigError, match="CLUSTER_WEIGHTS is empty"):
        visual_clusters.TorchvisionFeatures("resnet18", "", (0.5,) * 3, (0.5,) * 3)
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    ext = visual_clusters.TorchvisionFeatures("resnet18", str(path), (0.5,) * 3, (0.5,) * 3)
    out = ext(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 512) and ext.ident.startswith("torchvision:resnet18:")


# ------------------------------------------------- visual prompts, coupling, aux head, model
def test_visual_prompts_dynamic_offset_and_coupling():
    torch.manual_seed(0)
    tokens = torch.randn(3, 17, 64)
    static = DynamicVisualPrompts(5, 64, dynamic=False)
    out = static(tokens)
    assert out.shape == (3, 5, 64) and torch.equal(out[0], out[1])
    dyn = DynamicVisualPrompts(5, 64, dynamic=True, coupling=VisionTextCoupling(32, 64, heads=4))
    ctx = torch.randn(7, 32)
    out = dyn(tokens, ctx)
    assert out.shape == (3, 5, 64) and not torch.allclose(out[0], out[1])
    assert not torch.allclose(out, dyn(tokens, torch.randn(7, 32)))  # the text context changes the prompts
    with pytest.raises(ValueError, match="text context"):
        dyn(tokens, None)
    head = AuxiliaryEmotionHead(64, 8)
    assert head(torch.randn(3, 64)).shape == (3, 8)


def _model(clip, fusion="fusion"):
    gen = ConditionalContext(n_ctx=4, ctx_dim=clip.text_width, vis_dim=clip.embed_dim, hidden_ratio=8, dropout=0.1)
    pl = PromptLearner(clip, CLASSES, gen, 4)
    vp = DynamicVisualPrompts(4, clip.vision_width, coupling=VisionTextCoupling(clip.text_width, clip.vision_width))
    return EmoCoOpModel(
        clip, pl, vp, AuxiliaryEmotionHead(clip.embed_dim, len(CLASSES)), build_chromatic(fusion, clip.embed_dim, len(CLASSES)),
        UncertaintyWeighting(0.3), pixel_mean=(0.5, 0.4, 0.3), pixel_std=(0.2, 0.25, 0.3),
    )


@pytest.mark.parametrize("fusion", ["fusion", "residual"])
def test_gradients_reach_exactly_the_trainable_parameters(tiny_clip, fusion):
    torch.manual_seed(0)
    model = _model(tiny_clip, fusion).train()
    assert not tiny_clip.training
    out = model(torch.randn(4, 3, 32, 32))
    assert out["logits"].shape == (4, 8) and out["aux_logits"].shape == (4, 8)
    y = (torch.rand(4, 8) > 0.5).float()
    main = F.binary_cross_entropy_with_logits(out["logits"], y)
    loss, _ = model.loss_weighting.combine(main, F.binary_cross_entropy_with_logits(out["aux_logits"], y))
    loss.backward()
    trainable = ("prompt_learner.", "visual_prompts.", "aux_head.", "chromatic.", "loss_weighting.")
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("visual_prompts.coupling.") for n in names)
    for name, p in model.named_parameters():
        if name.startswith(trainable):
            assert p.requires_grad and p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        else:
            assert name.startswith("clip.") and not p.requires_grad and p.grad is None, name


def test_model_undoes_the_pipeline_normalisation_for_the_chromatic_branch(tiny_clip):
    model = _model(tiny_clip)
    rgb = torch.rand(2, 3, 32, 32)
    normed = (rgb - model.pixel_mean) / model.pixel_std
    assert torch.allclose(model.train().rgb01(normed), rgb, atol=1e-6)
    model.normalized_test = False
    assert torch.allclose(model.eval().rgb01(rgb), rgb)
