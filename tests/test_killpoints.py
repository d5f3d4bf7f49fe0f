"""The kill harness: a run killed at any named instant and resumed equals the uninterrupted run.

For each trainer, an uninterrupted reference run; then the same run is killed at one instant after
another (each kill resumes from what the previous one left), and finally runs to the end. The
resumed run must give exactly the reference's metrics records (bit-identical values, each (split,
epoch) once), the same checkpoint weights, and exactly the files the config keeps. Kills raise
:class:`~utils.killpoints.SimulatedKill` in-process (``EMOLAB_KILL_MODE=raise``); two tests send a
real SIGKILL to a subprocess first, where no cleanup code runs at all.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import COCOOP_CFG, COOP_CFG, ROOT, SMALL_DATA, SYN_CFG, run_cli
from utils import killpoints
from utils.killpoints import SimulatedKill

ML_DATA = os.path.join(ROOT, "configs/datasets/synthetic_emotion_ml.yaml")
CONV_DATA = os.path.join(ROOT, "configs/datasets/synthetic_conversation.yaml")


def _tcfg(name):
    return os.path.join(ROOT, "configs/trainers", name)


def trainer_args(trainer, root, out, cache):
    """CLI arguments of a tiny run of ``trainer`` (3 epochs; early stopping where the method has it)."""
    common = ["--root", root, "--seed", "1", "--output-dir", str(out), "--trainer", trainer]
    small = [a if a != SMALL_DATA[-1] else cache for a in SMALL_DATA]
    if trainer in ("CoOp", "CoCoOp", "LinearProbeCLIP"):
        cfg = {"CoOp": COOP_CFG, "CoCoOp": COCOOP_CFG, "LinearProbeCLIP": _tcfg("LinearProbeCLIP/tiny_synthetic.yaml")}
        extra = ["TEST.FINAL_MODEL", "best_val"] if trainer == "CoCoOp" else []
        return common + ["--config-file", cfg[trainer], "--dataset-config-file", SYN_CFG, *small,
                         "OPTIM.MAX_EPOCH", "3", "DATALOADER.TRAIN_X.BATCH_SIZE", "16", *extra]
    if trainer == "EmoCoOp":
        return common + ["--config-file", _tcfg("EmoCoOp/tiny_synthetic.yaml"), "--dataset-config-file", ML_DATA, *small,
                         "OPTIM.MAX_EPOCH", "3", "TRAINER.EMOCOOP.CLUSTER_CACHE_DIR", os.path.join(cache, "clusters")]
    if trainer == "EWMTCNN":  # a tiny LR: validation never improves, patience 2 stops at epoch 3 of 6
        return common + ["--config-file", _tcfg("EWMTCNN/tiny_synthetic.yaml"), "--dataset-config-file", SYN_CFG, *small,
                         "OPTIM.MAX_EPOCH", "6", "OPTIM.LR", "1e-12", "TRAINER.EWMTCNN.EARLY_STOP_PATIENCE", "2",
                         "MODEL.BACKBONE.NAME", "resnet18", "INPUT.SIZE", "(16, 16)", "DATALOADER.TRAIN_X.BATCH_SIZE", "32"]
    if trainer == "VARegression":
        return common + ["--config-file", _tcfg("VARegression/tiny_synthetic.yaml"), "--dataset-config-file", SYN_CFG,
                         *small, "OPTIM.MAX_EPOCH", "3", "INPUT.SIZE", "(16, 16)", "DATALOADER.TRAIN_X.BATCH_SIZE", "32"]
    if trainer == "VEGA":  # patience 1 with a tiny LR: stops at epoch 2 of 5
        return common + ["--config-file", _tcfg("VEGA/tiny_synthetic_no_anchor_branch.yaml"),
                         "--dataset-config-file", CONV_DATA,
                         "DATASET.CONVERSATION.SYNTHETIC.N_TRAIN_DIALOGUES", "10",
                         "DATASET.CONVERSATION.SYNTHETIC.N_TEST_DIALOGUES", "4", "DATASET.CONVERSATION.SYNTHETIC.MAX_LEN", "8",
                         "TRAINER.VEGA.HIDDEN", "8", "TRAINER.VEGA.HEADS", "2", "OPTIM.MAX_EPOCH", "5",
                         "OPTIM.LR", "1e-12", "TRAINER.VEGA.PATIENCE", "1"]
    raise KeyError(trainer)


def records(out):
    """metrics.jsonl without the timestamps."""
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in f]


def kept_files(out):
    """Every file of a run but the log and TensorBoard's (one event file per process)."""
    found = set()
    for cur, _, files in os.walk(out):
        rel = os.path.relpath(cur, out)
        if rel.split(os.sep)[0] == "tensorboard":
            continue
        for f in files:
            if f != "log.txt":
                found.add(os.path.normpath(os.path.join(rel, f)))
    return found


