"""Two-stage valence-arousal: NRC-VAD parsing and conversion on a fixture file, NaN-free mixed
losses, early stopping, and the four frameworks end to end from the CLI."""
import os

import pytest
import torch

from utils.errors import CheckpointError, ConfigError, DatasetError
from conftest import ROOT, SMALL_DATA, SYN_CFG, final_test, read_metrics, run_cli
from trainers.cnn.backbones import build_cnn_backbone
from trainers.cnn.base import EarlyStoppingHook
from trainers.components.nrc_vad import category_va, label_va, load_nrc_vad, va_to_class
from trainers.va_regression.common import VANet, classification_loss, load_stage1, va_mse

VA_CFG = os.path.join(ROOT, "configs/trainers/VARegression/tiny_synthetic.yaml")
# NRC-VAD v1 values (0..1) of the synthetic classes; "awe" is stored as "wonder" to test LEXICON_WORDS
LEXICON = (
    "Word\tValence\tArousal\tDominance\n"
    "amusement\t0.929\t0.837\t0.500\nanger\t0.167\t0.865\t0.500\nwonder\t0.469\t0.740\t0.500\n"
    "contentment\t0.875\t0.610\t0.500\ndisgust\t0.052\t0.775\t0.500\n\n"
    "excitement\t0.896\t0.684\t0.500\nfear\t0.073\t0.840\t0.500\nsadness\t0.052\t0.288\t0.500\n"
    "a cappella\t0.6\t0.4\t0.5\n"
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny CNN steps run faster on one thread than on two contended ones (a shared 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def lexicon_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lex") / "NRC-VAD-Lexicon.txt"
    path.write_text(LEXICON, encoding="utf-8")
    return str(path)


def test_lexicon_parser_rescales_and_keeps_multiword_entries(lexicon_file):
    lex = load_nrc_vad(lexicon_file)
    assert len(lex) == 9 and "word" not in lex  # header skipped, blank line ignored
    assert lex["amusement"] == pytest.approx((8.432, 7.696, 5.0))  # x * 8 + 1 (published: 8.43 / 7.70)
    assert lex["a cappella"] == pytest.approx((5.8, 4.2, 5.0))
    assert load_nrc_vad(lexicon_file, scale=4.0, offset=5.0)["sadness"] == pytest.approx((5.208, 6.152, 7.0))


def test_lexicon_parser_errors_name_the_line(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_nrc_vad(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("joy\t0.9\t0.8\t0.7\nsad 0.1 0.2 0.3\n")
    with pytest.raises(DatasetError, match=r"bad.txt:2: expected 4 tab-separated fields .* got 1"):
        load_nrc_vad(str(bad))
    bad.write_text("joy\t0.9\t0.8\t0.7\nsad\t0.1\thigh\t0.3\n")
    with pytest.raises(DatasetError, match=r"bad.txt:2: non-numeric value"):
        load_nrc_vad(str(bad))


def test_category_va_with_word_mapping_and_missing_word(lexicon_file):
    lex = load_nrc_vad(lexicon_file)
    va = category_va(lex, ["Amusement", "awe", "sadness"], {"awe": "wonder"})
    assert torch.allclose(va, torch.tensor([[8.432, 7.696], [4.752, 6.92], [1.416, 3.304]]))
    with pytest.raises(ConfigError, match="'awe' is not in the NRC-VAD lexicon; map it in TRAINER.VA.LEXICON_WORDS"):
        category_va(lex, ["awe"])


def test_label_va_dominant_mean_and_back_conversion(lexicon_file):
    lex = load_nrc_vad(lexicon_file)
    cva = category_va(lex, ["amusement", "anger", "sadness"])
    va, ok = label_va(cva, label=torch.tensor([1, -1]))
    assert torch.equal(va[0], cva[1]) and ok.tolist() == [True, False]
    dist = torch.tensor([[0.4, 0.4, 0.2], [0.1, 0.2, 0.7]])  # a tie: mean of amusement and anger
    va, ok = label_va(cva, dist=dist)
    assert torch.allclose(va[0], (cva[0] + cva[1]) / 2) and torch.allclose(va[1], cva[2])
    va, ok = label_va(cva, labels=torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    assert torch.allclose(va[0], (cva[0] + cva[2]) / 2) and ok.tolist() == [True, False]
    pred = torch.tensor([[8.0, 7.5], [2.0, 7.0], [1.5, 3.0]])
    assert va_to_class(pred, cva, "cosine").tolist() == [0, 1, 2]
    assert va_to_class(pred, cva, "euclidean").tolist() == [0, 1, 2]
    with pytest.raises(ConfigError, match="did you mean 'cosine'"):
        va_to_class(pred, cva, "cosin")


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return VANet(build_cnn_backbone("resnet18"), num_classes=3, va_init=(5.0, 5.0))


@pytest.mark.parametrize("kind", ["categorical_only", "dimensional_only", "mixed"])
def test_mixed_batches_never_give_nan(tiny_net, kind):
    img = torch.randn(4, 3, 32, 32)
    va = torch.tensor([[6.0, 4.0], [2.0, 7.0], [5.0, 5.0], [8.0, 3.0]])
    label = torch.tensor([0, 2, 1, 1])
    if kind == "categorical_only":
        va = torch.full_like(va, float("nan"))
    elif kind == "dimensional_only":
        label = torch.full_like(label, -1)
    else:
        va[:2], label[2:] = float("nan"), -1
    tiny_net.zero_grad()
    pred, logits = tiny_net(img)
    mse = va_mse(pred, va, torch.isfinite(va).all(1))
    cls = classification_loss(logits, label, None)
    loss = 0.1 * cls + 0.9 * mse
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in tiny_net.parameters() if p.grad is not None)
    if kind == "categorical_only":
        assert mse.item() == 0.0 and cls.item() > 0
    if kind == "dimensional_only":
        assert cls.item() == 0.0 and mse.item() > 0
    if kind == "mixed":  # each term averages over its own kind only
        ref = ((pred[2:] - va[2:]) ** 2).mean()
        assert mse.item() == pytest.approx(ref.item(), rel=1e-5)


def test_stage1_checkpoint_must_fit(tmp_path, tiny_net):
    other = VANet(build_cnn_backbone("resnet34"), num_classes=0)
    torch.save({"state_dict": other.state_dict(), "epoch": 1}, tmp_path / "other.pth.tar")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_stage1(tiny_net, str(tmp_path / "other.pth.tar"))
    with pytest.raises(CheckpointError, match="stage-1 checkpoint not found"):
        load_stage1(tiny_net, str(tmp_path / "nowhere"))


class _FakeTrainer:
    def __init__(self):
        self.last_val, self.stop_training = None, False


def test_early_stopping_counts_evaluations_without_improvement():
    hook = EarlyStoppingHook("valence_mse", patience=2, mode="min")
    hook.trainer = t = _FakeTrainer()
    # as the released code: stop when MORE than `patience` evaluations in a row did not improve
    for value, stop in ((3.0, False), (2.0, False), (2.5, False), (2.1, False), (2.2, True)):
        t.last_val = {"valence_mse": value}
        hook.after_epoch()
        assert t.stop_training is stop
    assert hook.state_dict() == {"best": 2.0, "bad": 3}
    t.last_val = None  # no validation this epoch: nothing counted
    hook.after_epoch()
    assert hook.bad == 3


def _va_args(data_root, out, *opts):
    return ["--root", data_root, "--seed", "1", "--output-dir", str(out), "--config-file", VA_CFG,
            "--dataset-config-file", SYN_CFG, *SMALL_DATA, "TRAIN.PRINT_FREQ", "1", "VERBOSE", "False", *opts]


def _state(out):
    path = os.path.join(out, "model", "model-best.pth.tar")
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_four_frameworks_from_the_cli(tmp_path, data_root, lexicon_file):
    s1 = tmp_path / "one_stage_single"  # nothing improves by 100: more than 1 bad evaluation = stop after epoch 3 of 4
    assert run_cli(_va_args(data_root, s1, "OPTIM.MAX_EPOCH", "4", "TRAINER.VA.EARLY_STOP_PATIENCE", "1",
                            "TRAINER.VA.EARLY_STOP_MIN_DELTA", "100")) == 0
    log = (s1 / "log.txt").read_text()
    assert "early stopping: val valence_pearson_r has not improved for 2 evaluations" in log
    assert "training stopped after epoch 3" in log
    assert [r["epoch"] for r in read_metrics(str(s1)) if r["split"] == "train"] == [1, 2, 3]
    res = final_test(str(s1))
    assert {"valence_pearson_r", "valence_pearson_p", "arousal_ccc", "valence_mae", "va_class_accuracy"} <= set(res)

    s2 = tmp_path / "two_stage_single"  # per-iteration cosine schedule: after step 1 of 2, lr = 0.5 * 1e-3
    assert run_cli(_va_args(data_root, s2, "OPTIM.MAX_EPOCH", "1", "TRAINER.VA.MODE", "two_stage",
                            "TRAINER.VA.STAGE1_CHECKPOINT", str(s1), "MODEL.CNN.FREEZE_THROUGH", "layer3",
                            "OPTIM.LR_SCHEDULER", "cosine", "OPTIM.STEP_PER_ITER", "True")) == 0
    log = (s2 / "log.txt").read_text()
    assert f"loaded stage-1 weights from {s1}/model/model-best.pth.tar (without the class head)" in log
    assert "batch [1/2] loss" in log and "lr 5.0000e-04" in log
    before, after = _state(s1), _state(s2)
    assert torch.equal(before["backbone.net.layer3.1.conv2.weight"], after["backbone.net.layer3.1.conv2.weight"])
    assert torch.equal(before["backbone.net.layer3.1.bn2.running_mean"], after["backbone.net.layer3.1.bn2.running_mean"])
    assert not torch.equal(before["backbone.net.layer4.1.conv2.weight"], after["backbone.net.layer4.1.conv2.weight"])

    s3 = tmp_path / "one_stage_multi"  # the lexicon fixture written above, "awe" mapped to "wonder"
    assert run_cli(_va_args(data_root, s3, "OPTIM.MAX_EPOCH", "1", "TRAINER.VA.TASK", "multi",
                            "TRAINER.VA.LEXICON", lexicon_file, "TRAINER.VA.LEXICON_WORDS", "['awe:wonder']")) == 0
    assert {"class_accuracy", "va_class_accuracy"} <= set(final_test(str(s3)))

    from datasets.synthetic.native import NativeSettings, write_native  # zero-shot VA on Emotion6-format data

    write_native(str(tmp_path / "e6" / "Emotion6"), "emotion6", NativeSettings(1, 1, 2))
    zs = tmp_path / "zero_shot"
    args = ["--root", str(tmp_path / "e6"), "--seed", "1", "--output-dir", str(zs), "--config-file", VA_CFG,
            "--dataset-config-file", os.path.join(ROOT, "configs/datasets/emotion6.yaml"), "--eval-only",
            "--model-dir", str(s3), "TRAINER.VA.TASK", "multi", "TRAINER.VA.LEXICON_WORDS", "['joy:amusement', 'surprise:awe']",
            "VERBOSE", "False"]
    assert run_cli(args) == 0
    assert "class head has 8 classes, the data 6: evaluating VA only" in (zs / "log.txt").read_text()
    res = final_test(str(zs))
    assert "valence_pearson_r" in res and "va_class_accuracy" in res and "class_accuracy" not in res

    s4 = tmp_path / "two_stage_multi"
    assert run_cli(_va_args(data_root, s4, "OPTIM.MAX_EPOCH", "1", "TRAINER.VA.MODE", "two_stage",
                            "TRAINER.VA.TASK", "multi", "TRAINER.VA.ALPHA", "0.1", "TRAINER.VA.STAGE1_CHECKPOINT",
                            str(s3), "TRAINER.VA.CATEGORICAL_DATASET", "SyntheticEmotion",
                            "MODEL.CNN.FREEZE_THROUGH", "layer3")) == 0
    log = (s4 / "log.txt").read_text()
    assert "(with the class head)" in log
    assert "two_stage/multi: 32 dimensional items of SyntheticEmotion mixed with 32 categorical items" in log
    assert "cls" in [r for r in read_metrics(str(s4)) if r["split"] == "train"][0]["metrics"]


def test_cli_errors_are_one_line(tmp_path, data_root, capsys):
    code = run_cli(_va_args(data_root, tmp_path / "a", "TRAINER.VA.MODE", "two_stage"))
    assert code == 2
    assert capsys.readouterr().err.strip().startswith("error: TRAINER.VA.STAGE1_CHECKPOINT is empty")
    code = run_cli(_va_args(data_root, tmp_path / "b", "TRAINER.VA.LEXICON", str(tmp_path / "none.txt")))
    assert code == 2 and "error: NRC-VAD lexicon not found" in capsys.readouterr().err
    code = run_cli(_va_args(data_root, tmp_path / "c", "TRAINER.VA.EARLY_STOP_METRIC", "valence_pearsonr"))
    assert code == 2 and "did you mean 'valence_pearson_r'" in capsys.readouterr().err
