"""VEGA: masking invariance, the loss terms against hand-computed values, anchors (file round trip,
checks, tool), the Conversation evaluator and end-to-end CLI runs."""
from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score, precision_score

from configs.config import merge_from_file

from trainers import get_cfg
from utils.errors import CheckpointError
from conftest import ROOT, final_test, run_cli
from trainers.components.anchors import (
    AnchorBank, AnchorSet, anchor_logits, anchors_from_features, load_anchors, match_anchors, save_anchors,
)
from trainers.evaluation.conversation import Conversation
from trainers.vega.model import VEGALossSettings, VEGANet, masked_cross_entropy, masked_distillation, vega_loss

CLASSES = ["happy", "sad", "neutral", "anger", "excited", "frustration"]
DIMS = {"text": 5, "audio": 4, "visual": 3}


def tiny_net(**kw) -> VEGANet:
    torch.manual_seed(0)
    return VEGANet(DIMS, 4, 2, hidden=8, heads=2, clip_dim=6, **kw)


def inputs(L: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(1, L, d, generator=g) for m, d in DIMS.items()}, torch.randint(0, 2, (1, L), generator=g)


# ------------------------------------------------------------------------------------ model
def test_padding_never_changes_a_real_utterance():
    net = tiny_net().eval()
    anchors = torch.randn(4, 6)
    (a, spk_a), (b, spk_b) = inputs(3, 1), inputs(7, 2)
    alone = net(a, spk_a, torch.ones(1, 3, dtype=torch.bool), anchors)
    outs = []
    for garbage in (0.0, 1e3):  # padded features, whatever they hold
        pad = {m: garbage * torch.randn(1, 4, d) for m, d in DIMS.items()}
        batch = {m: torch.cat([torch.cat([a[m], pad[m]], 1), b[m]]) for m in DIMS}
        spk = torch.cat([torch.cat([spk_a, torch.ones(1, 4, dtype=torch.long)], 1), spk_b])
        mask = torch.tensor([[True] * 3 + [False] * 4, [True] * 7])
        outs.append(net(batch, spk, mask, anchors))
    for key in ("logits", "anchor_logits"):
        for branch, ref in alone[key].items():
            for out in outs:
                torch.testing.assert_close(out[key][branch][0, :3], ref[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(outs[0][key]["all"][:, :3], outs[1][key]["all"][:, :3])


def test_gradients_reach_only_the_switched_on_parts():
    net = tiny_net().train()
    x, spk = inputs(5, 3)
    mask = torch.ones(1, 5, dtype=torch.bool)
    labels = torch.tensor([[0, 1, 2, 3, 0]])
    # only the KL term, teacher detached: the fused head and the anchor projections get nothing
    s = VEGALossSettings(ce=False, anchor_ce=False, anchor_kl=False)
    out = net(x, spk, mask)
    vega_loss(out, labels, mask, out["temperatures"], s)["loss"].backward()
    assert all(p.grad is None for p in net.heads["all"].parameters())
    assert all(p.grad is None for p in net.anchor_proj.parameters())
    assert net.heads["text"][0].weight.grad.abs().sum() > 0 and net.log_temp["cls_text"].grad is not None
    assert net.log_temp["anchor_text"].grad is None
    # the released behaviour: the teacher (fused head) also moves towards the students
    net.zero_grad(set_to_none=True)
    out = net(x, spk, mask)
    vega_loss(out, labels, mask, out["temperatures"], VEGALossSettings(ce=False, anchor_ce=False, anchor_kl=False,
              detach_teacher=False))["loss"].backward()
    assert net.heads["all"][0].weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------ losses
def test_class_weighted_cross_entropy_by_hand():
    logits = torch.tensor([[[2.0, 0.0], [0.5, 1.5], [9.0, -9.0]]])  # third utterance is padding
    labels = torch.tensor([[0, 1, -1]])
    w = torch.tensor([2.0, 1.0])
    nll0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    nll1 = -math.log(math.exp(1.5) / (math.exp(0.5) + math.exp(1.5)))
    assert masked_cross_entropy(logits, labels, w).item() == pytest.approx((2 * nll0 + 1 * nll1) / 3, rel=1e-6)
    assert masked_cross_entropy(logits, labels).item() == pytest.approx((nll0 + nll1) / 2, rel=1e-6)


def test_distillation_by_hand():
    student = torch.tensor([[[1.0, 0.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[0.0, 2.0], [-3.0, 7.0]]])  # second utterance is padding
    mask = torch.tensor([[True, False]])
    T = 2.0
    ps = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    pt = [1 / (1 + math.e), math.e / (1 + math.e)]
    kl = sum(p * math.log(p / q) for p, q in zip(pt, ps))
    # T^2 times the mean over real utterances and the C = 2 classes (the released normalisation)
    got = masked_distillation(student, teacher, mask, torch.tensor(T))
    assert got.item() == pytest.approx(T * T * kl / 2, rel=1e-6)
    teacher.requires_grad_(True)
    masked_distillation(student, teacher, mask, torch.tensor(T), detach_teacher=True)
    assert teacher.grad is None
    masked_distillation(student, teacher, mask, torch.tensor(T), detach_teacher=False).backward()
    assert teacher.grad[0, 0].abs().sum() > 0 and teacher.grad[0, 1].abs().sum() == 0


def test_vega_loss_sums_weighted_terms_and_switches_them_off():
    torch.manual_seed(1)
    branches = ("all", "text", "audio", "visual")
    out = {"logits": {b: torch.randn(1, 3, 4) for b in branches},
           "anchor_logits": {b: 10 * torch.randn(1, 3, 4) for b in branches}}
    labels, mask = torch.tensor([[0, 3, -1]]), torch.tensor([[True, True, False]])
    temps = {f"{k}_{m}": torch.tensor(1.5 + i) for i, k in enumerate(("cls", "anchor")) for m in ("text", "audio", "visual")}
    s = VEGALossSettings(ce_weight=0.5, ce_modality=(1.0, 0.0, 2.0, 0.0), kl_weight=2.0, kl_modality=(0.0, 1.0, 0.0),
                         anchor_ce_weight=1.0, anchor_ce_modality=(0.0, 0.0, 0.0, 3.0), anchor_kl_weight=1.0,
                         anchor_kl_modality=(1.0, 0.0, 0.0))
    cw = torch.tensor([1.0, 2.0, 3.0, 4.0])
    terms = vega_loss(out, labels, mask, temps, s, cw)
    L, A = out["logits"], out["anchor_logits"]
    expect = {
        "loss_ce": 0.5 * (masked_cross_entropy(L["all"], labels, cw) + 2 * masked_cross_entropy(L["audio"], labels, cw)),
        "loss_kl": 2.0 * masked_distillation(L["audio"], L["all"], mask, temps["cls_audio"]),
        "loss_anchor_ce": 3 * masked_cross_entropy(A["visual"], labels, cw),
        "loss_anchor_kl": masked_distillation(A["text"], A["all"], mask, temps["anchor_text"]),
    }
    for k, v in expect.items():
        assert terms[k].item() == pytest.approx(v.item(), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(sum(v.item() for v in expect.values()), rel=1e-6)
    off = vega_loss(out, labels, mask, temps, VEGALossSettings(kl=False, anchor_kl=False), cw)
    assert set(off) == {"loss_ce", "loss_anchor_ce", "loss"}


# ------------------------------------------------------------------------------------ anchors
def test_anchor_logits_bank_and_file_round_trip(tmp_path):
    feats = {"sad": F.normalize(torch.randn(3, 4), dim=-1), "happy": F.normalize(torch.randn(2, 4), dim=-1)}
    anchors = anchors_from_features(feats)
    torch.testing.assert_close(anchors.centers[1], feats["happy"].mean(0))
    path = str(tmp_path / "a.pt")
    save_anchors(anchors, path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"anchor_center", "anchor_img_dict"} and list(raw["anchor_img_dict"]) == ["sad", "happy"]
    back = load_anchors(path)
    assert back.classnames == ["sad", "happy"] and torch.equal(back.centers, anchors.centers)
    assert all(torch.equal(a, b) for a, b in zip(back.exemplars, anchors.exemplars))
    ordered = match_anchors(back, ["happy", "sad"], dim=4)
    assert torch.equal(ordered.centers, anchors.centers[[1, 0]]) and torch.equal(ordered.exemplars[0], feats["happy"])
    bank = AnchorBank(ordered)
    assert torch.equal(bank.select(False), ordered.centers)
    for _ in range(5):
        ex = bank.select(True)
        assert any(torch.equal(ex[0], r) for r in feats["happy"]) and any(torch.equal(ex[1], r) for r in feats["sad"])
    z = torch.tensor([[3.0, 4.0, 0.0, 0.0]])
    A = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]])
    torch.testing.assert_close(anchor_logits(z, A), torch.tensor([[60.0, 0.0]]))  # 100 * cosine


def test_anchor_file_checks(tmp_path):
    anchors = anchors_from_features({c: torch.randn(2, 8) for c in CLASSES[:5]})
    with pytest.raises(CheckpointError, match=r"classes do not match the dataset: missing \['frustration'\], unexpected \[\]"):
        match_anchors(anchors, CLASSES)
    full = anchors_from_features({c: torch.randn(2, 8) for c in CLASSES})
    with pytest.raises(CheckpointError, match="has 8-d features but the anchor projection outputs 512-d"):
        match_anchors(full, CLASSES, dim=512)
    bad = tmp_path / "bad.pt"
    for obj, msg in [
        ({"anchor_center": torch.zeros(2, 4)}, "must hold a dict with 'anchor_center' and 'anchor_img_dict'"),
        ({"anchor_center": torch.zeros(2, 4), "anchor_img_dict": {"a": {"feature": torch.zeros(1, 4)}}},
         "anchor_img_dict has 1 classes but anchor_center has 2 rows"),
        ({"anchor_center": torch.zeros(1, 4), "anchor_img_dict": {"a": {"feature": torch.zeros(3, 5)}}},
         r"anchor_img_dict\['a'\]\['feature'\] must be \[N >= 1, 4\], got \(3, 5\)"),
    ]:
        torch.save(obj, bad)
        with pytest.raises(CheckpointError, match=msg):
            load_anchors(str(bad))
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read anchor file"):
        load_anchors(str(bad))


def _emotion_images(root) -> str:
    """A few SyntheticEmotion images; returns the annotations.csv path."""
    from datasets.synthetic.images import SyntheticSettings, write_synthetic

    out = os.path.join(str(root), "emo")
    write_synthetic(out, SyntheticSettings(n_train_per_class=2, n_val_per_class=1, n_test_per_class=1))
    return os.path.join(out, "annotations.csv")


MAP = ["happy=amusement", "sad=sadness", "neutral=contentment", "anger=anger", "excited=excitement", "frustration=disgust"]


def build_anchor_file(csv_path: str, out: str) -> int:
    from tools.build_anchors import main

    return main(["--image-list", csv_path, "--split", "train", "--classes", *CLASSES, "--map", *MAP, "--output", out,
                 "--device", "cpu"])


def test_build_anchors_tool(tmp_path):
    from clip import load_clip
    from tools.build_anchors import encode_images, images_from_list
    from trainers.clip_prompting.base import resolve_pretrained

    csv_path = _emotion_images(tmp_path)
    out = str(tmp_path / "anchors.pt")
    assert build_anchor_file(csv_path, out) == 0
    a = load_anchors(out)
    assert a.classnames == CLASSES and a.dim == 128 and [e.shape[0] for e in a.exemplars] == [2] * 6
    torch.testing.assert_close(a.exemplars[0].norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(a.centers, torch.stack([e.mean(0) for e in a.exemplars]))
    clip = load_clip("emolab-tiny-vit", pretrained=resolve_pretrained("emolab-tiny-vit", ""))
    ref = encode_images(clip, images_from_list(csv_path, "train")["disgust"])
    torch.testing.assert_close(a.exemplars[5], ref)  # frustration took the disgust images
    # a class folder layout, and a class without images
    for c in ("x", "y"):
        os.makedirs(tmp_path / "dir" / c)
    import shutil

    paths = images_from_list(csv_path, "train")
    shutil.copy(paths["anger"][0], tmp_path / "dir" / "x" / "1.png")
    from tools.build_anchors import main

    assert main(["--image-dir", str(tmp_path / "dir"), "--output", str(tmp_path / "d.pt"), "--device", "cpu"]) == 0
    assert load_anchors(str(tmp_path / "d.pt")).classnames == ["x"]  # the empty folder y is skipped
    assert main(["--image-dir", str(tmp_path / "dir"), "--classes", "x", "y", "--output", str(tmp_path / "e.pt")]) == 2


# ------------------------------------------------------------------------------------ evaluator
def test_conversation_evaluator_matches_sklearn_and_ignores_padding(caplog):
    y_true = np.array([0, 0, 1, 2, 2, 2, 1, 0, -1, -1])
    y_pred = np.array([0, 1, 1, 2, 0, 2, 1, 2, 3, 3])
    logits = F.one_hot(torch.tensor(y_pred), 4).float()
    ev = Conversation(["a", "b", "c", "d"])
    ev.process(logits, {"label": torch.tensor(y_true), "index": torch.arange(10)})
    with caplog.at_level("INFO"):
        r = ev.evaluate()
    t, p = y_true[:8], y_pred[:8]
    assert r["weighted_f1"] == pytest.approx(100 * f1_score(t, p, average="weighted"))
    assert r["weighted_precision"] == pytest.approx(100 * precision_score(t, p, average="weighted", zero_division=0))
    assert r["accuracy"] == pytest.approx(100 * 5 / 8)
    per_class = 100 * f1_score(t, p, average=None, labels=[0, 1, 2, 3], zero_division=0)
    assert [r[f"f1_{c}"] for c in "abcd"] == pytest.approx(list(per_class))
    assert ev.main_metric == "weighted_f1" and "* weighted_f1: " in caplog.text and "* total: 8" in caplog.text


# ------------------------------------------------------------------------------------ CLI
def test_configs_turn_off_one_loss_each():
    flags = {}
    for name in ("tiny_synthetic", "tiny_synthetic_no_ce", "tiny_synthetic_no_kl", "tiny_synthetic_no_anchor_ce",
                 "tiny_synthetic_no_anchor_kl", "iemocap"):
        cfg = get_cfg()
        merge_from_file(cfg, os.path.join(ROOT, "configs/trainers/VEGA", f"{name}.yaml"))
        L = cfg.TRAINER.VEGA.LOSS
        flags[name] = (L.CE, L.KL, L.ANCHOR_CE, L.ANCHOR_KL)
    assert flags["tiny_synthetic"] == flags["iemocap"] == (True, True, True, True)
    assert [sum(v) for k, v in flags.items() if "_no_" in k] == [3, 3, 3, 3]
    assert len({v for k, v in flags.items() if "_no_" in k}) == 4


SMALL_CONV = [
    "DATASET.CONVERSATION.SYNTHETIC.N_TRAIN_DIALOGUES", "10", "DATASET.CONVERSATION.SYNTHETIC.N_TEST_DIALOGUES", "4",
    "DATASET.CONVERSATION.SYNTHETIC.MAX_LEN", "8", "TRAINER.VEGA.HIDDEN", "8", "TRAINER.VEGA.HEADS", "2",
    "OPTIM.MAX_EPOCH", "2", "TRAIN.PRINT_FREQ", "1",
]


def _vega_args(root, out, anchor, flags=(), opts=()):
    return ["--root", str(root), "--seed", "1", "--output-dir", str(out), "--trainer", "VEGA",
            "--dataset-config-file", os.path.join(ROOT, "configs/datasets/synthetic_conversation.yaml"),
            "--config-file", os.path.join(ROOT, "configs/trainers/VEGA/tiny_synthetic.yaml"),
            *flags, *SMALL_CONV, "TRAINER.VEGA.ANCHOR_FILE", anchor, *opts]


@pytest.fixture(scope="module")
def anchor_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("anchors")
    out = str(tmp / "synthetic_anchor.pt")
    assert build_anchor_file(_emotion_images(tmp), out) == 0
    return out


def test_cli_trains_selects_on_val_and_eval_only_reproduces(tmp_path, anchor_file):
    out = tmp_path / "run"
    assert run_cli(_vega_args(tmp_path, out, anchor_file)) == 0
    log = (out / "log.txt").read_text()
    # validation: one summary line per evaluation, main metric first; the final test in full
    assert re.search(r"val \[1/\d+\] weighted_f1 [\d.]+ \| ", log)
    assert "* weighted_f1:" in log and "* f1_frustration:" in log
    assert "loading the best validation model for the final test" in log
    assert sorted(os.listdir(out / "vega")) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-2"]
    res = final_test(str(out))
    assert {"weighted_f1", "accuracy", "weighted_precision", "macro_f1", "f1_happy"} <= set(res)
    from datasets.conversation.format import load_pickle

    data = load_pickle(str(tmp_path / "synthetic_conversation" / "features.pkl"))
    n_test = sum(len(data[1][v]) for v in data[6])  # utterances of testVid
    assert log.split("evaluate on the *test* set")[-1].count(f"* total: {n_test}") == 1  # each utterance once
    ev = tmp_path / "eval"
    assert run_cli(_vega_args(tmp_path, ev, anchor_file, flags=["--eval-only", "--model-dir", str(out)])) == 0
    assert final_test(str(ev)) == res


def test_cli_anchor_mismatch_is_one_line_error(tmp_path, anchor_file, capsys):
    wrong = str(tmp_path / "wrong.pt")
    save_anchors(AnchorSet(["a", "b"], torch.zeros(2, 4), [torch.ones(1, 4), torch.ones(1, 4)]), wrong)
    assert run_cli(_vega_args(tmp_path, tmp_path / "o1", wrong)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: anchor file") and "classes do not match the dataset" in err and "\n" not in err
    assert run_cli(_vega_args(tmp_path, tmp_path / "o2", anchor_file, opts=["TRAINER.VEGA.CLIP_DIM", "512"])) == 2
    assert "has 128-d features but the anchor projection outputs 512-d" in capsys.readouterr().err
    assert run_cli(_vega_args(tmp_path, tmp_path / "o3", "missing.pt")) == 2
    assert "error: anchor file not found: missing.pt (looked from the working directory and under" in capsys.readouterr().err


def test_early_stopping_counts_evaluations_without_a_new_best():
    from types import SimpleNamespace

    from trainers.engine.hooks import EarlyStoppingHook

    t = SimpleNamespace(stop_training=False, evaluator=SimpleNamespace(main_metric="weighted_f1"))
    hook = EarlyStoppingHook(None, 2)  # as VEGA builds it: the main metric, any gain counts
    hook.trainer = t
    # (validated weighted_f1 or None) -> stop after the hook? (released: more than `patience` bad epochs)
    for value, stop in [(60.0, False), (60.0, False), (None, False), (55.0, False), (59.0, True)]:
        t.last_val = {"weighted_f1": value} if value is not None else None
        hook.after_epoch()
        assert t.stop_training == stop
    assert hook.state_dict() == {"best": 60.0, "bad": 3}
