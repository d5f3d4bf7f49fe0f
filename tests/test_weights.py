"""Backbone weights are never silently random: PRETRAINED "" finds OpenAI's / ImageNet weights in
the usual caches, downloads them, or stops with one line; "random" is the only way to random."""
from __future__ import annotations

import os
import socket
import warnings

import open_clip
import pytest
import torch
from safetensors.torch import save_file

import clip.pretrained as cp
from utils.errors import CheckpointError, ConfigError
from conftest import COOP_CFG, ROOT, SMALL_DATA, SYN_CFG, run_cli

OPENAI_META = {"input_resolution": 32, "context_length": 77, "vocab_size": 49408}
TINY_OPENAI = {"url": "https://openaipublic.example/clip/models/0123/ViT-tiny.pt",
               "hf_hub": "timm/tiny_clip.openai/", "quick_gelu": True}


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    """HOME, XDG and every model cache point into tmp_path; no network."""
    home = tmp_path / "home"
    home.mkdir()
    for key in ("EMOLAB_CLIP_DIR", "HF_HUB_CACHE", "HF_HOME", "TORCH_HOME", "HF_HUB_OFFLINE", "EMOLAB_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    for mod in (open_clip.pretrained,):
        for fn in ("download_pretrained", "download_pretrained_from_url", "download_pretrained_from_hf"):
            monkeypatch.setattr(mod, fn, no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return home


@pytest.fixture
def tiny_is_openai(monkeypatch, tmp_path):
    """Pretend OpenAI released ``emolab-tiny-vit`` as ViT-tiny.pt (and ship no project weights)."""
    real = cp.openai_config
    monkeypatch.setattr(cp, "openai_config", lambda arch: dict(TINY_OPENAI) if arch == "emolab-tiny-vit" else real(arch))
    monkeypatch.setattr(cp, "SHIPPED_DIR", tmp_path / "no_shipped_weights")


def _openai_archive(path):
    """A tiny CLIP saved the way OpenAI distributes CLIP: a traced TorchScript archive (QuickGELU)."""
    from clip.names import register_project_models

    register_project_models()
    torch.manual_seed(11)
    model = open_clip.create_model("emolab-tiny-vit", force_quick_gelu=True).eval()
    for key, value in OPENAI_META.items():
        model._buffers[key] = torch.tensor(value)
    example = {"encode_text": torch.zeros(2, 77, dtype=torch.long), "encode_image": torch.ones(2, 3, 32, 32)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(model, example, check_trace=False)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.jit.save(traced, str(path))
    return model


def _same_encoders(a, ref):
    img = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = a.tokenize(["a sad photo", "joy"])
    with torch.no_grad():
        assert (a.encode_image(img) - ref.encode_image(img)).abs().max() < 1e-5
        assert (a.encode_text(tokens) - ref.encode_text(tokens)).abs().max() < 1e-5


def test_openai_file_in_the_clip_cache_is_used_and_read_without_torchscript(fresh_home, tiny_is_openai, monkeypatch):
    from trainers.clip_prompting.base import load_configured_clip

    ref = _openai_archive(fresh_home / ".cache" / "clip" / "ViT-tiny.pt")

    def no_jit(*a, **k):
        raise AssertionError("torch.jit.load would compile and run the archive's code")

    monkeypatch.setattr(torch.jit, "load", no_jit)
    res = cp.resolve_pretrained("emolab-tiny-vit", "")
    assert res.value == str(fresh_home / ".cache" / "clip" / "ViT-tiny.pt") and res.quick_gelu
    _same_encoders(load_configured_clip("emolab-tiny-vit", "", "cpu"), ref)


def test_emolab_clip_dir_and_hugging_face_cache(fresh_home, tiny_is_openai, monkeypatch, tmp_path):
    ref = _openai_archive(tmp_path / "models" / "ViT-tiny.pt")
    monkeypatch.setenv("EMOLAB_CLIP_DIR", str(tmp_path / "models"))
    assert cp.resolve_pretrained("emolab-tiny-vit", "").value == str(tmp_path / "models" / "ViT-tiny.pt")
    monkeypatch.delenv("EMOLAB_CLIP_DIR")

    # open_clip's copy in the Hugging Face cache (open_clip state dict, no OpenAI markers)
    repo = fresh_home / ".cache" / "huggingface" / "hub" / "models--timm--tiny_clip.openai"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items() if k not in OPENAI_META},
              str(snap / "open_clip_model.safetensors"))
    res = cp.resolve_pretrained("emolab-tiny-vit", "")
    assert res.value == str(snap / "open_clip_model.safetensors") and res.quick_gelu
    from trainers.clip_prompting.base import load_configured_clip

    _same_encoders(load_configured_clip("emolab-tiny-vit", "", "cpu"), ref)


@pytest.mark.parametrize("offline_env", [False, True])
def test_coop_vit_b16_without_weights_or_network_exits_2_with_one_line(offline_env, fresh_home, monkeypatch,
                                                                         tmp_path, data_root, capsys):
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = run_cli(["--root", data_root, "--output-dir", str(tmp_path / "out"), "--trainer", "CoOp",
                    "--config-file", os.path.join(ROOT, "configs/trainers/CoOp/vit_b16.yaml"),
                    "--dataset-config-file", SYN_CFG, *SMALL_DATA, "DATALOADER.NUM_WORKERS", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "ViT-B-16.pt" in err[0] and "~/.cache/clip/" in err[0] and "EMOLAB_CLIP_DIR" in err[0]
    assert "random" in err[0]


def test_shipped_tiny_clip_needs_no_download(fresh_home):
    from trainers.clip_prompting.base import load_configured_clip

    res = cp.resolve_pretrained("emolab-tiny-vit", "")
    assert res.value.endswith(os.path.join("clip", "weights", "emolab-tiny-vit.safetensors"))
    load_configured_clip("emolab-tiny-vit", "", "cpu")


def test_architecture_without_default_weights_is_an_error(fresh_home):
    with pytest.raises(ConfigError) as e:
        cp.resolve_pretrained("emolab-tiny-rn", "")
    assert "random" in str(e.value) and "\n" not in str(e.value)


def test_random_only_when_asked_and_then_log_and_config_say_so(tmp_path, data_root):
    out = tmp_path / "rand"
    assert run_cli(["--root", data_root, "--output-dir", str(out), "--config-file", COOP_CFG,
                    "--dataset-config-file", SYN_CFG, "--no-train", *SMALL_DATA,
                    "MODEL.BACKBONE.PRETRAINED", "random"]) == 0
    assert "RANDOM weights (MODEL.BACKBONE.PRETRAINED random)" in (out / "log.txt").read_text()
    assert "PRETRAINED: random" in (out / "config.yaml").read_text()


# ------------------------------------------------------------------------- CNN backbones
def test_imagenet_file_in_the_torch_hub_cache_is_used(fresh_home, monkeypatch, tmp_path):
    import torchvision

    from trainers.cnn.backbones import build_cnn_backbone, resolve_cnn_pretrained

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(5)
    ref = torchvision.models.resnet18()
    path = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"  # torchvision's IMAGENET1K_V1 file
    path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), path)
    assert resolve_cnn_pretrained("resnet18", "") == str(path)
    bb = build_cnn_backbone("resnet18", pretrained=resolve_cnn_pretrained("resnet18", ""))
    assert torch.equal(bb.net.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)


def test_cnn_without_weights_or_network_exits_2_with_one_line(fresh_home, tmp_path, data_root, capsys):
    code = run_cli(["--root", data_root, "--output-dir", str(tmp_path / "ew"), "--trainer", "EWMTCNN",
                    "--config-file", os.path.join(ROOT, "configs/trainers/EWMTCNN/tiny_synthetic.yaml"),
                    "--dataset-config-file", SYN_CFG, *SMALL_DATA, "MODEL.BACKBONE.PRETRAINED", ""])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "resnet18-f37072fd.pth" in err[0] and os.path.join("hub", "checkpoints") in err[0] and "random" in err[0]
    with pytest.raises(CheckpointError):
        from trainers.cnn.backbones import resolve_cnn_pretrained

        resolve_cnn_pretrained("vgg19_bn", "")


def test_downloads_off_says_why_and_fails_fast(monkeypatch):
    import time

    from utils.fileio import downloads_off

    for k in ("HF_HUB_OFFLINE", "EMOLAB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("EMOLAB_OFFLINE", "1")
    assert downloads_off("example.invalid") == "downloads are off (EMOLAB_OFFLINE)"
    monkeypatch.setenv("EMOLAB_OFFLINE", "0")
    t0 = time.monotonic()
    assert downloads_off("example.invalid", timeout=2.0) == "example.invalid is unreachable"  # RFC 2606: never resolves
    assert time.monotonic() - t0 < 10
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert downloads_off("example.invalid") == ""  # behind a proxy the client decides
