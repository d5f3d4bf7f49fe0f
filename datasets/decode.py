"""Image decoding for the training data path: JPEGs through ``torchvision.io.decode_jpeg``
(libjpeg-turbo on uint8 tensors, no PIL image in between), every other format through PIL.

Both decoders give the same RGB pixels for a JPEG (the same libjpeg-turbo, same IDCT and chroma
upsampling; checked on baseline, progressive, 4:4:4 / 4:2:2 / 4:2:0, greyscale and CMYK files in
``tests/test_perf_paths.py``), so a transform whose first op is ``v2.ToImage`` (every transform of
``datasets/transforms.py``) gives the same views from either. A JPEG that ``decode_jpeg`` rejects
(truncated, corrupt, or a variant it does not handle) is read again by PIL, so the error a bad file
raises is the loader's usual one line naming the file (:func:`read_image`, also ``loader.read_image``).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from utils.errors import DatasetError

JPEG_MAGIC = b"\xff\xd8\xff"


def decode_jpeg_bytes(data: bytes, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """uint8 [3, H, W] RGB of a JPEG byte string (``device`` "cuda" decodes on the GPU: nvjpeg)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return decode_jpeg(buf, mode=ImageReadMode.RGB, device=device)


def read_image_tensor(path: str) -> torch.Tensor:
    """The image at ``path`` as uint8 [3, H, W] RGB, the pixels :func:`loader.read_image` gives.

    Raises:
        DatasetError: the file is missing, unreadable or truncated (one line naming it).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        data = b""
    if data.startswith(JPEG_MAGIC):
        try:
            return decode_jpeg_bytes(data)
        except (RuntimeError, ValueError):
            pass  # PIL reads it, or raises the usual error naming the file
    return pil_to_uint8(read_image(path))


def read_image(path: str) -> Image.Image:
    """Open an image as RGB; DatasetError naming the file if it is missing, unreadable or truncated."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read image {path}: {e}") from None


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """uint8 [3, H, W] of an RGB PIL image (a copy)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def takes_tensors(transform: Optional[Callable[..., Any]]) -> bool:
    """True if ``transform`` gives the same output for a PIL image and for its uint8 tensor: a
    ``torchvision.transforms.v2.Compose`` whose first op is ``ToImage`` (or no transform at all)."""
    if transform is None:
        return True
    from torchvision.transforms import v2

    ops = getattr(transform, "transforms", None)
    return isinstance(transform, v2.Compose) and bool(ops) and isinstance(ops[0], v2.ToImage)
