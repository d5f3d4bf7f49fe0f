"""The CLIP adapter: encoders against open_clip, prompts, weight formats, and error messages."""
from __future__ import annotations

import os
import socket
import warnings

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU, Transformer
from safetensors.torch import save_file

import clip.loading
from clip import ClipBackbone, available_models, load_clip, resolve_model_name
from clip.checkpoint import read_checkpoint
from clip.text import run_transformer
from utils.errors import CheckpointError, ConfigError

TEXTS = ["a photo of a cat.", "joy", "an oil painting of a very sad old man sitting alone in the rain at night."]
OPENAI_META = {"input_resolution": 32, "context_length": 77, "vocab_size": 49408}


def _seeded(name: str, seed: int = 0, **kw) -> ClipBackbone:
    torch.manual_seed(seed)
    return load_clip(name, **kw)


@pytest.fixture(scope="module")
def vit() -> ClipBackbone:
    return _seeded("emolab-tiny-vit")


@pytest.fixture(scope="module")
def rn() -> ClipBackbone:
    return _seeded("emolab-tiny-rn")


def _images(clip: ClipBackbone, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(1))


def _features(clip: ClipBackbone):
    with torch.no_grad():
        return clip.encode_text(clip.tokenize(TEXTS)), clip.encode_image(_images(clip))


def _error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, f"error message must be one line: {msg!r}"
    return msg


# --------------------------------------------------------------------------------- names
def test_names_resolve_openai_spellings_and_project_models():
    assert resolve_model_name("ViT-B/16") == "ViT-B-16"
    assert resolve_model_name("ViT-L/14@336px") == "ViT-L-14-336"
    assert resolve_model_name("RN50x4") == "RN50x4"
    assert resolve_model_name("vit-b/32") == "ViT-B-32"
    assert resolve_model_name("emolab-tiny-rn") == "emolab-tiny-rn"
    assert {"emolab-tiny-vit", "emolab-tiny-rn", "ViT-B-16", "RN50"} <= set(available_models())
    with pytest.raises(ConfigError) as e:
        load_clip("emolab-tiny-vt")
    assert "'emolab-tiny-vt'" in _error(e) and "'emolab-tiny-vit'" in _error(e)


def test_text_tower_without_prompt_embeddings_is_refused_before_any_download(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: pytest.fail("network access"))
    with pytest.raises(ConfigError) as e:
        load_clip("roberta-ViT-B-32")
    assert _error(e) == "architecture roberta-ViT-B-32 has a text tower that does not take prompt embeddings"


# ------------------------------------------------------------------------------ attributes
def test_attributes_and_frozen_eval_model(vit, rn):
    assert (vit.embed_dim, vit.text_width, vit.vision_width, vit.image_size) == (128, 64, 128, 32)
    assert (rn.embed_dim, rn.text_width, rn.vision_width, rn.image_size) == (64, 64, 512, 64)
    for c in (vit, rn):
        assert c.context_length == 77 and c.dtype == torch.float32
        assert (c.sot_token_id, c.eot_token_id) == (49406, 49407)
        assert c.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
        assert c.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
        assert c.logit_scale is c.model.logit_scale
        assert not c.training and not c.model.training
        assert all(not p.requires_grad for p in c.parameters())
    assert vit.is_vit and not rn.is_vit


def test_tokenize_and_embed(vit):
    tokens = vit.tokenize(TEXTS)
    assert tokens.shape == (3, 77) and tokens.dtype == torch.long
    assert (tokens[:, 0] == 49406).all()
    eot = vit.eot_positions(tokens)
    assert (tokens[torch.arange(3), eot] == 49407).all()
    assert vit.tokenize("joy", context_length=10).shape == (1, 10)
    assert vit.embed_tokens(tokens).shape == (3, 77, 64)
    assert torch.equal(vit.token_embedding(tokens), vit.embed_tokens(tokens))


# ------------------------------------------------------------------------------------ text
@pytest.mark.parametrize("which", ["vit", "rn"])
def test_encode_text_equals_open_clip(which, request):
    c = request.getfixturevalue(which)
    tokens = c.tokenize(TEXTS)
    with torch.no_grad():
        ours, ref = c.encode_text(tokens), c.model.encode_text(tokens)
    assert ours.shape == (3, c.embed_dim) and c.embed_dim == (128 if which == "vit" else 64)
    assert (ours - ref).abs().max() < 1e-5


def test_truncation_after_last_eot_is_exact_and_shorter(vit):
    tokens = vit.tokenize(TEXTS)  # prompts of different lengths
    eot = vit.eot_positions(tokens)
    assert len(set(eot.tolist())) == 3
    lengths = []
    hook = vit.model.transformer.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            x = vit.embed_tokens(tokens)
            short = vit.encode_text_embeddings(x, eot, truncate=True)
            full = vit.encode_text_embeddings(x, eot, truncate=False)
    finally:
        hook.remove()
    assert lengths == [int(eot.max()) + 1, 77]
    assert (short - full).abs().max() < 1e-5


