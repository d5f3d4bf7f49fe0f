"""The one training engine every trainer runs on.

A trainer subclasses :class:`TrainerBase` and writes the method only:

* ``build_model()`` builds ``self.model`` and calls :meth:`register_model` for each module that
  trains (only those are optimised and saved);
* ``compute_loss(batch) -> dict`` returns at least ``{"loss": tensor}`` (other scalars are logged);
* ``inference(batch) -> Tensor[B, C]`` (default ``self.model(batch["img"])``);
* optionally ``build_hooks()`` (extra periodic behaviour; each hook declares its ``priority``, see
  :mod:`trainers.engine.hooks`) or ``train_step`` (e.g. two optimisers).

The engine owns the rest: data, device moves, autocast and grad scaling, clipping, LR
schedules, progress and logs, evaluation (exactly once per sample across processes),
best-model selection, checkpoints and resume, and DistributedDataParallel.
"""
from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn as nn

from utils.errors import ConfigError, EmoLabError
from utils.killpoints import killpoint
from trainers.evaluation import build_evaluator

from . import dist, plots
from .data import DataAccess, build_data_and_loaders
from .evaluation_loop import EvaluationMixin
from .persistence import PersistenceMixin
from . import runstate
from .checkpoint import BEST, ckpt_name
from .hooks import CheckpointHook, EvalHook, HookBase, LRSchedulerHook, ProgressHook, insert_by_priority
from .logger import MetricsWriter
from .trackers import trackers_from_cfg
from utils.progress import progress, set_progress_enabled
from .optim import build_lr_scheduler, build_optimizer
from .utils import MeterDict, autocast, resolve_precision, set_seed, to_device

logger = logging.getLogger(__name__)


class TrainingError(EmoLabError):
    """The run cannot go on (e.g. a non-finite loss)."""


def keep_frozen_in_eval(module: nn.Module) -> None:
    """Put every sub-module whose parameters are all frozen (and that has some) in eval mode."""
    for child in module.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            child.eval()
        elif params:
            keep_frozen_in_eval(child)


#: what a trainer is built for: "train" (a training run) or "eval" (``--eval-only``)
MODES = ("train", "eval")


@dataclass(frozen=True)
class EngineSettings:
    """The engine's settings, read from the config once when the trainer is built."""

    output_dir: str
    resume: str
    use_cuda: bool
    dist_timeout: float
    max_epoch: int
    seed: int
    progress_bar: bool
    compile: bool
    train_batch_size: int
    optim: Any  # the OPTIM node, handed to build_optimizer / build_lr_scheduler
    fused: bool
    max_grad_norm: float
    print_freq: int
    eval_freq: int
    checkpoint_freq: int
    final_model: str
    no_test: bool
    test_split: str
    per_class_result: bool
    threshold: float

    @classmethod
    def from_config(cls, cfg) -> "EngineSettings":
        if cfg.TEST.FINAL_MODEL not in ("best_val", "last_step"):
            raise ConfigError(f"unknown TEST.FINAL_MODEL {cfg.TEST.FINAL_MODEL!r} (last_step or best_val)")
        return cls(
            output_dir=cfg.OUTPUT_DIR, resume=cfg.RESUME, use_cuda=bool(cfg.USE_CUDA),
            dist_timeout=float(getattr(cfg.TRAIN, "DIST_TIMEOUT", 600.0)), max_epoch=int(cfg.OPTIM.MAX_EPOCH),
            seed=int(cfg.SEED), progress_bar=bool(cfg.TRAIN.PROGRESS_BAR), compile=bool(cfg.TRAIN.COMPILE),
            train_batch_size=int(cfg.DATALOADER.TRAIN_X.BATCH_SIZE), optim=cfg.OPTIM, fused=bool(cfg.OPTIM.FUSED),
            max_grad_norm=float(cfg.OPTIM.MAX_GRAD_NORM), print_freq=int(cfg.TRAIN.PRINT_FREQ),
            eval_freq=int(cfg.TRAIN.EVAL_FREQ), checkpoint_freq=int(cfg.TRAIN.CHECKPOINT_FREQ),
            final_model=cfg.TEST.FINAL_MODEL, no_test=bool(cfg.TEST.NO_TEST), test_split=cfg.TEST.SPLIT,
            per_class_result=bool(cfg.TEST.PER_CLASS_RESULT), threshold=float(cfg.TEST.THRESHOLD),
        )


