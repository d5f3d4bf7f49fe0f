"""CoOp / CoCoOp files and numbers crossing between EmoLab and the official code (issue 20):

* official checkpoints (written by the official logic on the tiny CLIP, ``tests/fixtures/official_coop``)
  evaluated through ``train.py --eval-only`` on JPEG files give the official evaluation's logits;
* EmoLab's checkpoints load in the official ``load_model`` (``strict=False``) and give EmoLab's logits;
* the test transform is CLIP / Dassl's PIL resize + centre crop; ``=> result`` is the bare line
  ``parse_test_res.py --test-log`` wants; CSC with CTX_INIT builds the official generic context;
  the converter's defaults; a CLIP's architecture inferred from an OpenAI state dict.

The official checkpoints and ``official_logits.pt`` were written by the official CoOp / Dassl code itself
(``tests/fixtures/make_official_coop_real.py``); where a test needs the official model at test time
(EmoLab's files in ``load_model``, other CLIPs, other settings), the official side is
``tests/official_ref.py`` (see its docstring), since the official repositories are not installed here.
"""
from __future__ import annotations

import io
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import official_ref as ref
from conftest import COCOOP_CFG, COOP_CFG, ROOT, run_cli

FI_CFG = os.path.join(ROOT, "configs/datasets/fi.yaml")
TOL = 1e-5


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """JPEG dataset (other images than the fixtures were trained on), the tiny CLIP as an OpenAI file,
    and the official CLIP built from it."""
    base = tmp_path_factory.mktemp("interop")
    root = ref.write_jpeg_folders(str(base / "data"), seed=5)
    clip_file = str(base / "tiny_openai.pt")
    state = ref.openai_tiny_state_dict()
    torch.save(state, clip_file)
    clip = ref.build_model(state)
    for p in clip.parameters():
        p.requires_grad_(False)
    return SimpleNamespace(root=root, clip_file=clip_file, clip=clip, base=base)


def _frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _spy(monkeypatch):
    """Capture the trainer ``train.py`` builds and the logits each evaluation hands the evaluator."""
    import trainers
    from trainers.evaluation.base import EvaluatorBase

    seen = {"logits": []}
    build, process = trainers.build_trainer, EvaluatorBase.process

    def spy_build(cfg, **kwargs):
        seen["trainer"] = build(cfg, **kwargs)
        return seen["trainer"]

    def spy_process(self, logits, batch):
        seen["logits"].append(logits.detach().clone())
        return process(self, logits, batch)

    monkeypatch.setattr(trainers, "build_trainer", spy_build)
    monkeypatch.setattr(EvaluatorBase, "process", spy_process)
    return seen


def _args(env, which, out, *extra, opts=()):
    cfg, node = (COOP_CFG, "TRAINER.COOP") if which == "coop" else (COCOOP_CFG, "TRAINER.COCOOP")
    return ["--root", env.root, "--seed", "1", "--dataset-config-file", FI_CFG, "--config-file", cfg,
            "--trainer", "CoOp" if which == "coop" else "CoCoOp", "--output-dir", str(out), *extra,
            "MODEL.BACKBONE.NAME", "infer", "MODEL.BACKBONE.PRETRAINED", env.clip_file,
            f"{node}.N_CTX", "4", f"{node}.CTX_INIT", "", "CACHE.FEATURES", "off", "DATALOADER.NUM_WORKERS", "0", *opts]


def _official_logits(env, which, model_dir, epoch, data, classnames):
    cls = ref.CoOpModel if which == "coop" else ref.CoCoOpModel
    torch.manual_seed(123)  # the random init load_model must overwrite
    model = cls(env.clip, classnames, n_ctx=4)
    ref.load_model(model.prompt_learner, model_dir, epoch)
    model.eval()
    tfm = ref.dassl_test_transform()
    with torch.no_grad():
        x = torch.stack([tfm(ref.read_image(d.impath)) for d in data])
        return model(x)


