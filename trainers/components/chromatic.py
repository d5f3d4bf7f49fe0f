"""Chromatic (warm / cool) analysis and how its output feeds EmoCoOp's prediction.

:class:`ChromaticAnalyzer` reads unnormalised RGB images in [0, 1] (the model un-normalises
the batch first) through three paths, each giving ``[B, 2]`` scores ordered (cool, warm):

* histogram: ``cool = mean(0.2R + 0.3G + 0.5B)``, ``warm = mean(0.5R + 0.3G + 0.2B)``,
  divided by their sum;
* Fourier: RGB -> YUV; the blue-leaning chroma ``max(U, 0)`` and the red-leaning chroma
  ``max(V, 0)`` are Fourier transformed, the spectrum centred with ``fftshift`` and the
  magnitude summed inside the centred low-frequency disk of radius ``min(h, w) / 8``
  (divided by ``h * w``, so a flat image gives its chroma value); ``softmax(T * [E_cool, E_warm])``;
* CNN: conv 3->16, ReLU, max-pool 2, conv 16->32, ReLU, global average pool (the [B, 32]
  feature), FC 32->2, softmax.

Fused: ``((hist + fourier) / 2 + cnn) / 2``; the analyzer returns the fused scores and the
CNN feature. Fusion heads (registry ``CHROMATIC_FUSIONS``) take the 34-d vector
``[scores, feature]``: ``fusion`` adds a learned projection of it to the image feature (then
re-normalises), ``residual`` adds learned per-class logits to the CLIP logits.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.registry import Registry

CHROMATIC_FUSIONS = Registry("chromatic fusion (TRAINER.EMOCOOP.COLOR_FUSION)")
COOL_RGB = (0.2, 0.3, 0.5)
WARM_RGB = (0.5, 0.3, 0.2)
FEATURE_DIM = 32


def rgb_to_yuv(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Y, U, V planes [B, H, W] of RGB images [B, 3, H, W] (BT.601 analogue coefficients)."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = -0.147 * r - 0.289 * g + 0.436 * b
    v = 0.615 * r - 0.515 * g - 0.100 * b
    return y, u, v


def low_frequency_mask(h: int, w: int, device=None, divisor: float = 8.0) -> torch.Tensor:
    """Bool [h, w]: the disk of radius ``min(h, w) / divisor`` around the centre of an fftshift-ed spectrum."""
    cy, cx = h // 2, w // 2  # where fftshift puts the zero frequency, for odd and even sizes
    yy = torch.arange(h, device=device).view(-1, 1).float()
    xx = torch.arange(w, device=device).view(1, -1).float()
    dist = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return dist < min(h, w) / divisor


def low_frequency_energy(plane: torch.Tensor, divisor: float = 8.0) -> torch.Tensor:
    """[B]: summed FFT magnitude of ``plane`` [B, H, W] inside the centred low-frequency disk, / (H W)."""
    h, w = plane.shape[-2:]
    spec = torch.fft.fftshift(torch.fft.fft2(plane.float()), dim=(-2, -1)).abs()
    mask = low_frequency_mask(h, w, plane.device, divisor)
    return (spec * mask).sum(dim=(-2, -1)) / float(h * w)


class ChromaticAnalyzer(nn.Module):
    """Warm / cool analysis of RGB images in [0, 1]; see the module docstring.

    Args:
        fourier_temperature: T in the Fourier path's softmax (energies are chroma values in [0, 0.62]).
        radius_divisor: the low-frequency disk radius is ``min(h, w) / radius_divisor``.
    """

    def __init__(self, fourier_temperature: float = 10.0, radius_divisor: float = 8.0) -> None:
        super().__init__()
        self.temperature, self.divisor = float(fourier_temperature), float(radius_divisor)
        self.register_buffer("cool_w", torch.tensor(COOL_RGB).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("warm_w", torch.tensor(WARM_RGB).view(1, 3, 1, 1), persistent=False)
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, FEATURE_DIM, kernel_size=3, padding=1)
        self.fc = nn.Linear(FEATURE_DIM, 2)
        nn.init.zeros_(self.fc.weight)  # the learned path starts neutral (0.5, 0.5)
        nn.init.zeros_(self.fc.bias)

    def histogram_scores(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 2] (cool, warm) shares of the weighted channel means."""
        cool = (x * self.cool_w).sum(1).mean(dim=(-2, -1))
        warm = (x * self.warm_w).sum(1).mean(dim=(-2, -1))
        total = (cool + warm).clamp(min=1e-6)
        return torch.stack([cool / total, warm / total], dim=1)

    def fourier_energies(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 2] low-frequency energies of the blue-leaning (cool) and red-leaning (warm) chroma."""
        _, u, v = rgb_to_yuv(x)
        e_cool = low_frequency_energy(u.clamp(min=0), self.divisor)
        e_warm = low_frequency_energy(v.clamp(min=0), self.divisor)
        return torch.stack([e_cool, e_warm], dim=1)

    def fourier_scores(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 2] softmax of the temperature-scaled low-frequency energies."""
        return F.softmax(self.temperature * self.fourier_energies(x), dim=1)

    def cnn(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scores [B, 2], feature [B, 32]) of the small CNN."""
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        feat = F.adaptive_avg_pool2d(F.relu(self.conv2(h)), 1).flatten(1)
        return F.softmax(self.fc(feat), dim=1), feat

    def paths(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Every path's output: ``hist``, ``fourier``, ``cnn`` [B, 2], ``feature`` [B, 32], ``fused`` [B, 2]."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            hist, fourier = self.histogram_scores(x), self.fourier_scores(x)
            cnn, feat = self.cnn(x)
            fused = ((hist + fourier) / 2 + cnn) / 2
        return {"hist": hist, "fourier": fourier, "cnn": cnn, "feature": feat, "fused": fused}

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(fused scores [B, 2] (cool, warm), CNN feature [B, 32]) of images [B, 3, H, W] in [0, 1]."""
        p = self.paths(x)
        return p["fused"], p["feature"]


