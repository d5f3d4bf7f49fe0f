"""Hook order by declared priority, the one early-stopping hook, and no module-level run state.

* every hook declares a ``priority`` (mmengine's levels); the trainer runs hooks from the lowest
  number up, ties in registration order, so a trainer adds a hook to its list and it lands in place;
* :class:`~trainers.engine.hooks.EarlyStoppingHook` is the only early-stopping rule (VEGA and the CNN
  trainers build it): metric / mode / min-delta, stop after MORE than ``patience`` bad evaluations;
* nothing passes between ``train.py`` and the engine through module globals: the evaluation mode is
  a trainer argument and the last commit is the trainer's own state.
"""
from __future__ import annotations

import ast
import os
from types import SimpleNamespace

import pytest

from conftest import COOP_CFG, ROOT, SMALL_DATA, SYN_CFG
from trainers.engine import TrainerBase
from trainers.engine.hooks import (
    PRIORITIES, CheckpointHook, EarlyStoppingHook, EvalHook, HookBase, LRSchedulerHook, ProgressHook,
    get_priority, insert_by_priority,
)
from utils.errors import ConfigError


# ---------------------------------------------------------------------------------------------- priorities
class _Tagged(HookBase):
    def __init__(self, tag, priority=None):
        self.tag = tag
        if priority is not None:
            self.priority = priority


def _bare_trainer():
    """A TrainerBase that has only a hook list (register_hook needs nothing else)."""
    t = TrainerBase.__new__(TrainerBase)
    t.hooks = []
    return t


def test_priority_names_and_numbers():
    assert get_priority("HIGHEST") == 0 and get_priority("lowest") == 100 and get_priority(45) == 45
    assert [PRIORITIES[n] for n in ("VERY_HIGH", "HIGH", "ABOVE_NORMAL", "NORMAL", "BELOW_NORMAL")] == [10, 30, 40, 50, 60]
    for bad in (-1, 101, "SOON", True, 1.5):
        with pytest.raises(ValueError):
            get_priority(bad)


def test_default_hooks_run_in_declared_order_whatever_the_list_order():
    t = _bare_trainer()
    # registered in the old list order (checkpoint before progress): the checkpoint still runs last
    for h in (CheckpointHook(1), ProgressHook(1), EvalHook(1), LRSchedulerHook()):
        t.register_hook(h)
    assert [type(h) for h in t.hooks] == [LRSchedulerHook, EvalHook, ProgressHook, CheckpointHook]
    assert all(h.trainer is t for h in t.hooks)


def test_a_trainer_hook_lands_at_its_priority_and_ties_keep_registration_order():
    t = _bare_trainer()
    for h in (LRSchedulerHook(), EvalHook(1), CheckpointHook(1), ProgressHook(1)):
        t.register_hook(h)
    reads_val_a, reads_val_b = _Tagged("a", "ABOVE_NORMAL"), _Tagged("b", "ABOVE_NORMAL")
    t.register_hook(reads_val_a)
    t.register_hook(_Tagged("first", "HIGHEST"))
    t.register_hook(reads_val_b)  # same priority as a, registered later: after a
    t.register_hook(_Tagged("normal"))  # HookBase's default NORMAL: after ProgressHook (registered earlier)
    t.register_hook(_Tagged("override", "HIGH"), priority=95)  # the trainer's priority wins over the hook's
    names = [getattr(h, "tag", type(h).__name__) for h in t.hooks]
    assert names == ["first", "LRSchedulerHook", "EvalHook", "a", "b", "ProgressHook", "normal", "override",
                     "CheckpointHook"]
    assert [h.priority for h in t.hooks] == [0, 10, 30, 40, 40, 50, 50, 95, 100]


def test_insert_by_priority_is_a_stable_sort():
    hooks = []
    order = [("x", 50), ("y", 10), ("z", 50), ("w", 10), ("v", 0)]
    for tag, p in order:
        insert_by_priority(hooks, _Tagged(tag, p))
    assert [h.tag for h in hooks] == ["v", "y", "w", "x", "z"]  # == sorted(order, key=priority), stable


def _build(tmp_path, data_root, trainer, cfg_file, dataset_cfg, *opts, mode="train"):
    from train import build_parser, setup_cfg
    from trainers import build_trainer

    args = build_parser().parse_args(["--root", data_root, "--seed", "1", "--output-dir", str(tmp_path),
                                      "--config-file", cfg_file, "--dataset-config-file", dataset_cfg,
                                      "--trainer", trainer, *SMALL_DATA, *opts])
    return build_trainer(setup_cfg(args), mode=mode)


