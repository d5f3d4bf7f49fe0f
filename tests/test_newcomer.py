"""A researcher's first day (issue 21): evaluating a run by its folder, mistakes stopped in seconds, a
command line that lists what exists and prints its config without torch, a default output folder that
cannot collide, readable figures, W&B / MLflow trackers against their real libraries."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import COOP_CFG, ROOT, SMALL_DATA, SYN_CFG, final_test, read_metrics, run_cli

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import newcomer_mistakes as nm  # noqa: E402

ZS_CFG = os.path.join(ROOT, "configs/trainers/ZeroshotCLIP/tiny_synthetic.yaml")


def coop_args(data_root, out, *opts, flags=()):
    return ["--root", data_root, "--seed", "1", "--output-dir", str(out), "--config-file", COOP_CFG,
            "--dataset-config-file", SYN_CFG, *flags, *SMALL_DATA, "OPTIM.MAX_EPOCH", "2", "TRAIN.PRINT_FREQ", "1", *opts]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_root):
    """A finished two-epoch CoOp run (the training's own files are compared byte for byte later)."""
    out = tmp_path_factory.mktemp("newcomer") / "run"
    assert run_cli(coop_args(data_root, out)) == 0
    return out


# ------------------------------------------------------------------ point 2/3: answers without torch
def _light(argv, hide=()):
    return nm.run_mistake(argv, hide)


@pytest.mark.parametrize("argv", [["--help"], ["--list", "trainers"], ["--list", "datasets"], ["--list", "configs"],
                                  ["--list", "clip-models"]])
def test_help_and_lists_answer_without_torch(argv):
    res = _light(argv)
    assert res["rc"] == 0 and res["torch"] is False, res["stderr"]
    out = res["stdout"]
    if argv == ["--help"]:
        assert "examples:" in out and "--eval-only --model-dir" in out and "--print-config" in out
        assert "the checkpoint the run's final test used" in out  # --load-epoch says what it does
    elif argv[1] == "trainers":
        names = [line.split()[0] for line in out.splitlines()]
        assert names == sorted(["CoCoOp", "CoOp", "EWMTCNN", "EmoCoOp", "LinearProbeCLIP", "UniEmoX",
                                "UniEmoXPretrain", "VARegression", "VEGA", "ZeroshotCLIP"])
    elif argv[1] == "datasets":
        assert {"SyntheticEmotion", "FI", "Emotion6", "EmoSet", "IEMOCAPFeatures"} <= {l.split()[0] for l in out.splitlines()}
    elif argv[1] == "configs":
        assert "configs/trainers/CoOp/tiny_synthetic.yaml  # CoOp on the synthetic emotion data" in out
    else:
        assert out.splitlines()[0].startswith("emolab-tiny-rn") and "ViT-B/16" in out


def test_print_config_is_the_merged_config_without_torch():
    res = _light(["--print-config", "--trainer", "CoCoOp", "--dataset-config-file", SYN_CFG, "--config-file",
                  os.path.join(ROOT, "configs/trainers/CoCoOp/tiny_synthetic.yaml"), "--seed", "3", "OPTIM.LR", "0.01"])
    assert res["rc"] == 0 and res["torch"] is False, res["stderr"]
    cfg = yaml.safe_load(res["stdout"])
    assert cfg["TRAINER"]["NAME"] == "CoCoOp" and cfg["OPTIM"]["LR"] == 0.01 and cfg["SEED"] == 3
    assert cfg["DATASET"]["NAME"] == "SyntheticEmotion"
    assert cfg["OUTPUT_DIR"].startswith(os.path.join("output", "SyntheticEmotion", "CoCoOp", "tiny_synthetic-"))
    assert "TRAIN" in cfg and cfg["TRAIN"]["LOGGERS"] == ["tensorboard"]


def test_static_readers_equal_what_importing_registers():
    """The torch-free listing and config are what the packages register (a new trainer, dataset or
    config extension the static reader cannot follow fails here)."""
    code = """
import json, sys
sys.path.insert(0, %r)
from configs import cli
light = cli.light_cfg().dump()
tr = sorted(cli.registered_in_sources("TRAINER_REGISTRY", ("trainers",)))
ds = sorted(cli.registered_in_sources("DATASET_REGISTRY", ("datasets",)))
assert "torch" not in sys.modules
from trainers import get_cfg, TRAINER_REGISTRY
from datasets import DATASET_REGISTRY
print(json.dumps([light == get_cfg().dump(), tr == TRAINER_REGISTRY.names(), ds == DATASET_REGISTRY.names()]))
""" % ROOT
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1]) == [True, True, True]


