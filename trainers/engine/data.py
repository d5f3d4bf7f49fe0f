"""Data side of the engine: dataset, transforms and loaders (PIL or decoded-image cache)."""
from __future__ import annotations

import logging

from configs.errors import ConfigError
from datasets import build_data_loader, build_dataset, build_transform

logger = logging.getLogger(__name__)


def build_data_and_loaders(t) -> None:
    """Set the trainer ``t``'s ``dataset``, ``task``, class info, transforms and the train/val/test loaders."""
    cfg = t.cfg
    t.dataset = dm = build_dataset(cfg)
    t.task = dm.task
    if t.task not in t.TASK_TARGETS:
        raise ConfigError(f"trainer {type(t).__name__} does not support task {t.task!r}")
    dm.require(t.required_targets())
    t.classnames, t.num_classes, t.lab2cname = dm.classnames, dm.num_classes, dm.lab2cname
    t.tfm_train = build_transform(cfg, is_train=True)
    t.tfm_test = build_transform(cfg, is_train=False)
    common = dict(
        num_classes=t.num_classes,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        seed=max(cfg.SEED, 0),
        distributed=t.world_size > 1,
        rank=t.rank,
        world_size=t.world_size,
        pin_memory=cfg.DATALOADER.PIN_MEMORY and t.device.type == "cuda",
        prefetch_factor=cfg.DATALOADER.PREFETCH_FACTOR,
    )
    t.train_loader = build_data_loader(
        dm.train_x, t.tfm_train, cfg.DATALOADER.TRAIN_X.BATCH_SIZE, is_train=True,
        sampler=cfg.DATALOADER.TRAIN_X.SAMPLER, **common,
    )
    bs = cfg.DATALOADER.TEST.BATCH_SIZE
    t.has_val = len(dm.val) > 0
    t.val_loader = (
        build_data_loader(dm.val, t.tfm_test, bs, is_train=False, **common) if t.has_val else None
    )
    t.test_loader = build_data_loader(dm.test, t.tfm_test, bs, is_train=False, **common)
    use_decoded_cache(t)



def use_decoded_cache(t) -> None:
    """Swap the PIL loaders for :class:`DecodedImageLoader` per ``DATALOADER.DECODED_CACHE``."""
    from datasets.decoded_cache import DecodedImageLoader, decode_all, device_ops

    cfg = t.cfg
    mode = cfg.DATALOADER.DECODED_CACHE.lower()
    if mode not in ("auto", "memory", "gpu", "disk", "off"):
        raise ConfigError(f"DATALOADER.DECODED_CACHE must be auto, memory, gpu, disk or off, got {mode!r}")
    h, w = cfg.INPUT.SIZE
    n_img = len(t.dataset.train_x) + len(t.dataset.val) + len(t.dataset.test)
    if mode == "auto":
        fits = n_img * 3 * h * w / 2**30 < cfg.DATALOADER.DECODED_CACHE_MAX_GB
        mode = "gpu" if t.device.type == "cuda" and fits else "off"
    ops = device_ops(cfg.INPUT.TRANSFORMS)
    if mode == "off" or ops is None or cfg.INPUT.TEST_TRANSFORMS:
        if mode != "off":
            logger.info(f"decoded-image cache off: transforms {list(cfg.INPUT.TRANSFORMS)} need the PIL pipeline")
        return
    cache_dir = cfg.DATALOADER.DECODED_CACHE_DIR if mode == "disk" else ""
    test_ops = ["normalize"] if "normalize" in ops else []
    for attr, data, split_ops in (("train_loader", t.dataset.train_x, ops), ("val_loader", t.dataset.val, test_ops),
                                  ("test_loader", t.dataset.test, test_ops)):
        loader = getattr(t, attr)
        if loader is None:
            continue
        images = decode_all(data, (h, w), cfg.INPUT.INTERPOLATION, cache_dir)
        setattr(t, attr, DecodedImageLoader(
            images, data, t.num_classes, split_ops, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD,
            tuple(cfg.INPUT.RRCROP_SCALE), loader.batch_size, loader.sampler, loader.drop_last, t.device,
            seed=max(cfg.SEED, 0), on_device=mode == "gpu"))
    logger.info(f"decoded-image cache ({mode}): {n_img} images decoded once, augmented on {t.device}")
