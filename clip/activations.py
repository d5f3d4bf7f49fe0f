"""QuickGELU, ``x * sigmoid(1.702 x)`` (the activation OpenAI's CLIP weights were trained with), as
one autograd function.

Written as three tensor ops (open_clip's ``QuickGELU``) autograd records three nodes, keeps two
activations of the MLP's hidden size for the backward pass (the sigmoid and ``x``) and runs about
five kernels backwards. :class:`FusedQuickGELU` computes the forward with the very same ops (the
same values, bit for bit: logits do not change), keeps only ``x``, and computes the gradient
``g * silu'(1.702 x)`` (``d/dx x sigmoid(a x) = silu'(a x)``) with one scalar multiply and torch's
fused ``silu_backward`` kernel; the gradient agrees to float rounding (``tests/test_perf_paths.py``).
``tools/benchmark.py --quickgelu`` measures a training step with each (``benchmarks/RESULTS.md``).
"""
from __future__ import annotations

import torch
import torch.nn as nn  # noqa: F401

ALPHA = 1.702


class _QuickGELUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x)
        return x * torch.sigmoid(ALPHA * x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        # d/dx x sigmoid(a x) = silu'(a x): one fused kernel (silu_backward) on u = a x
        return torch.ops.aten.silu_backward(grad, ALPHA * x)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(1.702 x)``; one autograd node saving only ``x`` when a gradient is recorded."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _QuickGELUFunction.apply(x)
    return x * torch.sigmoid(ALPHA * x)


def _open_clip_quick_gelu() -> type:
    from open_clip.transformer import QuickGELU

    return QuickGELU


class FusedQuickGELU(_open_clip_quick_gelu()):
    """Drop-in replacement for open_clip's ``QuickGELU`` (a subclass: same output, one autograd node)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quick_gelu(x)


def swap_modules(model: nn.Module, old: type, new: type) -> int:
    """Replace every sub-module of exactly type ``old`` by ``new()``; the count."""
    n = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is old:
                setattr(parent, name, new())
                n += 1
    return n


def fuse_quick_gelu(model: nn.Module) -> int:
    """Replace every open_clip ``QuickGELU`` module of ``model`` by :class:`FusedQuickGELU`; the count."""
    from open_clip.transformer import QuickGELU

    return swap_modules(model, QuickGELU, FusedQuickGELU)


def unfuse_quick_gelu(model: nn.Module) -> int:
    """The inverse of :func:`fuse_quick_gelu` (benchmarks compare the two in one process)."""
    from open_clip.transformer import QuickGELU

    return swap_modules(model, FusedQuickGELU, QuickGELU)
