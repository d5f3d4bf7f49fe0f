"""Frozen-feature cache: image features computed once, epochs run on them.

For trainers whose image encoder is frozen (CoOp, CoCoOp, zero-shot, linear probe) the
encoder's output for a given augmented view never changes, so it is computed once. View ``k``
of sample ``i`` is the augmentation an image loader produces in epoch ``k`` (same seed: see
``datasets.loader.view_seed``), and epoch ``e`` trains on view ``e mod K``. Hence:

* deterministic train transforms (no random op): K = 1 is exact;
* random transforms: exact when K >= MAX_EPOCH; with fewer views the epochs cycle through them;
* evaluation transforms are deterministic, so cached val/test features are always exact.

A cache file is keyed by the encoder's weights (a fingerprint of its parameters), the transform
(its repr: sizes, interpolation, mean/std), K, the seed and the data (paths, sizes, mtimes).
A file whose key differs is rebuilt, never reused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from typing import Any, Callable, Dict, Iterator, List, Sequence

import torch
from torch.utils.data import DataLoader

from utils.errors import ConfigError
from utils.fileio import atomic_torch_save
from utils.killpoints import killpoint
from configs.registry import register_config
from datasets.base import Datum
from datasets.loader import DatasetWrapper, stack_targets  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)
RANDOM_OPS = ("Random", "ColorJitter", "GaussianBlur", "RandAugment", "AutoAugment", "TrivialAugment", "AugMix")
MODES = ("auto", "on", "off")


@register_config
def add_cache_config(cfg) -> None:
    from yacs.config import CfgNode as CN

    cfg.CACHE = CN()
    cfg.CACHE.FEATURES = "auto"  # frozen-feature cache: auto (where exact) | on | off
    cfg.CACHE.VIEWS = 1  # augmented views per training image (exact when >= MAX_EPOCH or no random transform)
    cfg.CACHE.DIR = "cache/features"  # where cache files are kept (keyed, stale files rebuilt)


@dataclasses.dataclass(frozen=True)
class CacheSettings:
    """What the cache needs from the config, read once (:func:`cache_settings_from_cfg`)."""

    mode: str  # auto | on | off
    views: int  # augmented views per training image (>= 1)
    dir: str  # folder of the cache files


def cache_settings_from_cfg(cfg) -> CacheSettings:
    """``CACHE.*`` as plain values; a bad mode is a one-line error (the loader settings used while
    encoding, seed and workers, are the data bundle's ``LoaderOptions``)."""
    mode = cfg.CACHE.FEATURES.lower()
    if mode not in MODES:
        raise ConfigError(f"CACHE.FEATURES must be auto, on or off, got {cfg.CACHE.FEATURES!r}")
    return CacheSettings(mode, max(1, int(cfg.CACHE.VIEWS)), cfg.CACHE.DIR)


def transform_is_random(transform: Any) -> bool:
    """True if ``transform`` (a torchvision Compose or single transform) draws random numbers."""
    parts = getattr(transform, "transforms", [transform])
    return any(type(t).__name__.startswith(RANDOM_OPS) for t in parts)


def fingerprint_module(module: torch.nn.Module, per_tensor: int = 4096) -> str:
    """A hash of every parameter/buffer's name, shape and (strided sample of) values."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // per_tensor)
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()


def fingerprint_data(data: Sequence[Datum]) -> str:
    """A hash of the image paths with their sizes and modification times (and labels)."""
    h = hashlib.sha1()
    for d in data:
        st = os.stat(d.impath)
        h.update(f"{d.impath}|{st.st_size}|{st.st_mtime_ns}|{d.label}|{d.labels}\n".encode())
    return h.hexdigest()


@torch.no_grad()
def compute_features(
    encode: Callable[[torch.Tensor], torch.Tensor], data: Sequence[Datum], transform: Any, views: int,
    seed: int, batch_size: int, device: torch.device, num_workers: int = 0, autocast: Any = None,
    num_classes: int = 1,
) -> torch.Tensor:
    """Features [N, K, E] (float32, CPU) of ``views`` augmented views of every sample."""
    import contextlib

    from utils.progress import progress

    ds = DatasetWrapper(data, transform, num_classes=num_classes, seed=seed)
    out: List[torch.Tensor] = []
    for k in range(views):
        keys = [(i, k) for i in range(len(data))]
        loader = DataLoader(ds, batch_size=batch_size, sampler=keys, num_workers=num_workers)
        feats = []
        desc = "feature cache: encoding" + (f" view {k + 1}/{views}" if views > 1 else "")
        for batch in progress(loader, desc=desc, unit="batch"):
            with autocast if autocast is not None else contextlib.nullcontext():
                feats.append(encode(batch["img"].to(device, non_blocking=True)).float())
        out.append(torch.cat(feats).cpu())
    return torch.stack(out, dim=1)


def key_digest(key: Dict[str, Any]) -> str:
    """A short stable hash of a cache key (used in cache file names)."""
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def load_or_build(path: str, key: Dict[str, Any], build: Callable[[], torch.Tensor], write: bool = True) -> torch.Tensor:
    """The cached tensor at ``path`` if its stored key equals ``key``; else ``build()`` and save it."""
    key_text = json.dumps(key, sort_keys=True)
    if os.path.isfile(path):
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("key") == key_text:
                logger.info(f"feature cache hit: {path}")
                return blob["features"]
            logger.info(f"feature cache {path} is stale (encoder, transform, views or data changed): rebuilding")
        except Exception as e:  # noqa: BLE001 - an unreadable cache is rebuilt
            logger.warning(f"feature cache {path} unreadable ({str(e).splitlines()[0]}): rebuilding")
    feats = build()
    killpoint("cache:features")
    if write:
        atomic_torch_save({"key": key_text, "features": feats}, path)
        logger.info(f"feature cache written: {path} {tuple(feats.shape)}")
    return feats


class FeatureLoader:
    """Batches ``{"feat": [B, E], "index": [B], targets...}`` from cached features.

    Follows the order of ``sampler`` (the image loader's sampler: same shuffling and sharding),
    so a cached epoch sees the samples in the same order as an uncached one. Everything stays on
    ``device``: a batch is one gather, with no worker processes and no host-device copies.
    """

    def __init__(
        self, feats: torch.Tensor, targets: Dict[str, torch.Tensor], batch_size: int, sampler: Any,
        drop_last: bool, device: torch.device,
    ) -> None:
        self.feats = feats.to(device)
        self.targets = {k: v.to(device) for k, v in targets.items()}
        self.batch_size, self.sampler, self.drop_last = batch_size, sampler, drop_last
        self.views = feats.shape[1]
        self.device = device

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        keys = list(iter(self.sampler))
        epoch = keys[0][1] if keys and isinstance(keys[0], tuple) else 0
        index = torch.tensor([k[0] if isinstance(k, tuple) else k for k in keys], dtype=torch.long, device=self.device)
        view = epoch % self.views
        for b in range(len(self)):
            idx = index[b * self.batch_size : (b + 1) * self.batch_size]
            yield {"feat": self.feats[idx, view], "index": idx, **{k: v[idx] for k, v in self.targets.items()}}
