"""UniEmoX fine-tuning (trainer ``UniEmoX``): a timm ViT classifier on an emotion dataset.

Model: timm ``VisionTransformer`` (B/16, L/16 default, H/14, or a custom tiny one) with global
average pooling over the patch tokens -> ``fc_norm`` -> head, stochastic depth rising linearly
to ``DROP_PATH``; weights from ``TRAINER.UNIEMOX.INIT`` (a released fine-tuned or pre-trained
file, an ImageNet MAE file, an EmoLab pre-training run, or ``random``; see ``checkpoints.py``).
Training: AdamW (no decay on 1-D parameters and biases), layer-wise lr decay when
``LAYER_DECAY_ENABLED``, per-iteration warm-up then half-cycle cosine, timm's RandAugment +
random erasing train transform, Mixup/CutMix with label smoothing and soft-target
cross-entropy, autocast per ``TRAIN.PRECISION``. Evaluation: top-1 (``accuracy``) and
``top3_accuracy`` on val each epoch, the best val model kept and tested.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict

import torch
import torch.nn as nn

from utils.errors import ConfigError
from datasets import build_dataset
from trainers.engine import TrainerBase
from trainers.engine.data import build_data_bundle, image_loaders
from trainers.evaluation import EVALUATOR_REGISTRY
from trainers.registry import TRAINER_REGISTRY

from .checkpoints import load_into_classifier, resolve_checkpoint
from .config import effective_lr, vit_size
from .optim import adamw, build_schedule, param_groups

logger = logging.getLogger(__name__)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_vit(node, num_classes: int, img_size: int) -> nn.Module:
    """The timm classifier described by ``TRAINER.UNIEMOX`` (random weights)."""
    from timm.models.vision_transformer import VisionTransformer

    patch, dim, depth, heads = vit_size(node, "TRAINER.UNIEMOX")
    if img_size % patch:
        raise ConfigError(f"INPUT.SIZE {img_size} is not a multiple of the patch size {patch}")
    return VisionTransformer(img_size=img_size, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                             mlp_ratio=4.0, qkv_bias=True, num_classes=num_classes,
                             global_pool="avg" if node.GLOBAL_POOL else "token", drop_path_rate=float(node.DROP_PATH))


def _posterize_guard() -> None:
    """timm's ``PosterizeIncreasing`` asks for 0 bits at magnitude 10; recent Pillow refuses that, where the
    Pillow of the released code returned a black image. Keep that result (once per process)."""
    import timm.data.auto_augment as aa
    from PIL import Image

    original = aa.NAME_TO_OP.get("PosterizeIncreasing")
    if original is None or getattr(original, "emolab_guard", False):
        return

    def posterize(img, bits_to_keep, **kwargs):
        if bits_to_keep < 1:
            return Image.new(img.mode, img.size)
        return original(img, bits_to_keep, **kwargs)

    posterize.emolab_guard = True  # type: ignore[attr-defined]
    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        if aa.NAME_TO_OP.get(name) is original:
            aa.NAME_TO_OP[name] = posterize


def build_finetune_transform(cfg, is_train: bool):
    """timm's transform: RandAugment, random erasing, bicubic crops (train); resize + centre crop (eval)."""
    from timm.data import create_transform

    u = cfg.TRAINER.UNIEMOX
    size = int(cfg.INPUT.SIZE[0])
    mean, std = tuple(cfg.INPUT.PIXEL_MEAN), tuple(cfg.INPUT.PIXEL_STD)
    if not is_train:
        return create_transform(size, is_training=False, interpolation=cfg.INPUT.INTERPOLATION,
                                crop_pct=float(u.CROP_PCT), mean=mean, std=std)
    _posterize_guard()
    return create_transform(size, is_training=True, auto_augment=u.AUTO_AUGMENT or None,
                            color_jitter=float(u.COLOR_JITTER) if not u.AUTO_AUGMENT else None,
                            interpolation=cfg.INPUT.INTERPOLATION, re_prob=float(u.RE_PROB), re_mode=u.RE_MODE,
                            re_count=int(u.RE_COUNT), mean=mean, std=std,
                            scale=tuple(cfg.INPUT.RRCROP_SCALE))


