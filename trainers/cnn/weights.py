"""Weights of the CNN backbones: reading weight files without running pickled code, loading them
into a network (the ImageNet classifier's keys ignored), and resolving ``MODEL.BACKBONE.PRETRAINED``
(``""`` = the ImageNet weights the papers use: torch hub cache for torchvision, Hugging Face cache
for timm, else a download, else a one-line error naming the file and the folder; ``random`` = none).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Sequence

import torch
import torch.nn as nn

from clip.pretrained import hf_cache_dir
from utils.errors import CheckpointError, ConfigError
from utils.fileio import downloads_off

logger = logging.getLogger("trainers.cnn.backbones")


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Tensors of a weight file (``.safetensors``, or a torch file holding a state dict or a
    checkpoint with ``state_dict``/``model``). ``module.``, ``net.`` and ``vit.`` prefixes are
    removed; a file of an EmoLab model (keys ``backbone.*``) gives its backbone's tensors."""
    if not os.path.isfile(path):
        raise CheckpointError(f"backbone weights not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state: Any = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any read failure is a bad file for the user
        raise CheckpointError(f"cannot read backbone weights {path}: {str(e).splitlines()[0]}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"backbone weights {path} hold no state dict of tensors")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):  # an EW-MTCNN / VARegression checkpoint
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    out = {}
    for k, v in state.items():
        for prefix in ("net.", "vit."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_backbone_weights(net: nn.Module, path: str, head_prefixes: Sequence[str] = ()) -> None:
    """Load ``path`` into ``net`` (its classifier keys ``head_prefixes`` are ignored); every other
    parameter and buffer must be present with the same shape, else CheckpointError."""
    state = {k: v for k, v in read_state_dict(path).items() if not any(k.startswith(h) for h in head_prefixes)}
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)):
        if keys:
            shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            raise CheckpointError(f"backbone weights {path} do not fit: {len(keys)} keys {what} ({shown})")
    net.load_state_dict(state, strict=True)
    logger.info(f"loaded backbone weights from {path} ({len(state)} tensors)")


def _torchvision_urls(name: str) -> List[str]:
    """ImageNet weight URLs of a torchvision model, IMAGENET1K_V1 (what ``pretrained=True`` gave) first."""
    import torchvision.models as tvm

    enum = tvm.get_model_weights(name)
    members = [m for m in enum if m.name.startswith("IMAGENET1K")]
    members.sort(key=lambda m: (m.name != "IMAGENET1K_V1", m.name))
    return [m.url for m in members]


def timm_imagenet(name: str) -> str:
    import timm
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise ConfigError(f"timm model {name} has no pretrained weights on the Hugging Face hub: set "
                          "MODEL.BACKBONE.PRETRAINED to a weight file or 'random'")
    files = ("model.safetensors", "pytorch_model.bin")
    for fname in files:
        path = try_to_load_from_cache(repo, fname, cache_dir=hf_cache_dir())
        if isinstance(path, str) and os.path.isfile(path):
            return path
    hint = f"put {repo}'s {files[0]} in the Hugging Face cache ({hf_cache_dir()}) or set MODEL.BACKBONE.PRETRAINED to a weight file (or 'random')"
    off = downloads_off("huggingface.co")
    if off:
        raise CheckpointError(f"backbone timm:{name} needs ImageNet weights, none found and {off}: {hint}")
    last = ""
    for fname in files:
        try:
            return hf_hub_download(repo, fname, cache_dir=hf_cache_dir())
        except Exception as e:  # noqa: BLE001 - network or hub errors mean "not available"
            last = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise CheckpointError(f"backbone timm:{name} needs ImageNet weights, none found and the download failed ({last}): {hint}")


def torchvision_imagenet(name: str) -> str:
    """torchvision's ImageNet file for ``name`` (IMAGENET1K_V1 first, then other ImageNet-1k
    versions) in ``torch.hub.get_dir()/checkpoints``; else downloaded; else a one-line CheckpointError."""
    import torch.hub

    urls = _torchvision_urls(name)
    ckpt_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    for url in urls:
        path = os.path.join(ckpt_dir, os.path.basename(url))
        if os.path.isfile(path):
            logger.info(f"backbone {name}: ImageNet weights found at {path}")
            return path
    fname = os.path.basename(urls[0])
    hint = (f"put {fname} ({urls[0]}) in {ckpt_dir}/ (the torch hub cache; $TORCH_HOME moves it), or set "
            "MODEL.BACKBONE.PRETRAINED to a weight file (or 'random' for random weights)")
    off = downloads_off("download.pytorch.org")
    if off:
        raise CheckpointError(f"backbone {name} needs ImageNet weights, none found and {off}: {hint}")
    dst = os.path.join(ckpt_dir, fname)
    try:
        os.makedirs(ckpt_dir, exist_ok=True)
        logger.info(f"backbone {name}: downloading ImageNet weights {urls[0]}")
        torch.hub.download_url_to_file(urls[0], dst, progress=False)
    except Exception as e:  # noqa: BLE001 - network errors mean "not available"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"backbone {name} needs ImageNet weights, none found and the download failed ({msg}): {hint}") from None
    return dst
