"""Small engine utilities: seeding, precision, meters, device moves."""
from __future__ import annotations

import contextlib
import random
from typing import Any, Dict

import numpy as np
import torch

from utils.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "bf16", "amp")


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision actually used: CPU always runs fp32; ``amp`` means fp16 autocast + grad scaling."""
    precision = precision.lower()
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if device.type != "cuda":
        return "fp32"
    return "fp16" if precision == "amp" else precision


def autocast(precision: str, device: torch.device):
    """An autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: Dict[str, Any], device: torch.device, non_blocking: bool = True) -> Dict[str, Any]:
    return {k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v) for k, v in batch.items()}


class MeterDict:
    """Running sums of scalar tensors kept on the device; converted to floats only when read."""

    def __init__(self) -> None:
        self.sums: Dict[str, torch.Tensor] = {}
        self.last: Dict[str, torch.Tensor] = {}
        self.count = 0

    def update(self, values: Dict[str, Any]) -> None:
        self.count += 1
        for k, v in values.items():
            v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))
            self.last[k] = v
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()

    def averages(self) -> Dict[str, float]:
        return {k: (v / max(1, self.count)).item() for k, v in self.sums.items()}

    def latest(self) -> Dict[str, float]:
        return {k: v.item() for k, v in self.last.items()}


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"
