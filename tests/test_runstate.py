"""Reruns never silently change what a run means (issue 11 §3) and run state survives (issue 12):
config checks on rerun, --restart, finished runs, the folder lock, recovery without a run state,
--eval-only evaluating the checkpoint the final test used, and the EmoCoOp authors' commands."""
from __future__ import annotations

import json
import os
import shutil

import torch

import train
from conftest import COOP_CFG, ROOT, SMALL_DATA, SYN_CFG, final_test, read_metrics, run_cli
from datasets.synthetic.native import DEFAULT_DIRS, NativeSettings, write_native
from tools.parse_results import find_runs


def _args(root, out, *extra, flags=()):
    return ["--root", root, "--seed", "1", "--output-dir", str(out), "--config-file", COOP_CFG,
            "--dataset-config-file", SYN_CFG, *flags, *SMALL_DATA, "OPTIM.MAX_EPOCH", "3", "TRAIN.PRINT_FREQ", "1",
            *extra]


def _files(d):
    out = {}
    for cur, _, fs in os.walk(d):
        for f in fs:
            p = os.path.join(cur, f)
            out[os.path.relpath(p, d)] = open(p, "rb").read()
    return out


def _one_err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_rerun_with_another_config_is_refused_and_restart_starts_over(tmp_path, data_root, capsys):
    out = tmp_path / "run"
    assert run_cli(_args(data_root, out)) == 0
    before = _files(out)
    # the example: a new LR and epoch count must not resume the old optimiser state
    assert run_cli(_args(data_root, out, "OPTIM.LR", "0.5", "OPTIM.MAX_EPOCH", "12")) == 2
    err = _one_err(capsys)
    assert "OPTIM.LR 0.002 -> 0.5" in err and "OPTIM.MAX_EPOCH 3 -> 12" in err
    assert "--output-dir" in err and "--restart" in err
    assert _files(out) == before  # config.yaml still describes what ran
    # keys that cannot change results may differ: the finished run is just reported
    capsys.readouterr()
    assert run_cli(_args(data_root, out, "TRAIN.PRINT_FREQ", "7", "DATALOADER.NUM_WORKERS", "0")) == 0
    assert "has finished" in capsys.readouterr().out
    assert _files(out) == before
    # --restart: the new config runs from scratch and config.yaml says so
    assert run_cli(_args(data_root, out, "OPTIM.LR", "0.5", "OPTIM.MAX_EPOCH", "2", flags=["--restart"])) == 0
    assert "LR: 0.5" in (out / "config.yaml").read_text()
    recs = read_metrics(str(out))
    assert max(r["epoch"] for r in recs) == 2 and sum(r["final"] for r in recs) == 1
    assert sorted(os.listdir(out / "prompt_learner")) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-2"]


def test_interrupted_run_resumes_only_with_the_same_config(tmp_path, data_root, monkeypatch, capsys):
    from utils.killpoints import SimulatedKill

    out = tmp_path / "run"
    monkeypatch.setenv("EMOLAB_KILL_MODE", "raise")
    monkeypatch.setenv("EMOLAB_KILL_AT", "after_commit@1")
    try:
        run_cli(_args(data_root, out))
    except SimulatedKill:
        pass
    monkeypatch.delenv("EMOLAB_KILL_AT")
    assert run_cli(_args(data_root, out, "OPTIM.LR", "0.5")) == 2
    assert "OPTIM.LR" in _one_err(capsys)
    assert run_cli(_args(data_root, out, "DATALOADER.NUM_WORKERS", "1")) == 0  # a worker count may change
    assert "resumed from" in (out / "log.txt").read_text()


def test_missing_run_state_and_markers_resume_from_the_files(tmp_path, data_root, monkeypatch):
    """No run_state.json and no `checkpoint` marker (an older run, or deleted files): the latest
    complete epoch is found from the files and nothing is started over or deleted."""
    from utils.killpoints import SimulatedKill

    full = tmp_path / "full"
    assert run_cli(_args(data_root, full, "TRAIN.CHECKPOINT_FREQ", "1")) == 0
    out = tmp_path / "run"
    monkeypatch.setenv("EMOLAB_KILL_MODE", "raise")
    monkeypatch.setenv("EMOLAB_KILL_AT", "after_commit@2")
    try:
        run_cli(_args(data_root, out, "TRAIN.CHECKPOINT_FREQ", "1"))
    except SimulatedKill:
        pass
    monkeypatch.delenv("EMOLAB_KILL_AT")
    os.remove(out / "run_state.json")
    os.remove(out / "prompt_learner" / "checkpoint")
    old = (out / "prompt_learner" / "model.pth.tar-1").read_bytes()
    assert run_cli(_args(data_root, out, "TRAIN.CHECKPOINT_FREQ", "1")) == 0
    log = (out / "log.txt").read_text()
    assert "resuming from the latest complete checkpoint files (epoch 2)" in log
    assert (out / "prompt_learner" / "model.pth.tar-1").read_bytes() == old  # never deleted nor rewritten
    assert final_test(str(out)) == final_test(str(full))


