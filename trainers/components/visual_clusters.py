"""K-means initialisation of EmoCoOp's static visual prompts from deep features of training images.

Pipeline: feature extractor (registry ``FEATURE_EXTRACTORS``) over the training images (test
transform, no augmentation) -> ``sklearn.cluster.KMeans(k, n_init=10, random_state=seed)`` ->
centres [k, F] -> a fixed Xavier projection ``W`` [W_vit, F] seeded with the same seed.
Centres are cached on disk (``torch.save`` of plain tensors, read with ``weights_only=True``)
under a name holding the dataset, the extractor and the seed, plus a digest of everything
else that changes them (image list, extractor weights, k, image count), so a cache is never
reused for other data. Same inputs and seed -> the same centres, with or without the cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from utils.errors import CheckpointError, ConfigError
from utils.fileio import atomic_torch_save, safe_torch_load
from utils.killpoints import killpoint
from utils.registry import Registry

from .glove_init import xavier_projection

logger = logging.getLogger(__name__)
FEATURE_EXTRACTORS = Registry("visual feature extractor (TRAINER.EMOCOOP.CLUSTER_EXTRACTOR)")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureExtractor:
    """Contract: ``extractor(images [B, 3, H, W] as the loader gives them) -> features [B, F]``;
    ``ident`` is a string that changes whenever the features would (used in the cache key)."""

    ident: str = ""
    name: str = ""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@FEATURE_EXTRACTORS.register(name="clip")
class ClipFeatures(FeatureExtractor):
    """The frozen CLIP image encoder's (projected) features; needs no other weights."""

    name = "clip"

    def __init__(self, clip, ident: str = "", **_: object) -> None:
        self.clip = clip
        self.ident = f"clip:{getattr(clip, 'model_name', '')}:{ident}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images).float()


