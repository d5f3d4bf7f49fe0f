"""End-to-end runs of train.py on the small synthetic dataset with the tiny CLIP."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import COCOOP_CFG, COOP_CFG, ROOT, SMALL_DATA, SYN_CFG, final_test, read_metrics, run_cli
from trainers import TRAINER_REGISTRY
from trainers.clip_prompting.coop import CoOp
from trainers.engine.hooks import CheckpointHook


def _args(data_root, out, cfg=COOP_CFG, *extra):
    """CLI arguments: flags in ``extra`` go before the trailing KEY VALUE opts."""
    flags = [a for i, a in enumerate(extra) if a.startswith("--") or (i and extra[i - 1] in ("--trainer", "--model-dir", "--load-epoch"))]
    opts = [a for a in extra if a not in flags]
    return ["--root", data_root, "--seed", "1", "--output-dir", str(out), "--config-file", cfg,
            "--dataset-config-file", SYN_CFG, *flags, *SMALL_DATA, "OPTIM.MAX_EPOCH", "2", "TRAIN.PRINT_FREQ", "1", *opts]


def test_coop_trains_logs_and_eval_only_reproduces(tmp_path, data_root):
    out = tmp_path / "coop"
    assert run_cli(_args(data_root, out)) == 0
    log = (out / "log.txt").read_text()
    assert "* accuracy:" in log and "* macro_f1:" in log
    files = sorted(os.listdir(out / "prompt_learner"))
    assert files == ["checkpoint", "model-best.pth.tar", "model.pth.tar-2"]  # epoch 1 rolled over
    assert (out / "config.yaml").exists() and (out / "tensorboard").is_dir()
    trained = final_test(str(out))
    assert set(trained) >= {"accuracy", "error", "macro_f1"}
    # the LR each epoch used (constant warm-up 1e-4 in epoch 1, then the cosine schedule from 0.002)
    lrs = [r["lr"] for r in read_metrics(str(out)) if r["split"] == "train"]
    assert lrs == pytest.approx([1e-4, 0.002])
    # readable log: timestamps, the config as a diff, validation as one line, plots
    first = log.splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", first)
    assert "keys differ from the defaults" in log and "  OPTIM.LR: 0.002" in log and "VEGA" not in log
    assert re.search(r"val \[1/2\] accuracy [\d.]+ \| ", log) and log.count("=> result") == 1
    assert (out / "plots" / "training_curves.png").is_file() and (out / "plots" / "confusion_matrix_test.png").is_file()

    ev = tmp_path / "eval"
    assert run_cli(_args(data_root, ev, COOP_CFG, "--eval-only", "--model-dir", str(out), "--load-epoch", "2")) == 0
    assert final_test(str(ev)) == trained  # exactly the logged numbers


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, data_root, monkeypatch):
    extra = ["OPTIM.MAX_EPOCH", "3"]
    full = tmp_path / "full"
    assert run_cli(_args(data_root, full, COOP_CFG, *extra)) == 0

    original = CheckpointHook.after_epoch

    def interrupt_after_first_epoch(self):
        original(self)
        if self.trainer.epoch == 0:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    monkeypatch.setattr(CheckpointHook, "after_epoch", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_cli(_args(data_root, part, COOP_CFG, *extra))
    monkeypatch.setattr(CheckpointHook, "after_epoch", original)
    assert not any(r.get("final") for r in read_metrics(str(part)))
    assert run_cli(_args(data_root, part, COOP_CFG, *extra)) == 0  # resumes from OUTPUT_DIR
    assert "resumed from" in (part / "log.txt").read_text()
    assert final_test(str(part)) == final_test(str(full))


def test_cocoop_multilabel_and_best_val(tmp_path, data_root):
    out = tmp_path / "cocoop"
    assert run_cli(_args(data_root, out, COCOOP_CFG, "DATASET.TASK", "multi_label", "TEST.FINAL_MODEL", "best_val")) == 0
    res = final_test(str(out))
    assert {"mAP", "hit@1", "recall@2"} <= set(res)
    assert "loading the best validation model" in (out / "log.txt").read_text()


def test_zeroshot_clip_runs(tmp_path, data_root):
    out = tmp_path / "zs"
    cfg = os.path.join(ROOT, "configs/trainers/ZeroshotCLIP/tiny_synthetic.yaml")
    assert run_cli(_args(data_root, out, cfg, "--trainer", "ZeroshotCLIP")) == 0
    assert "accuracy" in final_test(str(out))


@TRAINER_REGISTRY.register()
class NaNAtStepTwo(CoOp):
    """Test trainer whose loss turns NaN at the second step."""

    def compute_loss(self, batch):
        out = super().compute_loss(batch)
        if self.batch_idx == 1:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_non_finite_loss_stops_with_epoch_and_step(tmp_path, data_root, capsys):
    out = tmp_path / "nan"
    code = run_cli(_args(data_root, out, COOP_CFG, "--trainer", "NaNAtStepTwo", "DATALOADER.TRAIN_X.BATCH_SIZE", "4"))
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("error: non-finite loss at epoch 1, step 2 (of 8)")
    assert not (out / "prompt_learner").exists()  # nothing saved from the broken epoch


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run(tmp_path, data_root):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()),
           os.path.join(ROOT, "train.py"), *_args(data_root, out)]
    r = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert log.count("evaluate on the *test* set") == 1
    assert "* total: 24" in log  # 8 classes x 3 test images, each counted once
    assert sorted(os.listdir(out / "prompt_learner")) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-2"]
    assert sum(1 for r in read_metrics(str(out)) if r.get("final")) == 1
    assert torch.load(out / "prompt_learner" / "model.pth.tar-2", weights_only=True)["epoch"] == 2


@pytest.mark.parametrize("mode,where", [("hang", "eval:val@1"), ("stop", "collective#2")])
def test_stopped_rank_is_named_within_the_timeout(tmp_path, data_root, mode, where):
    """Rank 1 hangs (sleeps) during a validation, or is stopped (SIGSTOP: no thread of it runs) after it
    announced a collective; rank 0 stops with one line naming it after TRAIN.DIST_TIMEOUT."""
    out = tmp_path / "ddp_stop"
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "EMOLAB_KILL_AT": where,
           "EMOLAB_KILL_MODE": mode, "EMOLAB_KILL_RANK": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()),
           os.path.join(ROOT, "train.py"), *_args(data_root, out, COOP_CFG, "TRAIN.DIST_TIMEOUT", "5")]
    r = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert lines and "rank 1 stopped answering" in lines[0], r.stderr[-3000:]