def test_the_trainers_get_their_hooks_in_place(tmp_path, data_root):
    """EWMTCNN and VEGA add early stopping, EmoCoOp appends its initialiser and aux-weight hooks:
    each lands after EvalHook and before ProgressHook / CheckpointHook (no insert at an index)."""
    ew = _build(tmp_path / "ew", data_root, "EWMTCNN", os.path.join(ROOT, "configs/trainers/EWMTCNN/tiny_synthetic.yaml"),
                SYN_CFG, "TRAINER.EWMTCNN.EARLY_STOP_PATIENCE", "2", "MODEL.BACKBONE.NAME", "resnet18",
                "INPUT.SIZE", "(16, 16)")
    try:
        assert [type(h).__name__ for h in ew.hooks] == [
            "LRSchedulerHook", "EvalHook", "EarlyStoppingHook", "ProgressHook", "CheckpointHook"]
        es = ew.hooks[2]
        assert (es.patience, es.mode, es.min_delta) == (2, "max", 0.0)
    finally:
        ew.close()
    vega = _build(tmp_path / "vega", data_root, "VEGA",
                  os.path.join(ROOT, "configs/trainers/VEGA/tiny_synthetic_no_anchor_branch.yaml"),
                  os.path.join(ROOT, "configs/datasets/synthetic_conversation.yaml"),
                  "DATASET.CONVERSATION.SYNTHETIC.N_TRAIN_DIALOGUES", "4", "DATASET.CONVERSATION.SYNTHETIC.N_TEST_DIALOGUES",
                  "2", "TRAINER.VEGA.HIDDEN", "8", "TRAINER.VEGA.HEADS", "2", "TRAINER.VEGA.PATIENCE", "3")
    try:
        assert [type(h).__name__ for h in vega.hooks] == [
            "LRSchedulerHook", "EvalHook", "EarlyStoppingHook", "ProgressHook", "CheckpointHook"]
        es = vega.hooks[2]
        assert (es.metric, es.patience, es.mode, es.min_delta) == (None, 3, "max", 0.0)
    finally:
        vega.close()
    em = _build(tmp_path / "em", data_root, "EmoCoOp", os.path.join(ROOT, "configs/trainers/EmoCoOp/tiny_synthetic.yaml"),
                os.path.join(ROOT, "configs/datasets/synthetic_emotion_ml.yaml"))
    try:
        names = [type(h).__name__ for h in em.hooks]
        assert names[0] == "InitHook" and names[-2:] == ["ProgressHook", "CheckpointHook"]
        if "AuxWeightHook" in names:
            assert names.index("EvalHook") + 1 == names.index("AuxWeightHook")
    finally:
        em.close()


# ---------------------------------------------------------------------------------------------- early stopping
def _feed(hook, values, metric="m"):
    """Feed validation values (None = no validation that epoch); the 1-based epoch it stops after, or None."""
    t = SimpleNamespace(stop_training=False, evaluator=SimpleNamespace(main_metric=metric), has_val=True, hooks=[])
    hook.trainer = t
    for epoch, v in enumerate(values, 1):
        t.last_val = None if v is None else {metric: v, "other": -1.0}
        hook.after_epoch()
        if t.stop_training:
            return epoch
    return None


@pytest.mark.parametrize("values, mode, min_delta, patience, stops_after, best, bad", [
    # max, no delta: 5 best; 4, 5 (equal is no gain), 3 -> 3 bad > 2 at epoch 4
    ([5, 4, 5, 3, 9], "max", 0.0, 2, 4, 5, 3),
    # the same with patience 3: a 9 at epoch 5 resets the count, no stop
    ([5, 4, 5, 3, 9, 8], "max", 0.0, 3, None, 9, 1),
    # min: 3.0 best, 2.0 better, 2.5, 2.1, 2.2 worse -> stop at the 3rd bad (patience 2)
    ([3.0, 2.0, 2.5, 2.1, 2.2], "min", 0.0, 2, 5, 2.0, 3),
    # min_delta 0.5 (max): 10 -> 10.4 is not a gain (0.4 <= 0.5), 10.6 is (0.6 > 0.5)
    ([10, 10.4, 10.6, 11.0, 11.05], "max", 0.5, 2, None, 10.6, 2),
    ([10, 10.4, 10.5, 10.3], "max", 0.5, 2, 4, 10, 3),
    # min with min_delta: 1.0 -> 0.8 (gain 0.2 > 0.1), 0.75 (0.05, no), 0.71 (0.09, no), 0.69 (0.11, yes)
    ([1.0, 0.8, 0.75, 0.71, 0.69], "min", 0.1, 5, None, 0.69, 0),
    # epochs without validation count for nothing
    ([5, None, 4, None, None, 4, 4], "max", 0.0, 2, 7, 5, 3),
])
def test_early_stopping_hand_computed(values, mode, min_delta, patience, stops_after, best, bad):
    hook = EarlyStoppingHook("m", patience, mode, min_delta)
    assert _feed(hook, values) == stops_after
    assert hook.best == pytest.approx(best) and hook.bad == bad