@TRAINER_REGISTRY.register()
class UniEmoX(TrainerBase):
    """UniEmoX fine-tuning (module docstring)."""

    TASK_TARGETS = {"single_label": {"label"}}

    def node(self):
        return self.cfg.TRAINER.UNIEMOX

    # ------------------------------------------------------------------ data
    def build_data(self) -> None:
        cfg = self.cfg
        dm = build_dataset(cfg)
        if dm.task != "single_label":
            raise ConfigError(f"UniEmoX fine-tuning needs single-label data; dataset {dm.name} is {dm.task}")
        dm.require({"label"})
        if cfg.INPUT.SIZE[0] != cfg.INPUT.SIZE[1]:
            raise ConfigError(f"INPUT.SIZE must be square for the ViT, got {tuple(cfg.INPUT.SIZE)}")
        bs = cfg.DATALOADER.TRAIN_X.BATCH_SIZE
        if len(dm.train_x) // self.world_size < bs:
            raise ConfigError(f"DATALOADER.TRAIN_X.BATCH_SIZE {bs} exceeds the {len(dm.train_x)} training images")
        self.data = build_data_bundle(cfg, dm, image_loaders(dm.num_classes, train_drop_last=True), rank=self.rank,
                                      world_size=self.world_size, device=self.device,
                                      tfm_train=build_finetune_transform(cfg, True),
                                      tfm_test=build_finetune_transform(cfg, False))
        self.evaluator = EVALUATOR_REGISTRY.get("ClassificationTopK").from_config(cfg, self.classnames)
        logger.info(f"dataset {dm.name}: {self.num_classes} classes, train {len(dm.train_x)}, val {len(dm.val)}, "
                    f"test {len(dm.test)}")

    # ------------------------------------------------------------------ model
    def build_model(self) -> None:
        cfg, u = self.cfg, self.node()
        self.model = build_vit(u, self.num_classes, int(cfg.INPUT.SIZE[0]))
        self.weights_pending = False
        self.resume_dir = cfg.RESUME or self.output_dir  # where train() looks for a checkpoint to resume
        init = u.INIT.strip()
        if init.lower() == "random":
            logger.info("TRAINER.UNIEMOX.INIT random: the ViT starts from random weights")
        elif init:
            load_into_classifier(self.model, resolve_checkpoint(init, ("mae", "model")), bool(u.GLOBAL_POOL))
        else:
            self.weights_pending = True  # only --eval-only / resume may fill them (checked in train())
        batch = self.data.options.train_batch_size
        lr = effective_lr(u.BLR, cfg.OPTIM.LR, batch, self.world_size)
        groups = param_groups(self.model, float(cfg.OPTIM.WEIGHT_DECAY), float(u.LAYER_DECAY), bool(u.LAYER_DECAY_ENABLED))
        fused = bool(cfg.OPTIM.FUSED) and self.device.type == "cuda"
        optim = adamw(groups, lr, (cfg.OPTIM.ADAM_BETA1, cfg.OPTIM.ADAM_BETA2), fused=fused)
        sched = build_schedule(optim, lr, float(u.MIN_LR), float(cfg.OPTIM.WARMUP_EPOCH), float(cfg.OPTIM.MAX_EPOCH),
                               len(self.train_loader))
        how = (f"BLR {u.BLR} x batch {batch} x {self.world_size} / 256" if u.BLR > 0
               else "OPTIM.LR, as TRAINER.UNIEMOX.BLR is 0")
        logger.info(f"lr {lr:.3g} ({how}), "
                    f"layer decay {u.LAYER_DECAY if u.LAYER_DECAY_ENABLED else 'off'}, {len(groups)} parameter groups")
        self.register_model("model", self.model, optim=optim, sched=sched)
        self.mixup = self.build_mixup()
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        if self.mixup is not None:
            self.criterion = SoftTargetCrossEntropy()
        elif u.SMOOTHING > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=float(u.SMOOTHING))
        else:
            self.criterion = nn.CrossEntropyLoss()

    def build_mixup(self):
        u = self.node()
        if u.MIXUP <= 0 and u.CUTMIX <= 0:
            return None
        from timm.data import Mixup

        if self.data.options.train_batch_size % 2:
            raise ConfigError("Mixup/CutMix needs an even DATALOADER.TRAIN_X.BATCH_SIZE")
        self.mixup_seed = self.data.options.seed  # seeds each step's Mixup/CutMix draws (compute_loss)
        return Mixup(mixup_alpha=float(u.MIXUP), cutmix_alpha=float(u.CUTMIX), prob=float(u.MIXUP_PROB),
                     switch_prob=float(u.MIXUP_SWITCH_PROB), mode=u.MIXUP_MODE, label_smoothing=float(u.SMOOTHING),
                     num_classes=self.num_classes)

    def compute_loss(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        images, target = batch["img"], batch["label"]
        if self.mixup is not None:  # timm draws on np.random: one generator per step, seeded from the run's seed
            from datasets.loader import view_seed
            from utils.rng import seeded_draws

            with seeded_draws(view_seed(self.mixup_seed, self.epoch, 1_000_000_007 + self.batch_idx)):
                images, target = self.mixup(images, target)
        logits = self.model(images)
        return {"loss": self.criterion(logits.float(), target)}

    # ------------------------------------------------------------------ weights
    def load_model(self, directory: str, epoch=None) -> None:
        """``--model-dir``: an EmoLab run folder, or any single checkpoint file (released fine-tuned files)."""
        if os.path.isfile(directory):  # evaluation: the file must hold a head for these classes
            load_into_classifier(self.model_without_ddp, directory, bool(self.node().GLOBAL_POOL), require_head=True)
        else:
            super().load_model(directory, epoch)
        self.weights_pending = False

    def train(self) -> Dict[str, float]:
        resume_dir = self.resume_dir
        resumable = os.path.isfile(os.path.join(resume_dir, "model", "checkpoint"))
        if self.weights_pending and not resumable:
            raise ConfigError("TRAINER.UNIEMOX.INIT is empty: give a pre-trained or fine-tuned checkpoint "
                              "(file or run folder), or 'random' to start from random weights")
        results = super().train()
        if self.is_main:  # the tested classifier, loadable by the released --eval (released_names.py)
            from .released_names import RELEASED_FINETUNED_NAME, write_released_classifier

            vit = self.model_without_ddp
            write_released_classifier(os.path.join(self.output_dir, RELEASED_FINETUNED_NAME), vit,
                                      bool(self.node().GLOBAL_POOL), getattr(vit, "released_norm", None))
        return results
