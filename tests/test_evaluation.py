"""Evaluators: hand-computed numbers, sklearn agreement, log format, registry errors."""
import logging
import re

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from configs.defaults import get_cfg_default
from utils.errors import ConfigError
from trainers.evaluation import Classification, MultiLabel, build_evaluator

COOP_ACC = re.compile(r"\* accuracy: ([\.\deE+-]+)%")  # CoOp's parse_test_res.py regex


def one_hot_logits(pred, num_classes):
    logits = torch.zeros(len(pred), num_classes)
    logits[torch.arange(len(pred)), torch.tensor(pred)] = 5.0
    return logits


# 4 classes, class 3 never true but predicted once
Y_TRUE = [0, 0, 0, 1, 1, 2, 2]
Y_PRED = [0, 0, 1, 1, 3, 2, 0]


def test_classification_hand_computed():
    ev = Classification(["a", "b", "c", "d"], per_class=True, compute_cmat=True)
    ev.process(one_hot_logits(Y_PRED, 4), {"label": torch.tensor(Y_TRUE)})
    r = ev.evaluate()
    assert list(r) == ["accuracy", "error", "macro_f1", "balanced_accuracy"]
    assert r["accuracy"] == pytest.approx(400 / 7)
    assert r["error"] == pytest.approx(100 - 400 / 7)
    assert r["macro_f1"] == pytest.approx(100 * 11 / 18)  # (2/3 + 1/2 + 2/3) / 3
    assert r["macro_f1"] == pytest.approx(100 * f1_score(Y_TRUE, Y_PRED, average="macro", labels=np.unique(Y_TRUE)))
    assert r["balanced_accuracy"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 1 / 2) / 3)
    st = ev.state()
    assert [c["accuracy"] for c in st["per_class"]] == pytest.approx([200 / 3, 50, 50])
    assert [c["classname"] for c in st["per_class"]] == ["a", "b", "c"]
    assert st["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert st["confusion_matrix_normalized"][0] == pytest.approx([2 / 3, 1 / 3, 0, 0])
    assert ev.main_metric == "accuracy"


def test_classification_chunks_and_duplicate_indices():
    torch.manual_seed(0)
    logits, labels = torch.randn(50, 5), torch.randint(0, 5, (50,))
    whole = Classification(list("abcde"))
    whole.process(logits, {"label": labels, "index": torch.arange(50)})
    chunked = Classification(list("abcde"))
    for s in range(0, 50, 8):
        chunked.process(logits[s:s + 8], {"label": labels[s:s + 8], "index": torch.arange(s, min(s + 8, 50))})
    chunked.process(logits[:3], {"label": labels[:3], "index": torch.arange(3)})  # padded duplicates
    assert chunked.evaluate() == whole.evaluate()
    whole.reset()
    assert whole.evaluate()["accuracy"] == 0.0


def test_classification_log_lines_match_coop(caplog):
    ev = Classification(["a", "b", "c", "d"], per_class=True)
    ev.process(one_hot_logits(Y_PRED, 4), {"label": torch.tensor(Y_TRUE)})
    with caplog.at_level(logging.INFO):
        r = ev.evaluate()
    lines = [rec.getMessage() for rec in caplog.records]
    assert lines[:4] == ["=> result", "* total: 7", "* correct: 4", "* accuracy: 57.1%"]
    assert "* error: 42.9%" in lines and "* macro_f1: 61.1%" in lines
    assert "* average: 55.6%" in lines and any(l.startswith("* class: 0 (a)") for l in lines)
    m = COOP_ACC.findall("\n".join(lines))
    assert [float(x) for x in m] == [round(r["accuracy"], 1)]


def test_classification_thousands_separator(caplog):
    ev = Classification(["a", "b"])
    ev.process(one_hot_logits([0] * 1000, 2), {"label": torch.tensor([0] * 713 + [1] * 287)})
    with caplog.at_level(logging.INFO):
        ev.evaluate()
    text = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "* total: 1,000" in text and "* correct: 713" in text and "* accuracy: 71.3%" in text


# multi-label example: 4 samples, 5 classes; class 4 has no positive, sample 4 has no label
ML_LOGITS = torch.tensor([
    [3.0, 1.0, 2.0, -1.0, -2.0],
    [-2.0, 2.0, 1.0, 1.5, -3.0],
    [0.5, 2.0, -1.0, 3.0, 0.2],
    [-1.0, -1.0, -2.0, -3.0, 1.0],
])
ML_TARGETS = torch.tensor([
    [1, 1, 0, 0, 0],
    [0, 0, 1, 0, 0],
    [0, 1, 0, 1, 0],
    [0, 0, 0, 0, 0],
], dtype=torch.float)


def test_multilabel_topk_hand_computed():
    ev = MultiLabel(list("abcde"), topk=(1, 2, 3))
    ev.process(ML_LOGITS, {"labels": ML_TARGETS})
    r = ev.evaluate()
    assert r["recall@1"] == pytest.approx(40.0)  # 2 of 5 true labels
    assert r["recall@2"] == pytest.approx(60.0)  # 3 of 5
    assert r["recall@3"] == pytest.approx(100.0)
    # hit rate: samples with any true label in the top k, over the 3 labelled samples
    assert r["hit@1"] == pytest.approx(200 / 3)
    assert r["hit@2"] == pytest.approx(200 / 3)
    assert r["hit@3"] == pytest.approx(100.0)
    assert r["recall@2"] != r["hit@2"]
    assert list(r)[:7] == ["mAP", "recall@1", "recall@2", "recall@3", "hit@1", "hit@2", "hit@3"]
    assert ev.main_metric == "mAP"


def test_multilabel_threshold_f1():
    ev = MultiLabel(list("abcde"), threshold=0.5)
    ev.process(ML_LOGITS, {"labels": ML_TARGETS})
    r = ev.evaluate()
    assert r["micro_precision"] == pytest.approx(100 * 5 / 11)
    assert r["micro_recall"] == pytest.approx(100.0)
    assert r["micro_f1"] == pytest.approx(62.5)
    assert r["macro_f1"] == pytest.approx(70.0)  # (2/3 + 4/5 + 2/3 + 2/3) / 4, class e skipped
    y, p = ML_TARGETS.numpy().astype(int), (ML_LOGITS.sigmoid() > 0.5).numpy().astype(int)
    assert r["micro_f1"] == pytest.approx(100 * f1_score(y, p, average="micro"))
    assert r["micro_precision"] == pytest.approx(100 * precision_score(y, p, average="micro"))
    assert r["micro_recall"] == pytest.approx(100 * recall_score(y, p, average="micro"))
    assert r["macro_f1"] == pytest.approx(100 * f1_score(y, p, average="macro", labels=[0, 1, 2, 3], zero_division=0))


def test_multilabel_map_matches_sklearn_and_skips_empty_classes():
    rng = np.random.default_rng(0)
    n, c = 200, 6
    logits = rng.integers(-3, 4, size=(n, c)).astype(np.float32)  # many ties
    targets = (rng.random((n, c)) < 0.3).astype(np.float32)
    targets[:, 5] = 0  # class without a positive
    ev = MultiLabel([f"c{i}" for i in range(c)])
    ev.process(torch.from_numpy(logits), {"labels": torch.from_numpy(targets)})
    r = ev.evaluate()
    scores = 1 / (1 + np.exp(-logits.astype(np.float64)))
    aps = [average_precision_score(targets[:, j], scores[:, j]) for j in range(5)]
    assert r["mAP"] == pytest.approx(100 * np.mean(aps), abs=1e-9)
    st = ev.state()
    assert st["skipped_classes"] == ["c5"] and st["per_class_ap"]["c5"] is None
    for j in range(5):
        assert st["per_class_ap"][f"c{j}"] == pytest.approx(100 * aps[j], abs=1e-9)


def test_multilabel_log_lines(caplog):
    ev = MultiLabel(list("abcde"), topk=(2,), per_class=True)
    ev.process(ML_LOGITS, {"labels": ML_TARGETS, "index": torch.arange(4)})
    with caplog.at_level(logging.INFO):
        r = ev.evaluate()
    lines = [rec.getMessage() for rec in caplog.records]
    assert "=> result" in lines and "* total: 4" in lines
    assert f"* mAP: {r['mAP']:.1f}%" in lines and "* hit@2: 66.7%" in lines and "* recall@2: 60.0%" in lines
    assert any("n/a (no positive)" in l for l in lines)


def test_multilabel_accepts_single_label_batches():
    ev = MultiLabel(list("abc"), topk=(1,))
    ev.process(one_hot_logits([0, 1, 1], 3), {"label": torch.tensor([0, 1, 2])})
    r = ev.evaluate()
    assert r["hit@1"] == pytest.approx(200 / 3) and r["recall@1"] == pytest.approx(200 / 3)


def test_build_evaluator_switch_and_config():
    cfg = get_cfg_default()
    assert type(build_evaluator(cfg, ["a", "b"], "single_label")) is Classification
    cfg.TEST.TOPK = (1, 5)
    cfg.TEST.THRESHOLD = 0.3
    six = list("abcdef")
    ev = build_evaluator(cfg, six, "multi_label")
    assert type(ev) is MultiLabel and ev.topk == (1, 5) and ev.threshold == 0.3
    with pytest.raises(ConfigError, match=r"TEST\.TOPK holds 5 but the dataset has 2 classes"):
        build_evaluator(cfg, ["a", "b"], "multi_label")  # hit@5 of 2 classes: 100% for any model
    cfg.TEST.EVALUATOR = "MultiLabel"
    assert type(build_evaluator(cfg, six, "single_label")) is MultiLabel
    cfg.TEST.PER_CLASS_RESULT = True
    cfg.TEST.COMPUTE_CMAT = True
    cfg.TEST.EVALUATOR = "Classification"
    ev = build_evaluator(cfg, ["a", "b"], "single_label")
    assert ev.per_class and ev.compute_cmat


def test_unknown_evaluator_names_closest():
    cfg = get_cfg_default()
    cfg.TEST.EVALUATOR = "Clasification"
    with pytest.raises(ConfigError, match=r"unknown evaluator 'Clasification' \(did you mean 'Classification'\?\)"):
        build_evaluator(cfg, ["a"], "single_label")


def test_bad_inputs():
    with pytest.raises(ConfigError, match="THRESHOLD"):
        MultiLabel(["a"], threshold=2.0)
    ev = Classification(["a", "b"])
    with pytest.raises(Exception, match=r"expected \[B, 2\]"):
        ev.process(torch.zeros(3, 4), {"label": torch.zeros(3, dtype=torch.long)})
