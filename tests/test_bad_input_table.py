"""Bad input, as a table: (case, expected exit code, words the one-line error must contain).

Every case runs ``train.main(argv)`` in this process. It must exit with the code given, print
exactly one line on stderr (``error: ...``) naming the culprit, print no traceback anywhere, and
leave every file of an earlier, finished run byte-identical.
"""
from __future__ import annotations

import errno
import os

import pytest

from conftest import COOP_CFG, ROOT, SMALL_DATA, SYN_CFG, run_cli

DS = os.path.join(ROOT, "configs/datasets")


def base(out, *extra, root=None, cfg=COOP_CFG, data=SYN_CFG):
    flags = [a for i, a in enumerate(extra) if a.startswith("--") or (i and str(extra[i - 1]).startswith("--")
                                                                        and extra[i - 1] not in ("--eval-only", "--restart"))]
    opts = [a for a in extra if a not in flags]
    args = ["--root", root or ROOT_HOLDER["root"], "--seed", "1", "--output-dir", str(out)]
    if cfg:
        args += ["--config-file", cfg]
    if data:
        args += ["--dataset-config-file", data]
    return args + flags + SMALL_DATA + ["OPTIM.MAX_EPOCH", "1"] + opts


ROOT_HOLDER: dict = {}

# ------------------------------------------------------------------------------------------ the table
CASES = []


def case(name, extra, code, *words, **kw):
    CASES.append(pytest.param(extra, code, words, kw, id=name))


# command line
case("seed-too-big", ["--seed", str(2**32)], 2, "--seed", "out of range")
case("seed-negative", ["--seed", "-5"], 2, "--seed", "out of range")
case("load-epoch-zero", ["--eval-only", "--load-epoch", "0"], 2, "--load-epoch")
case("load-epoch-without-eval", ["--load-epoch", "3"], 2, "--load-epoch", "--eval-only")
case("model-dir-without-eval", ["--model-dir", "/nonexistent"], 2, "--model-dir")
case("model-dir-missing", ["--eval-only", "--model-dir", "/nonexistent/run"], 2, "--model-dir", "does not exist")
case("restart-with-eval", ["--eval-only", "--restart"], 2, "--restart")
case("unknown-trainer", ["--trainer", "CoOP"], 2, "unknown trainer", "CoOp")
case("odd-opts", ["OPTIM.LR"], 2, "KEY VALUE")
for key, hint in (("OPTIM.LRR", "OPTIM.LR"), ("OPTIM.MAX_EPOCHS", "OPTIM.MAX_EPOCH"), ("TRAIN.PRINT_FRQ", "TRAIN.PRINT_FREQ"),
                  ("DATALOADER.NUM_WORKER", "DATALOADER.NUM_WORKERS"), ("TEST.FINAL_MODE", "TEST.FINAL_MODEL"),
                  ("SEEED", "SEED"), ("INPUT.SIZES", "INPUT.SIZE"), ("MODEL.BACKBONE.NAMES", "MODEL.BACKBONE.NAME")):
    case(f"unknown-key-{key}", [key, "1"], 2, "unknown config key", hint)
