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
from trainers.evaluation import build_evaluator

from . import dist, plots
from .data import build_data_and_loaders
from .checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, save_checkpoint
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
        self.device = dist.init_distributed(cfg.USE_CUDA)
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
        self.stop_training = False  # a hook (e.g. early stopping) sets this to end training after the epoch
        self.writer = MetricsWriter(self.output_dir, enabled=self.is_main)
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
        for h in self.build_hooks():
            h.trainer = self
            self.hooks.append(h)

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
        return {"hooks": [h.state_dict() for h in getattr(self, "hooks", [])]}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        for h, s in zip(self.hooks, state.get("hooks", [])):
            h.load_state_dict(s)

    def save_model(self, epoch: int, is_best: bool = False, val_result: Optional[dict] = None) -> None:
        if not self.is_main:
            return
        for name, module in self._models.items():
            opt, sch = self._optims[name], self._scheds[name]
            state = {
                "state_dict": module.state_dict(),
                "epoch": epoch,
                "optimizer": opt.state_dict() if opt is not None else None,
                "scheduler": sch.state_dict() if sch is not None else None,
                "val_result": dict(val_result) if val_result else None,
                "scaler": self.scaler.state_dict(),
                "engine": self.extra_state(),
            }
            save_checkpoint(state, os.path.join(self.output_dir, name), is_best=is_best)

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load weights only (``--model-dir/--load-epoch``; epoch None = best, else latest)."""
        if not self._models:
            logger.info("the trainer has no trainable modules: nothing to load")
            return
        for name, module in self._models.items():
            path = checkpoint_path(directory, name, epoch)
            ckpt = load_checkpoint(path)
            self._load_state_dict(module, ckpt["state_dict"], path)
            logger.info(f"loaded {name}: {path} ({checkpoint_summary(ckpt, self.evaluator.main_metric)})")

    @staticmethod
    def _load_state_dict(module: nn.Module, state: Dict[str, Any], path: str) -> None:
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).replace("\n", " ").replace("\t", "")
            raise CheckpointError(f"checkpoint {path} does not fit the model: {first[:300]}") from None

    def resume_if_possible(self, directory: str) -> int:
        """Restore models, optimisers, schedulers and hook state from ``directory``; return the epoch."""
        paths = [latest_checkpoint(os.path.join(directory, n)) for n in self._models]
        if not paths or any(p is None for p in paths):
            return 0
        epoch = 0
        for (name, module), path in zip(self._models.items(), paths):
            ckpt = load_checkpoint(path)
            self._load_state_dict(module, ckpt["state_dict"], path)
            if self._optims[name] is not None and ckpt.get("optimizer"):
                self._optims[name].load_state_dict(ckpt["optimizer"])
            if self._scheds[name] is not None and ckpt.get("scheduler"):
                self._scheds[name].load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            self.load_extra_state(ckpt.get("engine") or {})
            epoch = int(ckpt["epoch"])
        logger.info(f"resumed from {directory} at epoch {epoch}")
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
        self._call("before_train")
        self.num_batches = len(self.train_loader)
        t0 = time.time()
        for self.epoch in range(self.start_epoch, self.max_epoch):
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
        logger.info(f"training time: {time.time() - t0:.1f}s")
        if self.is_main:
            plots.plot_training_curves(self)
        if self.start_epoch >= self.max_epoch:
            self.epoch = self.max_epoch - 1
            logger.info("the run had already finished all epochs")
        return self.final_test()

    def final_test(self) -> Dict[str, float]:
        if self.cfg.TEST.NO_TEST:
            return {}
        if self.cfg.TEST.FINAL_MODEL == "best_val":
            if self.has_val and any(
                os.path.isfile(os.path.join(self.output_dir, n, "model-best.pth.tar")) for n in self._models
            ):
                logger.info("loading the best validation model for the final test")
                self.load_model(self.output_dir, epoch=None)
            else:
                logger.warning("TEST.FINAL_MODEL best_val but no validation checkpoint: testing the last model")
        elif self.cfg.TEST.FINAL_MODEL != "last_step":
            raise ConfigError(f"unknown TEST.FINAL_MODEL {self.cfg.TEST.FINAL_MODEL!r} (last_step or best_val)")
        return self.test(final=True)

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
        for batch in progress(loader, desc=f"evaluate {split}", unit="batch"):
            batch = to_device(batch, self.device)
            with autocast(self.precision, self.device):
                logits = self.inference(batch)
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
            self.writer.write({"split": split, "epoch": self.epoch + 1, "final": final, "metrics": results})
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
