"""Emotion-wheel prior layer of EW-MTCNN (docs/METHODS.md, EW-MTCNN).

Mikels' wheel, clockwise: fear, sadness, disgust, anger, amusement, contentment, awe, excitement.
A dataset's classes are placed on the wheel by name, or through a mapping (Emotion6: joy ->
amusement, surprise -> awe). The prior is a ``C x C`` matrix ``W`` applied to the class scores
as a bias-free linear layer, ``out = scores @ W^T`` (``out_i = sum_j W_ij scores_j``).

Init modes (``WHEEL_INITS``):

* ``wheel``: ``d(i, j) = min(|p_i - p_j|, 8 - |p_i - p_j|)`` steps between the wheel positions,
  ``W_ij = exp(-d^2 / (2 sigma^2)) / (sqrt(2 pi) sigma)``, each row normalised to sum 1;
* ``identity``: ``W = I``;
* ``random``: uniform [0, 1) entries (torch's global generator), rows normalised to sum 1;
* ``label_correlation``: the Pearson correlation of the classes' columns in the training label
  distributions, negative values set to 0 (a class without variance correlates with itself
  only), rows normalised to sum 1;
* ``none``: no prior layer (the scores pass unchanged).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from utils.errors import ConfigError
from utils.registry import Registry, closest

MIKELS_WHEEL = ("fear", "sadness", "disgust", "anger", "amusement", "contentment", "awe", "excitement")

#: ``name -> f(num_classes, positions, sigma, train_dists) -> Tensor[C, C]`` (``none`` -> None)
WHEEL_INITS = Registry("emotion-wheel prior init mode")


def wheel_positions(classnames: Sequence[str], mapping: Optional[Mapping[str, str]] = None) -> list:
    """Position (0..7) of each class on Mikels' wheel; ``mapping`` renames classes first.

    Raises:
        ConfigError: a class (or mapping target) that is not one of the wheel's 8 emotions.
    """
    mapping = {k.lower(): v.lower() for k, v in (mapping or {}).items()}
    unknown = set(mapping) - {c.lower() for c in classnames}
    if unknown:
        raise ConfigError(f"wheel mapping names classes the dataset does not have: {', '.join(sorted(unknown))}")
    out = []
    for c in classnames:
        target = mapping.get(c.lower(), c.lower())
        if target not in MIKELS_WHEEL:
            hint = closest(target, list(MIKELS_WHEEL))
            raise ConfigError(
                f"class {c!r} is not on Mikels' wheel ({', '.join(MIKELS_WHEEL)}): map it in "
                f"TRAINER.EWMTCNN.WHEEL_MAPPING as '{c}:<wheel emotion>'" + (f" (closest: {hint!r})" if hint else "")
            )
        out.append(MIKELS_WHEEL.index(target))
    return out


def wheel_distance(positions: Sequence[int], n_wheel: int = len(MIKELS_WHEEL)) -> np.ndarray:
    """``[C, C]`` steps between wheel positions (the shorter way round)."""
    p = np.asarray(positions)
    diff = np.abs(p[:, None] - p[None, :])
    return np.minimum(diff, n_wheel - diff)


def _row_normalise(m: torch.Tensor) -> torch.Tensor:
    return m / m.sum(dim=1, keepdim=True).clamp_min(1e-12)


@WHEEL_INITS.register(name="wheel")
def wheel_matrix(num_classes: int, positions: Sequence[int], sigma: float = 0.6, train_dists=None) -> torch.Tensor:
    """Gaussian of the wheel distance, rows normalised (module docstring). ``[C, C]``."""
    if sigma <= 0:
        raise ConfigError(f"TRAINER.EWMTCNN.SIGMA must be positive, got {sigma}")
    d = torch.as_tensor(wheel_distance(positions), dtype=torch.float64)
    w = torch.exp(-(d**2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    return _row_normalise(w).float()


@WHEEL_INITS.register(name="identity")
def identity_matrix(num_classes: int, positions=None, sigma: float = 0.6, train_dists=None) -> torch.Tensor:
    return torch.eye(num_classes)


@WHEEL_INITS.register(name="random")
def random_matrix(num_classes: int, positions=None, sigma: float = 0.6, train_dists=None) -> torch.Tensor:
    return _row_normalise(torch.rand(num_classes, num_classes, dtype=torch.float64)).float()


@WHEEL_INITS.register(name="label_correlation")
def label_correlation_matrix(num_classes: int, positions=None, sigma: float = 0.6, train_dists=None) -> torch.Tensor:
    """Correlations of the columns of ``train_dists`` ``[N, C]``, clipped at 0, rows normalised."""
    if train_dists is None or len(train_dists) < 2:
        raise ConfigError("prior init label_correlation needs the training label distributions (at least 2 items)")
    x = np.asarray(train_dists, dtype=np.float64)
    if x.shape[1] != num_classes:
        raise ConfigError(f"training distributions have {x.shape[1]} classes, expected {num_classes}")
    x = x - x.mean(0)
    std = np.sqrt((x**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (x.T @ x) / np.outer(std, std)
    r = np.nan_to_num(r, nan=0.0)
    np.fill_diagonal(r, 1.0)
    return _row_normalise(torch.as_tensor(np.clip(r, 0.0, None))).float()


@WHEEL_INITS.register(name="none")
def no_prior(num_classes: int, positions=None, sigma: float = 0.6, train_dists=None) -> None:
    return None


class EmotionWheelPrior(nn.Module):
    """``out = scores @ W^T``: scores ``[B, C]`` -> ``[B, C]``; ``W`` trainable or frozen."""

    def __init__(self, weight: torch.Tensor, trainable: bool = False) -> None:
        super().__init__()
        if weight.dim() != 2 or weight.shape[0] != weight.shape[1]:
            raise ValueError(f"prior weight must be square, got {tuple(weight.shape)}")
        self.weight = nn.Parameter(weight.clone().float(), requires_grad=trainable)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return scores @ self.weight.t()

    def extra_repr(self) -> str:
        return f"classes={self.weight.shape[0]}, trainable={self.weight.requires_grad}"


def build_prior(
    mode: str,
    classnames: Sequence[str],
    mapping: Optional[Mapping[str, str]] = None,
    sigma: float = 0.6,
    trainable: bool = False,
    train_dists=None,
) -> Optional[EmotionWheelPrior]:
    """The prior layer for ``mode`` (module docstring), or None for ``none``."""
    init: Callable = WHEEL_INITS.get(mode)
    positions = wheel_positions(classnames, mapping) if mode == "wheel" else None
    weight = init(len(classnames), positions=positions, sigma=sigma, train_dists=train_dists)
    return None if weight is None else EmotionWheelPrior(weight, trainable=trainable)


def parse_pairs(pairs: Sequence[str], key: str) -> Dict[str, str]:
    """``["joy:amusement", ...] -> {"joy": "amusement"}``; ConfigError naming ``key`` otherwise."""
    out: Dict[str, str] = {}
    for item in pairs:
        left, sep, right = str(item).partition(":")
        if not sep or not left.strip() or not right.strip():
            raise ConfigError(f"{key}: expected 'name:target' entries, got {item!r}")
        out[left.strip()] = right.strip()
    return out
