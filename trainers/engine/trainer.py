"""The one training engine every trainer runs on.

A trainer subclasses :class:`TrainerBase` and writes the method only:

* ``build_model()`` builds ``self.model`` and calls :meth:`register_model` for each module that
  trains (only those are optimised and saved);
* ``compute_loss(batch) -> dict`` returns at least ``{"loss": tensor}`` (other scalars are logged);
* ``inference(batch) -> Tensor[B, C]`` (default ``self.model(batch["img"])``);
* optionally ``build_hooks()`` (extra periodic behaviour) or ``train_step`` (e.g. two optimisers).

The engine owns the rest: data, device moves, autocast and grad scaling, clipping, LR
schedules, progress and logs, evaluation (exactly once per sample across processes),
best-model selection, checkpoints and resume, and DistributedDataParallel.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from configs.errors import CheckpointError, ConfigError, EmoLabError
from configs.fileio import atomic_torch_save
from configs.killpoints import killpoint
from trainers.evaluation import build_evaluator

from . import dist, plots
from .data import build_data_and_loaders
from . import runstate
from .checkpoint import checkpoint_path, ckpt_name, load_checkpoint
from .hooks import CheckpointHook, EvalHook, HookBase, LRSchedulerHook, ProgressHook
from .logger import MetricsWriter, checkpoint_summary, quiet_evaluator, summary_line
from configs.progress import progress, set_progress_enabled
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


class TrainerBase:
    """Engine base class. See the module docstring for what a trainer provides."""

    #: targets the trainer needs, by task; checked against the dataset at start-up
    TASK_TARGETS = {"single_label": {"label"}, "multi_label": {"labels"}}
    #: passed to DistributedDataParallel
    find_unused_parameters = False

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.device = dist.init_distributed(cfg.USE_CUDA, float(getattr(cfg.TRAIN, "DIST_TIMEOUT", 600.0)))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.output_dir = cfg.OUTPUT_DIR
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.start_epoch = self.epoch = 0
        self.batch_idx, self.num_batches = 0, 0
        self.precision = resolve_precision(self.precision_setting(), self.device)
        self._models: "OrderedDict[str, nn.Module]" = OrderedDict()
        self._optims: Dict[str, Optional[torch.optim.Optimizer]] = OrderedDict()
        self._scheds: Dict[str, Any] = OrderedDict()
        self.is_best, self.last_val = False, None
        self._stop = False  # a hook (e.g. early stopping) sets stop_training to end training after the epoch
        self.evaluating_only = runstate.MODE["value"] == "eval"
        self.writer = MetricsWriter(self.output_dir, enabled=self.is_main, tensorboard=not self.evaluating_only)
        if self.evaluating_only and runstate.holds_run(self.output_dir):
            self.writer.path = os.path.join(self.output_dir, runstate.EVAL_RECORDS)  # never the run's metrics
        elif not self.evaluating_only:
            self.writer.held = []  # an epoch's records reach metrics.jsonl only after its commit
        self.records: List[Dict[str, Any]] = []  # committed metrics records
        self.manifest: Optional[Dict[str, Any]] = None  # the last committed run state
        self.loaded_checkpoint: Optional[Dict[str, Any]] = None  # what load_model loaded last
        if not cfg.TRAIN.PROGRESS_BAR:
            set_progress_enabled(False)
        if cfg.SEED >= 0:
            set_seed(cfg.SEED)
        self.build_data()
        if self.world_size > 1:
            bs = cfg.DATALOADER.TRAIN_X.BATCH_SIZE
            logger.info(f"distributed: world size {self.world_size}, backend {torch.distributed.get_backend()}, "
                        f"batch {bs} per process = {bs * self.world_size} effective")
        self.build_model()
        self._check_registered()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.after_build()
        if cfg.TRAIN.COMPILE:
            self.model = torch.compile(self.model)
        self._wrap_ddp()
        self.hooks: List[HookBase] = []
        hooks = list(self.build_hooks())
        # the checkpoint hook commits the epoch, so it runs after every other hook's after_epoch
        hooks = [h for h in hooks if not isinstance(h, CheckpointHook)] + [h for h in hooks if isinstance(h, CheckpointHook)]
        for h in hooks:
            h.trainer = self
            self.hooks.append(h)

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
        """The default hooks; trainers append their own (mind the order)."""
        cfg = self.cfg
        return [
            LRSchedulerHook(),
            EvalHook(cfg.TRAIN.EVAL_FREQ),
            CheckpointHook(cfg.TRAIN.CHECKPOINT_FREQ),
            ProgressHook(cfg.TRAIN.PRINT_FREQ),
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
        """Dataset, transforms, loaders (see ``engine/data.py``) and the evaluator."""
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
            fused = bool(self.cfg.OPTIM.FUSED) and self.device.type == "cuda"
            optim = build_optimizer(params, self.cfg.OPTIM, fused=fused)
        if sched == "default":
            sched = build_lr_scheduler(optim, self.cfg.OPTIM, len(self.train_loader)) if optim is not None else None
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
        return opts[0].param_groups[0]["lr"] if opts else 0.0

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

    # ------------------------------------------------------------------ checkpoints
    def extra_state(self) -> Dict[str, Any]:
        """Engine state saved with every epoch: hook state, ``stop_training`` and the RNG state."""
        import random

        import numpy as np

        np_state = np.random.get_state()
        return {
            "hooks": [h.state_dict() for h in getattr(self, "hooks", [])],
            "stop_training": bool(self.stop_training),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": [np_state[0], torch.from_numpy(np_state[1].astype("int64")), int(np_state[2]),
                          int(np_state[3]), float(np_state[4])],
                "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            },
        }

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        for h, s in zip(self.hooks, state.get("hooks", [])):
            h.load_state_dict(s)
        self._stop = bool(state.get("stop_training", False))
        rng = state.get("rng")
        if rng:
            import random

            import numpy as np

            torch.set_rng_state(rng["torch"])
            n = rng["numpy"]
            np.random.set_state((n[0], n[1].numpy().astype("uint32"), n[2], n[3], n[4]))
            py = rng["python"]
            random.setstate((py[0], tuple(py[1]), py[2]))

    def save_model(self, epoch: int, is_best: bool = False, val_result: Optional[dict] = None) -> None:
        """Commit epoch ``epoch`` (see :mod:`trainers.engine.runstate`): every module's Dassl file,
        then the run state naming them (the commit), then the best link, markers, deletions and
        the epoch's metrics records. Only rank 0 writes."""
        if not self.is_main:
            return
        out = self.output_dir
        engine = self.extra_state()
        prev = self.manifest or {}
        files = {}
        for name, module in self._models.items():
            killpoint(f"before_save:{name}", epoch)
            opt, sch = self._optims[name], self._scheds[name]
            state = {
                "state_dict": module.state_dict(),
                "epoch": epoch,
                "optimizer": opt.state_dict() if opt is not None else None,
                "scheduler": sch.state_dict() if sch is not None else None,
                "val_result": dict(val_result) if val_result else None,
                "scaler": self.scaler.state_dict(),
                "engine": engine,
            }
            path = os.path.join(out, name, ckpt_name(epoch))
            self._write(lambda p=path, st=state: (os.makedirs(os.path.dirname(p), exist_ok=True),
                                                   atomic_torch_save(st, p)), path)
            files[name] = os.path.join(name, ckpt_name(epoch))
            killpoint(f"after_save:{name}", epoch)
        period = self.cfg.TRAIN.CHECKPOINT_FREQ
        alive_prev = [k for k in prev.get("alive", []) if k != epoch]
        alive = sorted({k for k in alive_prev if period > 0 and k % period == 0} | {epoch})
        held = list(self.writer.held or [])
        manifest = {
            "version": 1,
            "epoch": epoch,
            "max_epoch": self.max_epoch,
            "modules": list(self._models),
            "files": files,
            "best_epoch": epoch if is_best else prev.get("best_epoch"),
            "stop_training": bool(self.stop_training),
            "alive": alive,
            "obsolete": sorted(k for k in alive_prev if k not in alive),
            "records": self.records + held,
            "finished": False,
            "final": None,
        }
        self._write(lambda: runstate.write_manifest(out, manifest), os.path.join(out, runstate.MANIFEST))
        self.manifest, self.records = manifest, manifest["records"]
        runstate.LAST_COMMIT.update(dir=out, epoch=epoch, finished=False)
        killpoint("after_commit", epoch)
        self._write(lambda: runstate.apply_commit(out, manifest), out)
        killpoint("before_records", epoch)
        self._write(lambda: self.writer.append(held), self.writer.path)
        if self.writer.held is not None:
            self.writer.held = []

    @staticmethod
    def _write(fn, path: str) -> None:
        """Run a write; a failed one (disk full, read-only) is a one-line error, earlier files intact."""
        try:
            fn()
        except OSError as e:
            raise runstate.write_error(path, e) from None

    def _commit_final(self, results: Dict[str, float], checkpoint: Optional[Dict[str, Any]]) -> None:
        """Record that the run finished (final test done) in the run state, then in metrics.jsonl."""
        if not self.is_main:
            return
        held = list(self.writer.held or [])
        manifest = dict(self.manifest or {"version": 1, "epoch": 0, "max_epoch": self.max_epoch, "modules": [],
                                          "files": {}, "best_epoch": None, "alive": [], "obsolete": []})
        manifest.update(records=self.records + held, finished=True, stop_training=bool(self.stop_training),
                        final={"checkpoint": checkpoint, "metrics": results})
        out = self.output_dir
        self._write(lambda: runstate.write_manifest(out, manifest), os.path.join(out, runstate.MANIFEST))
        self.manifest, self.records = manifest, manifest["records"]
        runstate.LAST_COMMIT.update(dir=out, epoch=manifest["epoch"], finished=True)
        killpoint("after_final_commit")
        self._write(lambda: self.writer.append(held), self.writer.path)
        if self.writer.held is not None:
            self.writer.held = []

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load weights only (``--model-dir/--load-epoch``; epoch None = best, else latest)."""
        if not self._models:
            logger.info("the trainer has no trainable modules: nothing to load")
            return
        for name, module in self._models.items():
            path = checkpoint_path(directory, name, epoch)
            ckpt = load_checkpoint(path)
            self._load_state_dict(module, ckpt["state_dict"], path)
            self.loaded_checkpoint = {"file": os.path.basename(path), "epoch": ckpt.get("epoch")}
            logger.info(f"loaded {name}: {path} ({checkpoint_summary(ckpt, getattr(self.evaluator, 'main_metric', ''))})")

    @staticmethod
    def _load_state_dict(module: nn.Module, state: Dict[str, Any], path: str) -> None:
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).replace("\n", " ").replace("\t", "")
            raise CheckpointError(f"checkpoint {path} does not fit the model: {first[:300]}") from None

    def _recover_from_files(self, directory: str, manifest: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        """A run state rebuilt from the checkpoint files (no or dangling ``run_state.json``/markers)."""
        names = list(self._models)
        k = runstate.scan_checkpoints(directory, names)
        if k is None:
            left = [os.path.join(n, f"model.pth.tar-{k}") for n in names
                    for k in runstate.epochs_on_disk(os.path.join(directory, n))]
            if left:
                raise CheckpointError(
                    f"{directory} holds checkpoint files ({', '.join(left[:4])}) but no complete, readable epoch of "
                    f"every module ({', '.join(names)}): use a new --output-dir, or --restart to start over there")
            return None
        if manifest is not None:
            records = [r for r in manifest.get("records", []) if not r.get("final") and int(r.get("epoch", 0)) <= k]
        else:
            records = self._records_from_file(k)
        logger.warning(f"no valid run state in {directory}: resuming from the latest complete checkpoint files "
                       f"(epoch {k})")
        return {"version": 1, "epoch": k, "max_epoch": self.max_epoch, "modules": names,
                "files": {n: os.path.join(n, ckpt_name(k)) for n in names}, "best_epoch": None,
                "stop_training": False, "alive": [k], "obsolete": [], "records": records, "finished": False,
                "final": None, "recovered": True}

    def _records_from_file(self, k: int) -> List[Dict[str, Any]]:
        """Records of epochs <= k in an older run's metrics.jsonl, each (split, epoch) once."""
        import json

        path = os.path.join(self.output_dir, "metrics.jsonl")
        out, seen = [], set()
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    key = (r.get("split"), r.get("epoch"))
                    if isinstance(r, dict) and not r.get("final") and int(r.get("epoch", 0)) <= k and key not in seen:
                        seen.add(key)
                        out.append(r)
        return out

    def resume_if_possible(self, directory: str) -> int:
        """Restore models, optimisers, schedulers, scaler, hook, early-stopping and RNG state from the
        run state in ``directory`` (or, without a valid one, from the latest complete checkpoint
        files); return the epoch. Also finishes the follow-up of the last commit."""
        names = list(self._models)
        m = runstate.read_manifest(directory)
        if m is not None and m.get("epoch", 0) == 0 and not m.get("finished"):
            return 0  # the run started but committed no epoch: files on disk are uncommitted leftovers
        if m is not None and m.get("epoch", 0) > 0:
            files = m.get("files", {})
            if set(files) != set(names) or not all(os.path.isfile(os.path.join(directory, files[n])) for n in names):
                logger.warning(f"{runstate.MANIFEST} in {directory} names missing checkpoint files")
                m = self._recover_from_files(directory, m)
        elif m is None and names:
            m = self._recover_from_files(directory, None)
        if m is None:
            return 0
        epoch = int(m["epoch"])
        engine: Dict[str, Any] = {}
        for i, name in enumerate(names):
            path = os.path.join(directory, m["files"][name])
            ckpt = load_checkpoint(path)
            if int(ckpt.get("epoch", -1)) != epoch:
                raise CheckpointError(f"checkpoint {path} holds epoch {ckpt.get('epoch')}, the run state says {epoch}")
            self._load_state_dict(self._models[name], ckpt["state_dict"], path)
            if self._optims[name] is not None and ckpt.get("optimizer"):
                self._optims[name].load_state_dict(ckpt["optimizer"])
            if self._scheds[name] is not None and ckpt.get("scheduler"):
                self._scheds[name].load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            if i == 0:
                engine = ckpt.get("engine") or {}
        self.load_extra_state(engine)
        self._stop = bool(m.get("stop_training", self._stop))
        self.records = list(m.get("records", []))
        self.manifest = m
        if self.is_main and os.path.abspath(directory) == os.path.abspath(self.output_dir):
            runstate.remove_temporaries(directory, names)
            self._write(lambda: runstate.apply_commit(directory, m), directory)
            if m.get("recovered"):
                self._write(lambda: runstate.write_manifest(directory, m), os.path.join(directory, runstate.MANIFEST))
        if self.is_main:
            self._write(lambda: self.writer.rewrite(self.records), self.writer.path)
        runstate.LAST_COMMIT.update(dir=self.output_dir, epoch=epoch, finished=False)
        logger.info(f"resumed from {directory} at epoch {epoch}"
                    + (" (training had stopped early)" if self.stop_training else ""))
        return epoch

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
        max_norm = self.cfg.OPTIM.MAX_GRAD_NORM
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
        resume_dir = self.cfg.RESUME or self.output_dir
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
            if self.cfg.SEED >= 0:
                set_seed(self.cfg.SEED * 1000 + self.epoch)
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
                if (self.batch_idx + 1) % max(1, self.cfg.TRAIN.PRINT_FREQ) == 0:
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
        if self.is_main:
            plots.plot_training_curves(self)
        if not len(epochs) and self.start_epoch > 0:
            self.epoch = self.start_epoch - 1
            if self.start_epoch >= self.max_epoch:
                logger.info("the run had already finished all epochs")
        return self.final_test()

    def final_test(self) -> Dict[str, float]:
        """Test the model TEST.FINAL_MODEL names, then commit the run as finished (records which
        checkpoint was tested, so ``--eval-only`` evaluates the same one)."""
        if self.cfg.TEST.FINAL_MODEL not in ("best_val", "last_step"):
            raise ConfigError(f"unknown TEST.FINAL_MODEL {self.cfg.TEST.FINAL_MODEL!r} (last_step or best_val)")
        last = (self.manifest or {}).get("epoch", 0)
        used = {"file": ckpt_name(last), "epoch": last} if self._models and last else None
        if self.cfg.TEST.NO_TEST:
            self._commit_final({}, used)
            return {}
        if self.cfg.TEST.FINAL_MODEL == "best_val":
            if self.has_val and any(
                os.path.isfile(os.path.join(self.output_dir, n, "model-best.pth.tar")) for n in self._models
            ):
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

    # ------------------------------------------------------------------ evaluation
    def test(self, split: Optional[str] = None, final: bool = True) -> Dict[str, float]:
        split = split or self.cfg.TEST.SPLIT
        if split not in ("val", "test"):
            raise ConfigError(f"unknown TEST.SPLIT {split!r} (val or test)")
        return self.evaluate(split, final=final)

    @torch.no_grad()
    def evaluate(self, split: str, final: bool = False) -> Dict[str, float]:
        """Evaluate on ``split``; every sample counted exactly once across processes."""
        loader = self.val_loader if split == "val" else self.test_loader
        if loader is None:
            raise ConfigError(f"the dataset has no {split} split")
        self.set_model_mode("eval")
        logits_l, index_l, tgt_l = [], [], {}
        for i, batch in enumerate(progress(loader, desc=f"evaluate {split}", unit="batch")):
            batch = to_device(batch, self.device)
            with autocast(self.precision, self.device):
                logits = self.inference(batch)
            if i == 0:
                killpoint(f"eval:{split}", self.epoch + 1)  # the kill harness: in the middle of an evaluation
            logits_l.append(logits.float())
            index_l.append(batch["index"])
            for k in ("label", "labels", "dist", "va"):
                if k in batch:
                    tgt_l.setdefault(k, []).append(batch[k])
        local = {
            "logits": torch.cat(logits_l).cpu() if logits_l else torch.zeros(0, self.num_classes),
            "index": torch.cat(index_l).cpu() if index_l else torch.zeros(0, dtype=torch.long),
            **{k: torch.cat(v).cpu() for k, v in tgt_l.items()},
        }
        parts = dist.all_gather_object(local)
        results: Optional[Dict[str, float]] = None
        if self.is_main:
            merged = {k: torch.cat([p[k] for p in parts if k in p]) for k in local}
            order = torch.argsort(merged["index"])
            merged = {k: v[order] for k, v in merged.items()}
            keep = torch.ones(len(order), dtype=torch.bool)
            keep[1:] = merged["index"][1:] != merged["index"][:-1]
            merged = {k: v[keep] for k, v in merged.items()}
            self.evaluator.reset()
            logits = merged.pop("logits")
            self.evaluator.process(logits, merged)
            if final or self.cfg.TEST.PER_CLASS_RESULT:
                logger.info(f"evaluate on the *{split}* set")
                results = {k: float(v) for k, v in self.evaluator.evaluate().items()}
            else:  # validation during training: one summary line
                with quiet_evaluator():
                    results = {k: float(v) for k, v in self.evaluator.evaluate().items()}
                logger.info(summary_line(split, self.epoch + 1, self.max_epoch, results, self.evaluator.main_metric))
            record = {"split": split, "epoch": self.epoch + 1, "final": final, "metrics": results}
            ck = getattr(self, "final_checkpoint", None) if final else None
            if ck:
                record["checkpoint"] = ck  # the checkpoint this final test (or evaluation) used
            self.writer.write(record)
            self.writer.scalars(split, results, self.epoch + 1)
            self.last_outputs = merged
            if final:
                plots.plot_evaluation(self, split, logits, merged, results)
        results = dist.broadcast_object(results)
        self.set_model_mode("train")
        return results

    @torch.no_grad()
    def predict(self, images: Any, batch_size: int = 64) -> List[Dict[str, Any]]:
        """Predictions for PIL images (or paths), through the test transform.

        Returns one dict per image: ``classname``, ``label`` and ``probs`` ({class: probability})
        for single-label tasks; ``classnames`` (sigmoid > ``TEST.THRESHOLD``) and ``probs`` for
        multi-label ones; ``valence``/``arousal`` for VA regression outputs.
        """
        from PIL import Image

        if isinstance(images, (str, Image.Image)):
            images = [images]
        pil = [Image.open(im).convert("RGB") if isinstance(im, str) else im.convert("RGB") for im in images]
        self.set_model_mode("eval")
        outs = []
        for b in range(0, len(pil), batch_size):
            x = torch.stack([self.tfm_test(im) for im in pil[b:b + batch_size]]).to(self.device)
            with autocast(self.precision, self.device):
                outs.append(self.inference({"img": x}).float().cpu())
        self.set_model_mode("train")
        out = torch.cat(outs) if outs else torch.zeros(0, self.num_classes)
        names = list(self.classnames)
        preds: List[Dict[str, Any]] = []
        for row in out:
            if type(self.evaluator).__name__ == "ValenceArousal":
                preds.append({"valence": float(row[0]), "arousal": float(row[1])})
            elif self.task == "multi_label":
                p = row.sigmoid()
                preds.append({"classnames": [n for n, v in zip(names, p) if v > self.cfg.TEST.THRESHOLD],
                              "probs": {n: float(v) for n, v in zip(names, p)}})
            else:
                p = row.softmax(0)
                k = int(p.argmax())
                preds.append({"classname": names[k], "label": k, "probs": {n: float(v) for n, v in zip(names, p)}})
        return preds

    def close(self) -> None:
        self.writer.close()