# numeric values
for key, val, words in (
    ("OPTIM.LR", "0", ("OPTIM.LR", "> 0")), ("OPTIM.LR", "-0.1", ("OPTIM.LR", "> 0")), ("OPTIM.LR", "nan", ("OPTIM.LR",)),
    ("OPTIM.LR", "inf", ("OPTIM.LR",)),
    ("OPTIM.MAX_EPOCH", "0", ("OPTIM.MAX_EPOCH", ">= 1")), ("OPTIM.MAX_EPOCH", "-3", ("OPTIM.MAX_EPOCH",)),
    ("DATALOADER.NUM_WORKERS", "-1", ("DATALOADER.NUM_WORKERS", ">= 0")),
    ("DATALOADER.TRAIN_X.BATCH_SIZE", "0", ("DATALOADER.TRAIN_X.BATCH_SIZE",)),
    ("DATALOADER.TRAIN_X.BATCH_SIZE", "-4", ("DATALOADER.TRAIN_X.BATCH_SIZE",)),
    ("DATALOADER.TEST.BATCH_SIZE", "0", ("DATALOADER.TEST.BATCH_SIZE",)),
    ("DATALOADER.PREFETCH_FACTOR", "0", ("DATALOADER.PREFETCH_FACTOR",)),
    ("DATALOADER.DECODED_CACHE_MAX_GB", "0", ("DATALOADER.DECODED_CACHE_MAX_GB",)),
    ("OPTIM.WEIGHT_DECAY", "-1", ("OPTIM.WEIGHT_DECAY",)), ("OPTIM.MOMENTUM", "-0.5", ("OPTIM.MOMENTUM",)),
    ("OPTIM.GAMMA", "0", ("OPTIM.GAMMA",)), ("OPTIM.MAX_GRAD_NORM", "-1", ("OPTIM.MAX_GRAD_NORM",)),
    ("OPTIM.WARMUP_CONS_LR", "-1", ("OPTIM.WARMUP_CONS_LR",)), ("OPTIM.WARMUP_MIN_LR", "-1", ("OPTIM.WARMUP_MIN_LR",)),
    ("TRAIN.CHECKPOINT_FREQ", "-1", ("TRAIN.CHECKPOINT_FREQ",)), ("TRAIN.EVAL_FREQ", "-2", ("TRAIN.EVAL_FREQ",)),
    ("TRAIN.PRINT_FREQ", "0", ("TRAIN.PRINT_FREQ",)), ("TRAIN.DIST_TIMEOUT", "0", ("TRAIN.DIST_TIMEOUT",)),
    ("SEED", str(2**32), ("SEED", "out of range")), ("DATASET.VAL_PERCENT", "1.5", ("DATASET.VAL_PERCENT",)),
    ("TEST.THRESHOLD", "0", ("TEST.THRESHOLD",)), ("TEST.THRESHOLD", "1.5", ("TEST.THRESHOLD",)),
    ("INPUT.SIZE", "(0, 5)", ("INPUT.SIZE",)), ("INPUT.SIZE", "(224,)", ("INPUT.SIZE",)),
    ("INPUT.PIXEL_MEAN", "[0.5, 0.5]", ("INPUT.PIXEL_MEAN",)), ("INPUT.PIXEL_STD", "[0, 1, 1]", ("INPUT.PIXEL_STD",)),
    ("INPUT.RRCROP_SCALE", "(0.5, 0.2)", ("INPUT.RRCROP_SCALE",)), ("INPUT.RRCROP_SCALE", "(0, 1)", ("INPUT.RRCROP_SCALE",)),
):
    case(f"value-{key}={val}", [key, val], 2, *words)
# every choice key, validated before the first step
for key in ("TEST.FINAL_MODEL", "TEST.SPLIT", "OPTIM.NAME", "OPTIM.LR_SCHEDULER", "OPTIM.WARMUP_TYPE", "TRAIN.PRECISION",
            "DATALOADER.DECODED_CACHE", "DATALOADER.TRAIN_X.SAMPLER", "DATALOADER.TEST.SAMPLER", "INPUT.INTERPOLATION",
            "DATASET.SUBSAMPLE_CLASSES", "DATASET.TASK"):
    case(f"choice-{key}", [key, "bogus_value"], 2, key, "bogus_value")
case("choice-final-model-typo", ["TEST.FINAL_MODEL", "best"], 2, "TEST.FINAL_MODEL", "best_val")
case("choice-optim-typo", ["OPTIM.NAME", "adamm"], 2, "OPTIM.NAME", "adam")
# wrong types
for key, val in (("OPTIM.MAX_EPOCH", "ten"), ("OPTIM.LR", "fast"), ("TRAIN.PRINT_FREQ", "often"), ("SEED", "1.5"),
                 ("DATALOADER.NUM_WORKERS", "two"), ("DATASET.NUM_SHOTS", "many"), ("INPUT.SIZE", "big"),
                 ("TEST.NO_TEST", "maybe"), ("OPTIM.STEPSIZE", "soon"), ("DATALOADER.TRAIN_X.BATCH_SIZE", "3.5"),
                 ("TRAIN.EVAL_FREQ", "[1]"), ("USE_CUDA", "2")):
    case(f"type-{key}", [key, val], 2, key, *(("expects",) if key not in ("INPUT.SIZE", "OPTIM.STEPSIZE") else ()))