def test_second_run_into_the_same_folder_is_refused(tmp_path, data_root, capsys):
    from trainers.engine import runstate

    out = tmp_path / "run"
    out.mkdir()
    runstate.lock_output_dir(str(out))  # as another process holding the folder would
    try:
        assert run_cli(_args(data_root, out)) == 2
        assert "in use by another run" in _one_err(capsys)
        assert os.listdir(out) == []
    finally:
        runstate.unlock_output_dir(str(out))


def test_eval_only_evaluates_what_the_final_test_used_and_keeps_the_run_results(tmp_path, data_root):
    """last_step run: --eval-only without --load-epoch evaluates the last epoch (not model-best), and
    evaluating into the run's own folder leaves metrics.jsonl and parse_results untouched."""
    out = tmp_path / "run"
    assert run_cli(_args(data_root, out, "OPTIM.LR", "0.2")) == 0
    final = [r for r in read_metrics(str(out)) if r["final"]][-1]
    assert final["checkpoint"] == {"file": "model.pth.tar-3", "epoch": 3}
    reported = find_runs([str(out)], "test")[0].metrics
    metrics_before = (out / "metrics.jsonl").read_bytes()
    assert run_cli(_args(data_root, out, "OPTIM.LR", "0.2", flags=["--eval-only", "--model-dir", str(out)])) == 0
    assert (out / "metrics.jsonl").read_bytes() == metrics_before
    (ev_dir,) = (out / "eval").iterdir()  # an evaluation writes into RUN/eval/<time>, never over the run's files
    with open(ev_dir / "eval.jsonl") as f:
        ev = [json.loads(line) for line in f]
    assert ev[-1]["metrics"] == final["metrics"] and ev[-1]["checkpoint"]["epoch"] == 3
    assert find_runs([str(out)], "test")[0].metrics == reported
    assert "evaluating " in (ev_dir / "log.txt").read_text() and "model.pth.tar-3 (epoch 3)" in (ev_dir / "log.txt").read_text()


def test_emocoop_authors_commands_reproduce_the_training_test(tmp_path):
    """The EmoCoOp README's train and eval commands, with their two config files (tiny CLIP, 2 epochs):
    ``--eval-only --model-dir RUN --load-epoch 2`` gives the training run's test metrics exactly."""
    base = str(tmp_path / "native")
    write_native(os.path.join(base, DEFAULT_DIRS["emotion_csv"]), "emotion_csv",
                 NativeSettings(n_train_per_class=3, n_val_per_class=1, n_test_per_class=1, image_size=16))
    dong = os.path.join(base, "Dongba")
    data = ["DATASET.CSV_PATH", os.path.join(dong, "data_csv", "train_data_coco.csv"),
            "DATASET.TEST_CSV", os.path.join(dong, "data_csv", "test_data_coco.csv"),
            "DATASET.TEST_ROOT", os.path.join(dong, "test_data")]
    small = ["MODEL.BACKBONE.NAME", "emolab-tiny-vit", "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", "2",
             "OPTIM.WARMUP_EPOCH", "1", "DATALOADER.NUM_WORKERS", "0",
             "TRAINER.EMOCOOP.GLOVE_MODEL", "configs/trainers/EmoCoOp/glove.6B.50d.subset.txt",
             "TRAINER.EMOCOOP.CLUSTER_CACHE_DIR", str(tmp_path / "clusters"), "CACHE.DIR", str(tmp_path / "cache")]
    common = ["--root", os.path.join(dong, "train_data"), "--trainer", "EmoCoOp",
              "--dataset-config-file", os.path.join(ROOT, "configs/datasets/emotion_dataset.yaml"),
              "--config-file", os.path.join(ROOT, "configs/trainers/CoCoOp/vit_emotion.yaml")]
    run = tmp_path / "emocoop"
    assert run_cli(common + ["--output-dir", str(run)] + data + small) == 0
    trained = final_test(str(run))
    ev = tmp_path / "eval"
    assert run_cli(common + ["--output-dir", str(ev), "--eval-only", "--model-dir", str(run), "--load-epoch", "2"]
                   + data + small) == 0
    assert final_test(str(ev)) == trained


def test_ctrl_c_line_names_the_resume_epoch(tmp_path, data_root, monkeypatch, capsys):
    from trainers.engine.hooks import CheckpointHook

    original = CheckpointHook.after_epoch

    def ctrl_c_after_epoch_two(self):
        original(self)
        if self.trainer.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(CheckpointHook, "after_epoch", ctrl_c_after_epoch_two)
    monkeypatch.setattr("sys.argv", ["train.py", *_args(data_root, tmp_path / "run")])
    assert train.cli() == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "from epoch 2" in err[0] and str(tmp_path / "run") in err[0]
    shutil.rmtree(tmp_path / "run")
    assert torch is not None