# ------------------------------------------------------------------ the mistakes table (points 2 and 4)
@pytest.mark.parametrize("name,what,argv,words,torch_free,hide", nm.MISTAKES, ids=[m[0] for m in nm.MISTAKES])
def test_mistake_stops_with_one_line_naming_the_fix(name, what, argv, words, torch_free, hide, finished_run,
                                                    data_root, tmp_path):
    places = {"run": str(finished_run), "data": data_root, "tmp": str(tmp_path)}
    before = {p: os.path.getmtime(p) for p in glob.glob(str(finished_run / "**"), recursive=True) if os.path.isfile(p)}
    res = nm.run_mistake(nm.fill(argv, places), hide, cwd=str(tmp_path))
    err = [line for line in res["stderr"].splitlines() if line.strip()]
    assert res["rc"] == 2, res["stderr"]
    assert "Traceback" not in res["stderr"] + res["stdout"]
    assert len([line for line in err if line.startswith("error: ")]) == 1 and err[-1].startswith("error: ")
    assert len([line for line in err if not line.startswith(("warning: ", "error: "))]) == 0, err
    for w in words:
        assert w in err[-1], err[-1]
    if torch_free:
        assert res["torch"] is False, f"{name}: torch was imported before the error"
    after = {p: os.path.getmtime(p) for p in before}
    assert after == before  # the finished run is untouched
    assert not os.path.exists(tmp_path / "output")  # nothing written to a default folder


def test_table_has_at_least_20_torch_free_mistakes():
    assert len(nm.MISTAKES) >= 20 and len({m[0] for m in nm.MISTAKES}) == len(nm.MISTAKES)
    assert sum(1 for m in nm.MISTAKES if m[4]) >= 20


def test_gpu_only_precision_on_a_cpu_warns_before_building(capsys, monkeypatch):
    """Found before anything is built; logged (log.txt and the console) once logging is set up."""
    import train
    from configs import cli

    monkeypatch.setattr(cli, "cuda_usable", lambda: False)
    args = train.build_parser().parse_args(["TRAIN.PRECISION", "fp16", "TRAINER.COOP.PREC", "amp"])
    train.preflight(args)
    assert args.preflight_warnings == [
        "TRAIN.PRECISION fp16 has no effect without a GPU: this run computes in fp32 on the CPU",
        "TRAINER.COOP.PREC amp has no effect without a GPU: this run computes in fp32 on the CPU"]
    assert capsys.readouterr().err == ""
    args = train.build_parser().parse_args([])
    train.preflight(args)
    assert args.preflight_warnings == []  # defaults (VEGA's PREC amp included) never warn


