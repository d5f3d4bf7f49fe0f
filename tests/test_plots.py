"""Figures of a run (trainers/engine/plots.py), tools/plot_results.py and the progress helper."""
from __future__ import annotations

import json
import logging
import os
import re
import types

import pytest
import torch

from conftest import SMALL_DATA, SYN_CFG, ROOT, run_cli
from trainers.engine import plots
from trainers.evaluation import EVALUATOR_REGISTRY


class FakeWriter:
    def __init__(self):
        self.figures = []

    def figure(self, tag, fig, step=0):
        self.figures.append(tag)

    def hparams(self, hp, metrics):
        self.hp = (hp, metrics)


def fake_trainer(tmp_path, evaluator, classnames, task="single_label"):
    from trainers import get_cfg

    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    return types.SimpleNamespace(output_dir=str(tmp_path), cfg=cfg, evaluator=evaluator, classnames=classnames,
                                 writer=FakeWriter(), task=task)


#: the figures each registered evaluator draws after a final evaluation on "test" (a new evaluator must be added
#: here with its figures: the test below fails for an evaluator missing from this table)
FIGURES = {
    "Classification": ["confusion_matrix_test.png"],
    "ClassificationTopK": ["confusion_matrix_test.png"],
    "MultiLabel": ["pr_curves_test.png"],
    "LabelDistribution": ["distributions_test.png"],
    "Conversation": ["per_class_f1_test.png"],
    "ValenceArousal": ["va_scatter_test.png"],
}


def _evaluated(name, names, n=30):
    """The registered evaluator ``name`` after processing one batch with every kind of target, and its results."""
    from trainers.evaluation import EVALUATOR_REGISTRY

    g = torch.Generator().manual_seed(0)
    c = len(names)
    batch = {"label": torch.arange(n) % c, "labels": (torch.rand(n, c, generator=g) > 0.5).float(),
             "dist": torch.softmax(torch.randn(n, c, generator=g), 1), "va": torch.rand(n, 2, generator=g) * 8 + 1,
             "index": torch.arange(n)}
    ev = EVALUATOR_REGISTRY.get(name)(names)
    width = 2 if name == "ValenceArousal" else c
    outputs = torch.randn(n, width, generator=g)
    if name == "ValenceArousal":
        outputs = batch["va"] + 0.3 * outputs
    ev.process(outputs, batch)
    return ev, dict(ev.evaluate())


@pytest.mark.parametrize("name", EVALUATOR_REGISTRY.names())
def test_every_registered_evaluator_draws_its_figures(name, tmp_path):
    assert name in FIGURES, f"evaluator {name} is registered but its figures are not listed in FIGURES"
    names = ["a", "b", "c"]
    ev, results = _evaluated(name, names)
    t = fake_trainer(tmp_path, ev, names)
    written = plots.plot_evaluation(t, "test", results)
    assert [os.path.basename(p) for p in written] == FIGURES[name]
    assert all(os.path.getsize(p) > 1000 for p in written)
    assert t.writer.figures == [f"plots/{f[:-4]}" for f in FIGURES[name]]
    assert t.writer.hp[0]["trainer"] == t.cfg.TRAINER.NAME  # hyper-parameters with the main metric
    if ev.main_metric in results:
        assert t.writer.hp[1][ev.main_metric] == results[ev.main_metric]


def test_confusion_csv_and_cmat_come_from_the_evaluated_samples(tmp_path):
    from trainers.evaluation import Classification

    ev = Classification(["a", "b"], compute_cmat=True)
    ev.process(torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.0, 1.0]]), {"label": torch.tensor([0, 0, 1, 1])})
    results = ev.evaluate()
    written = plots.plot_evaluation(fake_trainer(tmp_path, ev, ["a", "b"]), "test", results)
    assert [os.path.relpath(p, tmp_path) for p in written] == [os.path.join("plots", "confusion_matrix_test.png"), "cmat.pt"]
    assert (tmp_path / "plots" / "confusion_matrix_test.csv").read_text() == "true\\predicted,a,b\na,1,1\nb,0,2\n"
    assert torch.load(tmp_path / "cmat.pt", weights_only=True).tolist() == [[0.5, 0.5], [0.0, 1.0]]


def test_plots_py_names_no_evaluator():
    """Figures are chosen by the evaluators, not by class names or private attributes read in plots.py."""
    from trainers.evaluation import EVALUATOR_REGISTRY

    src = open(plots.__file__, encoding="utf-8").read()
    assert not [n for n in EVALUATOR_REGISTRY.names() if n in src]
    assert not re.findall(r"[\w)\]]\._(?!_)\w*", src)  # obj._private
    assert not re.findall(r"getattr\([^,]+,\s*[\"']_", src)  # getattr(obj, "_private")
    assert "type(ev)" not in src and "__name__ ==" not in src


