"""Reading UniEmoX / MAE checkpoints without running pickled code, and fitting them to a model.

Every file is read with ``torch.load(weights_only=True)``; the only class the allow-list adds is
``argparse.Namespace`` (the released files pickle their command-line ``args``). A file that
needs anything else is refused with a one-line :class:`CheckpointError`.

Layouts understood (``module.`` prefixes are stripped everywhere):

* fine-tuned UniEmoX files: a bare state dict or ``{'model': state_dict, ...}`` of the ViT with
  ``fc_norm`` and ``head`` (and the unused ``norm.*`` of global-pool models, dropped);
* pre-trained UniEmoX / MAE files (``{'model': ...}``, maybe ``'att_fusion'``): encoder keys plus
  ``mask_token`` and ``decoder_*`` (dropped for fine-tuning; ``fc_norm`` and ``head`` are new);
  ImageNet MAE files (encoder only, or with the decoder) alike;
* EmoLab checkpoints (``{'state_dict': ...}``, ``model.pth.tar-N`` / ``model-best.pth.tar``) of
  either stage, and the single-file hand-off ``uniemox_pretrain.pth`` a pre-training run writes.

A checkpoint that fits none is one line naming the missing and the unexpected keys.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from utils.errors import CheckpointError

logger = logging.getLogger(__name__)

#: classes a checkpoint may contain besides tensors and containers
SAFE_GLOBALS = [argparse.Namespace]
HANDOFF_NAME = "uniemox_pretrain.pth"


def read_checkpoint(path: str, what: str = "checkpoint", allow: Sequence[type] = tuple(SAFE_GLOBALS)) -> Any:
    """``torch.load(path, weights_only=True)`` with ``allow`` added to the allow-list; one-line errors.

    A file that needs any other pickled object is refused without running it, and the message names
    the object (torch's own text spans several lines)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            raise CheckpointError(f"refusing {what} {path}: it pickles {found.group(1)}, which is not on the allow-list "
                                  f"(tensors, containers, {', '.join(c.__module__ + '.' + c.__name__ for c in allow) or 'nothing else'}); "
                                  f"nothing in it was run") from None
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
        raise CheckpointError(f"cannot read {what} {path}: {first}") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj) and all(
        torch.is_tensor(v) for v in obj.values())


def strip_prefix(state: Dict[str, torch.Tensor], prefix: str = "module.") -> Dict[str, torch.Tensor]:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def model_state(obj: Any, path: str) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, torch.Tensor]]]:
    """``(model state dict, fusion state dict or None)`` of a loaded checkpoint object."""
    fusion = None
    if isinstance(obj, dict) and isinstance(obj.get("att_fusion"), dict):
        fusion = strip_prefix(obj["att_fusion"])
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and _is_state_dict(obj.get(key)):
            return strip_prefix(obj[key]), fusion
    if _is_state_dict(obj):
        return strip_prefix(obj), fusion
    keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"checkpoint {path} holds no state dict (expected a bare state dict or 'model' / "
                          f"'state_dict' entries; found {keys})")


def resolve_checkpoint(path: str, modules: Sequence[str] = ("mae",)) -> str:
    """A file as given; for an EmoLab run folder its hand-off file, else ``<dir>/<module>/`` best or latest
    (the first of ``modules`` present)."""
    if not os.path.isdir(path):
        return path
    if os.path.isfile(os.path.join(path, HANDOFF_NAME)):
        return os.path.join(path, HANDOFF_NAME)
    from trainers.engine.checkpoint import BEST, latest_checkpoint

    for module in modules:
        sub = os.path.join(path, module)
        if os.path.isfile(os.path.join(sub, BEST)):
            return os.path.join(sub, BEST)
        latest = latest_checkpoint(sub) if os.path.isdir(sub) else None
        if latest is not None:
            return latest
    wanted = " or ".join(f"{m}/model.pth.tar-N" for m in modules)
    raise CheckpointError(f"no checkpoint in {path} (expected {HANDOFF_NAME} or {wanted})")


def _short(keys: Iterable[str], n: int = 6) -> str:
    keys = sorted(keys)
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def fit_error(path: str, missing: Iterable[str], unexpected: Iterable[str], shapes: Iterable[str] = ()) -> CheckpointError:
    msg = f"checkpoint {path} fits no known UniEmoX layout: missing keys [{_short(missing)}]; unexpected keys [{_short(unexpected)}]"
    shapes = list(shapes)
    if shapes:
        msg += f"; shape mismatch [{_short(shapes, 3)}]"
    return CheckpointError(msg)