def test_text_embeddings_receive_gradient_and_work_under_autocast(vit):
    tokens = vit.tokenize(TEXTS)
    eot = vit.eot_positions(tokens)
    x = vit.embed_tokens(tokens).detach().requires_grad_(True)
    vit.encode_text_embeddings(x, eot).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        amp = vit.encode_text_embeddings(x.detach(), eot)
    ref = vit.encode_text_embeddings(x.detach(), eot).detach()
    assert torch.isfinite(amp.float()).all()
    assert torch.nn.functional.cosine_similarity(amp.float(), ref).min() > 0.98


def test_transformer_layout_batch_first_or_not():
    torch.manual_seed(0)
    seq_first = Transformer(width=16, layers=1, heads=2, batch_first=False).eval()
    batch_first = Transformer(width=16, layers=1, heads=2, batch_first=True).eval()
    batch_first.load_state_dict(seq_first.state_dict())
    x = torch.randn(3, 5, 16)
    mask = torch.full((5, 5), float("-inf")).triu(1)
    with torch.no_grad():
        a, b = run_transformer(seq_first, x, mask), run_transformer(batch_first, x, mask)
    assert a.shape == (3, 5, 16) and (a - b).abs().max() < 1e-6


# ----------------------------------------------------------------------------------- image
@pytest.mark.parametrize("which", ["vit", "rn"])
def test_encode_image_equals_open_clip(which, request):
    c = request.getfixturevalue(which)
    images = _images(c)
    with torch.no_grad():
        ours, ref = c.encode_image(images), c.model.encode_image(images)
    assert ours.shape == (3, c.embed_dim) and c.embed_dim == (128 if which == "vit" else 64)
    assert (ours - ref).abs().max() < 1e-5


def test_visual_prompt_tensor_changes_output_and_receives_gradient(vit):
    images = _images(vit)
    prompts = (0.5 * torch.randn(1, 4, vit.vision_width)).requires_grad_(True)
    out = vit.encode_image(images, prompts=prompts)
    with torch.no_grad():
        plain = vit.encode_image(images)
    assert out.shape == (3, 128)
    assert (out - plain).abs().max() > 1e-3
    out.sum().backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0


def test_visual_prompt_callable_gets_token_sequence(vit):
    images = _images(vit)
    seen = []
    proj = torch.nn.Linear(vit.vision_width, 2 * vit.vision_width)

    def generate(tokens: torch.Tensor) -> torch.Tensor:
        seen.append(tokens)
        return proj(tokens[:, 1:].mean(1)).view(tokens.shape[0], 2, vit.vision_width)

    vit.encode_image(images, prompts=generate).sum().backward()
    n_patches = (vit.image_size // 8) ** 2
    assert seen[0].shape == (3, 1 + n_patches, vit.vision_width)
    assert torch.allclose(seen[0], vit.image_tokens(images))
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_bad_visual_prompts(vit, rn):
    with pytest.raises(ValueError, match="visual prompts must be"):
        vit.encode_image(_images(vit), prompts=torch.zeros(2, 4, vit.vision_width))
    with pytest.raises(ConfigError) as e:
        rn.encode_image(_images(rn), prompts=torch.zeros(1, 4, 512))
    assert "emolab-tiny-rn" in _error(e)


# ---------------------------------------------------------------------------- weight files
SAVERS = {
    "plain": lambda sd, p: torch.save(sd, p),
    "wrapped": lambda sd, p: torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, p),
    "legacy": lambda sd, p: torch.save(sd, p, _use_new_zipfile_serialization=False),
    "safetensors": lambda sd, p: save_file({k: v.contiguous() for k, v in sd.items()}, str(p)),
}


@pytest.mark.parametrize("fmt, filename", [  # safetensors_named.pt: formats are told by content, not extension
    ("plain", "open_clip.pt"), ("wrapped", "train_ckpt.pth.tar"), ("legacy", "legacy.bin"),
    ("safetensors", "weights.safetensors"), ("safetensors", "safetensors_named.pt"),
])
@pytest.mark.parametrize("which", ["vit", "rn"])
def test_round_trip_through_weight_files(which, fmt, filename, tmp_path, request):
    src = request.getfixturevalue(which)
    path = tmp_path / filename
    SAVERS[fmt](src.model.state_dict(), path)
    loaded = _seeded(src.model_name, seed=123, pretrained=str(path))
    for a, b in zip(_features(src), _features(loaded)):
        assert torch.equal(a, b)
    assert all(not p.requires_grad for p in loaded.parameters())


def _openai_reference(tmp_path):
    """A tiny CLIP built like OpenAI's (QuickGELU), saved as a TorchScript archive with the
    ``input_resolution`` / ``context_length`` / ``vocab_size`` entries OpenAI's files carry."""
    torch.manual_seed(7)
    model = open_clip.create_model("emolab-tiny-vit", force_quick_gelu=True).eval()
    for key, value in OPENAI_META.items():
        model._buffers[key] = torch.tensor(value)  # beside the int attributes of the same names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # like OpenAI's release: a traced CLIP (open_clip.trace_model breaks on tuple image sizes)
        example = {"encode_text": torch.zeros(2, 77, dtype=torch.long), "encode_image": torch.ones(2, 3, 32, 32)}
        traced = torch.jit.trace_module(model, example, check_trace=False)
        path = tmp_path / "ViT-tiny.pt"
        torch.jit.save(traced, str(path))
    return model, path