case("group-as-value", ["OPTIM", "1"], 2, "OPTIM", "group")
# config files
case("config-missing", ["--config-file", "/nonexistent/x.yaml"], 2, "config file not found", cfg=None)
case("dataset-config-missing", ["--dataset-config-file", "/nonexistent/d.yaml"], 2, "config file not found", data=None)
for name, content in (
    ("non-utf8", b"OPTIM:\n  NAME: \"sgd\xe9\xff\"\n"),
    ("invalid-yaml", b"OPTIM: [unclosed\n"),
    ("list-yaml", b"- a\n- b\n"),
    ("unknown-key-yaml", b"OPTIM:\n  LRR: 0.1\n"),
    ("type-yaml", b"OPTIM:\n  MAX_EPOCH: ten\n"),
    ("group-yaml", b"OPTIM: 3\n"),
    ("bad-value-yaml", b"OPTIM:\n  LR: -1.0\n"),
    ("bad-choice-yaml", b"TEST:\n  FINAL_MODEL: newest\n"),
):
    words = {"non-utf8": ("UTF-8",), "invalid-yaml": ("not valid YAML",), "list-yaml": ("mapping",),
             "unknown-key-yaml": ("OPTIM.LRR",), "type-yaml": ("OPTIM.MAX_EPOCH",), "group-yaml": ("OPTIM", "group"),
             "bad-value-yaml": ("OPTIM.LR",), "bad-choice-yaml": ("TEST.FINAL_MODEL", "newest")}[name]
    case(f"cfgfile-{name}", ["@cfgfile"], 2, *words, cfgfile=content)
case("config-file-is-folder", ["--config-file", "/tmp"], 2, "config file", cfg=None)
# every dataset format with a root that does not hold it
for yaml_name in ("emotion6", "fi", "flickr", "flickr_ldl", "twitter_ldl", "emoset", "emotion_dataset", "csv", "imagefolder",
                  "iemocap_features", "meld_features", "caer_s", "heco", "ube", "emo8", "instagram", "emotion6_uniemox"):
    words = {"imagefolder": "no class folders", "iemocap_features": "VEGA", "meld_features": "VEGA"}.get(yaml_name, "not found")
    case(f"dataset-{yaml_name}-missing", [], 2, words, data=os.path.join(DS, f"{yaml_name}.yaml"), root="@empty")
