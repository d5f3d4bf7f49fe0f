"""Fast image path: decode and resize every image once, augment batches on the device.

For trainers that train through the image encoder (visual prompts, CNN fine-tuning) JPEG/PNG
decoding and PIL resizing dominate a CPU data pipeline. :class:`DecodedImageLoader` decodes
each image once (resize of the shorter side to the input size with the configured
interpolation, centre crop) into a uint8 tensor [N, 3, H, W] held in memory (optionally on the
GPU) or saved to disk, then builds batches with one gather and applies ``random_flip``,
``random_resized_crop`` (``torchvision.ops.roi_align`` per sample) and ``normalize`` on the
device. Random draws come from a generator seeded by (seed, epoch), so an epoch is reproducible.
Other transform names are not supported here: :func:`device_ops` returns None and the trainer
keeps the PIL loader. The crop is taken from the decoded (already resized) image, so it matches
the PIL pipeline in distribution, not pixel for pixel.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from configs.fileio import atomic_torch_save

from .base import Datum
from .loader import read_image, stack_targets

logger = logging.getLogger(__name__)
DEVICE_OPS = ("random_flip", "random_resized_crop", "normalize", "center_crop", "resize")
PIL_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def device_ops(names: Sequence[str]) -> Optional[List[str]]:
    """The device-side ops for transform ``names``, or None if one is not supported on the device."""
    names = list(names)
    if any(n not in DEVICE_OPS for n in names):
        return None
    return [n for n in ("random_resized_crop", "random_flip", "normalize") if n in names]


def decode(path: str, size: Tuple[int, int], interpolation: str) -> np.ndarray:
    """uint8 [3, H, W]: shorter side resized to max(size), centre-cropped to size."""
    img = read_image(path)
    h, w = size
    scale = max(h, w) / min(img.size)
    img = img.resize((max(w, round(img.size[0] * scale)), max(h, round(img.size[1] * scale))), PIL_INTERP[interpolation])
    left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
    return np.asarray(img.crop((left, top, left + w, top + h)), dtype=np.uint8).transpose(2, 0, 1)


def decode_all(data: Sequence[Datum], size: Tuple[int, int], interpolation: str, cache_dir: str = "") -> torch.Tensor:
    """uint8 [N, 3, H, W] for ``data``; with ``cache_dir``, kept on disk keyed by files and settings."""
    path = ""
    if cache_dir:
        h = hashlib.sha1(f"{size}{interpolation}".encode())
        for d in data:
            st = os.stat(d.impath)
            h.update(f"{d.impath}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        path = os.path.join(cache_dir, f"decoded_{h.hexdigest()[:20]}.pt")
        if os.path.isfile(path):
            return torch.load(path, map_location="cpu", weights_only=True)
    from configs.progress import progress

    out = torch.from_numpy(np.stack([decode(d.impath, size, interpolation)
                                     for d in progress(data, desc="decoding images", unit="img")]))
    if path:
        atomic_torch_save(out, path)
    return out


class DecodedImageLoader:
    """Batches ``{"img", "index", targets...}`` from decoded uint8 images, augmented on ``device``.

    Follows ``sampler`` (the PIL loader's sampler: same order and sharding) and mirrors the
    DataLoader attributes the engine uses (``sampler``, ``batch_size``, ``drop_last``, ``len``).
    """

    def __init__(
        self, images: torch.Tensor, data: Sequence[Datum], num_classes: int, ops: List[str],
        mean: Sequence[float], std: Sequence[float], rrcrop_scale: Tuple[float, float], batch_size: int,
        sampler: Any, drop_last: bool, device: torch.device, seed: int = 0, on_device: bool = True,
    ) -> None:
        self.images = images.to(device) if on_device else (images.pin_memory() if device.type == "cuda" else images)
        self.device, self.ops, self.seed = device, ops, seed
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.scale = rrcrop_scale
        self.batch_size, self.sampler, self.drop_last = batch_size, sampler, drop_last
        self.impaths = [d.impath for d in data]
        self.targets = {k: v.to(device) for k, v in stack_targets(data, num_classes).items()}

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _crop_boxes(self, b: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
        """Random-resized-crop boxes [b, 5] (batch index, x1, y1, x2, y2), ratio in [3/4, 4/3]."""
        area = torch.empty(b).uniform_(*self.scale, generator=g) * h * w
        logr = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)
        ratio = torch.exp(logr)
        cw = torch.sqrt(area * ratio).clamp(1, w)
        ch = torch.sqrt(area / ratio).clamp(1, h)
        x1 = torch.rand(b, generator=g) * (w - cw)
        y1 = torch.rand(b, generator=g) * (h - ch)
        return torch.stack([torch.arange(b, dtype=torch.float32), x1, y1, x1 + cw, y1 + ch], dim=1)

    def augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float [B, 3, H, W] with the configured device ops."""
        x = x.to(self.device, non_blocking=True).float().div_(255.0)
        b, _, h, w = x.shape
        if "random_resized_crop" in self.ops:
            from torchvision.ops import roi_align

            boxes = self._crop_boxes(b, h, w, g).to(self.device)
            x = roi_align(x, boxes, output_size=(h, w), spatial_scale=1.0, sampling_ratio=2, aligned=True)
        if "random_flip" in self.ops:
            flip = (torch.rand(b, generator=g) < 0.5).to(self.device).view(b, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        if "normalize" in self.ops:
            x = (x - self.mean) / self.std
        return x

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        keys = list(iter(self.sampler))
        epoch = keys[0][1] if keys and isinstance(keys[0], tuple) else 0
        index = torch.tensor([k[0] if isinstance(k, tuple) else k for k in keys], dtype=torch.long)
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + epoch)
        for bi in range(len(self)):
            idx = index[bi * self.batch_size : (bi + 1) * self.batch_size]
            idx_dev = idx.to(self.device, non_blocking=True)
            src = self.images[idx_dev] if self.images.device == self.device else self.images[idx]
            yield {"img": self.augment(src, g), "index": idx_dev, "impath": [self.impaths[i] for i in idx.tolist()],
                   **{k: v[idx_dev] for k, v in self.targets.items()}}