def test_openai_torchscript_archive_loads_with_quickgelu(tmp_path):
    ref, path = _openai_reference(tmp_path)
    weights = read_checkpoint(str(path))
    assert weights.fmt == "torchscript" and weights.openai
    assert not set(OPENAI_META) & set(weights.state_dict)
    loaded = load_clip("emolab-tiny-vit", pretrained=str(path))
    assert any(isinstance(m, QuickGELU) for m in loaded.modules())
    tokens = loaded.tokenize(TEXTS)
    images = _images(loaded)
    with torch.no_grad():
        assert (loaded.encode_text(tokens) - ref.encode_text(tokens)).abs().max() < 1e-5
        assert (loaded.encode_image(images) - ref.encode_image(images)).abs().max() < 1e-5


def test_openai_fp16_state_dict_loads_as_fp32(tmp_path, vit):
    sd = {k: v.half() for k, v in vit.model.state_dict().items()}
    sd.update({k: torch.tensor(v) for k, v in OPENAI_META.items()})
    torch.save(sd, tmp_path / "openai_fp16.pt")
    loaded = load_clip("emolab-tiny-vit", pretrained=str(tmp_path / "openai_fp16.pt"))
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert any(isinstance(m, QuickGELU) for m in loaded.modules())
    assert torch.equal(loaded.model.visual.proj, vit.model.visual.proj.half().float())


def test_relative_path_is_tried_from_the_repository_root(tmp_path, monkeypatch, vit):
    (tmp_path / "weights").mkdir()
    torch.save(vit.model.state_dict(), tmp_path / "weights" / "tiny.pt")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setattr(clip.loading, "REPO_ROOT", tmp_path)
    loaded = load_clip("emolab-tiny-vit", pretrained=os.path.join("weights", "tiny.pt"))
    assert torch.equal(_features(loaded)[0], _features(vit)[0])


# ---------------------------------------------------------------------------- error paths
@pytest.mark.parametrize("value", ["missing.pt", "weights/x.safetensors", "dir\\model.bin", "/abs/ViT-B-16.tar"])
def test_missing_checkpoint_message(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as e:
        load_clip("emolab-tiny-vit", pretrained=value)
    assert _error(e) == f"CLIP checkpoint not found: {value}"


def test_mismatched_state_dict_names_file_and_keys(tmp_path, vit, rn):
    path = tmp_path / "rn.pt"
    torch.save(rn.model.state_dict(), path)
    with pytest.raises(CheckpointError) as e:
        load_clip("emolab-tiny-vit", pretrained=str(path))
    msg = _error(e)
    assert str(path) in msg and "emolab-tiny-vit" in msg
    assert "missing keys visual.class_embedding" in msg and "unexpected keys visual." in msg
    sd = dict(vit.model.state_dict())
    sd["visual.proj"] = torch.zeros(64, 32)
    torch.save(sd, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError) as e:
        load_clip("emolab-tiny-vit", pretrained=str(tmp_path / "shape.pt"))
    assert "visual.proj has shape (64, 32) in the file but (128, 128) in the model" in _error(e)


@pytest.mark.parametrize("content, expected", [
    (b"this is not a checkpoint", "could not read CLIP checkpoint"),
    (b"", "CLIP checkpoint is empty"),
    (None, "is not a state dict: entry 'epoch' is int, not a tensor"),
])
def test_unreadable_checkpoints(content, expected, tmp_path):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"epoch": 3, "w": torch.zeros(1)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_clip("emolab-tiny-vit", pretrained=str(path))
    assert expected in _error(e) and str(path) in _error(e)


def test_unknown_pretrained_tags():
    with pytest.raises(ConfigError) as e:
        load_clip("ViT-B/16", pretrained="laion2b_s34b_b88")
    assert "'laion2b_s34b_b88k'" in _error(e) and "ViT-B-16" in _error(e)
    with pytest.raises(ConfigError) as e:
        load_clip("emolab-tiny-vit", pretrained="openai")
    assert "no downloadable weights" in _error(e)


def test_download_failure_is_one_line_checkpoint_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable\nsecond line")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    with pytest.raises(CheckpointError) as e:
        load_clip("RN50", pretrained="openai")
    assert _error(e) == "could not download CLIP weights RN50/openai: network unreachable"


def test_random_init_never_touches_the_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    for mod in (open_clip.pretrained, open_clip.factory):
        for fn in ("download_pretrained", "download_pretrained_from_url", "download_pretrained_from_hf"):
            if hasattr(mod, fn):
                monkeypatch.setattr(mod, fn, no_network)
    c = load_clip("emolab-tiny-vit", pretrained="")
    with torch.no_grad():
        assert c.encode_text(c.tokenize(["offline"])).shape == (1, 128)
