"""Fast image path: decode every image once, run the configured transform on the device.

For trainers that train through the image encoder (visual prompts, CNN fine-tuning) JPEG/PNG
decoding dominates a CPU data pipeline. :func:`decode_all` decodes each image once, at its
original size and aspect ratio, into one flat uint8 buffer with per-image offsets and sizes
(:class:`DecodedImages`), held in memory (optionally on the GPU) or saved to disk.
:class:`DecodedImageLoader` then builds batches by running **the same transform object as the PIL
loader** (``datasets/transforms.py``, ``torchvision.transforms.v2``) on each decoded image where it
lives, seeded per sample exactly as the PIL loader seeds it (``loader.view_seed``). The transform
therefore sees the same input (the full image, not a pre-cropped square) and draws the same
parameters, so for a given seed the two paths give the same crops and flips; on the CPU the
pixels are identical, on a GPU they differ only by interpolation rounding.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from utils.errors import CheckpointError
from utils.fileio import atomic_torch_save, safe_torch_load
from utils.killpoints import killpoint

from .base import Datum
from .decode import read_image_tensor
from .loader import apply_transform, stack_targets, view_seed

logger = logging.getLogger(__name__)


@dataclass
class DecodedImages:
    """Decoded images of a split: ``data`` uint8 [sum 3*h*w], ``offsets`` int64 [N], ``sizes`` int64 [N, 2] (h, w)."""

    data: torch.Tensor
    offsets: torch.Tensor
    sizes: torch.Tensor

    def __len__(self) -> int:
        return len(self.offsets)

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 [3, h, w] (a view of ``data``, on its device)."""
        h, w = (int(x) for x in self.sizes[i])
        off = int(self.offsets[i])
        return self.data[off : off + 3 * h * w].view(3, h, w)

    def to(self, device: torch.device) -> "DecodedImages":
        return DecodedImages(self.data.to(device), self.offsets, self.sizes)

    def pin_memory(self) -> "DecodedImages":
        return DecodedImages(self.data.pin_memory(), self.offsets, self.sizes)

    @property
    def nbytes(self) -> int:
        return int(self.data.numel())


def decode(path: str) -> np.ndarray:
    """uint8 [3, H, W]: the image as the image loader reads it (RGB, original size; JPEGs by
    ``decode_jpeg``, others by PIL: ``datasets/decode.py``)."""
    return read_image_tensor(path).numpy()


def decoded_bytes(data: Sequence[Datum]) -> int:
    """Bytes the decoded images of ``data`` take (from the image headers; nothing is decoded)."""
    total = 0
    for d in data:
        with Image.open(d.impath) as img:
            w, h = img.size
        total += 3 * w * h
    return total


def decode_all(data: Sequence[Datum], cache_dir: str = "") -> DecodedImages:
    """:class:`DecodedImages` for ``data``; with ``cache_dir``, kept on disk keyed by the files."""
    path = ""
    if cache_dir:
        h = hashlib.sha1(b"decoded-v3-original-size")
        for d in data:
            st = os.stat(d.impath)
            h.update(f"{d.impath}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        path = os.path.join(cache_dir, f"decoded_{h.hexdigest()[:20]}.pt")
        if os.path.isfile(path):
            obj = safe_torch_load(path, "decoded-image cache")
            ok = isinstance(obj, dict) and all(torch.is_tensor(obj.get(k)) for k in ("data", "offsets", "sizes"))
            if not ok or obj["data"].dtype != torch.uint8 or len(obj["offsets"]) != len(data) \
                    or tuple(obj["sizes"].shape) != (len(data), 2):
                raise CheckpointError(f"decoded-image cache {path} does not hold the {len(data)} images expected: "
                                      "delete it to rebuild")
            return DecodedImages(obj["data"], obj["offsets"], obj["sizes"])
    from utils.progress import progress

    arrays = [decode(d.impath) for d in progress(data, desc="decoding images", unit="img")]
    sizes = torch.tensor([a.shape[1:] for a in arrays], dtype=torch.int64).reshape(-1, 2)
    counts = torch.tensor([a.size for a in arrays], dtype=torch.int64)
    offsets = torch.cumsum(counts, 0) - counts
    flat = torch.from_numpy(np.concatenate([a.reshape(-1) for a in arrays])) if arrays else torch.zeros(0, dtype=torch.uint8)
    out = DecodedImages(flat, offsets, sizes)
    killpoint("cache:decoded")
    if path:
        atomic_torch_save({"data": out.data, "offsets": out.offsets, "sizes": out.sizes}, path)
    return out


class DecodedImageLoader:
    """Batches ``{"img", "index", "impath", targets...}`` from decoded images, transformed on ``device``.

    Follows ``sampler`` (the PIL loader's sampler: same order, sharding and ``(index, epoch)`` keys)
    and mirrors the DataLoader attributes the engine uses (``sampler``, ``batch_size``,
    ``drop_last``, ``len``). ``transform`` is the PIL loader's transform; a sample with an epoch
    key is seeded with ``view_seed(seed, epoch, index)`` as :class:`DatasetWrapper` seeds it.
    """

    def __init__(
        self, images: DecodedImages, data: Sequence[Datum], num_classes: int, transform: Callable,
        batch_size: int, sampler: Any, drop_last: bool, device: torch.device, seed: int = 0, on_device: bool = True,
    ) -> None:
        if on_device:
            images = images.to(device)
        elif device.type == "cuda":
            images = images.pin_memory()
        self.images, self.transform = images, transform
        self.device, self.seed = device, seed
        self.batch_size, self.sampler, self.drop_last = batch_size, sampler, drop_last
        self.impaths = [d.impath for d in data]
        self.targets = {k: v.to(device) for k, v in stack_targets(data, num_classes).items()}

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def sample(self, key: Any) -> Tuple[int, torch.Tensor]:
        """(index, transformed image [3, H, W] on the device) for a sampler key."""
        idx, epoch = key if isinstance(key, tuple) else (key, None)
        img = self.images.image(idx).to(self.device, non_blocking=True)
        seed = None if epoch is None else view_seed(self.seed, epoch, idx)
        return idx, apply_transform(self.transform, img, seed)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        keys = list(iter(self.sampler))
        for bi in range(len(self)):
            chunk = keys[bi * self.batch_size : (bi + 1) * self.batch_size]
            idx_list, imgs = zip(*(self.sample(k) for k in chunk))
            idx = torch.tensor(idx_list, dtype=torch.long)
            idx_dev = idx.to(self.device, non_blocking=True)
            yield {"img": torch.stack(imgs), "index": idx_dev, "impath": [self.impaths[i] for i in idx_list],
                   **{k: v[idx_dev] for k, v in self.targets.items()}}


def describe(images: List[DecodedImages]) -> str:
    total = sum(im.nbytes for im in images)
    return f"{sum(len(im) for im in images)} images, {total / 2**20:.1f} MiB"