class TrainerBase(DataAccess, PersistenceMixin, EvaluationMixin):
    """Engine base class. See the module docstring for what a trainer provides.

    ``mode`` is what the trainer is built for: ``"train"`` or ``"eval"`` (``--eval-only``: metrics go
    to ``eval.jsonl`` when the folder holds a training run, no TensorBoard)."""

    #: targets the trainer needs, by task; checked against the dataset at start-up
    TASK_TARGETS = {"single_label": {"label"}, "multi_label": {"labels"}}
    #: passed to DistributedDataParallel
    find_unused_parameters = False

    def __init__(self, cfg, mode: str = "train") -> None:
        if mode not in MODES:
            raise ValueError(f"trainer mode must be one of {MODES}, got {mode!r}")
        self.cfg = cfg
        self.settings = s = EngineSettings.from_config(cfg)
        self.device = dist.init_distributed(s.use_cuda, s.dist_timeout)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.output_dir = s.output_dir
        self.max_epoch = s.max_epoch
        self.start_epoch = self.epoch = 0
        self.batch_idx, self.num_batches = 0, 0
        self.precision = resolve_precision(self.precision_setting(), self.device)
        self._models: "OrderedDict[str, nn.Module]" = OrderedDict()
        self._optims: Dict[str, Optional[torch.optim.Optimizer]] = OrderedDict()
        self._scheds: Dict[str, Any] = OrderedDict()
        self.is_best, self.last_val = False, None
        self._stop = False  # a hook (e.g. early stopping) sets stop_training to end training after the epoch
        self.evaluating_only = mode == "eval"
        #: the last commit of this trainer's run: {"dir", "epoch", "finished"} (for the Ctrl-C line)
        self.last_commit: Dict[str, Any] = {}
        tensorboard, trackers = (False, []) if self.evaluating_only or not self.is_main else trackers_from_cfg(cfg)
        self.writer = MetricsWriter(self.output_dir, enabled=self.is_main, tensorboard=tensorboard, trackers=trackers)
        if self.evaluating_only and runstate.holds_run(self.output_dir):
            self.writer.path = os.path.join(self.output_dir, runstate.EVAL_RECORDS)  # never the run's metrics
        elif not self.evaluating_only:
            self.writer.held = []  # an epoch's records reach metrics.jsonl only after its commit
        self.records: List[Dict[str, Any]] = []  # committed metrics records
        self.manifest: Optional[Dict[str, Any]] = None  # the last committed run state
        self.loaded_checkpoint: Optional[Dict[str, Any]] = None  # what load_model loaded last
        if not s.progress_bar:
            set_progress_enabled(False)
        if s.seed >= 0:
            set_seed(s.seed)
        self.build_data()
        if self.world_size > 1:
            bs = s.train_batch_size
            logger.info(f"distributed: world size {self.world_size}, backend {torch.distributed.get_backend()}, "
                        f"batch {bs} per process = {bs * self.world_size} effective")
        self.build_model()
        self._check_registered()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.after_build()
        if s.compile:
            self.model = torch.compile(self.model)
        self._wrap_ddp()
        self.hooks: List[HookBase] = []
        for h in self.build_hooks():
            self.register_hook(h)

    def register_hook(self, hook: HookBase, priority: Union[int, str, None] = None) -> None:
        """Add ``hook`` at its place: by ``priority`` (else the hook's declared one; see
        :mod:`trainers.engine.hooks`), after the hooks of equal priority registered before it."""
        hook.trainer = self
        insert_by_priority(self.hooks, hook, priority)

    @property
    def stop_training(self) -> bool:
        return self._stop

    @stop_training.setter
    def stop_training(self, value: bool) -> None:
        if value and not self._stop:
            killpoint("early_stop", self.epoch + 1)
        self._stop = bool(value)

    # ------------------------------------------------------------------ to override
    def precision_setting(self) -> str:
        """The configured precision (trainers map their own PREC key here)."""
        return self.cfg.TRAIN.PRECISION

    def build_model(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement build_model()")

    def compute_loss(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss()")

    def inference(self, batch: Dict[str, Any]) -> torch.Tensor:
        """Logits [B, C] for a batch."""
        return self.model(batch["img"])

    def after_build(self) -> None:
        """Called once data and model exist (e.g. to replace image loaders by cached features)."""

    def build_hooks(self) -> List[HookBase]:
        """The default hooks; trainers add their own to the list (each hook's ``priority`` sets
        where it runs, so the list order matters only between hooks of equal priority)."""
        s = self.settings
        return [
            LRSchedulerHook(),
            EvalHook(s.eval_freq),
            CheckpointHook(s.checkpoint_freq),
            ProgressHook(s.print_freq),
        ]

    @classmethod
    def finalize_config(cls, cfg) -> None:
        """Fill config values that depend on the trainer, before the config is frozen (train.py)."""
        if not cfg.INPUT.SIZE:
            cfg.INPUT.SIZE = (224, 224)

    def build_evaluator(self):
        """The evaluator for ``self.task`` (override for e.g. regression metrics)."""
        return build_evaluator(self.cfg, self.classnames, self.task)

    def required_targets(self) -> set:
        return set(self.TASK_TARGETS[self.task])

    # ------------------------------------------------------------------ data
    def build_data(self) -> None:
        """``self.data`` (dataset, transforms, loaders; see ``engine/data.py``) and the evaluator."""
        build_data_and_loaders(self)
        self.evaluator = self.build_evaluator()
        logger.info(
            f"dataset {self.dataset.name}: {self.num_classes} classes, task {self.task}, "
            f"train {len(self.dataset.train_x)}, val {len(self.dataset.val)}, test {len(self.dataset.test)}"
        )

    # ------------------------------------------------------------------ models
    def register_model(self, name: str, module: nn.Module, optim: Any = "default", sched: Any = "default") -> None:
        """Register a trainable module; it gets an optimiser/scheduler from ``cfg.OPTIM`` unless given
        (``None`` = not optimised, e.g. a frozen teacher that must still be saved)."""
        if name in self._models:
            raise ValueError(f"model {name!r} registered twice")
        self._models[name] = module
        if optim == "default":
            params = [p for p in module.parameters() if p.requires_grad]
            fused = self.settings.fused and self.device.type == "cuda"
            optim = build_optimizer(params, self.settings.optim, fused=fused)
        if sched == "default":
            sched = build_lr_scheduler(optim, self.settings.optim, len(self.train_loader)) if optim is not None else None
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self) -> List[str]:
        return list(self._models)

    def optimizers(self) -> List[torch.optim.Optimizer]:
        return [o for o in self._optims.values() if o is not None]

    def schedulers(self) -> List[Any]:
        return [s for s in self._scheds.values() if s is not None]

    def current_lr(self) -> float:
        opts = self.optimizers()
        return max(g["lr"] for g in opts[0].param_groups) if opts else 0.0  # the largest group's (MAE's max_lr)

    def trainable_parameters(self) -> List[nn.Parameter]:
        return [p for m in self._models.values() for p in m.parameters() if p.requires_grad]

    def _check_registered(self) -> None:
        if not hasattr(self, "model"):
            raise TypeError(f"{type(self).__name__}.build_model() must set self.model")
        self.model.to(self.device)
        n_train = sum(p.numel() for p in self.trainable_parameters())
        n_all = sum(p.numel() for p in self.model.parameters())
        logger.info(f"parameters: {n_train:,} trainable of {n_all:,} ({', '.join(self._models) or 'none'})")

    def _wrap_ddp(self) -> None:
        self.model_without_ddp = self.model
        if self.world_size > 1 and any(p.requires_grad for p in self.model.parameters()):
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=self.find_unused_parameters
            )

    def set_model_mode(self, mode: str) -> None:
        """Train or eval mode; in train mode, sub-modules with no trainable parameter (a frozen
        backbone) stay in eval mode, so their batch-norm statistics and dropout never change."""
        self.model.train(mode == "train")
        if mode == "train":
            keep_frozen_in_eval(self.model)

    # ------------------------------------------------------------------ training
    def train_step(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """One optimisation step; returns detached scalars (no host-device sync here)."""
        with autocast(self.precision, self.device):
            out = self.compute_loss(batch)
        loss = out["loss"]
        optims = self.optimizers()
        for o in optims:
            o.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        max_norm = self.settings.max_grad_norm
        if max_norm > 0:
            for o in optims:
                self.scaler.unscale_(o)
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), max_norm)
        for o in optims:
            self.scaler.step(o)
        self.scaler.update()
        return {k: v.detach() if torch.is_tensor(v) else v for k, v in out.items()}

    def _call(self, stage: str) -> None:
        for h in self.hooks:
            getattr(h, stage)()

    def _check_finite(self) -> None:
        bad = int(self._first_bad.item())
        if dist.any_rank(bad >= 0):
            step = bad if bad >= 0 else -1
            raise TrainingError(
                f"non-finite loss at epoch {self.epoch + 1}, step {step + 1 if step >= 0 else '?'}"
                f" (of {self.num_batches}); stopped without saving this epoch: lower OPTIM.LR or use fp32"
            )

    def train(self) -> Dict[str, float]:
        """Run the epochs, then the final test; returns the final test metrics."""
        s = self.settings
        resume_dir = s.resume or self.output_dir
        self.start_epoch = self.resume_if_possible(resume_dir)
        if self.start_epoch == 0 and self.is_main:
            # an empty run state first: from now on only committed epochs count (files alone do not)
            self.manifest = {"version": 1, "epoch": 0, "max_epoch": self.max_epoch, "modules": list(self._models),
                             "files": {}, "best_epoch": None, "stop_training": False, "alive": [], "obsolete": [],
                             "records": [], "finished": False, "final": None}
            self._write(lambda: runstate.write_manifest(self.output_dir, self.manifest),
                        os.path.join(self.output_dir, runstate.MANIFEST))
        self._call("before_train")
        self.num_batches = len(self.train_loader)
        t0 = time.time()
        epochs = range(self.start_epoch, self.max_epoch)
        if self.stop_training:
            logger.info(f"training had stopped early after epoch {self.start_epoch}: going to the final test")
            epochs = range(0)
        for self.epoch in epochs:
            if s.seed >= 0:
                set_seed(s.seed * 1000 + self.epoch)
            if hasattr(self.train_loader.sampler, "set_epoch"):
                self.train_loader.sampler.set_epoch(self.epoch)
            self.set_model_mode("train")
            self.meters = MeterDict()
            self._first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
            step_dev = torch.full((), -1, dtype=torch.long, device=self.device)  # step counter kept on the device
            self._call("before_epoch")
            it = self._train_bar = progress(self.train_loader, total=self.num_batches, unit="batch",
                                            desc=f"epoch {self.epoch + 1}/{self.max_epoch}", interval=float("inf"))
            for self.batch_idx, batch in enumerate(it):
                batch = to_device(batch, self.device)
                self.step_lr = self.current_lr()  # the LR this step uses (schedulers step after it)
                out = self.train_step(batch)
                step_dev += 1
                bad_now = ~torch.isfinite(out["loss"].float())
                self._first_bad = torch.where((self._first_bad < 0) & bad_now, step_dev, self._first_bad)
                self.meters.update(out)
                if (self.batch_idx + 1) % max(1, s.print_freq) == 0:
                    self._check_finite()
                self._call("after_step")
            self._check_finite()
            self._call("after_epoch")
            if dist.any_rank(self.stop_training):
                logger.info(f"training stopped after epoch {self.epoch + 1}")
                break
        self._call("after_train")
        logger.info("Finish training", extra={"bare": True})  # Dassl's line, exactly: CoOp's parse_test_res.py reads results after it
        logger.info(f"training time: {time.time() - t0:.1f}s")
        if not len(epochs) and self.start_epoch > 0:
            self.epoch = self.start_epoch - 1
            if self.start_epoch >= self.max_epoch:
                logger.info("the run had already finished all epochs")
        if self.is_main:
            plots.plot_training_curves(self)  # drawn now (a kill after the final commit keeps it) ...
        results = self.final_test()
        if self.is_main:
            plots.plot_training_curves(self)  # ... and again with the final test, which the figure shows
        return results

    def final_test(self) -> Dict[str, float]:
        """Test the model TEST.FINAL_MODEL names, then commit the run as finished (records which
        checkpoint was tested, so ``--eval-only`` evaluates the same one)."""
        s = self.settings
        last = (self.manifest or {}).get("epoch", 0)
        used = {"file": ckpt_name(last), "epoch": last} if self._models and last else None
        if s.no_test:
            self._commit_final({}, used)
            return {}
        if s.final_model == "best_val":
            if self.has_val and any(os.path.isfile(os.path.join(self.output_dir, n, BEST)) for n in self._models):
                logger.info("loading the best validation model for the final test")
                self.load_model(self.output_dir, epoch=None)
                used = self.loaded_checkpoint
            else:
                logger.warning("TEST.FINAL_MODEL best_val but no validation checkpoint: testing the last model")
        self.final_checkpoint = used
        if used:
            logger.info(f"final test of {used['file']} (epoch {used['epoch']})")
        results = self.test(final=True)
        self._commit_final(results, used)
        return results

    def close(self) -> None:
        self.writer.close()
