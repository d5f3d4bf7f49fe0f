"""Image transforms from ``cfg.INPUT`` (Dassl transform names), one definition for every data path.

The pipeline is built from ``torchvision.transforms.v2`` and starts with ``ToImage``: a PIL image
(the PIL loader) and a decoded uint8 tensor [3, H, W] (the decoded-image cache, on the CPU or the
GPU) go through exactly the same ops, with the same random draws for the same seed (the ops draw
their parameters from torch's CPU generator whatever the device), so a method's training data does
not depend on the loader, the cache or the device.

The order is fixed whatever the order of the names: to-image (uint8), geometry (one of
random_resized_crop / random_crop / center_crop / resize), random_flip, colorjitter,
randomgrayscale, gaussian_blur, to-float in [0, 1], normalize. Output: FloatTensor[3, H, W].

The test transform's resize is PIL's by default (``INPUT.TEST_RESIZE pil``): CLIP's preprocessing
and Dassl's test transform resize a PIL image, and an antialiased tensor resize differs from it by
1-2 grey levels per pixel, enough to move logits by ~1e-3. :class:`PILResize` gives a decoded uint8
tensor (the decoded-image cache) the same PIL resize, so both paths stay identical. Training
transforms keep the tensor ops (one definition for the loader and the decoded cache).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from utils.errors import ConfigError
from utils.registry import closest

logger = logging.getLogger(__name__)

TRANSFORM_NAMES = (
    "random_resized_crop",
    "random_crop",
    "random_flip",
    "center_crop",
    "resize",
    "colorjitter",
    "randomgrayscale",
    "gaussian_blur",
    "normalize",
)
PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC, "nearest": InterpolationMode.NEAREST}


@dataclass(frozen=True)
class TransformSettings:
    """The ``cfg.INPUT`` values the transforms use (plain values, no cfg)."""

    size: Tuple[int, int] = (224, 224)
    interpolation: str = "bilinear"
    mean: Tuple[float, ...] = (0.485, 0.456, 0.406)
    std: Tuple[float, ...] = (0.229, 0.224, 0.225)
    rrcrop_scale: Tuple[float, float] = (0.08, 1.0)
    crop_padding: int = 4
    colorjitter: Tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    rgs_p: float = 0.2
    gb_p: float = 0.5
    gb_k: int = 21
    test_resize: str = "pil"  # pil: PIL's resize at test time (CLIP / Dassl) | tensor: torchvision's on tensors

    @classmethod
    def from_config(cls, cfg: Any) -> "TransformSettings":
        i = cfg.INPUT
        return cls(
            size=(int(i.SIZE[0]), int(i.SIZE[1])),
            interpolation=str(i.INTERPOLATION),
            mean=tuple(float(x) for x in i.PIXEL_MEAN),
            std=tuple(float(x) for x in i.PIXEL_STD),
            rrcrop_scale=(float(i.RRCROP_SCALE[0]), float(i.RRCROP_SCALE[1])),
            crop_padding=int(i.CROP_PADDING),
            colorjitter=(float(i.COLORJITTER_B), float(i.COLORJITTER_C), float(i.COLORJITTER_S), float(i.COLORJITTER_H)),
            rgs_p=float(i.RGS_P),
            gb_p=float(i.GB_P),
            gb_k=int(i.GB_K),
            test_resize=str(i.get("TEST_RESIZE", "pil")),
        )


def check_names(names: Sequence[str], key: str) -> None:
    """ConfigError naming the first unknown transform and the closest known one."""
    for name in names:
        if name not in TRANSFORM_NAMES:
            hint = closest(name, list(TRANSFORM_NAMES))
            msg = f"unknown transform {name!r} in {key}"
            msg += f" (did you mean {hint!r}?)" if hint else f" (known: {', '.join(TRANSFORM_NAMES)})"
            raise ConfigError(msg)


class PILResize:
    """Resize as ``torchvision.transforms.Resize`` does on a PIL image (``PIL.Image.resize``), for a PIL
    image or a uint8 tensor [3, H, W] on any device (resized through PIL on the CPU, returned on its
    device): CLIP's and Dassl's test-time resize, the same pixels whichever loader feeds it.

    ``size``: an int (shorter side to ``size``, the longer one ``int(size * long / short)``, as
    torchvision computes it) or (h, w). Output: a uint8 image tensor [3, h', w'].
    """

    draws_on_torch_only = True  # deterministic (utils/rng.py: draws_on_torch_only)

    def __init__(self, size, interpolation: str = "bicubic") -> None:
        self.size = size
        self.interpolation = interpolation

    def output_size(self, h: int, w: int) -> Tuple[int, int]:
        if not isinstance(self.size, int):
            return int(self.size[0]), int(self.size[1])
        short, long = (w, h) if w <= h else (h, w)
        if short == self.size:
            return h, w
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_long, new_short) if w <= h else (new_short, new_long)

    def __call__(self, img: Any) -> torch.Tensor:
        device = None
        if isinstance(img, torch.Tensor):
            device = img.device
            if img.dtype != torch.uint8 or img.dim() != 3:
                raise ValueError(f"PILResize takes a PIL image or a uint8 tensor [3, H, W], got {img.dtype} {tuple(img.shape)}")
            img = Image.fromarray(img.permute(1, 2, 0).contiguous().cpu().numpy())
        h, w = self.output_size(img.height, img.width)
        if (h, w) != (img.height, img.width):
            img = img.resize((w, h), PIL_FILTERS[self.interpolation])
        out = T.ToImage()(np.asarray(img.convert("RGB")).copy())
        return out.to(device) if device is not None else out

    def __repr__(self) -> str:
        return f"PILResize(size={self.size}, interpolation={self.interpolation})"


def compose(names: Sequence[str], s: TransformSettings, pil_resize: bool = False) -> Callable:
    """A ``torchvision.transforms.v2`` Compose for the transform ``names`` (module docstring for the order).

    ``pil_resize``: the geometry ``center_crop`` / ``resize`` resizes with :class:`PILResize` (the
    test transform under ``INPUT.TEST_RESIZE pil``)."""
    if s.test_resize not in ("pil", "tensor"):
        raise ConfigError(f"INPUT.TEST_RESIZE must be pil or tensor, got {s.test_resize!r}")
    if s.interpolation not in INTERPOLATIONS:
        hint = closest(s.interpolation, list(INTERPOLATIONS))
        raise ConfigError(f"unknown INPUT.INTERPOLATION {s.interpolation!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
    interp = INTERPOLATIONS[s.interpolation]
    names = set(names)
    tfms: list = [T.ToImage()]  # PIL image or uint8 tensor -> uint8 image tensor: every path starts here
    if "random_resized_crop" in names:
        tfms.append(T.RandomResizedCrop(s.size, scale=s.rrcrop_scale, interpolation=interp, antialias=True))
    elif "random_crop" in names:
        tfms += [T.Resize(s.size, interpolation=interp, antialias=True), T.RandomCrop(s.size, padding=s.crop_padding)]
    elif "center_crop" in names:
        if pil_resize:
            tfms = [PILResize(max(s.size), s.interpolation), T.CenterCrop(s.size)]
        else:
            tfms += [T.Resize(max(s.size), interpolation=interp, antialias=True), T.CenterCrop(s.size)]
    elif pil_resize:
        tfms = [PILResize(tuple(s.size), s.interpolation)]
    else:
        tfms.append(T.Resize(s.size, interpolation=interp, antialias=True))
    if "random_flip" in names:
        tfms.append(T.RandomHorizontalFlip())
    if "colorjitter" in names:
        b, c, sat, h = s.colorjitter
        tfms.append(T.ColorJitter(brightness=b, contrast=c, saturation=sat, hue=h))
    if "randomgrayscale" in names:
        tfms.append(T.RandomGrayscale(p=s.rgs_p))
    if "gaussian_blur" in names:
        k = s.gb_k if s.gb_k % 2 == 1 else s.gb_k + 1
        tfms.append(T.RandomApply([T.GaussianBlur(k)], p=s.gb_p))
    tfms.append(T.ToDtype(torch.float32, scale=True))
    if "normalize" in names:
        tfms.append(T.Normalize(mean=list(s.mean), std=list(s.std)))
    return T.Compose(tfms)


def build_transform(cfg: Any, is_train: bool) -> Callable:
    """The train or test transform of ``cfg.INPUT``: PIL image or uint8 tensor -> FloatTensor[3, H, W].

    Train: INPUT.TRANSFORMS. Test: INPUT.TEST_TRANSFORMS, or when empty resize (shorter side to
    max(SIZE)) + center crop, plus normalize if "normalize" is in INPUT.TRANSFORMS; the test resize
    is PIL's unless INPUT.TEST_RESIZE is tensor (module docstring).
    INPUT.NO_TRANSFORM: to-tensor only.

    Raises:
        ConfigError: an unknown transform name (with the closest known one) or interpolation.
    """
    train_names = list(cfg.INPUT.TRANSFORMS)
    test_names = list(cfg.INPUT.TEST_TRANSFORMS)
    check_names(train_names, "INPUT.TRANSFORMS")
    check_names(test_names, "INPUT.TEST_TRANSFORMS")
    if cfg.INPUT.NO_TRANSFORM:
        logger.info("INPUT.NO_TRANSFORM: images are only converted to tensors")
        return T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True)])
    settings = TransformSettings.from_config(cfg)
    if is_train:
        return compose(train_names, settings)
    if not test_names:
        test_names = ["center_crop"] + (["normalize"] if "normalize" in train_names else [])
    return compose(test_names, settings, pil_resize=settings.test_resize == "pil")
