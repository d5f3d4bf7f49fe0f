"""Fusion of two feature vectors (UniEmoX: the scene and the person token), by registry name.

Every module maps ``a [B, D]``, ``b [B, D]`` to ``[B, D]``:

* ``released`` - UniEmoX's ``AttentionFusion``: ``ELU(Linear(LN(a) + LN(b)))`` with ONE layer
  norm shared by both inputs (attribute ``bn``, eps 1e-5), the Linear xavier-uniform with bias 0,
  ELU alpha 1;
* ``mean`` - ``(a + b) / 2``, no parameters (a control);
* ``concat_linear`` - ``Linear([LN_a(a), LN_b(b)])`` (2D -> D), separate norms;
* ``gated`` - ``g * a + (1 - g) * b`` with ``g = sigmoid(Linear([a, b]))`` per dimension.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from utils.registry import Registry

FUSION_MODULES = Registry("fusion module (TRAINER.UNIEMOX_PRETRAIN.FUSION)")


def _xavier(linear: nn.Linear) -> nn.Linear:
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


@FUSION_MODULES.register(name="released")
class SharedNormLinearELU(nn.Module):
    """``ELU(Linear(LN(a) + LN(b)))``, one shared LayerNorm (as released).

    Parameter names are the released ``AttentionFusion``'s (``bn.*``, ``linear.*``), so its
    ``att_fusion`` weights load and EmoLab's load in the released code; files from before the
    rename (``fc.*``) still load."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.LayerNorm(dim)
        self.linear = _xavier(nn.Linear(dim, dim))
        self.act = nn.ELU(alpha=1.0)
        self._register_load_state_dict_pre_hook(_old_fc_names)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(self.bn(a) + self.bn(b)))


def _old_fc_names(state, prefix, *_args) -> None:
    """EmoLab's earlier name of the released fusion's linear layer (``fc``) -> ``linear``."""
    for key in [k for k in state if k.startswith(prefix + "fc.")]:
        state[prefix + "linear." + key[len(prefix) + 3:]] = state.pop(key)


@FUSION_MODULES.register(name="mean")
class MeanFusion(nn.Module):
    """``(a + b) / 2``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 0.5 * (a + b)


@FUSION_MODULES.register(name="concat_linear")
class ConcatLinearFusion(nn.Module):
    """``Linear([LN_a(a), LN_b(b)])``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm_a, self.norm_b = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc = _xavier(nn.Linear(2 * dim, dim))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([self.norm_a(a), self.norm_b(b)], dim=-1))


@FUSION_MODULES.register(name="gated")
class GatedFusion(nn.Module):
    """``g * a + (1 - g) * b``, ``g = sigmoid(Linear([a, b]))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = _xavier(nn.Linear(2 * dim, dim))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([a, b], dim=-1)))
        return g * a + (1.0 - g) * b


def build_fusion(name: str, dim: int) -> nn.Module:
    """The registered fusion ``name`` for ``dim``-d inputs (ConfigError naming the closest name)."""
    return FUSION_MODULES.get(name)(dim)
