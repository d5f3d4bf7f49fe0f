"""UniEmoX end to end on the synthetic data: pre-training -> fine-tuning from train.py, released-style
files through --eval-only, both stages through tools/sweep.py, the person detector tool, the data path."""
from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import ROOT, final_test, run_cli

PRE_CFG = os.path.join(ROOT, "configs/trainers/UniEmoXPretrain/tiny_synthetic.yaml")
FT_CFG = os.path.join(ROOT, "configs/trainers/UniEmoX/tiny_synthetic.yaml")
EMOSET = os.path.join(ROOT, "configs/datasets/emoset.yaml")
FI = os.path.join(ROOT, "configs/datasets/fi.yaml")
FAST = ["DATALOADER.TRAIN_X.BATCH_SIZE", "8", "OPTIM.MAX_EPOCH", "1", "VERBOSE", "False", "TRAIN.PRINT_FREQ", "1"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from datasets.synthetic.native import NativeSettings, write_native

    r = tmp_path_factory.mktemp("uniemox_data")
    write_native(str(r / "EmoSet-118K"), "emoset", NativeSettings(2, 1, 1))
    write_native(str(r / "FI"), "folders", NativeSettings(2, 1, 2))
    return str(r)


def args(root, out, trainer, cfg, dataset, *opts, flags=()):
    return ["--root", root, "--seed", "1", "--trainer", trainer, "--config-file", cfg, "--dataset-config-file", dataset,
            "--output-dir", str(out), *flags, *FAST, *opts]


def test_pretrain_then_finetune_then_released_style_eval(root, tmp_path):
    pre = tmp_path / "pre"
    assert run_cli(args(root, pre, "UniEmoXPretrain", PRE_CFG, EMOSET, "TRAINER.UNIEMOX_PRETRAIN.TEXT_CACHE_DIR",
                        str(tmp_path / "cache"))) == 0
    held = final_test(str(pre))
    assert set(held) == {"loss_mae", "loss_sim", "loss_con", "loss"} and all(v == v for v in held.values())
    handoff = torch.load(pre / "uniemox_pretrain.pth", weights_only=True)
    assert set(handoff) == {"model", "att_fusion", "epoch"} and set(handoff["att_fusion"]) == {"bn.weight", "bn.bias", "linear.weight", "linear.bias"}
    assert os.path.isfile(pre / "fusion" / "model.pth.tar-1") and len(os.listdir(tmp_path / "cache")) == 1

    # hand-off: the fine-tuning ViT starts from the pre-trained encoder
    from trainers.uniemox.checkpoints import load_into_classifier, resolve_checkpoint
    from trainers.uniemox.finetune import build_vit
    from trainers import get_cfg

    node = get_cfg().TRAINER.UNIEMOX
    node.ARCH, node.CUSTOM.PATCH_SIZE = "custom", 8
    vit = build_vit(node, 8, 32)
    load_into_classifier(vit, resolve_checkpoint(str(pre), ("mae", "model")))
    assert torch.equal(vit.blocks[1].mlp.fc2.weight, handoff["model"]["blocks.1.mlp.fc2.weight"])

    ft = tmp_path / "ft"
    assert run_cli(args(root, ft, "UniEmoX", FT_CFG, FI, "TRAINER.UNIEMOX.INIT", str(pre))) == 0
    res = final_test(str(ft))
    assert {"accuracy", "top3_accuracy", "macro_f1"} <= set(res) and res["top3_accuracy"] >= res["accuracy"]
    log = (ft / "log.txt").read_text()
    assert "loaded pre-trained encoder (new: fc_norm.bias, fc_norm.weight, head.bias, head.weight)" in log

    # the best model saved as a released fine-tuned file (bare state dict + unused norm.*) evaluates the same
    best = torch.load(ft / "model" / "model-best.pth.tar", weights_only=True)["state_dict"]
    best = {f"module.{k}": v for k, v in best.items()}
    best.update({"module.norm.weight": torch.ones(64), "module.norm.bias": torch.zeros(64)})
    torch.save(best, tmp_path / "released_ft.pth")
    ev = tmp_path / "ev"
    assert run_cli(args(root, ev, "UniEmoX", FT_CFG, FI, flags=("--eval-only", "--model-dir", str(tmp_path / "released_ft.pth")))) == 0
    assert final_test(str(ev)) == res


def test_missing_init_and_bad_keys_are_one_line_errors(root, tmp_path, capsys):
    assert run_cli(args(root, tmp_path / "a", "UniEmoX", FT_CFG, FI, "TRAINER.UNIEMOX.INIT", "")) == 2
    assert run_cli(args(root, tmp_path / "b", "UniEmoXPretrain", PRE_CFG, EMOSET, "TRAINER.UNIEMOX_PRETRAIN.FUSION", "relased")) == 2
    assert run_cli(args(root, tmp_path / "c", "UniEmoXPretrain", PRE_CFG, EMOSET, "TRAINER.UNIEMOX_PRETRAIN.PERSON_BOXES",
                        str(tmp_path / "none.json"))) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "TRAINER.UNIEMOX.INIT is empty" in err[0]
    assert "'relased' (did you mean 'released'?)" in err[1]
    assert "person boxes file not found" in err[2] and len(err) == 3


def test_sweep_runs_both_stages(root, tmp_path, monkeypatch):
    import tools.sweep as sweep

    def in_process(run, **_):  # the sweep's command line, run by train.py's main in this process (no interpreter start-up)
        assert run.cmd[1].endswith("train.py")
        return run_cli(run.cmd[2:]), []

    monkeypatch.setattr(sweep, "execute", in_process)
    out = tmp_path / "sweep"
    pre_dir = out / "EmoSet" / "UniEmoXPretrain" / "tiny_synthetic_allshots" / "default" / "seed1"
    for trainer, cfg, ds, extra in (("UniEmoXPretrain", PRE_CFG, EMOSET, []),
                                    ("UniEmoX", FT_CFG, FI, ["TRAINER.UNIEMOX.INIT", str(pre_dir)])):
        assert sweep.main(["--trainer", trainer, "--config-file", cfg, "--dataset-config-file", ds, "--root", root,
                           "--seeds", "1", "--output-root", str(out), "--", *FAST, *extra]) == 0
    assert final_test(str(pre_dir))["loss"] > 0
    from tools.parse_results import main as parse

    assert parse([str(out / "FI" / "UniEmoX"), "--metric", "top3_accuracy"]) == 0


def test_detect_persons_tool_writes_the_top_person_box(root, tmp_path, monkeypatch):
    import tools.detect_persons as dp

    class Fake(torch.nn.Module):
        def forward(self, images):
            outs = []
            for i, _ in enumerate(images):
                outs.append({"boxes": torch.tensor([[1.0, 2.0, 9.0, 12.0], [0.0, 0.0, 5.0, 5.0], [3.0, 3.0, 8.0, 8.0]]),
                             "labels": torch.tensor([1, 1, 3]), "scores": torch.tensor([0.85, 0.95 if i % 2 else 0.5, 0.99])})
            return outs

    assert dp.main(["--root", root, "--weights", str(tmp_path / "none.pth"), "--out", str(tmp_path / "x.json")]) == 2
    monkeypatch.setattr(dp, "build_detector", lambda *a, **k: Fake())
    out = tmp_path / "boxes.json"
    assert dp.main(["--root", root, "--weights", "unused.pth", "--out", str(out), "--batch-size", "4"]) == 0
    doc = json.loads(out.read_text())
    listed = sum(len(json.load(open(os.path.join(root, "EmoSet-118K", f"{s}.json")))) for s in ("train", "val", "test"))
    assert doc["format"] == "emolab-person-boxes" and len(doc["boxes"]) == listed
    assert sorted({tuple(b) for b in doc["boxes"].values()}) == [(0.0, 0.0, 5.0, 5.0, 0.95), (1.0, 2.0, 9.0, 12.0, 0.85)]


def test_decoding_on_the_device_gives_the_worker_views(root):
    from datasets.loader import view_seed
    from trainers.uniemox.data import PretrainViews, collate, decode_batch_on_device

    pb = json.load(open(os.path.join(root, "EmoSet-118K", "person_boxes.json")))["boxes"]
    rels = sorted(pb)[:6]
    paths = [os.path.join(root, "EmoSet-118K", r) for r in rels]
    boxes = [pb[r][:4] if pb[r] else None for r in rels]
    boxes[0] = None  # the whole image
    assert any(b is None for b in boxes) and any(b is not None for b in boxes)
    kw = dict(size=16, scale=(0.2, 1.0), person=True, seed=3)
    worker = collate([PretrainViews(paths, [0] * 6, boxes, decode_in_worker=True, **kw)[(i, 2)] for i in range(6)])
    raw = collate([PretrainViews(paths, [0] * 6, boxes, decode_in_worker=False, **kw)[(i, 2)] for i in range(6)])
    device = decode_batch_on_device(raw, torch.device("cpu"), 16, (0.2, 1.0), True)
    assert worker["img"].dtype == torch.uint8 and worker["img"].shape == (6, 3, 16, 16)
    assert torch.equal(worker["img"], device["img"]) and torch.equal(worker["person"], device["person"])
    assert worker["seed"][1] == view_seed(3, 2, 1)


def test_every_uniemox_config_merges_with_its_datasets():
    import glob

    import train

    ft_sets = ["emotion6_uniemox", "fi", "ube", "caer_s", "heco", "emo8"]
    for trainer, sets in (("UniEmoX", ft_sets), ("UniEmoXPretrain", ["emoset"])):
        for cfg_file in sorted(glob.glob(os.path.join(ROOT, "configs/trainers", trainer, "*.yaml"))):
            for ds in sets:
                cfg = train.setup_cfg(train.build_parser().parse_args(
                    ["--config-file", cfg_file, "--dataset-config-file", os.path.join(ROOT, "configs/datasets", f"{ds}.yaml")]))
                assert cfg.TRAINER.NAME == trainer and cfg.INPUT.SIZE[0] in (32, 224)
