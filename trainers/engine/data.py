"""Data side of the engine: dataset, transforms and loaders (PIL or decoded-image cache)."""
from __future__ import annotations

import logging

from utils.errors import ConfigError
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
    """Swap the PIL loaders for :class:`DecodedImageLoader` per ``DATALOADER.DECODED_CACHE``.

    The decoded loaders run the same transforms (``t.tfm_train`` / ``t.tfm_test``) with the same
    per-sample seeds as the PIL loaders, on images decoded at their original size, so switching
    the cache on or off (or moving to a GPU) does not change the training data.
    """
    from datasets.decoded_cache import DecodedImageLoader, decode_all, decoded_bytes, describe

    cfg = t.cfg
    mode = cfg.DATALOADER.DECODED_CACHE.lower()
    if mode not in ("auto", "memory", "gpu", "disk", "off"):
        raise ConfigError(f"DATALOADER.DECODED_CACHE must be auto, memory, gpu, disk or off, got {mode!r}")
    if mode == "off" or (mode == "auto" and t.device.type != "cuda"):
        return
    splits = [("train_loader", t.dataset.train_x, t.tfm_train), ("val_loader", t.dataset.val, t.tfm_test),
              ("test_loader", t.dataset.test, t.tfm_test)]
    splits = [(attr, data, tfm) for attr, data, tfm in splits if getattr(t, attr) is not None]
    if mode == "auto":
        gb = sum(decoded_bytes(data) for _, data, _ in splits) / 2**30
        if gb >= cfg.DATALOADER.DECODED_CACHE_MAX_GB:
            logger.info(f"decoded-image cache off: {gb:.1f} GB of decoded images exceed DECODED_CACHE_MAX_GB")
            return
        mode = "gpu"
    cache_dir = cfg.DATALOADER.DECODED_CACHE_DIR if mode == "disk" else ""
    decoded = []
    for attr, data, tfm in splits:
        loader = getattr(t, attr)
        images = decode_all(data, cache_dir)
        decoded.append(images)
        setattr(t, attr, DecodedImageLoader(
            images, data, t.num_classes, tfm, loader.batch_size, loader.sampler, loader.drop_last, t.device,
            seed=max(cfg.SEED, 0), on_device=mode == "gpu"))
    logger.info(f"decoded-image cache ({mode}): {describe(decoded)} decoded once at full size, "
                f"transformed on {t.device} with the PIL loader's transforms and seeds")