@pytest.mark.parametrize("clip_source", ["openai_state_dict", "emolab-tiny-vit"])
@pytest.mark.parametrize("which", ["coop", "cocoop"])
def test_official_checkpoint_through_train_py_on_jpegs_gives_the_official_logits(which, clip_source, env, tmp_path,
                                                                                  monkeypatch):
    """``openai_state_dict``: the tiny CLIP as an OpenAI file (``MODEL.BACKBONE.NAME infer``) against OpenAI's
    ``build_model`` on it; ``emolab-tiny-vit``: the shipped tiny CLIP by name against the same weights in
    the OpenAI model classes with its own heads and GELU (``official_ref.tiny_named_clip``)."""
    seen = _spy(monkeypatch)
    fixture = os.path.join(ref.FIXTURES, which)
    opts = ("MODEL.BACKBONE.NAME", "emolab-tiny-vit", "MODEL.BACKBONE.PRETRAINED", "") \
        if clip_source == "emolab-tiny-vit" else ()
    assert run_cli(_args(env, which, tmp_path / "eval", "--eval-only", "--model-dir", fixture, "--load-epoch", "2",
                         opts=opts)) == 0
    trainer, ours = seen["trainer"], seen["logits"][-1]
    assert trainer.classnames == ref.CLASSNAMES
    clip_env = env if clip_source == "openai_state_dict" else SimpleNamespace(clip=_frozen(ref.tiny_named_clip()))
    theirs = _official_logits(clip_env, which, fixture, 2, trainer.dataset.test, trainer.classnames)
    diff = (ours - theirs).abs().max().item()
    print(f"{which} ({clip_source}): official checkpoint through train.py --eval-only, max |logit diff| = {diff:.3g}")
    assert ours.shape == theirs.shape == (len(trainer.dataset.test), 4)
    assert diff <= TOL


def _committed_logit_diff(env, which, model_dir, epoch, official_file, tmp_path, monkeypatch) -> float:
    """``train.py --eval-only`` on ``model_dir`` (epoch ``epoch``) over the committed JPEGs against the
    official code's logits in ``official_file`` (matched by image path): max |difference|."""
    seen = _spy(monkeypatch)
    data = os.path.join(ref.FIXTURES, "eval_data")
    official = torch.load(official_file, weights_only=True)
    assert run_cli(_args(SimpleNamespace(root=data, clip_file=env.clip_file), which, tmp_path / "eval", "--eval-only",
                         "--model-dir", model_dir, "--load-epoch", str(epoch))) == 0
    trainer, ours = seen["trainer"], seen["logits"][-1]
    paths = [os.path.relpath(d.impath, data) for d in trainer.dataset.test]
    assert sorted(paths) == sorted(official["impaths"]) and len(paths) == 12
    theirs = official["logits"][[official["impaths"].index(q) for q in paths]]
    return (ours - theirs).abs().max().item()


@pytest.mark.parametrize("which", ["coop", "cocoop"])
def test_official_checkpoint_through_train_py_gives_the_logits_the_official_code_computed(which, env, tmp_path,
                                                                                          monkeypatch):
    """Against the official code itself: ``official_logits.pt`` is what CoOp / CoCoOp's trainer (with
    Dassl's test loader) computed for its own checkpoint on the committed JPEGs
    (``tests/fixtures/make_official_coop_real.py``)."""
    fixture = os.path.join(ref.FIXTURES, which)
    diff = _committed_logit_diff(env, which, fixture, 2, os.path.join(fixture, "official_logits.pt"), tmp_path,
                                 monkeypatch)
    print(f"{which}: official checkpoint through train.py --eval-only vs the official code's logits, "
          f"max |logit diff| = {diff:.3g}")
    assert diff <= TOL


