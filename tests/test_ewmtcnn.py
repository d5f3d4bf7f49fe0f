"""EW-MTCNN: the emotion-wheel prior, the loss, the CNN backbones, k-fold folds, and every init
mode / freeze setting from the CLI on synthetic Emotion6-format data."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.errors import CheckpointError, ConfigError
from conftest import ROOT, final_test, run_cli
from datasets import Datum
from datasets.base import DatasetBase
from datasets.kfold import apply_kfold, stratified_assignment
from tools import parse_results, sweep
from trainers.cnn.backbones import build_cnn_backbone, param_groups
from trainers.components.emotion_wheel import EmotionWheelPrior, build_prior, label_correlation_matrix, wheel_positions
from trainers.ewmtcnn.trainer import ewmtcnn_loss

EMOTION6 = ["anger", "disgust", "fear", "joy", "sadness", "surprise"]
E6_MAP = {"joy": "amusement", "surprise": "awe"}
# docs/METHODS.md (EW-MTCNN): rows for Emotion6 with sigma 0.6
E6_ROWS = [
    [.666, .166, 0, .166, .003, 0],
    [.166, .664, .003, .003, .166, 0],
    [0, .003, .796, 0, .198, .003],
    [.198, .003, 0, .796, 0, .003],
    [.003, .166, .166, 0, .666, 0],
    [0, 0, .004, .004, 0, .992],
]
EW_CFG = os.path.join(ROOT, "configs/trainers/EWMTCNN/vgg19bn_emotion6.yaml")
E6_DATA_CFG = os.path.join(ROOT, "configs/datasets/emotion6.yaml")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny CNN steps run faster on one thread than on two contended ones (a shared 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_emotion6_wheel_matrix_matches_reference_rows():
    w = build_prior("wheel", EMOTION6, E6_MAP, sigma=0.6).weight.detach().double().numpy()
    # to 3 decimals; fear / joy on the diagonal are 0.79549 (0.795), which the published table rounds to .796
    assert np.abs(w - np.array(E6_ROWS)).max() < 6e-4
    assert np.allclose(w.sum(1), 1.0)
    # hand value: anger row = [1, g1, g3, g1, g2, g3] / sum, g_d = exp(-d^2 / 0.72)
    g = [math.exp(-d * d / 0.72) for d in range(4)]
    assert w[0, 0] == pytest.approx(1 / (1 + 2 * g[1] + g[2] + 2 * g[3]), rel=1e-6)


def test_wheel_positions_mapping_errors():
    assert wheel_positions(["fear", "Excitement", "joy"], {"joy": "amusement"}) == [0, 7, 4]
    with pytest.raises(ConfigError, match="class 'neutral' is not on Mikels' wheel .* TRAINER.EWMTCNN.WHEEL_MAPPING"):
        wheel_positions(EMOTION6 + ["neutral"], E6_MAP)
    with pytest.raises(ConfigError, match="names classes the dataset does not have: calm"):
        wheel_positions(EMOTION6, {**E6_MAP, "calm": "contentment"})


def test_init_modes_and_prior_layer():
    torch.manual_seed(0)
    assert torch.equal(build_prior("identity", EMOTION6).weight, torch.eye(6))
    rand = build_prior("random", EMOTION6, trainable=True)
    assert rand.weight.requires_grad and torch.allclose(rand.weight.sum(1), torch.ones(6))
    assert build_prior("none", EMOTION6) is None
    with pytest.raises(ConfigError, match="did you mean 'wheel'"):
        build_prior("wheels", EMOTION6)
    # label correlation by hand: classes 0 and 1 move together, class 2 against them
    d = [[0.6, 0.3, 0.1], [0.2, 0.1, 0.7], [0.4, 0.2, 0.4]]
    r = np.corrcoef(np.array(d).T).clip(0, None)
    expected = r / r.sum(1, keepdims=True)
    assert np.allclose(label_correlation_matrix(3, train_dists=d).numpy(), expected, atol=1e-6)
    layer = EmotionWheelPrior(torch.tensor([[0.5, 0.5], [0.0, 1.0]]))
    assert layer(torch.tensor([[2.0, 4.0]])).tolist() == [[3.0, 4.0]]  # out_i = sum_j W_ij s_j
    assert not layer.weight.requires_grad


def test_loss_is_ce_and_kl_mixed_by_lambda():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    label = torch.tensor([0, 1])
    dist = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.5, 0.3]])
    logp = F.log_softmax(logits, 1)
    ce = -(logp[0, 0] + logp[1, 1]) / 2
    kl = sum(float(dist[i, c] * (math.log(dist[i, c]) - logp[i, c])) for i in range(2) for c in range(3) if dist[i, c] > 0) / 2
    out = ewmtcnn_loss(logits, label, dist, 0.7)
    assert out["ce"].item() == pytest.approx(ce.item(), rel=1e-6) and out["kl"].item() == pytest.approx(kl, rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.3 * ce.item() + 0.7 * kl, rel=1e-6)


def test_resnet_backbone_freeze_and_param_groups():
    torch.manual_seed(0)
    bb = build_cnn_backbone("resnet18", freeze_through="layer3")
    assert bb.out_dim == 512 and bb(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    frozen = {n for n, p in bb.net.named_parameters() if not p.requires_grad}
    assert "conv1.weight" in frozen and "layer3.1.bn2.bias" in frozen and "layer4.0.conv1.weight" not in frozen
    bb.train()
    assert not bb.net.layer3[1].bn2.training and bb.net.layer4[1].bn2.training
    head = torch.nn.Linear(512, 3)
    groups = param_groups(bb, [head], lr=0.01, backbone_lr_mult=0.1, head_lr_stages=["layer4"])
    assert [(g["name"], g["lr"]) for g in groups] == [("heads", 0.01)]  # layer4 at the heads' rate, rest frozen
    groups = param_groups(build_cnn_backbone("resnet18"), [head], lr=0.01, backbone_lr_mult=0.1)
    assert [(g["name"], g["lr"], len(g["params"])) for g in groups] == [("backbone", 0.001, 60), ("heads", 0.01, 2)]
    with pytest.raises(ConfigError, match="did you mean 'layer3'"):
        build_cnn_backbone("resnet18", freeze_through="layer33")
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        build_cnn_backbone("resnet81")


def test_vgg_and_vit_stages():
    vgg = build_cnn_backbone("vgg11_bn", freeze_through="block4")
    assert vgg.stage_names() == ["block1", "block2", "block3", "block4", "block5", "fc6", "fc7"]
    assert vgg.out_dim == 4096 and vgg(torch.randn(1, 3, 32, 32)).shape == (1, 4096)
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in vgg.net.named_parameters() if p.requires_grad}
    assert min(int(n.split(".")[1]) for n in trainable if n.startswith("features")) == 22  # block5 = features.22..28
    vit = build_cnn_backbone("vit_b_32", image_size=32, freeze_through="block2")
    assert vit.out_dim == 768 and vit(torch.randn(1, 3, 32, 32)).shape == (1, 768)
    assert not vit.net.vit.class_token.requires_grad
    assert not vit.net.vit.encoder.layers[1].mlp[0].weight.requires_grad and vit.net.vit.encoder.layers[2].mlp[0].weight.requires_grad


def test_timm_backbone_when_installed():
    pytest.importorskip("timm")
    bb = build_cnn_backbone("timm:resnet10t", image_size=32, freeze_through="layer2")
    assert bb(torch.randn(2, 3, 32, 32)).shape == (2, bb.out_dim)
    assert not bb.net.layer2[0].conv1.weight.requires_grad and bb.net.layer3[0].conv1.weight.requires_grad


def test_local_weight_file_loading(tmp_path):
    import torchvision

    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "rn18.pth")  # an ImageNet-style file, classifier included
    bb = build_cnn_backbone("resnet18", pretrained=str(tmp_path / "rn18.pth"))
    assert torch.equal(bb.net.layer2[0].conv1.weight, ref.layer2[0].conv1.weight)
    assert torch.equal(bb.net.bn1.running_var, ref.bn1.running_var)
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, tmp_path / "ckpt.pth")
    bb = build_cnn_backbone("resnet18", pretrained=str(tmp_path / "ckpt.pth"))  # checkpoint + DDP prefix
    assert torch.equal(bb.net.conv1.weight, ref.conv1.weight)
    own = {"backbone." + k: v for k, v in bb.state_dict().items()} | {"classifier.weight": torch.zeros(6, 512)}
    torch.save({"state_dict": own, "epoch": 3}, tmp_path / "emolab.pth.tar")  # an EW-MTCNN / VA checkpoint
    assert torch.equal(build_cnn_backbone("resnet18", str(tmp_path / "emolab.pth.tar")).net.layer1[0].bn1.weight,
                       ref.layer1[0].bn1.weight)
    with pytest.raises(CheckpointError, match="backbone weights not found"):
        build_cnn_backbone("resnet18", pretrained=str(tmp_path / "none.pth"))
    with pytest.raises(CheckpointError, match=r"do not fit: .* missing"):
        build_cnn_backbone("resnet34", pretrained=str(tmp_path / "rn18.pth"))


def _items(n_per_class, classes=3):
    return [Datum(f"/img/{c}_{i}.png", label=c) for c in range(classes) for i in range(n_per_class)]


def test_kfold_partitions_stratified_and_order_free():
    ds = DatasetBase(_items(7)[:15], _items(7)[15:18], _items(7)[18:], ["a", "b", "c"], {"label"})
    tests = [apply_kfold(ds, 5, f, seed=3).test for f in range(5)]
    held = [d.impath for t in tests for d in t]
    assert sorted(held) == sorted(d.impath for d in _items(7))  # every item held out exactly once
    for t in tests:  # 7 per class into 5 folds: 1 or 2 per class and fold
        assert all(sum(d.label == c for d in t) in (1, 2) for c in range(3))
    shuffled = DatasetBase(_items(7)[::-1], [], [], ["a", "b", "c"], {"label"})
    assert [d.impath for d in apply_kfold(shuffled, 5, 2, seed=3).test] == [d.impath for d in tests[2]]
    f = apply_kfold(ds, 5, 1, seed=3, heldout="val", val_percent=0.0)
    assert f.test == ds.test and len(f.val) + len(f.train_x) == 18
    sizes = np.bincount(stratified_assignment([0] * 5 + [1] * 5, 4, 0))
    assert sizes.max() - sizes.min() <= 1
    with pytest.raises(ConfigError, match=r"FOLD must be in \[0, 4\]"):
        apply_kfold(ds, 5, 5)


def test_folds_as_sweep_axis_aggregated_over_folds(tmp_path, capsys):
    args = sweep.build_parser().parse_args([
        "--trainer", "EWMTCNN", "--dataset-config-file", E6_DATA_CFG, "--config-file", EW_CFG, "--seeds", "1", "2",
        "--grid", "DATASET.KFOLD.FOLD=0,1,2", "--output-root", str(tmp_path), "--dry-run"])
    outs = [r.output_dir for r in sweep.plan(args)]
    assert outs[0].endswith(os.path.join("Emotion6", "EWMTCNN", "vgg19bn_emotion6_allshots", "fold-0", "seed1"))
    assert len(outs) == 6
    import json

    for i, out in enumerate(outs):  # fake finished runs: accuracy = 10 * (fold + 1) + seed
        os.makedirs(out)
        rec = {"split": "test", "final": True, "epoch": 1, "metrics": {"accuracy": 10.0 * (i // 2 + 1) + i % 2 + 1}}
        with open(os.path.join(out, "metrics.jsonl"), "w") as f:
            f.write(json.dumps(rec) + "\n")
    assert parse_results.main([str(tmp_path), "--pool", "fold"]) == 0
    table = capsys.readouterr().out
    values = [10 * (k // 2 + 1) + k % 2 + 1 for k in range(6)]
    assert "| 6 | " in table and f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}" in table


@pytest.fixture(scope="module")
def emotion6_root(tmp_path_factory):
    from datasets.synthetic.native import NativeSettings, write_native

    root = tmp_path_factory.mktemp("e6")
    write_native(str(root / "Emotion6"), "emotion6", NativeSettings(n_train_per_class=4, n_val_per_class=1, n_test_per_class=2))
    return str(root)


def _ew_args(root, out, *opts):
    return ["--root", root, "--seed", "1", "--output-dir", str(out), "--dataset-config-file", E6_DATA_CFG,
            "--config-file", EW_CFG, "MODEL.BACKBONE.NAME", "resnet18", "MODEL.CNN.HEAD_LR_STAGES", "()",
            "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", "1", "DATALOADER.NUM_WORKERS", "0", "VERBOSE", "False",
            "MODEL.BACKBONE.PRETRAINED", "random", *opts]


@pytest.mark.parametrize("init,trainable,freeze", [
    ("wheel", False, ""), ("wheel", True, ""), ("identity", True, ""), ("random", True, "layer3"),
    ("label_correlation", False, ""), ("none", False, "all"),  # all: only the classifier trains
])
def test_cli_every_init_mode_and_freeze_setting(tmp_path, emotion6_root, init, trainable, freeze):
    out = tmp_path / "run"
    opts = ["TRAINER.EWMTCNN.PRIOR_INIT", init, "TRAINER.EWMTCNN.PRIOR_TRAINABLE", str(trainable),
            "MODEL.CNN.FREEZE_THROUGH", freeze, "DATASET.KFOLD.FOLD", "1"]
    assert run_cli(_ew_args(emotion6_root, out, *opts)) == 0
    res = final_test(str(out))
    assert res["kl_divergence_class_mean"] == pytest.approx(res["kl_divergence"] / 6)
    assert {"accuracy", "chebyshev", "clark", "canberra", "cosine", "intersection"} <= set(res)
    log = (out / "log.txt").read_text()
    assert "fold 1 of 5 held out as test" in log
    state = torch.load(out / "model" / "model.pth.tar-1", weights_only=True)["state_dict"]
    mode, prior_trainable = init, trainable
    if mode == "none":
        assert not any(k.startswith("prior.") for k in state)
    else:
        assert f"emotion-wheel prior: {mode} (classes=6, trainable={prior_trainable})" in log
    if mode == "wheel":  # frozen: still the wheel matrix; trainable: moved away from it
        wheel = build_prior("wheel", EMOTION6, E6_MAP, sigma=0.6).weight
        assert torch.allclose(state["prior.weight"], wheel) is not prior_trainable
    if freeze:
        assert f"frozen through {freeze!r}" in log
    assert ("param group backbone" in log) is (freeze != "all")


def test_cli_missing_weight_file_is_one_line_error(tmp_path, emotion6_root, capsys):
    code = run_cli(_ew_args(emotion6_root, tmp_path / "x", "MODEL.BACKBONE.PRETRAINED", str(tmp_path / "vgg.pth")))
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: backbone weights not found: {tmp_path / 'vgg.pth'}"