def weights(out):
    m = json.load(open(os.path.join(out, "run_state.json")))
    return {n: torch.load(os.path.join(out, p), weights_only=True)["state_dict"] for n, p in m["files"].items()}


def assert_same_run(ref, out):
    got, want = records(out), records(ref)
    keys = [(r["split"], r["epoch"], r["final"]) for r in got]
    assert len(keys) == len(set(keys)), f"a record appears twice: {keys}"
    assert got == want  # bit-identical metric values, same order
    assert kept_files(out) == kept_files(ref)
    wo, wr = weights(out), weights(ref)
    assert wo.keys() == wr.keys()
    for n in wr:
        for k in wr[n]:
            assert torch.equal(wo[n][k], wr[n][k]), f"{n}.{k} differs after resume"


def run_killed_chain(monkeypatch, args, kills, finish=True):
    """Run ``args`` once per kill spec (each must be reached), then (``finish``) to the end."""
    monkeypatch.setenv("EMOLAB_KILL_MODE", "raise")
    for spec in kills:
        killpoints.reset()
        monkeypatch.setenv("EMOLAB_KILL_AT", spec)
        with pytest.raises(SimulatedKill):
            run_cli(args)
    monkeypatch.delenv("EMOLAB_KILL_AT")
    monkeypatch.delenv("EMOLAB_KILL_MODE")
    if finish:
        assert run_cli(args) == 0


#: trainer -> (first modules, stops early?, cache kill point or None)
PLANS = {
    "CoOp": (["prompt_learner"], None, "cache:features"),
    "CoCoOp": (["prompt_learner"], None, None),
    "LinearProbeCLIP": (["head"], None, "cache:features"),
    "EmoCoOp": (["prompt_learner"], None, "cache:kmeans"),  # + visual prompts, aux head, chromatic, weighting
    "EWMTCNN": (["model"], True, None),
    "VARegression": (["model"], None, None),
    "VEGA": (["vega"], True, None),
}


#: a real SIGKILL first: EmoCoOp between two of its module saves, EW-MTCNN in its first validation
SIGKILL_FIRST = {"EmoCoOp": "after_save:prompt_learner@1", "EWMTCNN": "eval:val@1"}

#: the CNN trainers are the slowest: they are killed at fewer instants (the others cover the rest)
SHORT_PLAN = ("EWMTCNN", "VARegression")


def kill_plan(modules, stop_epoch, cache, short=False):
    """The named instants a trainer is killed at, in order (each resumes from the previous kill)."""
    first, last = modules[0], modules[-1]
    if short:
        return [f"after_save:{first}@1"] + ([f"after_commit@{stop_epoch}"] if stop_epoch else ["eval:val@2"]) + [
            "after_final_commit"]
    plan = ([cache] if cache else []) + [
        f"before_save:{first}@1",          # nothing of epoch 1 saved yet
        f"after_save:{first}@1",           # between two module saves (EmoCoOp) / before the commit
        "after_commit@1",                  # checkpoint committed, metrics record not yet written
        "eval:val@2",                      # during a validation
        f"after_save:{last}@2",            # every module saved, run state not yet replaced
        "before_records@2",                # after the commit's follow-up, before metrics.jsonl
    ]
    if stop_epoch and stop_epoch <= 2:  # the epoch-2 instants after the stop decision would never come again
        plan = [p for p in plan if not p.endswith("@2") or p.startswith("eval:")]
    if stop_epoch:
        plan += [f"early_stop@{stop_epoch}", f"after_commit@{stop_epoch}"]  # at / right after the stopping epoch
    else:
        plan += ["after_commit@3"]
    plan += ["eval:test", "after_final_commit"]  # during the final test; final record committed, not written
    return plan