@pytest.mark.parametrize("which", ["coop", "cocoop"])
def test_committed_emolab_checkpoint_gives_the_logits_the_official_code_computed_for_it(which, env, tmp_path,
                                                                                       monkeypatch):
    """Direction (b) against the official code itself: ``emolab_run/`` is a prompt-learner file
    ``train.py`` wrote (1 epoch), and ``emolab_run/official_logits.pt`` what the official trainer's
    ``load_model`` + Dassl's test loader computed with it (``make_official_coop_real.py
    --write-emolab-fixtures``); ``train.py --eval-only`` on the same file gives the same logits."""
    run = os.path.join(ref.FIXTURES, which, "emolab_run")
    saved = torch.load(os.path.join(run, "prompt_learner", "model.pth.tar-1"), weights_only=True)["state_dict"]
    assert "ctx" in saved and not any(k.startswith("context.") for k in saved)  # official names: none ignored
    diff = _committed_logit_diff(env, which, run, 1, os.path.join(run, "official_logits.pt"), tmp_path, monkeypatch)
    print(f"{which}: committed EmoLab checkpoint, train.py vs the official load_model's logits, max |logit diff| = "
          f"{diff:.3g}")
    assert diff <= TOL


@pytest.mark.parametrize("which", ["coop", "cocoop"])
def test_emolab_checkpoint_in_the_official_load_model_gives_emolab_logits(which, env, tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    out = tmp_path / "run"
    assert run_cli(_args(env, which, out, "OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "4")) == 0
    trainer, ours = seen["trainer"], seen["logits"][-1]  # the final test (last epoch)
    saved = torch.load(str(out / "prompt_learner" / "model.pth.tar-1"), weights_only=True)["state_dict"]
    expected = {"ctx"} | ({"meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight",
                           "meta_net.linear2.bias"} if which == "cocoop" else set())
    assert set(saved) == expected  # the official names: nothing is ignored by strict=False
    theirs = _official_logits(env, which, str(out), 1, trainer.dataset.test, trainer.classnames)
    diff = (ours - theirs).abs().max().item()
    print(f"{which}: EmoLab checkpoint in the official load_model, max |logit diff| = {diff:.3g}")
    assert diff <= TOL
    # and EmoLab reads its own file back (official names) to the same logits
    seen["logits"].clear()
    assert run_cli(_args(env, which, tmp_path / "again", "--eval-only", "--model-dir", str(out))) == 0
    assert torch.allclose(seen["logits"][-1], ours, atol=1e-6)


def test_older_emolab_names_still_load(env, tmp_path, monkeypatch):
    """A prompt-learner file written before the official names (``context.ctx``) loads unchanged."""
    seen = _spy(monkeypatch)
    fixture = os.path.join(ref.FIXTURES, "coop")
    from trainers.engine.checkpoint import load_checkpoint

    official = load_checkpoint(os.path.join(fixture, "prompt_learner", "model.pth.tar-2"))
    old_dir = tmp_path / "old" / "prompt_learner"
    old_dir.mkdir(parents=True)
    torch.save({"state_dict": {"context.ctx": official["state_dict"]["ctx"].unsqueeze(0)}, "epoch": 2},
               str(old_dir / "model.pth.tar-2"))
    assert run_cli(_args(env, "coop", tmp_path / "e1", "--eval-only", "--model-dir", str(tmp_path / "old"),
                         "--load-epoch", "2")) == 0
    a = seen["logits"][-1]
    assert run_cli(_args(env, "coop", tmp_path / "e2", "--eval-only", "--model-dir", fixture, "--load-epoch", "2")) == 0
    assert torch.equal(a, seen["logits"][-1])


# ------------------------------------------------------------------ test transform
def _jpeg(h, w, seed):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.mark.parametrize("hw", [(57, 83), (90, 40), (224, 300)])
def test_test_transform_is_clips_pil_resize_for_pil_and_decoded_tensors(hw):
    """PIL image and decoded uint8 tensor (the decoded-image cache) both give Dassl's / CLIP's pixels."""
    from torchvision.transforms import v2

    from configs.config import merge_from_list
    from datasets.transforms import build_transform
    from trainers import get_cfg

    cfg = get_cfg(with_extensions=False)
    merge_from_list(cfg, ["INPUT.SIZE", "(32, 32)", "INPUT.INTERPOLATION", "bicubic"])
    tfm = build_transform(cfg, is_train=False)
    img = _jpeg(*hw, seed=hw[0])
    want = ref.dassl_test_transform(32)(img)
    assert (tfm(img) - want).abs().max() < 1e-6
    assert (tfm(v2.functional.pil_to_tensor(img)) - want).abs().max() < 1e-6
    merge_from_list(cfg, ["INPUT.TEST_RESIZE", "tensor"])  # the tensor resize stays available, and differs
    assert (build_transform(cfg, is_train=False)(img) - want).abs().max() > 1e-3


# ------------------------------------------------------------------ logs: parse_test_res.py
def _parse_test_res(log_path, test_log):
    """CoOp's ``parse_test_res.py``: ``* accuracy: X%`` after a line equal to the end signal."""
    end = "=> result" if test_log else "Finish training"
    regex = re.compile(r"\* accuracy: ([\.\deE+-]+)%")
    good, found = False, None
    with open(log_path) as f:
        for line in f:
            line = line.strip()
            if line == end:
                good = True
            m = regex.search(line)
            if m and good:
                found = float(m.group(1))
    return found


def test_parse_test_res_reads_eval_only_logs(env, tmp_path):
    out = tmp_path / "eval"
    fixture = os.path.join(ref.FIXTURES, "coop")
    assert run_cli(_args(env, "coop", out, "--eval-only", "--model-dir", fixture, "--load-epoch", "2")) == 0
    from conftest import final_test

    found = _parse_test_res(str(out / "log.txt"), test_log=True)
    assert found is not None and found == pytest.approx(final_test(str(out))["accuracy"], abs=0.051)


# ------------------------------------------------------------------ CSC with CTX_INIT
def test_csc_with_ctx_init_is_the_official_generic_context(env, tmp_path, caplog):
    from trainers import build_trainer
    from train import build_parser, setup_cfg

    args = build_parser().parse_args(_args(env, "coop", tmp_path / "csc",
                                           opts=("TRAINER.COOP.CSC", "True", "TRAINER.COOP.CTX_INIT", "a_photo_of_a")))
    trainer = build_trainer(setup_cfg(args))
    official = ref.CoOpModel(env.clip, ref.CLASSNAMES, n_ctx=4, ctx_init="a_photo_of_a", csc=True)
    state = trainer.model.prompt_learner.state_dict()
    assert state["ctx"].shape == official.prompt_learner.ctx.shape == (4, 64)
    assert torch.equal(state["ctx"], official.prompt_learner.ctx.detach())
    assert "official CoOp ignores CSC" in caplog.text
    # the official file (generic context) loads under the same options
    sd = {"ctx": official.prompt_learner.ctx.detach().clone(), "token_prefix": official.prompt_learner.token_prefix,
          "token_suffix": official.prompt_learner.token_suffix}
    trainer.model.prompt_learner.load_state_dict(sd)


# ------------------------------------------------------------------ converter defaults
def test_converter_defaults_to_the_tested_epoch_and_a_folder(env, tmp_path):
    from tools.convert_coop_checkpoint import convert

    out = tmp_path / "run"
    assert run_cli(_args(env, "coop", out, "OPTIM.MAX_EPOCH", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
                         "TEST.FINAL_MODEL", "last_step", "TRAIN.CHECKPOINT_FREQ", "1")) == 0
    # a best link to epoch 1 would be the old default; the run's own final test used epoch 2
    best = out / "prompt_learner" / "model-best.pth.tar"
    if best.exists():
        best.unlink()
    os.link(str(out / "prompt_learner" / "model.pth.tar-1"), str(best))
    written = convert(str(out), str(tmp_path / "official"))  # no trailing slash: still a folder
    assert written == str(tmp_path / "official" / "prompt_learner" / "model.pth.tar-2")
    assert (tmp_path / "official" / "prompt_learner" / "checkpoint").read_text().strip() == "model.pth.tar-2"
    ckpt = torch.load(written, weights_only=True)
    mine = torch.load(str(out / "prompt_learner" / "model.pth.tar-2"), weights_only=True)
    assert ckpt["epoch"] == 2 and torch.equal(ckpt["state_dict"]["ctx"], mine["state_dict"]["ctx"])
    single = convert(str(out), str(tmp_path / "one.pth.tar"))
    assert os.path.isfile(single)


# ------------------------------------------------------------------ OpenAI state dict -> architecture
def test_architecture_inferred_from_an_openai_state_dict_with_quickgelu(env):
    from clip import load_clip

    clip = load_clip("infer", pretrained=env.clip_file)
    blocks = clip.model.visual.transformer.resblocks
    from open_clip.transformer import QuickGELU

    assert isinstance(blocks[0].mlp.gelu, QuickGELU)  # open_clip's, or EmoLab's fused subclass of it
    assert blocks[0].attn.num_heads == 128 // 64 and clip.model.transformer.resblocks[0].attn.num_heads == 1
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (clip.encode_image(x) - env.clip.visual(x)).abs().max() < 1e-5
        tokens = ref.tokenize(["a photo of awe.", "sadness"])
        off = clip.encode_text(tokens)
        emb = env.clip.token_embedding(tokens)
        want = ref.TextEncoder(env.clip)(emb, tokens)
        assert (off - want).abs().max() < 1e-5


def test_openai_weights_run_in_openai_layout_bit_for_bit(env):
    """OpenAI weights run sequence-first like OpenAI's CLIP: the image features equal the official
    model's exactly (batch-first attention without a mask rounds differently: ~2e-6 after 4 layers),
    and so do the text features of full-length prompts."""
    from clip import load_clip

    clip = load_clip("infer", pretrained=env.clip_file)
    assert clip.model.visual.transformer.batch_first is False and clip.model.transformer.batch_first is False
    x = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = ref.tokenize(["a photo of awe.", "sadness", "X X X X amusement."])
    with torch.no_grad():
        assert torch.equal(clip.encode_image(x), env.clip.visual(x))
        ours = clip.encode_text(tokens, truncate=False)
        assert torch.equal(ours, ref.TextEncoder(env.clip)(env.clip.token_embedding(tokens), tokens))
    named = load_clip("emolab-tiny-vit", pretrained="")  # not OpenAI weights: open_clip's own layout
    assert named.model.visual.transformer.batch_first is True


def test_infer_without_a_weight_file_is_one_line(tmp_path):
    from clip import load_clip
    from utils.errors import ConfigError

    with pytest.raises(ConfigError, match="infer needs MODEL.BACKBONE.PRETRAINED"):
        load_clip("infer", pretrained=str(tmp_path / "missing.pt"))


def test_resnet_architecture_inferred_from_an_openai_state_dict(tmp_path):
    """OpenAI's ResNet rules: blocks per stage, width, resolution = 32 x the attention pool's grid."""
    import open_clip

    from clip import load_clip
    from clip.openai_arch import infer_config

    torch.manual_seed(0)
    src = open_clip.model.CLIP(embed_dim=32, vision_cfg={"layers": [1, 2, 1, 1], "width": 16, "image_size": 64},
                               text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1,
                                         "layers": 1}, quick_gelu=True).eval()
    state = {k: v for k, v in src.state_dict().items() if k != "attn_mask"}
    conf = infer_config(state)
    assert conf["vision_cfg"] == {"image_size": 64, "layers": [1, 2, 1, 1], "width": 16, "patch_size": None}
    assert conf["text_cfg"]["heads"] == 1 and conf["quick_gelu"] is True and conf["embed_dim"] == 32
    torch.save(state, tmp_path / "rn.pt")  # no metadata entries: inference does not need them
    clip = load_clip("infer", pretrained=str(tmp_path / "rn.pt"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(clip.encode_image(x), src.encode_image(x), atol=1e-5)