case("dataset-unknown-name", ["DATASET.NAME", "Emotion7"], 2, "Emotion7")
case("dataset-shots-too-many", ["DATASET.NUM_SHOTS", "50"], 2, "NUM_SHOTS")
# images
case("image-folder-unreadable", [], 2, "unreadable", data=os.path.join(DS, "imagefolder.yaml"), root="@badimages")
case("image-folder-empty-class", [], 2, "image", data=os.path.join(DS, "imagefolder.yaml"), root="@emptyclass")
# output folders
case("output-is-file", ["@out=file"], 2, "OUTPUT_DIR", "is a file")
case("output-under-file", ["@out=underfile"], 2, "OUTPUT_DIR")
case("output-read-only", ["@out=readonly"], 2, "OUTPUT_DIR", "not writable")
case("output-holds-other-config", ["@out=prev", "OPTIM.LR", "0.5"], 2, "OPTIM.LR", "--output-dir", "--restart")
case("output-holds-other-epochs", ["@out=prev", "OPTIM.MAX_EPOCH", "12"], 2, "OPTIM.MAX_EPOCH", "--restart")
case("output-locked", ["@out=prev", "@lock"], 2, "in use by another run")
case("output-checkpoints-without-config", ["@out=noconfig"], 2, "config.yaml", "--restart")
case("output-only-broken-checkpoints", ["@out=brokenckpt"], 2, "no complete, readable epoch", "--restart")
# checkpoints
case("eval-corrupt-checkpoint", ["--eval-only", "@modeldir=corrupt"], 2, "cannot read checkpoint")
case("eval-empty-model-dir", ["--eval-only", "@modeldir=empty"], 2, "no checkpoint found")
case("eval-missing-epoch", ["--eval-only", "@modeldir=prev", "--load-epoch", "99"], 2, "checkpoint not found", "model.pth.tar-99")
case("eval-wrong-shape", ["--eval-only", "@modeldir=prev", "TRAINER.COOP.N_CTX", "8"], 2, "does not fit")
case("eval-not-a-dict", ["--eval-only", "@modeldir=notdict"], 2, "state_dict")
case("eval-evil-checkpoint", ["--eval-only", "@modeldir=evil"], 2, "cannot read checkpoint")
case("init-weights-missing", ["MODEL.BACKBONE.PRETRAINED", "/nonexistent/w.pt"], 2, "/nonexistent/w.pt")
# disk full while writing a checkpoint
case("disk-full-checkpoint", ["@enospc"], 2, "no space left", "model.pth.tar-1")
# caches
case("kmeans-cache-corrupt", ["@kmeans"], 2, "k-means cache", cfg=None, data=None)
# values checked against the data they apply to (issue 23)
case("topk-beyond-classes", ["TEST.EVALUATOR", "ClassificationTopK", "TEST.TOPK", "[1, 50]"], 2, "TEST.TOPK", "50", "8 classes")
case("multilabel-topk-beyond-classes", ["TEST.TOPK", "[1, 9]"], 2, "TEST.TOPK", "9", "8 classes",
     data=os.path.join(DS, "synthetic_emotion_ml.yaml"))
case("uniemox-blr-negative", ["TRAINER.UNIEMOX.BLR", "-1.0"], 2, "TRAINER.UNIEMOX.BLR", "-1.0",
     cfg=os.path.join(ROOT, "configs/trainers/UniEmoX/tiny_synthetic.yaml"))
case("uniemox-pretrain-blr-negative", ["TRAINER.UNIEMOX_PRETRAIN.BLR", "-0.5"], 2, "TRAINER.UNIEMOX_PRETRAIN.BLR",
     cfg=os.path.join(ROOT, "configs/trainers/UniEmoXPretrain/tiny_synthetic.yaml"), data=os.path.join(DS, "emoset.yaml"),
     root="@emoset")
case("emoset-annotation-emptied", [], 2, "annotation", "no emotion", data=os.path.join(DS, "emoset.yaml"),
     root="@emoset_emptied")
case("output-is-dataset-root", ["@out=dataroot"], 2, "OUTPUT_DIR", "DATASET.ROOT")
case("output-inside-dataset-root", ["@out=indataroot"], 2, "OUTPUT_DIR", "inside the dataset folder")
case("output-holds-foreign-files", ["@out=foreign"], 2, "config.yaml", "metrics.jsonl", "no EmoLab run wrote")
case("restart-keeps-foreign-files", ["--restart", "@out=foreign"], 2, "no EmoLab run wrote", "--restart")
case("text-cache-dir-is-a-file", ["TRAINER.UNIEMOX_PRETRAIN.TEXT_CACHE_DIR", "@file"], 2, "is a file",
     cfg=os.path.join(ROOT, "configs/trainers/UniEmoXPretrain/tiny_synthetic.yaml"), data=os.path.join(DS, "emoset.yaml"),
     root="@emoset")


def _snapshot(d):
    out = {}
    for cur, _, files in os.walk(d):
        for f in files:
            p = os.path.join(cur, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, d)] = fh.read()
    return out


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory, data_root):
    """A finished tiny CoOp run (the run no bad input may touch), and folders derived from it."""
    ROOT_HOLDER["root"] = data_root
    d = tmp_path_factory.mktemp("earlier")
    prev = d / "prev"
    assert run_cli(base(prev)) == 0
    return str(prev)


