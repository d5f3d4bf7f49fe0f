"""Evaluation and prediction of :class:`~trainers.engine.trainer.TrainerBase` (a mixin): every
sample counted exactly once across processes, one summary line during training, the final test in
CoOp's log layout, plots of the final evaluation, and ``predict`` on PIL images."""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

import torch

from utils.errors import ConfigError
from utils.killpoints import killpoint
from utils.progress import progress

from . import dist, plots
from .logger import quiet_evaluator, summary_line
from .utils import autocast, to_device

logger = logging.getLogger("trainers.engine.trainer")  # one logger name for the whole engine loop


class EvaluationMixin:
    # ------------------------------------------------------------------ evaluation
    def test(self, split: Optional[str] = None, final: bool = True) -> Dict[str, float]:
        split = split or self.settings.test_split
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
            if final or self.settings.per_class_result:
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
                plots.plot_evaluation(self, split, results)
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
        return self.evaluator.describe(out, self.task, self.settings.threshold)