def _resample_pos_embed(pos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A ``[1, 1+g*g, D]`` position table resampled bicubically to ``target``'s grid (CLS kept)."""
    from timm.layers import resample_abs_pos_embed

    n_new = target.shape[1] - 1
    g_new, g_old = int(round(n_new ** 0.5)), int(round((pos.shape[1] - 1) ** 0.5))
    logger.info(f"resampling pos_embed from a {g_old}x{g_old} to a {g_new}x{g_new} grid (bicubic)")
    return resample_abs_pos_embed(pos, [g_new, g_new], [g_old, g_old], num_prefix_tokens=1,
                                  interpolation="bicubic", antialias=False)


def file_pooling(state: Dict[str, torch.Tensor]) -> Optional[str]:
    """``"avg"`` / ``"token"`` for a fine-tuned classifier state dict (it has ``head.*``), None otherwise.

    A global-pool classifier has ``fc_norm.*`` (the released one also the unused ``norm.*``); a
    cls-token classifier has ``norm.*`` and no ``fc_norm.*``."""
    if "head.weight" not in state:
        return None
    if "fc_norm.weight" in state:
        return "avg"
    return "token" if "norm.weight" in state else None


def load_into_classifier(vit: nn.Module, path: str, global_pool: bool = True, require_head: bool = False) -> str:
    """Load any UniEmoX / MAE / EmoLab checkpoint into a timm ``VisionTransformer``; returns what was loaded.

    ``head.*`` is loaded only when its shape fits (a fine-tuned file on the same classes); a new
    head gets the released initialisation (trunc-normal std 2e-5, bias 0) and a new ``fc_norm``
    weight 1, bias 0. ``require_head`` (evaluation): a file without a fitting head is refused.
    A fine-tuned file whose pooling (:func:`file_pooling`) differs from the model's is refused:
    its ``norm`` / ``fc_norm`` would be dropped or left untrained.
    """
    from timm.layers import trunc_normal_

    state, _ = model_state(read_checkpoint(path), path)
    pool = file_pooling(state)
    want = "avg" if global_pool else "token"
    if pool is not None and pool != want:
        setting = "True" if pool == "avg" else "False"
        kind = "global average pooling (fc_norm.*)" if pool == "avg" else "cls-token pooling (norm.*, no fc_norm.*)"
        raise CheckpointError(f"checkpoint {path} is a classifier fine-tuned with {kind}, this model uses "
                              f"{'global average' if global_pool else 'cls-token'} pooling: set "
                              f"TRAINER.UNIEMOX.GLOBAL_POOL {setting}")
    own = vit.state_dict()
    drop = ("mask_token",) + (("norm.weight", "norm.bias") if global_pool else ())
    if global_pool and "norm.weight" in state:  # kept for the released layout (released_names.py)
        vit.released_norm = {k: state[k].detach().clone() for k in ("norm.weight", "norm.bias") if k in state}
    state = {k: v for k, v in state.items() if k not in drop and not k.startswith("decoder_")}
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape \
            and state["pos_embed"].shape[-1] == own["pos_embed"].shape[-1]:
        state["pos_embed"] = _resample_pos_embed(state["pos_embed"], own["pos_embed"])
    head_loaded = all(k in state and state[k].shape == own[k].shape for k in ("head.weight", "head.bias"))
    if require_head and not head_loaded:
        found = (f"a head for {state['head.weight'].shape[0]} classes" if "head.weight" in state
                 else "no classification head (a pre-trained file)")
        raise CheckpointError(f"checkpoint {path} has {found}; evaluating needs a file fine-tuned on these "
                              f"{own['head.weight'].shape[0]} classes (a new head would be untrained)")
    if not head_loaded:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    new_ok = {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"} if global_pool else {"head.weight", "head.bias"}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state if k in own and state[k].shape != own[k].shape]
    if set(missing) - new_ok or unexpected or shapes:
        raise fit_error(path, missing, unexpected, shapes)
    vit.load_state_dict(state, strict=False)
    new = sorted(set(missing))
    if not head_loaded:
        trunc_normal_(vit.head.weight, std=2e-5)
        nn.init.zeros_(vit.head.bias)
    if global_pool and "fc_norm.weight" in missing:
        nn.init.ones_(vit.fc_norm.weight)
        nn.init.zeros_(vit.fc_norm.bias)
    kind = "fine-tuned weights (head included)" if not new else f"pre-trained encoder (new: {', '.join(new)})"
    logger.info(f"loaded {kind} from {path}")
    return kind


def load_into_mae(mae: nn.Module, path: str, fusion: Optional[nn.Module] = None) -> List[str]:
    """Initialise the pre-training student (and the fusion module when the file has one).

    The encoder must be complete; decoder keys and ``mask_token`` may be absent (ImageNet MAE
    encoder-only files: the decoder keeps its fresh initialisation, which is logged). The fixed
    sin-cos position tables are recomputed, not read, when the grid differs. Returns the
    parameter names left at their initialisation.
    """
    obj = read_checkpoint(path)
    state, fusion_state = model_state(obj, path)
    own = mae.state_dict()
    for k in ("pos_embed", "decoder_pos_embed"):
        if k in state and k in own and state[k].shape != own[k].shape:
            logger.info(f"{k}: grid of {path} differs; keeping the fixed sin-cos table of this model")
            state.pop(k)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state if k in own and state[k].shape != own[k].shape]
    optional = {k for k in own if k.startswith("decoder_") or k in ("mask_token", "pos_embed")}
    if set(missing) - optional or unexpected or shapes:
        raise fit_error(path, missing, unexpected, shapes)
    mae.load_state_dict(state, strict=False)
    fresh = sorted(k for k in missing if k not in ("pos_embed", "decoder_pos_embed"))
    if fresh:
        logger.info(f"{path} has no decoder weights: {len(fresh)} tensors (decoder, mask_token) keep their fresh initialisation")
    if fusion is not None and fusion_state is not None:
        try:
            fusion.load_state_dict(fusion_state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"fusion weights in {path} do not fit: {str(e).splitlines()[0]}") from None
        logger.info(f"loaded the fusion module from {path}")
    logger.info(f"initialised the pre-training student from {path}")
    return fresh
