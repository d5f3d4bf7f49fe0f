"""UniEmoX pre-training data: a scene view and a person view of each EmoSet image.

Each image is decoded with torchvision's JPEG decoder (``torchvision.io.decode_jpeg``; other
formats with ``decode_image``) into uint8 ``[3, H, W]``. The scene view is a random resized crop
(``scale`` of the area, aspect 3/4-4/3, bicubic with antialias) + horizontal flip of the whole
image; the person view is the same augmentation, drawn independently, of the image cropped to
its person box (the whole image without one). Views stay uint8 until the trainer normalises
them on its device (ImageNet statistics for the student, CLIP's for the teacher).

Where decoding happens (``DECODE``): ``worker`` decodes and crops in the loader workers;
``device`` sends the file bytes and decodes the whole batch on the training device (nvJPEG on
CUDA), then crops there. Both draw the crops from the same per-sample seed, so on one device
they give the same views.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torchvision
from torch.utils.data import Dataset

from utils.errors import DatasetError
from datasets.loader import view_seed

RATIO = (3.0 / 4.0, 4.0 / 3.0)


def read_bytes(path: str) -> torch.Tensor:
    try:
        return torchvision.io.read_file(path)
    except (OSError, RuntimeError) as e:
        raise DatasetError(f"cannot read image {path}: {str(e).splitlines()[0]}") from None


def is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 3 and int(data[0]) == 0xFF and int(data[1]) == 0xD8 and int(data[2]) == 0xFF


def decode(data: torch.Tensor, path: str = "", device: str = "cpu") -> torch.Tensor:
    """uint8 RGB ``[3, H, W]`` from encoded bytes (JPEG through ``decode_jpeg``, on ``device``)."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    try:
        if is_jpeg(data):
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        return decode_image(data, mode=ImageReadMode.RGB).to(device)
    except (RuntimeError, ValueError) as e:
        raise DatasetError(f"cannot decode image {path}: {str(e).splitlines()[0]}") from None


def crop_params(h: int, w: int, scale: Tuple[float, float], g: torch.Generator) -> Tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a random resized crop (torchvision's rule, with generator ``g``)."""
    area = h * w
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=g))
        aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            return top, left, ch, cw
    ratio = w / h  # fallback: central crop
    if ratio < RATIO[0]:
        cw, ch = w, int(round(w / RATIO[0]))
    elif ratio > RATIO[1]:
        ch, cw = h, int(round(h * RATIO[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def augment(img: torch.Tensor, size: int, scale: Tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """Random resized crop to ``size`` (bicubic, antialias) + horizontal flip, uint8 in, uint8 out."""
    from torchvision.transforms.v2 import functional as TF

    top, left, ch, cw = crop_params(img.shape[-2], img.shape[-1], scale, g)
    out = TF.resized_crop(img, top, left, ch, cw, [size, size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    if float(torch.rand(1, generator=g)) < 0.5:
        out = out.flip(-1)
    return out


def person_region(img: torch.Tensor, box: Optional[Sequence[float]]) -> torch.Tensor:
    """The box's pixels (clamped to the image), or the whole image when there is no usable box."""
    if box is None:
        return img
    h, w = img.shape[-2:]
    x1, y1 = max(0, int(math.floor(box[0]))), max(0, int(math.floor(box[1])))
    x2, y2 = min(w, int(math.ceil(box[2]))), min(h, int(math.ceil(box[3])))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return img
    return img[:, y1:y2, x1:x2]


def make_views(img: torch.Tensor, box: Optional[Sequence[float]], seed: int, size: int,
               scale: Tuple[float, float], person: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(scene, person)`` uint8 views of one decoded image; the person view only when ``person``."""
    g = torch.Generator()
    g.manual_seed(seed)
    scene = augment(img, size, scale, g)
    return scene, (augment(person_region(img, box), size, scale, g) if person else None)


class PretrainViews(Dataset):
    """Items keyed ``(index, epoch)`` (the engine's EpochSampler); see the module docstring."""

    def __init__(self, impaths: Sequence[str], labels: Sequence[int], boxes: Sequence[Optional[Sequence[float]]],
                 size: int, scale: Tuple[float, float], person: bool, seed: int, decode_in_worker: bool = True) -> None:
        self.impaths, self.labels, self.boxes = list(impaths), list(labels), list(boxes)
        self.size, self.scale, self.person, self.seed = size, (float(scale[0]), float(scale[1])), person, seed
        self.decode_in_worker = decode_in_worker

    def __len__(self) -> int:
        return len(self.impaths)

    def __getitem__(self, key: Any) -> Dict[str, Any]:
        idx, epoch = key if isinstance(key, tuple) else (key, 0)
        data = read_bytes(self.impaths[idx])
        out: Dict[str, Any] = {"index": idx, "label": self.labels[idx], "seed": view_seed(self.seed, epoch, idx)}
        if not self.decode_in_worker:
            box = self.boxes[idx]
            out.update(bytes=data, box=torch.tensor(box if box is not None else [-1.0] * 4, dtype=torch.float32))
            return out
        scene, person = make_views(decode(data, self.impaths[idx]), self.boxes[idx], out["seed"], self.size,
                                   self.scale, self.person)
        out["img"] = scene
        if person is not None:
            out["person"] = person
        return out


def collate(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack tensors and numbers; keep encoded bytes as a list (they differ in length)."""
    out: Dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if key == "bytes":
            out[key] = values
        elif torch.is_tensor(values[0]):
            out[key] = torch.stack(values)
        else:
            out[key] = torch.tensor(values)
    return out


def decode_batch_on_device(batch: Dict[str, Any], device: torch.device, size: int, scale: Tuple[float, float],
                           person: bool) -> Dict[str, Any]:
    """``DECODE device``: decode ``batch['bytes']`` on ``device`` (one batched nvJPEG call on CUDA) and crop there."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data: List[torch.Tensor] = batch["bytes"]
    jpeg = [is_jpeg(d) for d in data]
    images: List[Optional[torch.Tensor]] = [None] * len(data)
    idx = [i for i, j in enumerate(jpeg) if j]
    if idx:
        decoded = decode_jpeg([data[i] for i in idx], mode=ImageReadMode.RGB, device=device)
        for i, im in zip(idx, decoded):
            images[i] = im
    for i, j in enumerate(jpeg):
        if not j:
            images[i] = decode(data[i], device=str(device))
    seeds, boxes = batch["seed"].tolist(), batch["box"].tolist()
    scenes, persons = [], []
    for im, seed, box in zip(images, seeds, boxes):
        s, p = make_views(im, None if box[0] < 0 else box, int(seed), size, scale, person)
        scenes.append(s)
        if p is not None:
            persons.append(p)
    out = {k: v for k, v in batch.items() if k not in ("bytes", "box")}
    out["img"] = torch.stack(scenes)
    if persons:
        out["person"] = torch.stack(persons)
    return out