@pytest.mark.parametrize("trainer", list(PLANS))
def test_kill_anywhere_and_resume_equals_uninterrupted(trainer, tmp_path, data_root, monkeypatch):
    modules, stop_epoch, cache = PLANS[trainer]
    ref = tmp_path / "ref"
    assert run_cli(trainer_args(trainer, data_root, ref, str(tmp_path / "cache_ref"))) == 0
    m = json.load(open(ref / "run_state.json"))
    assert m["finished"] and m["modules"][: len(modules)] == modules
    modules = m["modules"]
    if stop_epoch:  # early stopping did stop the run before MAX_EPOCH; kill at its own stopping epoch
        assert m["stop_training"] and m["epoch"] < m["max_epoch"]
        stop_epoch = m["epoch"]
    out = tmp_path / "killed"
    args = trainer_args(trainer, data_root, out, str(tmp_path / "cache_killed"))
    plan = kill_plan(modules, stop_epoch, cache, short=trainer in SHORT_PLAN)
    if trainer in SIGKILL_FIRST:  # a real SIGKILL in a subprocess (no cleanup code runs at all) early on
        if cache:
            run_killed_chain(monkeypatch, args, [cache], finish=False)
        r = _subprocess(args, {"EMOLAB_KILL_AT": SIGKILL_FIRST[trainer]})
        assert r.returncode == -9, r.stderr[-2000:]
        plan = [p for p in plan if not p.endswith("@1") and p != cache]
    run_killed_chain(monkeypatch, args, plan)
    assert_same_run(str(ref), str(out))
    # a rerun of the finished run says so and changes nothing
    before = {f: open(os.path.join(out, f), "rb").read() for f in kept_files(str(out)) | {"log.txt"}}
    assert run_cli(args) == 0
    assert {f: open(os.path.join(out, f), "rb").read() for f in before} == before


def _subprocess(args, env_extra):
    env = {**os.environ, "PYTHONPATH": ROOT, **env_extra}  # same thread count as this process: same floats
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], env=env, capture_output=True,
                          text=True, timeout=300)




# --------------------------------------------------------------------------- kills inside file writes
# A real SIGKILL (a subprocess) while a file is being written: between an atomic write's temporary file
# and its rename (``write:<file name>``: the run state, the feature cache, the decoded-image cache,
# UniEmoX's caption embeddings) or in the middle of an ``--eval-only`` run's ``eval.jsonl`` line
# (``append:eval.jsonl``). The killed process leaves its ``*.tmp.<pid>`` / half line behind; the next
# start removes it, rebuilds what was cut, and ends exactly like the uninterrupted run.
def _temporaries(*folders):
    found = []
    for folder in folders:
        for cur, _, files in os.walk(folder):
            found += [os.path.join(cur, f) for f in files if ".tmp." in f]
    return found


_COOP_WRITE_KILLS = {
    "run_state": "write:run_state.json#1",
    "feature_cache": "write:SyntheticEmotion_*.pt",
    "decoded_cache": "write:decoded_*.pt",
}