def test_require_gpu_with_a_broken_cuda_stops_before_building(tmp_path, data_root, monkeypatch, capsys):
    """Device nodes present (the light check cannot tell) but torch sees no CUDA: one line, nothing built."""
    import torch

    from configs import cli

    monkeypatch.setattr(cli, "cuda_usable", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu"
    assert run_cli(coop_args(data_root, out, flags=("--require-gpu",))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch sees no usable CUDA device" in err[0] and "drop --require-gpu" in err[0]
    assert not out.exists()


# ------------------------------------------------------------------ point 1: evaluation from a run folder
def _tree(folder):
    return {os.path.relpath(p, folder): open(p, "rb").read() for p in glob.glob(os.path.join(folder, "**"), recursive=True)
            if os.path.isfile(p)}


def test_eval_only_with_the_run_folder_alone_reproduces_the_final_test(finished_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a default ./output would land here
    before = {k: v for k, v in _tree(str(finished_run)).items() if not k.startswith("eval" + os.sep)}
    earlier = set(glob.glob(str(finished_run / "eval" / "*")))  # evaluations of other tests
    trained = [r for r in read_metrics(str(finished_run)) if r.get("final")][-1]
    assert run_cli(["--eval-only", "--model-dir", str(finished_run)]) == 0
    after = _tree(str(finished_run))
    assert {k: v for k, v in after.items() if not k.startswith("eval" + os.sep)} == before  # nothing overwritten
    evals = sorted(set(glob.glob(str(finished_run / "eval" / "*"))) - earlier)
    assert len(evals) == 1
    with open(os.path.join(evals[0], "eval.jsonl")) as f:
        rec = [json.loads(line) for line in f][-1]
    assert rec["metrics"] == trained["metrics"]
    assert rec["epoch"] == 2 and rec["checkpoint"] == {"file": "model.pth.tar-2", "epoch": 2}
    assert os.path.isfile(os.path.join(evals[0], "plots", "confusion_matrix_test.png"))
    assert not os.path.exists(os.path.join(evals[0], "metrics.jsonl"))  # parse_results never counts it as a run
    log = open(os.path.join(evals[0], "log.txt")).read()
    assert f"evaluating with the run's config {finished_run / 'config.yaml'} (no key differs)" in log
    assert not (tmp_path / "output").exists()

    # flags and KEY VALUE pairs still override, and the log names them; an explicit --output-dir RUN
    # also goes to RUN/eval/<time>
    assert run_cli(["--eval-only", "--model-dir", str(finished_run), "--output-dir", str(finished_run),
                    "DATALOADER.TEST.BATCH_SIZE", "5"]) == 0
    evals2 = sorted(set(glob.glob(str(finished_run / "eval" / "*"))) - set(evals) - earlier)
    assert len(evals2) == 1
    log = open(os.path.join(evals2[0], "log.txt")).read()
    assert "1 key(s) differ from it: DATALOADER.TEST.BATCH_SIZE 100 -> 5" in log
    with open(os.path.join(evals2[0], "eval.jsonl")) as f:
        assert [json.loads(line) for line in f][-1]["metrics"] == trained["metrics"]
    assert {k: v for k, v in _tree(str(finished_run)).items() if not k.startswith("eval" + os.sep)} == before


# ------------------------------------------------------------------ point 5: default output folder
def test_default_output_folder_is_per_command_and_never_the_shared_output(tmp_path):
    import train

    def out_of(argv):
        return train.setup_cfg(train.build_parser().parse_args(argv), light=True).OUTPUT_DIR

    plain = out_of([])
    assert plain == os.path.join("output", "SyntheticEmotion", "CoOp", "default", "noseed")
    seeded = out_of(["--seed", "2", "--config-file", COOP_CFG])
    assert seeded == os.path.join("output", "SyntheticEmotion", "CoOp", "tiny_synthetic", "seed2")
    a = out_of(["--seed", "2", "--config-file", COOP_CFG, "OPTIM.LR", "0.1"])
    b = out_of(["--seed", "2", "--config-file", COOP_CFG, "OPTIM.LR", "0.2"])
    assert len({seeded, a, b}) == 3 and a == out_of(["--seed", "2", "--config-file", COOP_CFG, "OPTIM.LR", "0.1"])
    assert out_of(["--output-dir", "output"]) == "output"  # said explicitly: kept
    ev = out_of(["--eval-only", "--model-dir", str(tmp_path)])
    assert os.path.dirname(ev) == os.path.join(str(tmp_path), "eval")


# ------------------------------------------------------------------ point 6: figures
def _capture_figures(monkeypatch):
    from trainers.engine import plots

    figs = {}

    def keep(fig, path, writer=None, tag="", step=0):
        figs[os.path.basename(path)] = fig
        return path

    monkeypatch.setattr(plots, "_save", keep)
    return figs


class _Cfg(dict):
    __getattr__ = dict.__getitem__


def _fake_trainer(tmp_path, records, trainer="CoOp", n_classes=8):
    from types import SimpleNamespace

    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    cfg = _Cfg(TRAINER=_Cfg(NAME=trainer), DATASET=_Cfg(NAME="SyntheticEmotion", NUM_SHOTS=4, SUBSAMPLE_CLASSES="all"),
               SEED=1, TEST=_Cfg(FINAL_MODEL="last_step"), MODEL=_Cfg(BACKBONE=_Cfg(NAME="emolab-tiny-vit")),
               OPTIM=_Cfg(NAME="sgd", LR=0.002, MAX_EPOCH=3), DATALOADER=_Cfg(TRAIN_X=_Cfg(BATCH_SIZE=8)))
    return SimpleNamespace(output_dir=str(tmp_path), cfg=cfg, writer=None, classnames=[f"c{i}" for i in range(n_classes)],
                           evaluator=SimpleNamespace(main_metric="accuracy"))


def test_training_curves_show_the_final_test_units_chance_one_x_axis_no_empty_panel(tmp_path, monkeypatch):
    from trainers.engine import plots

    figs = _capture_figures(monkeypatch)
    recs = []
    for e in (1, 2, 3):
        recs.append({"split": "train", "epoch": e, "final": False, "metrics": {"loss": 2.0 / e}, "lr": 0.002,
                     "lr_per_step": [0.001, 0.002]})
        recs.append({"split": "val", "epoch": e, "final": False,
                     "metrics": {"accuracy": 40.0 + e, "macro_f1": 30.0 + e, "balanced_accuracy": 35.0 + e, "error": 1}})
    recs.append({"split": "test", "epoch": 3, "final": True, "metrics": {"accuracy": 47.5, "macro_f1": 33.0},
                 "checkpoint": {"file": "model.pth.tar-3", "epoch": 3}})
    plots.plot_training_curves(_fake_trainer(tmp_path, recs))
    fig = figs["training_curves.png"]
    shown = [ax for ax in fig.axes if ax.axison]
    assert len(shown) == len(fig.axes)  # no empty panel
    assert len({tuple(ax.get_xlim()) for ax in shown}) == 1  # one x-axis for the loss, the LR and the metrics
    acc = next(ax for ax in shown if ax.get_title() == "validation accuracy (main)")
    assert acc.get_ylabel() == "accuracy (%)"
    legend = " ".join(t.get_text() for t in acc.get_legend().get_texts())
    assert "final test 47.50 (epoch 3 model)" in legend
    chance = [line for line in acc.get_lines() if list(line.get_ydata()) == [12.5, 12.5]]
    assert len(chance) == 1
    assert shown[0].get_ylabel() == "loss, epoch mean" and shown[1].get_ylabel() == "learning rate"


def test_zero_shot_confusion_matrix_title_and_diagonal_zero(tmp_path, monkeypatch):
    import torch

    from trainers.engine import plots

    figs = _capture_figures(monkeypatch)
    cfg = _fake_trainer(tmp_path, [], trainer="ZeroshotCLIP").cfg
    title = plots.figure_settings_from_cfg(cfg).title
    assert "zero-shot" in title and "seed" not in title and "shots" not in title.replace("zero-shot", "")
    pred, true = torch.tensor([1, 1, 2, 0]), torch.tensor([0, 1, 2, 0])  # class 0: one right, one wrong; ok
    pred2, true2 = torch.tensor([1, 1, 2]), torch.tensor([0, 1, 2])  # class 0 never right: a 0 on the diagonal
    plots.plot_confusion(pred2, true2, ["a", "b", "c"], str(tmp_path), "test", title)
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text()
             for t in figs["confusion_matrix_test.png"].axes[0].texts}
    assert texts[(0, 0)] == "0" and texts[(1, 0)] == "1" and (2, 0) not in texts  # off-diagonal zeros stay blank
    del pred, true


def test_log_line_gives_the_last_batch_and_the_epoch_mean(finished_run):
    import re

    log = open(finished_run / "log.txt").read()
    assert re.search(r"batch \[\d+/\d+\] loss [\d.]+ \([\d.]+\) lr ", log)


def test_parse_results_pivot_puts_zero_shot_under_0_shots(tmp_path, capsys):
    from tools import parse_results

    def write(path, acc):
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "metrics.jsonl"), "w") as f:
            f.write(json.dumps({"split": "test", "epoch": 1, "final": True, "metrics": {"accuracy": acc}}) + "\n")

    write(tmp_path / "o/SyntheticEmotion/ZeroshotCLIP/tiny_synthetic_allshots/default/seed1", 44.0)
    write(tmp_path / "o/SyntheticEmotion/CoOp/tiny_synthetic_4shots/default/seed1", 56.0)
    write(tmp_path / "o/SyntheticEmotion/CoOp/tiny_synthetic_allshots/default/seed1", 66.0)
    assert parse_results.main([str(tmp_path / "o"), "--metric", "accuracy", "--pivot"]) == 0
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()
            if line.startswith("|")]
    assert rows[0] == ["accuracy (mean ± std, ddof=1)", "0 shots", "4 shots", "all shots"]
    body = {r[0]: r[1:] for r in rows[2:]}
    assert body["ZeroshotCLIP"] == ["44.00 ± 0.00 (n=1)", "-", "-"]
    assert body["CoOp"] == ["-", "56.00 ± 0.00 (n=1)", "66.00 ± 0.00 (n=1)"]