def test_early_stopping_stops_after_more_than_patience_bad_evaluations():
    for patience in (1, 2, 5):
        # best at evaluation 1, then only worse: stops at evaluation 1 + patience + 1 (released rule)
        assert _feed(EarlyStoppingHook("m", patience), [1.0] + [0.0] * 10) == patience + 2


def test_early_stopping_main_metric_when_none_given():
    hook = EarlyStoppingHook(None, 1)
    assert _feed(hook, [0.5, 0.4, 0.3], metric="weighted_f1") == 3


def test_early_stopping_state_round_trip_continues_exactly():
    values = [3, 5, 4, 4.5, 6, 2, 1, 7, 5, 5, 5]
    whole = EarlyStoppingHook("m", 2)
    ref = _feed(whole, values)
    assert ref == 11  # hand count: bad 1, 2, reset by 6; 1, 2, reset by 7; then 5, 5, 5 -> 3 bad > 2
    for cut in range(1, len(values)):
        first = EarlyStoppingHook("m", 2)
        assert _feed(first, values[:cut]) is None
        state = first.state_dict()
        second = EarlyStoppingHook("m", 2)
        second.load_state_dict(dict(state))
        assert second.state_dict() == state
        stopped = _feed(second, values[cut:])
        assert stopped is not None and cut + stopped == ref, cut


def test_early_stopping_reads_a_vega_checkpoint_of_its_old_hook():
    """VEGA's own hook saved only ``bad_epochs`` and counted against EvalHook's best main metric."""
    hook = EarlyStoppingHook(None, 2)
    hook.load_state_dict({"bad_epochs": 2})
    ev = EvalHook(1)
    ev.load_state_dict({"best": 70.0})
    t = SimpleNamespace(stop_training=False, evaluator=SimpleNamespace(main_metric="weighted_f1", metric_names=lambda: None),
                        has_val=True, hooks=[ev, hook])
    hook.trainer = t
    hook.before_train()
    assert (hook.best, hook.bad) == (70.0, 2)
    t.last_val = {"weighted_f1": 69.0}
    hook.after_epoch()
    assert t.stop_training  # 3 bad > 2, as the old hook would have stopped


def test_early_stopping_bad_settings_and_missing_metric():
    with pytest.raises(ConfigError, match="mode must be max or min"):
        EarlyStoppingHook("m", 2, "auto")
    with pytest.raises(ConfigError, match="patience must be >= 1"):
        EarlyStoppingHook("m", 0)
    with pytest.raises(ConfigError, match="min_delta must be >= 0"):
        EarlyStoppingHook("m", 1, "max", -0.1)
    with pytest.raises(ConfigError, match="early-stopping metric 'nope' not in the validation results"):
        _feed(EarlyStoppingHook("nope", 1), [1.0])


def test_one_early_stopping_hook_in_the_code():
    """No second early-stopping class: every trainer that stops early builds the engine's."""
    found = []
    for base in ("trainers",):
        for cur, _, files in os.walk(os.path.join(ROOT, base)):
            for f in files:
                if f.endswith(".py"):
                    tree = ast.parse(open(os.path.join(cur, f), encoding="utf-8").read())
                    found += [f"{cur}/{f}:{n.name}" for n in ast.walk(tree)
                              if isinstance(n, ast.ClassDef) and "earlystop" in n.name.lower().replace("_", "")]
    assert found == [os.path.join(ROOT, "trainers", "engine") + "/hooks.py:EarlyStoppingHook"]


# ---------------------------------------------------------------------------------------------- no module-level state
def test_runstate_holds_no_run_state():
    from trainers.engine import runstate

    assert not hasattr(runstate, "MODE") and not hasattr(runstate, "LAST_COMMIT")