@pytest.mark.parametrize("instant", sorted(_COOP_WRITE_KILLS))
def test_sigkill_during_a_write_leaves_no_temporary_and_resumes(instant, tmp_path, data_root):
    def coop(out, cache):
        args = trainer_args("CoOp", data_root, out, str(cache))
        return args + ["DATALOADER.DECODED_CACHE", "disk", "DATALOADER.DECODED_CACHE_DIR", str(cache / "decoded")]

    ref = tmp_path / "ref"
    assert run_cli(coop(ref, tmp_path / "cache_ref")) == 0
    out, cache = tmp_path / "killed", tmp_path / "cache_killed"
    r = _subprocess(coop(out, cache), {"EMOLAB_KILL_AT": _COOP_WRITE_KILLS[instant]})
    assert r.returncode == -9, r.stderr[-2000:]
    left = _temporaries(out, cache)
    assert left, "the kill did not fall inside a write"
    assert run_cli(coop(out, cache)) == 0
    assert not _temporaries(out, cache), _temporaries(out, cache)
    assert_same_run(str(ref), str(out))


def test_sigkill_during_caption_embedding_write(tmp_path):
    from datasets.synthetic.native import NativeSettings, write_native

    root = tmp_path / "data"
    write_native(str(root / "EmoSet-118K"), "emoset", NativeSettings(2, 1, 1))

    def pre(out, cache):
        return ["--root", str(root), "--seed", "1", "--trainer", "UniEmoXPretrain", "--output-dir", str(out),
                "--config-file", _tcfg("UniEmoXPretrain/tiny_synthetic.yaml"),
                "--dataset-config-file", os.path.join(ROOT, "configs/datasets/emoset.yaml"),
                "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "OPTIM.MAX_EPOCH", "1",
                "TRAINER.UNIEMOX_PRETRAIN.TEXT_CACHE_DIR", str(cache)]

    ref = tmp_path / "ref"
    assert run_cli(pre(ref, tmp_path / "cache_ref")) == 0
    out, cache = tmp_path / "killed", tmp_path / "cache_killed"
    r = _subprocess(pre(out, cache), {"EMOLAB_KILL_AT": "write:captions-*.pt"})
    assert r.returncode == -9, r.stderr[-2000:]
    assert _temporaries(cache), "the kill did not fall inside the caption cache write"
    assert run_cli(pre(out, cache)) == 0
    assert not _temporaries(out, cache)
    assert records(out) == records(ref)
    assert sorted(os.listdir(cache)) == sorted(os.listdir(tmp_path / "cache_ref"))


def test_sigkill_during_eval_only_records_write(tmp_path, data_root):
    """An ``--eval-only`` run killed with half of its ``eval.jsonl`` line written: the run's own files are
    untouched, the cut record is never read as one, and the next evaluation (a new ``RUN/eval/<time>``
    folder) writes whole records equal to those of an uninterrupted ``--eval-only`` run."""
    import glob
    import shutil

    from utils.fileio import read_records

    def ev(out, *flags):
        return [*flags] + trainer_args("CoOp", data_root, out, str(tmp_path / "cache"))

    def evals(run):
        return sorted(glob.glob(str(run / "eval" / "*" / "eval.jsonl")))

    def whole(path):
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in open(path).read().splitlines()]

    ref, out = tmp_path / "ref", tmp_path / "killed"
    assert run_cli(ev(ref)) == 0
    shutil.copytree(ref, out)
    before = {p: open(p, "rb").read() for p in glob.glob(str(out / "*")) if os.path.isfile(p)}
    assert run_cli(ev(ref, "--eval-only")) == 0
    r = _subprocess(ev(out, "--eval-only"), {"EMOLAB_KILL_AT": "append:eval.jsonl"})
    assert r.returncode == -9, r.stderr[-2000:]
    [killed] = evals(out)
    cut = open(killed, "rb").read()
    assert cut and not cut.endswith(b"\n")  # the kill fell inside the line
    assert read_records(killed) == []  # a cut line is never read as a record
    assert run_cli(ev(out, "--eval-only")) == 0
    after = [p for p in evals(out) if p != killed]
    assert len(after) == 1 and whole(after[0]) == whole(evals(ref)[0])
    assert {p: open(p, "rb").read() for p in before} == before  # the training's files are untouched