def _prepare(extra, kw, tmp_path, earlier, monkeypatch):
    """Resolve the ``@`` placeholders of a case into real arguments and set-ups."""
    import shutil

    import torch

    out = tmp_path / "out"
    args, root, cfg, data = [], kw.get("root"), kw.get("cfg", COOP_CFG), kw.get("data", SYN_CFG)
    held = []
    for a in extra:
        if a in ("@out=dataroot", "@out=indataroot", "@out=foreign"):
            if a == "@out=dataroot":
                out = "@root"
            elif a == "@out=indataroot":
                out = "@root/synthetic_emotion/runs/x"
            else:
                out.mkdir()
                (out / "config.yaml").write_text("learning_rate: 0.1\n")  # the user's own files
                (out / "metrics.jsonl").write_text('{"loss": 1.0}\n')
                FOREIGN.update(out=str(out), files=_snapshot(out))
        elif a == "@cfgfile":
            p = tmp_path / "bad.yaml"
            p.write_bytes(kw["cfgfile"])
            args += ["--config-file", str(p)]
        elif a.startswith("@out="):
            kind = a[5:]
            if kind == "file":
                out.write_text("x")
            elif kind == "underfile":
                (tmp_path / "f").write_text("x")
                out = tmp_path / "f" / "out"
            elif kind == "readonly":
                out.mkdir()
                real = os.access
                monkeypatch.setattr(os, "access", lambda p, m, **k: False if os.path.abspath(p) == str(out) else real(p, m, **k))
            elif kind == "prev":
                out = earlier
            elif kind == "noconfig":
                shutil.copytree(earlier, out)
                os.remove(out / "config.yaml")
            elif kind == "brokenckpt":
                os.makedirs(out / "prompt_learner")
                (out / "prompt_learner" / "model.pth.tar-1").write_bytes(b"garbage")
                shutil.copy(os.path.join(earlier, "config.yaml"), out / "config.yaml")
        elif a == "@file":
            blocker = tmp_path / "a_file"
            blocker.write_text("x")
            args.append(str(blocker))
        elif a == "@lock":
            from trainers.engine import runstate

            runstate.lock_output_dir(earlier)
            held.append(earlier)
        elif a.startswith("@modeldir="):
            kind = a[10:]
            md = tmp_path / "model"
            if kind == "prev":
                md = earlier
            else:
                os.makedirs(md / "prompt_learner")
                f = md / "prompt_learner" / "model-best.pth.tar"
                if kind == "corrupt":
                    f.write_bytes(b"\x00garbage")
                elif kind == "notdict":
                    torch.save([1, 2], f)
                elif kind == "evil":
                    from test_malicious_files import Evil

                    torch.save({"state_dict": Evil(str(tmp_path / "PWNED"))}, f)
            args += ["--model-dir", str(md)]
        elif a == "@enospc":
            import utils.fileio as fileio

            real_save = torch.save

            def full(obj, path, *a_, **k_):
                if "model.pth.tar" in str(path):
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real_save(obj, path, *a_, **k_)

            monkeypatch.setattr(torch, "save", full)
            assert fileio is not None
        elif a == "@kmeans":
            cache = tmp_path / "clusters"
            cache.mkdir()
            from trainers.components import visual_clusters

            real_file = visual_clusters.cache_file

            def corrupt_cache(*a_, **k_):
                p = real_file(str(cache), *a_[1:], **k_)
                with open(p, "wb") as fh:
                    fh.write(b"not a tensor file")
                return p

            monkeypatch.setattr(visual_clusters, "cache_file", corrupt_cache)
            args += ["--trainer", "EmoCoOp", "--config-file", os.path.join(ROOT, "configs/trainers/EmoCoOp/tiny_synthetic.yaml"),
                     "--dataset-config-file", os.path.join(DS, "synthetic_emotion_ml.yaml"),
                     "TRAINER.EMOCOOP.CLUSTER_CACHE_DIR", str(cache)]
        else:
            args.append(a)
    if root in ("@emoset", "@emoset_emptied"):
        import json

        from datasets.synthetic.native import NativeSettings, write_native

        parent = tmp_path / "emoset_root"
        write_native(str(parent / "EmoSet-118K"), "emoset", NativeSettings(2, 1, 1))
        if root == "@emoset_emptied":
            ann_dir = parent / "EmoSet-118K" / "annotation"
            first = sorted(p for p in ann_dir.rglob("*.json"))[0]
            first.write_text(json.dumps({}))
        root = str(parent)
    if root == "@empty":
        root = str(tmp_path / "empty_root")
        os.makedirs(root)
    elif root == "@badimages":
        from PIL import Image

        root = str(tmp_path / "imgs")
        for c in ("a", "b"):
            os.makedirs(os.path.join(root, c))
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(os.path.join(root, c, f"{i}.png"))
        with open(os.path.join(root, "a", "9.png"), "wb") as fh:
            fh.write(b"not an image")
    elif root == "@emptyclass":
        root = str(tmp_path / "imgs2")
        os.makedirs(os.path.join(root, "a"))
        os.makedirs(os.path.join(root, "b"))
        from PIL import Image

        Image.new("RGB", (8, 8)).save(os.path.join(root, "a", "0.png"))
    if isinstance(out, str) and out.startswith("@root"):
        out = (root or ROOT_HOLDER["root"]) + out[5:]
    return base(out, *args, root=root, cfg=cfg, data=data), held