# ------------------------------------------------------------------ point 8: W&B and MLflow, real libraries
def test_wandb_and_mlflow_get_what_tensorboard_gets(tmp_path, data_root, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    import wandb

    logged = []
    real_init = wandb.init

    def spy_init(*a, **kw):
        run = real_init(*a, **kw)
        real_log = run.log

        def log(data, *la, **lk):
            logged.append(dict(data))
            return real_log(data, *la, **lk)

        monkeypatch.setattr(run, "log", log)
        return run

    monkeypatch.setattr(wandb, "init", spy_init)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "trk"
    assert run_cli(coop_args(data_root, out, "TRAIN.LOGGERS", '["tensorboard","wandb","mlflow"]')) == 0
    recs = read_metrics(str(out))
    val_acc = [r["metrics"]["accuracy"] for r in recs if r["split"] == "val"]
    train_loss = [r["metrics"]["loss"] for r in recs if r["split"] == "train"]
    final = final_test(str(out))

    # MLflow, read back through its own client from the local file store
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri="file:" + str(out / "mlruns"))
    exp = client.get_experiment_by_name("SyntheticEmotion/CoOp")
    (run,) = client.search_runs([exp.experiment_id])
    hist = client.get_metric_history(run.info.run_id, "val/accuracy")
    assert [m.value for m in sorted(hist, key=lambda m: m.step)] == pytest.approx(val_acc)
    assert [m.step for m in sorted(hist, key=lambda m: m.step)] == [1, 2]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")] == pytest.approx(train_loss)
    assert run.data.metrics["final/accuracy"] == pytest.approx(final["accuracy"])
    assert run.data.params["OPTIM.LR"] == "0.002" and run.info.status == "FINISHED"
    assert client.list_artifacts(run.info.run_id, "plots")  # the figures

    # W&B offline: what reached run.log, and the run file the library wrote
    vals = [d["val/accuracy"] for d in logged if "val/accuracy" in d]
    assert vals == pytest.approx(val_acc) and [d["val/step"] for d in logged if "val/accuracy" in d] == [1, 2]
    (runfile,) = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    blob = open(runfile, "rb").read()
    assert b"val/accuracy" in blob and b"final/accuracy" in blob and b"train/loss" in blob
    assert glob.glob(str(out / "wandb" / "offline-run-*" / "files" / "media" / "images" / "plots" / "training_curves*.png"))


def test_trackers_are_imported_only_when_asked_for():
    code = ("import sys; sys.path.insert(0, %r)\n" % ROOT) + """
from configs.cli import light_cfg
from trainers.engine.trackers import trackers_from_cfg
cfg = light_cfg(); cfg.OUTPUT_DIR = "/nonexistent"
print(trackers_from_cfg(cfg), "wandb" in sys.modules, "mlflow" in sys.modules)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "(True, []) False False"
