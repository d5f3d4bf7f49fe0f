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
class names); :func:`to_official` writes the official names.

:func:`use_official_names` makes a prompt learner's ``state_dict()`` carry the official names and
shapes and its ``load_state_dict`` accept both layouts: the CoOp / CoCoOp trainers save files the
official ``load_model`` loads unchanged (it loads with ``strict=False``, so a file under other
names would be accepted and its context silently ignored), and read official and older EmoLab files.
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
    own = dict(prompt_learner.named_parameters())  # EmoLab's names (state_dict() may be the official ones)
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
                raise CheckpointError(f"checkpoint {path} does not fit the model: {key} has shape "
                                      f"{tuple(value.shape)}, the model's {new} {tuple(own[new].shape)} "
                                      "(another N_CTX, CSC or backbone?)")
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


def use_official_names(prompt_learner: nn.Module) -> nn.Module:
    """Save ``prompt_learner`` under the official names; load either layout (module docstring).

    The official names apply to everything under the module's prefix (as a submodule too); an
    older EmoLab file (``context.ctx``) still loads. Returns ``prompt_learner``.
    """

    def to_official_hook(module, state, prefix, local_metadata):
        own = {k[len(prefix):]: state[k] for k in state if k.startswith(prefix)}
        try:
            official = to_official(own)
        except CheckpointError:  # a context generator the official layout cannot express: EmoLab's names
            return state
        for key in own:
            del state[prefix + key]
        for key, value in official.items():
            state[prefix + key] = value
        return state

    def from_official_hook(module, state, prefix, local_metadata, strict, missing, unexpected, errors):
        local = {k[len(prefix):]: k for k in state if k.startswith(prefix)}
        if not is_official({k: None for k in local}):
            return
        theirs = {k: state.pop(full) for k, full in local.items()}
        for key, value in from_official(theirs, module, local_metadata.get("path", "")).items():
            state[prefix + key] = value

    prompt_learner._register_state_dict_hook(to_official_hook)
    prompt_learner._register_load_state_dict_pre_hook(from_official_hook, with_module=True)
    return prompt_learner
