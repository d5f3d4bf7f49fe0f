"""Shared base for trainers built on a frozen CLIP backbone (CoOp, CoCoOp, zero-shot, ...)."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.errors import ConfigError
from utils.fileio import REPO_ROOT
from trainers.engine import TrainerBase
from trainers.clip_prompting import feature_cache as fc
from trainers.engine.utils import autocast

logger = logging.getLogger(__name__)
WEIGHTS_DIR = os.path.join(REPO_ROOT, "clip", "weights")


def default_weights(name: str) -> str:
    """The weights file shipped with the project for ``name`` (tiny synthetic CLIPs), or ""."""
    path = os.path.join(WEIGHTS_DIR, f"{name}.safetensors")
    return path if os.path.isfile(path) else ""


def resolve_pretrained(name: str, pretrained: str) -> str:
    """What ``clip.load_clip`` gets for ``MODEL.BACKBONE.PRETRAINED`` (``clip/pretrained.py``):
    ``""`` -> shipped weights, else OpenAI's (local caches, else a download, else a one-line
    error); ``"random"`` -> random init (logged); anything else as given."""
    from clip.pretrained import resolve_pretrained as resolve

    return resolve(name, pretrained).value


def load_configured_clip(name: str, pretrained: str, device):
    """``clip.load_clip`` with ``pretrained`` resolved as in :func:`resolve_pretrained`; logs the source."""
    from clip import load_clip
    from clip.pretrained import resolve_pretrained as resolve

    res = resolve(name, pretrained)
    logger.info(f"loading CLIP {name} with {res.source}")
    return load_clip(name, pretrained=res.value, device=device, quick_gelu=res.quick_gelu)


def backbone_image_size(name: str, pretrained: str = "") -> int:
    """Input resolution of a CLIP architecture, read from its config (no model is built); for
    ``infer``, of the architecture of the weight file ``pretrained`` (``clip/openai_arch.py``)."""
    import open_clip

    from clip import resolve_model_name
    from clip.openai_arch import inferred_arch, is_infer

    arch = inferred_arch(pretrained) if is_infer(name) else resolve_model_name(name)
    conf = open_clip.get_model_config(arch) or {}
    size = conf.get("vision_cfg", {}).get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def build_clip_backbone(cfg, device: torch.device):
    """Load the frozen CLIP backbone named by ``cfg.MODEL.BACKBONE`` (weights never silently random)."""
    name = cfg.MODEL.BACKBONE.NAME
    if not name:
        raise ConfigError("MODEL.BACKBONE.NAME is empty: name a CLIP architecture, e.g. ViT-B/16 or emolab-tiny-vit")
    return load_configured_clip(name, cfg.MODEL.BACKBONE.PRETRAINED, device)


class LazyLoader:
    """A loader built by ``build(*args)`` when first iterated; until then its length, batch size,
    sampler and ``drop_last`` are those of the image loader it replaces (``args[-2]``), which the
    built :class:`FeatureLoader` shares."""

    def __init__(self, build, *args) -> None:  # noqa: ANN001
        self._build, self._args, self._loader = build, args, None
        image_loader = args[-2]
        self.batch_size, self.sampler, self.drop_last = image_loader.batch_size, image_loader.sampler, image_loader.drop_last
        self._len = len(image_loader)

    @property
    def built(self) -> bool:
        return self._loader is not None

    def loader(self):  # noqa: ANN201
        if self._loader is None:
            self._loader, self._args = self._build(*self._args), ()
        return self._loader

    def __len__(self) -> int:
        return self._len

    def __iter__(self):  # noqa: ANN204
        return iter(self.loader())


class ClipTrainerBase(TrainerBase):
    """A trainer whose backbone is a frozen CLIP; fills ``INPUT.SIZE`` from the architecture.

    A trainer that sets ``supports_feature_cache = True`` promises that ``self.model`` offers
    ``image_features(images) -> [B, E]`` (a pure function of the image) and
    ``forward(x, features=False)``; then the frozen-feature cache (``CACHE.*``) replaces the image
    loaders by cached features. Other trainers always get images (``CACHE.FEATURES on`` is an error).
    """

    #: True only for trainers whose model offers ``image_features`` and ``forward(x, features=True)``
    supports_feature_cache = False

    @classmethod
    def finalize_config(cls, cfg) -> None:
        """Fill INPUT.SIZE from the CLIP architecture (called by ``train.py`` before freezing)."""
        if not cfg.MODEL.BACKBONE.NAME:
            cfg.MODEL.BACKBONE.NAME = "emolab-tiny-vit"
        size = backbone_image_size(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.PRETRAINED)
        if not cfg.INPUT.SIZE:
            cfg.INPUT.SIZE = (size, size)
        elif tuple(cfg.INPUT.SIZE) != (size, size):
            raise ConfigError(
                f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} does not match the {size}x{size} input of backbone "
                f"{cfg.MODEL.BACKBONE.NAME}"
            )

    def forward_batch(self, batch: Dict[str, Any]) -> torch.Tensor:
        """Logits [B, C] from cached features (``feat``) or images (``img``)."""
        if "feat" in batch:
            return self.model(batch["feat"], features=True)
        return self.model(batch["img"])

    def inference(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self.forward_batch(batch)

    def after_build(self) -> None:
        """Replace image loaders by cached-feature loaders where ``CACHE.FEATURES`` allows."""
        settings = fc.cache_settings_from_cfg(self.cfg)
        if not self.supports_feature_cache:
            if settings.mode == "on":
                raise ConfigError(
                    f"CACHE.FEATURES on: trainer {type(self).__name__} does not support the feature cache "
                    "(set supports_feature_cache = True and give its model image_features() and "
                    "forward(x, features=True)), or use CACHE.FEATURES auto/off")
            return
        if settings.mode == "off":
            return
        views = settings.views
        random_train = fc.transform_is_random(self.tfm_train)
        exact_train = not random_train or views >= self.max_epoch
        cache_train = settings.mode == "on" or exact_train
        if settings.mode == "on" and not exact_train:
            logger.info(f"feature cache: {views} view(s) for {self.max_epoch} epochs of random augmentation: "
                        "epochs cycle through the cached views")
        self.train_loader_images = self.train_loader
        self._encoder_fingerprint = fc.fingerprint_module(self.model.clip)  # once: hashing large weights is not free
        if cache_train:
            self.data.train_loader = self._feature_loader(settings, self.dataset.train_x, self.tfm_train,
                                                          views if random_train else 1, self.train_loader, "train")
        if self.val_loader is not None:  # built at the first evaluation (a run that never tests encodes no test image)
            self.data.val_loader = LazyLoader(self._feature_loader, settings, self.dataset.val, self.tfm_test, 1,
                                              self.val_loader, "val")
        self.data.test_loader = LazyLoader(self._feature_loader, settings, self.dataset.test, self.tfm_test, 1,
                                           self.test_loader, "test")

    def _feature_loader(self, settings: fc.CacheSettings, data, transform, views: int, image_loader,
                        split: str) -> fc.FeatureLoader:
        from trainers.engine import dist

        # val/test features are built lazily, at the first evaluation: by then DDP may wrap the model
        model = self.model.module if isinstance(self.model, nn.parallel.DistributedDataParallel) else self.model
        key = {
            "encoder": self._encoder_fingerprint,
            "transform": repr(transform),
            "views": views,
            "seed": self.data.options.seed if fc.transform_is_random(transform) else 0,
            "data": fc.fingerprint_data(data),
        }
        path = os.path.join(settings.dir, f"{self.dataset.name}_{split}_{fc.key_digest(key)}.pt")

        def build() -> torch.Tensor:
            logger.info(f"feature cache: encoding {len(data)} {split} images x {views} view(s)")
            return fc.compute_features(
                model.image_features, data, transform, views, key["seed"], image_loader.batch_size,
                self.device, self.data.options.num_workers, autocast(self.precision, self.device),
                num_classes=self.num_classes,
            )

        feats = None
        if self.is_main:
            feats = fc.load_or_build(path, key, build)
        dist.barrier()
        if feats is None:
            feats = fc.load_or_build(path, key, build, write=False)
        return fc.FeatureLoader(feats, fc.stack_targets(data, self.num_classes), image_loader.batch_size,
                                image_loader.sampler, image_loader.drop_last, self.device)

    def classification_loss(self, logits: torch.Tensor, batch: Dict[str, Any]) -> torch.Tensor:
        """Cross-entropy on ``label`` (single-label) or BCE-with-logits on ``labels`` (multi-label)."""
        if self.task == "multi_label":
            return F.binary_cross_entropy_with_logits(logits.float(), batch["labels"].float())
        return F.cross_entropy(logits.float(), batch["label"])