@FEATURE_EXTRACTORS.register(name="torchvision")
class TorchvisionFeatures(FeatureExtractor):
    """A torchvision classification CNN (``arch``, e.g. ``resnet50``) with weights from a local file,
    classifier removed (pooled features, e.g. 2048-d for ResNet-50). Images are un-normalised with
    the loader's mean/std and re-normalised with ImageNet statistics."""

    def __init__(
        self, arch: str, weights: str, pixel_mean: Sequence[float], pixel_std: Sequence[float],
        normalized: bool = True, device: Optional[torch.device] = None, **_: object,
    ) -> None:
        import torchvision

        if arch not in torchvision.models.list_models():
            raise ConfigError(f"TRAINER.EMOCOOP.CLUSTER_ARCH {arch!r} is not a torchvision model")
        if not weights:
            raise ConfigError(
                f"TRAINER.EMOCOOP.CLUSTER_WEIGHTS is empty: the torchvision extractor {arch!r} needs a local weights file"
            )
        if not os.path.isfile(weights):
            raise ConfigError(f"TRAINER.EMOCOOP.CLUSTER_WEIGHTS {weights!r}: file not found")
        model = torchvision.models.get_model(arch, weights=None)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        except Exception as e:  # noqa: BLE001 - a refused pickle, a bad file, wrong keys: one line
            first = str(e).replace("\n", " ")[:200]
            raise ConfigError(f"TRAINER.EMOCOOP.CLUSTER_WEIGHTS {weights!r} does not fit {arch}: {first}") from None
        for attr in ("fc", "classifier", "head", "heads"):
            if hasattr(model, attr):
                setattr(model, attr, nn.Identity())
                break
        self.model = model.eval().to(device or "cpu")
        self.name = arch
        st = os.stat(weights)
        self.ident = f"torchvision:{arch}:{os.path.abspath(weights)}:{st.st_size}:{int(st.st_mtime)}"
        self.normalized = normalized
        self.mean = torch.tensor(pixel_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(pixel_std).view(1, 3, 1, 1)
        self.imagenet_mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.imagenet_std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        dev = images.device
        x = images * self.std.to(dev) + self.mean.to(dev) if self.normalized else images
        x = (x - self.imagenet_mean.to(dev)) / self.imagenet_std.to(dev)
        return self.model(x).flatten(1).float()


@torch.no_grad()
def extract_features(loader, extractor: Callable, device: torch.device) -> np.ndarray:
    """Features [N, F] (float64) of every image the loader yields, in order."""
    from utils.progress import progress

    out = [extractor(batch["img"].to(device)).cpu().double()
           for batch in progress(loader, desc="k-means init: image features", unit="batch")]
    if not out:
        raise ConfigError("k-means initialisation of the visual prompts found no training images")
    return torch.cat(out).numpy()


def kmeans_centres(features: np.ndarray, k: int, seed: int, n_init: int = 10) -> np.ndarray:
    """Centres [k, F] of ``KMeans(k, n_init, random_state=seed)`` (deterministic for a seed)."""
    from sklearn.cluster import KMeans

    if len(features) < k:
        raise ConfigError(
            f"{len(features)} training images for {k} visual prompts: k-means needs at least k images; "
            "lower TRAINER.EMOCOOP.N_VISUAL_CTX or set TRAINER.EMOCOOP.USE_VISUAL_CLUSTERING False"
        )
    import logging
    import time

    t0 = time.time()
    km = KMeans(n_clusters=k, n_init=n_init, random_state=int(seed))
    km.fit(features)
    logging.getLogger(__name__).info(f"k-means: {k} centres of {len(features)} image features ({time.time() - t0:.1f}s)")
    return km.cluster_centers_


def select_images(n: int, max_images: int, seed: int) -> List[int]:
    """Indices of the images used: all, or a seeded sample of ``max_images`` (sorted)."""
    if max_images <= 0 or n <= max_images:
        return list(range(n))
    return sorted(np.random.RandomState(seed).choice(n, max_images, replace=False).tolist())


def cache_file(cache_dir: str, dataset: str, extractor: FeatureExtractor, k: int, seed: int, impaths: Sequence[str],
               extra: str = "") -> str:
    """``<cache_dir>/<dataset>_<extractor>_k<k>_seed<seed>_<digest>.pt`` ("" when ``cache_dir`` is "": no cache)."""
    if not cache_dir:
        return ""
    key = json.dumps({"dataset": dataset, "extractor": extractor.ident, "k": k, "seed": seed,
                      "images": sorted(impaths), "extra": extra}, sort_keys=True)
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]
    safe = lambda s: re.sub(r"[^A-Za-z0-9.+-]+", "-", s).strip("-") or "x"  # noqa: E731
    return os.path.join(cache_dir, f"{safe(dataset)}_{safe(extractor.name)}_k{k}_seed{seed}_{digest}.pt")


def cached_centres(path: str, compute: Callable[[], np.ndarray]) -> torch.Tensor:
    """Centres from ``path`` if it exists, else ``compute()`` saved there (atomically)."""
    if path and os.path.isfile(path):
        data = safe_torch_load(path, "k-means cache")
        centres = data.get("centres") if isinstance(data, dict) else None
        if not torch.is_tensor(centres) or centres.dim() != 2 or not torch.isfinite(centres).all():
            raise CheckpointError(f"k-means cache {path} holds no finite [k, F] 'centres' tensor: delete it to recompute")
        logger.info(f"visual prompt k-means centres from the cache {path}")
        return centres.float()
    centres = torch.from_numpy(np.asarray(compute(), dtype=np.float32))
    killpoint("cache:kmeans")
    if path:
        atomic_torch_save({"centres": centres}, path)
        logger.info(f"cached the visual prompt k-means centres in {path}")
    return centres


def project_centres(centres: torch.Tensor, width: int, seed: int) -> torch.Tensor:
    """Centres [k, F] mapped to the ViT width: ``centres @ W^T`` with the fixed Xavier ``W`` [width, F]."""
    return centres.float() @ xavier_projection(centres.shape[1], width, seed).t()