def test_a_failing_evaluator_figure_is_one_warning(tmp_path, caplog):
    ev, results = _evaluated("Classification", ["a", "b", "c"])

    def broken(ctx, res):
        raise RuntimeError("no figure today")

    ev.plots = broken
    t = fake_trainer(tmp_path, ev, ["a", "b", "c"])
    with caplog.at_level(logging.WARNING):
        assert plots.plot_evaluation(t, "test", results) == []
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "plot evaluation_figures skipped: RuntimeError: no figure today"]


def test_training_curves_and_cmat(tmp_path):
    recs = [{"split": "train", "epoch": e, "final": False, "metrics": {"loss": 2.0 / e, "loss_aux": 1.0 / e},
             "lr": 0.01 * e, **({"lr_per_step": [0.001, 0.002]} if e == 1 else {})} for e in (1, 2, 3)]
    recs += [{"split": "val", "epoch": e, "final": False, "metrics": {"accuracy": 50.0 + e, "macro_f1": 40.0}}
             for e in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    t = fake_trainer(tmp_path, types.SimpleNamespace(main_metric="accuracy"), ["a", "b"])
    assert os.path.basename(plots.plot_training_curves(t)) == "training_curves.png"
    path = plots.save_cmat(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]), 2, str(tmp_path))
    cm = torch.load(path, weights_only=True)
    assert cm.tolist() == [[0.5, 0.5], [0.0, 1.0]]  # rows = true class, normalised as Dassl's cmat.pt


def test_a_failing_plot_is_one_warning(tmp_path, caplog, monkeypatch):
    t = fake_trainer(tmp_path, None, ["a", "b"])
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"split": "train", "epoch": 1, "metrics": {"loss": 1.0}}) + "\n")

    def broken(output_dir):
        raise OSError("disk full")

    monkeypatch.setattr(plots, "plot_dir", broken)
    with caplog.at_level(logging.WARNING):
        assert plots.plot_training_curves(t) is None
        assert plots.plot_evaluation(t, "test", {}) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["plot training_curves skipped: OSError: disk full",
                        "plot evaluation_figures skipped: OSError: disk full"]


def test_eval_only_writes_cmat_and_plots(tmp_path, data_root):
    out = tmp_path / "zs"
    assert run_cli(["--root", data_root, "--trainer", "ZeroshotCLIP", "--output-dir", str(out), "--eval-only",
                    "--config-file", os.path.join(ROOT, "configs/trainers/ZeroshotCLIP/tiny_synthetic.yaml"),
                    "--dataset-config-file", SYN_CFG, *SMALL_DATA, "TEST.COMPUTE_CMAT", "True"]) == 0
    assert (out / "cmat.pt").is_file() and (out / "plots" / "confusion_matrix_test.png").is_file()
    assert torch.load(out / "cmat.pt", weights_only=True).shape == (8, 8)


def test_plot_results_and_pivot(tmp_path, capsys):
    from tools import parse_results, plot_results

    def run(method, shots, seed, acc, classes="all"):
        tag = "default" if classes == "all" else f"subsample_classes-{classes}"
        d = tmp_path / "SyntheticEmotion" / method / f"tiny_{shots}shots" / tag / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text(json.dumps({"split": "test", "final": True, "metrics": {"accuracy": acc}}))
        (d / "config.yaml").write_text(f"DATASET:\n  SUBSAMPLE_CLASSES: {classes}\n")

    for seed in (1, 2):
        run("ZeroshotCLIP", "all", seed, 30.0)
        for shots, acc in ((1, 40.0), (4, 50.0), (16, 60.0)):
            run("CoOp", shots, seed, acc + seed)
        run("CoOp", 16, seed, 70.0, "base")
        run("CoOp", 16, seed, 40.0, "new")
    assert plot_results.main([str(tmp_path), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "fewshot.png").is_file() and (tmp_path / "fig" / "base_to_new.png").is_file()
    assert parse_results.main([str(tmp_path), "--pivot"]) == 0
    out = capsys.readouterr().out
    assert "| CoOp (tiny, default) | - | 41.50 ± 0.71 (n=2) | 51.50 ± 0.71 (n=2) |" in out
    assert "| ZeroshotCLIP | 30.00 ± 0.00 (n=2) | - | - | - |" in out  # under "0 shots", not "all shots"


def test_progress_lines_when_not_a_terminal(monkeypatch, caplog):
    from utils import progress as pg

    monkeypatch.setenv("EMOLAB_PROGRESS", "lines")
    times = iter([0.0, 20.0, 20.0, 21.0, 45.0])
    monkeypatch.setattr(pg.time, "time", lambda: next(times, 60.0))
    with caplog.at_level(logging.INFO, logger="emolab.progress"):
        assert list(pg.progress(range(4), desc="evaluate test", unit="batch")) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records]
    assert lines and lines[0].startswith("evaluate test: 1/4 batch (25%)")
    monkeypatch.setenv("EMOLAB_PROGRESS", "0")
    assert pg.progress_mode() == "off"
