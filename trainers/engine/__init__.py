"""The training engine (loop, hooks, optimisation, checkpoints, distributed)."""
from .hooks import CheckpointHook, EarlyStoppingHook, EvalHook, HookBase, LRSchedulerHook, ProgressHook
from .trainer import TrainerBase, TrainingError

__all__ = ["TrainerBase", "TrainingError", "HookBase", "LRSchedulerHook", "EvalHook", "CheckpointHook", "ProgressHook",
           "EarlyStoppingHook"]
