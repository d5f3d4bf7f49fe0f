"""Prompt-learner checkpoints in the official CoOp / CoCoOp layout, both ways.

The official code saves ``prompt_learner/model.pth.tar-<epoch>`` (Dassl layout) whose
``state_dict`` holds

* CoOp: ``ctx`` [n_ctx, D] (class-specific: [C, n_ctx, D]), ``token_prefix`` [C, 1, D],
  ``token_suffix`` [C, 77 - 1 - n_ctx, D];
* CoCoOp: ``ctx`` [n_ctx, D], ``meta_net.linear1.{weight,bias}`` ([E/16, E], [E/16]),
  ``meta_net.linear2.{weight,bias}`` ([D, E/16], [D]), ``token_prefix``, ``token_suffix``;

EmoLab's prompt learner names them ``context.ctx`` ([1, n_ctx, D] shared, [C, n_ctx, D]
class-specific, [n_ctx, D] conditional) and ``context.meta_net.<i>.*`` (a ``Sequential``), and
keeps no token buffers. :func:`from_official` maps an official state dict onto an EmoLab prompt
learner (the token embeddings are dropped, as CoOp's own loader does, and rebuilt from this run's
class names); :func:`to_official` writes the official names (``tools/convert_coop_checkpoint.py``).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from utils.errors import CheckpointError

logger = logging.getLogger(__name__)
OFFICIAL_TOKEN_KEYS = ("token_prefix", "token_suffix")


def is_official(state: Dict[str, torch.Tensor]) -> bool:
    """True for a state dict with the official CoOp / CoCoOp key names."""
    return "ctx" in state and not any(k.startswith("context.") for k in state)


def _linear_indices(module: nn.Module) -> List[str]:
    meta = getattr(getattr(module, "context", None), "meta_net", None)
    if meta is None:
        return []
    return [name for name, m in meta.named_children() if isinstance(m, nn.Linear)]


def from_official(state: Dict[str, torch.Tensor], prompt_learner: nn.Module, path: str = "") -> Dict[str, torch.Tensor]:
    """The official ``state`` renamed and reshaped for ``prompt_learner`` (cast to its dtypes)."""
    own = prompt_learner.state_dict()
    out: Dict[str, torch.Tensor] = {}
    dropped = [k for k in OFFICIAL_TOKEN_KEYS if k in state]
    linears = _linear_indices(prompt_learner)
    for key, value in state.items():
        if key in OFFICIAL_TOKEN_KEYS:
            continue
        if key == "ctx":
            new = "context.ctx"
        elif key.startswith("meta_net.linear"):
            layer, _, param = key[len("meta_net.linear"):].partition(".")
            if len(linears) < 2 or layer not in ("1", "2"):
                raise CheckpointError(f"checkpoint {path} has {key}, but this model's context has no meta-net "
                                      "(a CoCoOp checkpoint needs --trainer CoCoOp)")
            new = f"context.meta_net.{linears[int(layer) - 1]}.{param}"
        else:
            raise CheckpointError(f"checkpoint {path}: unexpected key {key!r} for a CoOp / CoCoOp prompt learner")
        if new not in own:
            raise CheckpointError(f"checkpoint {path} has {key}, which this prompt learner does not have")
        if value.shape != own[new].shape:
            if value.numel() != own[new].numel():
                raise CheckpointError(f"checkpoint {path}: {key} has shape {tuple(value.shape)}, the model's "
                                      f"{new} {tuple(own[new].shape)} (another N_CTX, CSC or backbone?)")
            value = value.reshape(own[new].shape)
        out[new] = value.to(own[new].dtype)
    if dropped:
        logger.info(f"official CoOp/CoCoOp checkpoint {path}: {', '.join(dropped)} ignored (rebuilt from this run's "
                    "class names, as CoOp's loader does)")
    return out


def to_official(state: Dict[str, torch.Tensor], token_prefix: Optional[torch.Tensor] = None,
                token_suffix: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """An EmoLab prompt-learner state dict under the official names.

    ``context.ctx`` [1, n, D] becomes ``ctx`` [n, D] (class-specific [C, n, D] and conditional
    [n, D] keep their shape); the two linear layers of ``context.meta_net`` become
    ``meta_net.linear1/2``. ``token_prefix`` / ``token_suffix`` are added when given.
    """
    if "context.ctx" not in state:
        raise CheckpointError("not an EmoLab CoOp / CoCoOp prompt learner (no context.ctx)")
    ctx = state["context.ctx"]
    meta = sorted({k.split(".")[2] for k in state if k.startswith("context.meta_net.")}, key=int)
    out: Dict[str, torch.Tensor] = {"ctx": ctx[0] if ctx.dim() == 3 and ctx.shape[0] == 1 else ctx}
    if meta:
        if len(meta) != 2:
            raise CheckpointError(f"the meta-net has {len(meta)} linear layers; the official layout has 2")
        for i, idx in enumerate(meta, 1):
            for param in ("weight", "bias"):
                out[f"meta_net.linear{i}.{param}"] = state[f"context.meta_net.{idx}.{param}"]
    others = [k for k in state if k != "context.ctx" and not k.startswith("context.meta_net.")]
    if others:
        raise CheckpointError(f"keys without an official name: {', '.join(others[:3])}")
    if token_prefix is not None:
        out["token_prefix"] = token_prefix
    if token_suffix is not None:
        out["token_suffix"] = token_suffix
    return {k: v.detach().clone().contiguous() for k, v in out.items()}
