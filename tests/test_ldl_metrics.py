"""LDL metrics (trainers/evaluation/ldl.py) and VA metrics (trainers/evaluation/regression.py)
against hand-computed values."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from trainers.evaluation import EVALUATOR_REGISTRY
from trainers.evaluation import ldl
from trainers.evaluation.regression import ValenceArousal, ccc, dimension_metrics, higher_is_better, pearson, weighted_jaccard

# two samples over 3 classes: targets D, predictions P
D = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
P = np.array([[0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3]])
# per sample, worked out by hand
HAND = {
    "kl_divergence": [0.5 * math.log(2), math.log(3)],
    "chebyshev": [0.25, 2 / 3],
    "clark": [math.sqrt(1 / 9 + 1), math.sqrt(0.25 + 2)],
    "canberra": [1 / 3 + 1, 0.5 + 2],
    "cosine": [0.375 / (math.sqrt(0.5) * math.sqrt(0.375)), math.sqrt(1 / 3)],
    "intersection": [0.75, 1 / 3],
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_each_ldl_metric_matches_hand_values(name):
    got = getattr(ldl, name)(D, P)
    assert got == pytest.approx(HAND[name], abs=1e-12)


def test_identical_distributions_are_perfect():
    d = np.array([[0.2, 0.3, 0.5]])
    assert ldl.kl_divergence(d, d)[0] == pytest.approx(0.0, abs=1e-12)
    assert ldl.chebyshev(d, d)[0] == 0 and ldl.clark(d, d)[0] == 0 and ldl.canberra(d, d)[0] == 0
    assert ldl.cosine(d, d)[0] == pytest.approx(1.0) and ldl.intersection(d, d)[0] == pytest.approx(1.0)


def test_ldl_metrics_mean_over_samples_kl_per_class_and_dominant_accuracy():
    res = ldl.ldl_metrics(D, np.log(P))  # softmax(log p) = p
    for name, per_sample in HAND.items():
        assert res[name] == pytest.approx(np.mean(per_sample), abs=1e-12)
    assert res["kl_divergence_class_mean"] == pytest.approx(np.mean(HAND["kl_divergence"]) / 3)
    # sample 1: argmax p = class 1, tied dominant with class 0 -> hit; sample 2: argmax of a uniform = 0 -> hit
    assert res["accuracy"] == 100.0
    res = ldl.ldl_metrics(D, np.log(np.array([[0.2, 0.2, 0.6], [0.1, 0.8, 0.1]])))
    assert res["accuracy"] == 0.0


def test_label_distribution_evaluator_dedupes_and_falls_back_to_labels(caplog):
    ev = EVALUATOR_REGISTRY.get("LabelDistribution")(["a", "b", "c"])
    logits = torch.log(torch.tensor(P))
    ev.process(logits, {"dist": torch.tensor(D), "index": torch.tensor([0, 1])})
    ev.process(logits[:1], {"dist": torch.tensor(D[:1]), "index": torch.tensor([0])})  # seen: ignored
    with caplog.at_level("INFO"):
        res = ev.evaluate()
    assert res["kl_divergence"] == pytest.approx(np.mean(HAND["kl_divergence"]))
    assert "* kl_divergence: 0.7226" in caplog.text and "* accuracy: 100.0%" in caplog.text
    assert ev.main_metric == "accuracy" and list(res) == ev.metric_names()
    ev.reset()  # one-hot label targets: KL = cross-entropy of the true class
    ev.process(logits, {"label": torch.tensor([2, 0])})
    assert ev.evaluate()["kl_divergence"] == pytest.approx(np.mean([-math.log(0.25), -math.log(1 / 3)]))


def test_regression_metrics_hand_and_scipy():
    x, y = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0])
    m = dimension_metrics(x, y)
    assert m["pearson_r"] == pytest.approx(1.0) and m["ccc"] == pytest.approx(8 / 22)
    assert m["mse"] == pytest.approx(14 / 3) and m["mae"] == pytest.approx(2.0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=30), rng.normal(size=30)
    r, p = pearson(a, b)
    ref = stats.pearsonr(a, b)
    assert (r, p) == pytest.approx((ref[0], ref[1]))
    assert dimension_metrics(a, b)["spearman_rho"] == pytest.approx(stats.spearmanr(a, b)[0])
    assert pearson(np.ones(5), b[:5]) == (0.0, 1.0) and ccc(np.ones(3), np.ones(3)) == 0.0  # constant: defined as 0


def test_weighted_jaccard_matches_sklearn_definition():
    from sklearn.metrics import jaccard_score

    t = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [1, 0, 0]])
    p = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0], [1, 1, 0]])
    assert weighted_jaccard(p, t) == pytest.approx(jaccard_score(t, p, average="weighted"))


def test_va_evaluator_metrics_back_conversion_and_lexicon_targets():
    class_va = [[2.0, 2.0], [8.0, 4.0]]
    va_pred = torch.tensor([[7.0, 7.0], [8.0, 4.5], [2.5, 2.0], [6.0, 3.0]])
    va_true = torch.tensor([[6.0, 6.0], [7.0, 5.0], [2.0, 3.0], [5.0, 3.5]])
    label = torch.tensor([0, 1, 0, 1])
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    ev = ValenceArousal(["a", "b"], class_va=class_va, back_conversion="cosine")
    ev.process(torch.cat([va_pred, logits], 1), {"va": va_true, "label": label, "index": torch.arange(4)})
    res = ev.evaluate()
    ref = dimension_metrics(va_pred[:, 0].numpy(), va_true[:, 0].numpy())
    assert res["valence_pearson_r"] == pytest.approx(ref["pearson_r"])
    assert res["arousal_mae"] == pytest.approx((va_pred[:, 1] - va_true[:, 1]).abs().mean().item())
    # cosine: (7,7) is on the direction of (2,2) -> class 0; (8,4.5) -> 1; (2.5,2) -> 0; (6,3) -> 1
    assert res["va_class_accuracy"] == 100.0 and res["class_accuracy"] == 75.0
    ev = ValenceArousal(["a", "b"], class_va=class_va, back_conversion="euclidean")
    ev.process(va_pred, {"va": va_true, "label": label})
    assert ev.evaluate()["va_class_accuracy"] == 75.0  # (7,7) is nearer (8,4) than (2,2)
    ev = ValenceArousal(["a", "b"], class_va=class_va)  # no va: the lexicon VA of the labels
    ev.process(va_pred, {"label": label})
    assert ev.evaluate()["valence_mae"] == pytest.approx(np.mean([5.0, 0.0, 0.5, 2.0]))


def test_metric_direction():
    assert higher_is_better("valence_pearson_r") and higher_is_better("accuracy") and higher_is_better("cosine")
    assert not higher_is_better("valence_mse") and not higher_is_better("kl_divergence")
    assert not higher_is_better("arousal_pearson_p") and not higher_is_better("clark")