#: the user's own files in an output folder (case output-holds-foreign-files): they must stay as they were
FOREIGN: dict = {}


@pytest.mark.parametrize("extra,code,words,kw", CASES)
def test_bad_input(extra, code, words, kw, tmp_path, earlier_run, monkeypatch, capsys):
    before = _snapshot(earlier_run)
    argv, held = _prepare(extra, kw, tmp_path, earlier_run, monkeypatch)
    capsys.readouterr()
    try:
        got = run_cli(argv)
    finally:
        from trainers.engine import runstate

        for d in held:
            runstate.unlock_output_dir(d)
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert got == code, cap.err[-2000:]
    assert len(err) == 1 and err[0].startswith("error: "), cap.err[-2000:]
    for w in words:
        assert w in err[0], f"{w!r} not in {err[0]!r}"
    assert "Traceback" not in cap.out + cap.err
    assert not (tmp_path / "PWNED").exists()
    assert _snapshot(earlier_run) == before  # the earlier run's files are byte-identical
    if FOREIGN:
        assert _snapshot(FOREIGN["out"]) == FOREIGN["files"], "the user's own files were changed"
        FOREIGN.clear()
    if "@enospc" in extra:
        left = [f for cur, _, fs in os.walk(tmp_path / "out") for f in fs if ".tmp" in f]
        assert not left, left


def test_a_dataset_without_test_or_training_samples_is_refused(tmp_path):
    from PIL import Image

    import datasets.build as build
    from datasets.base import Datum, DatasetBase
    from utils.errors import DatasetError

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    d = [Datum(impath=str(tmp_path / "a.png"), label=0, classname="a")]
    DatasetBase(d, [], d, ["a"], {"label"}).check_not_empty()  # an empty validation split is allowed
    with pytest.raises(DatasetError, match="test split holds no samples"):
        DatasetBase(d, d, [], ["a"], {"label"}, name="X").check_not_empty()
    with pytest.raises(DatasetError, match="train and test splits hold no samples"):
        DatasetBase([], [], [], ["a"], {"label"}, name="X").check_not_empty()
    from datasets.base import DATASET_REGISTRY
    from trainers import get_cfg

    cfg = get_cfg()
    cfg.DATASET.NAME = "SyntheticEmotion"
    cls = DATASET_REGISTRY.get("SyntheticEmotion")
    real = cls.__dict__["from_config"]
    try:  # a dataset whose test split selects nothing: the run's build_dataset stops with one line
        cls.from_config = classmethod(lambda c, cfg_: DatasetBase(d, [], [], ["a"], {"label"}, name="SyntheticEmotion"))
        with pytest.raises(DatasetError, match="SyntheticEmotion: the test split holds no samples"):
            build.build_dataset(cfg)
    finally:
        cls.from_config = real


def test_table_size():
    assert len(CASES) >= 120


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import train

    def interrupted(argv=None):
        raise train.Interrupted({"dir": "out/run", "epoch": 3, "finished": False})

    monkeypatch.setattr(train, "main", interrupted)
    assert train.cli() == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0] and "rerun the same command" in err[0]