def test_train_py_writes_no_engine_module_attribute():
    """train.py hands the mode to the trainer and reads the last commit from it: it never assigns
    to, or mutates, an attribute of an engine module."""
    tree = ast.parse(open(os.path.join(ROOT, "train.py"), encoding="utf-8").read())
    bad = []
    for n in ast.walk(tree):
        targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, (ast.AugAssign, ast.AnnAssign)) else []
        for tg in targets:
            base = tg.value if isinstance(tg, ast.Subscript) else tg
            if isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name) and base.value.id == "runstate":
                bad.append(ast.unparse(tg))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("update", "clear", "pop"):
            owner = n.func.value
            if isinstance(owner, ast.Attribute) and isinstance(owner.value, ast.Name) and owner.value.id == "runstate":
                bad.append(ast.unparse(n))
    assert bad == []


def test_two_trainers_in_one_process_keep_their_own_state(tmp_path, data_root):
    """An evaluation-only trainer and a training one side by side: each keeps its mode and its last
    commit; training one does not change what the other reports."""
    opts = ("OPTIM.MAX_EPOCH", "1", "CACHE.FEATURES", "off")
    ev = _build(tmp_path / "a", data_root, "CoOp", COOP_CFG, SYN_CFG, *opts, mode="eval")
    tr = _build(tmp_path / "b", data_root, "CoOp", COOP_CFG, SYN_CFG, *opts)
    try:
        assert ev.evaluating_only and not tr.evaluating_only
        tr.train()
        assert tr.last_commit == {"dir": str(tmp_path / "b"), "epoch": 1, "finished": True}
        assert ev.last_commit == {} and ev.evaluating_only
        tr2 = _build(tmp_path / "c", data_root, "CoOp", COOP_CFG, SYN_CFG, *opts)  # a third, after the training
        try:
            assert tr2.last_commit == {} and not tr2.evaluating_only
        finally:
            tr2.close()
    finally:
        ev.close()
        tr.close()


def test_ctrl_c_line_comes_from_the_interrupted_trainer(tmp_path, data_root, monkeypatch, capsys):
    """The Ctrl-C line names the run of the trainer that was interrupted, carried by the exception."""
    import train
    from trainers.engine.hooks import CheckpointHook as CH

    original = CH.after_epoch

    def stop_after_first(self):
        original(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(CH, "after_epoch", stop_after_first)
    out = tmp_path / "run"
    argv = ["--root", data_root, "--seed", "1", "--output-dir", str(out), "--config-file", COOP_CFG,
            "--dataset-config-file", SYN_CFG, "--trainer", "CoOp", *SMALL_DATA, "OPTIM.MAX_EPOCH", "2",
            "CACHE.FEATURES", "off"]
    with pytest.raises(train.Interrupted) as e:
        train.main(argv)
    assert e.value.last_commit == {"dir": str(out), "epoch": 1, "finished": False}
    assert train.interrupted_line(e.value.last_commit).startswith(
        f"interrupted: rerun the same command to resume the run in {out} from epoch 1")
    assert train.interrupted_line(None).startswith("interrupted before the first epoch was saved")


# ---------------------------------------------------------------------------------------------- hook state on resume
def test_hook_states_match_by_name_and_older_lists_by_their_keys():
    from trainers.engine.persistence import hook_names, match_hook_states

    hooks = [LRSchedulerHook(), EvalHook(1), EarlyStoppingHook("m", 2), ProgressHook(1), CheckpointHook(1)]
    assert hook_names(hooks + [EvalHook(2)])[-1] == "EvalHook#2"
    es_state, eval_state, ck_state = {"best": 0.7, "bad": 1}, {"best": 0.9}, {"prev": 4}
    named = match_hook_states(hooks, [ck_state, es_state, eval_state, {}],
                              ["CheckpointHook", "EarlyStoppingHook", "EvalHook", "ProgressHook"])
    assert named == [{}, eval_state, es_state, {}, ck_state]
    # a checkpoint of a CNN trainer written before priorities: early stopping came after ProgressHook
    legacy_cnn = match_hook_states(hooks, [{}, eval_state, {}, es_state, ck_state], None)
    assert legacy_cnn == [{}, eval_state, es_state, {}, ck_state]
    # VEGA's own hook before it shared this one: {"bad_epochs"} right after EvalHook
    legacy_vega = match_hook_states(hooks, [{}, eval_state, {"bad_epochs": 3}, {}, ck_state], None)
    assert legacy_vega == [{}, eval_state, {"bad_epochs": 3}, {}, ck_state]