class _Fusion(nn.Module):
    """Base: a linear map of the 34-d chromatic vector; both hooks default to the identity.

    ``OUTPUT`` says what the map's output width is: ``"embed"`` (E) or ``"classes"`` (C).
    """

    OUTPUT = "embed"

    def __init__(self, out_dim: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.proj = nn.Linear(2 + FEATURE_DIM, out_dim)
        nn.init.normal_(self.proj.weight, std=init_std)  # small: the model starts close to plain CLIP logits
        nn.init.zeros_(self.proj.bias)

    def fuse_image(self, img: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
        return img

    def fuse_logits(self, logits: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
        return logits


@CHROMATIC_FUSIONS.register(name="fusion")
class FeatureFusion(_Fusion):
    """``img' = normalize(img + W [scores, feature])`` (W: 34 -> E); the logits use ``img'``."""

    def fuse_image(self, img: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
        return F.normalize(img + self.proj(chroma.to(img.dtype)), dim=-1)


@CHROMATIC_FUSIONS.register(name="residual")
class ResidualLogits(_Fusion):
    """``logits' = logits + W [scores, feature]`` (W: 34 -> C)."""

    OUTPUT = "classes"

    def fuse_logits(self, logits: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
        return logits + self.proj(chroma.to(logits.dtype))


class ChromaticBranch(nn.Module):
    """Analyzer + fusion head (the trainable ``chromatic`` module of EmoCoOp).

    ``analyze(rgb01) -> [B, 34]`` then ``fusion.fuse_image`` / ``fusion.fuse_logits``.
    """

    def __init__(self, analyzer: ChromaticAnalyzer, fusion: _Fusion) -> None:
        super().__init__()
        self.analyzer, self.fusion = analyzer, fusion

    def analyze(self, rgb01: torch.Tensor) -> torch.Tensor:
        scores, feat = self.analyzer(rgb01)
        return torch.cat([scores, feat], dim=1)


def build_chromatic(mode: str, embed_dim: int, n_cls: int, fourier_temperature: float = 10.0) -> ChromaticBranch:
    """``mode`` ``fusion`` (out E = ``embed_dim``) or ``residual`` (out C = ``n_cls``)."""
    cls = CHROMATIC_FUSIONS.get(mode)
    out = embed_dim if cls.OUTPUT == "embed" else n_cls
    return ChromaticBranch(ChromaticAnalyzer(fourier_temperature), cls(out))
