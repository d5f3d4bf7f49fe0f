"""The architecture of an OpenAI-format CLIP state dict, read from the tensors' shapes.

``MODEL.BACKBONE.NAME infer`` with ``MODEL.BACKBONE.PRETRAINED`` naming a weight file builds the
architecture the file holds, by the rules of OpenAI's ``clip.model.build_model``: ViT when
``visual.proj`` is present (width, patch size, layers and resolution from ``visual.conv1`` and the
positional embeddings; heads = width / 64), else the modified ResNet (layers per stage, width,
resolution = 32 x the attention pool's grid; heads = width * 32 / 64); the text tower's width,
layers, context length and vocabulary from its tensors, heads = width / 64; QuickGELU activations,
as every OpenAI CLIP. The inferred config is registered with open_clip under
``openai-inferred-<digest>`` (a JSON in a per-process temporary folder; nothing is written to the
checkout).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from typing import Any, Dict, Tuple

from utils.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

INFER = "infer"
_REGISTERED: Dict[Tuple[str, int, int], str] = {}
_DIR = None


def is_infer(name: str) -> bool:
    """True for the architecture name that asks for inference from the weight file."""
    return isinstance(name, str) and name.strip().lower() == INFER


def _count(state: Dict[str, Any], prefix: str, depth: int) -> int:
    return len({k.split(".")[depth] for k in state if k.startswith(prefix)})


def infer_config(state: Dict[str, Any], path: str = "") -> Dict[str, Any]:
    """An open_clip model config for the OpenAI-layout ``state`` (module docstring for the rules).

    Raises:
        CheckpointError: ``state`` lacks the tensors the rules read (not an OpenAI-layout CLIP).
    """
    try:
        if "visual.proj" in state:
            width = int(state["visual.conv1.weight"].shape[0])
            patch = int(state["visual.conv1.weight"].shape[-1])
            layers = len([k for k in state if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
            grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = {"image_size": patch * grid, "layers": layers, "width": width, "patch_size": patch,
                      "head_width": 64}
        else:
            stages = [_count(state, f"visual.layer{b}.", 2) for b in (1, 2, 3, 4)]
            pos = int(state["visual.attnpool.positional_embedding"].shape[0])
            grid = round((pos - 1) ** 0.5)
            if grid * grid + 1 != pos or not all(stages):
                raise KeyError("visual.attnpool.positional_embedding")
            vision = {"image_size": grid * 32, "layers": stages, "width": int(state["visual.layer1.0.conv1.weight"].shape[0]),
                      "patch_size": None}
        text_width = int(state["ln_final.weight"].shape[0])
        text = {"context_length": int(state["positional_embedding"].shape[0]),
                "vocab_size": int(state["token_embedding.weight"].shape[0]), "width": text_width,
                "heads": max(1, text_width // 64), "layers": _count(state, "transformer.resblocks.", 2)}
        embed = int(state["text_projection"].shape[1])
    except (KeyError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"CLIP checkpoint {path} is not an OpenAI-layout CLIP state dict, so its architecture "
                              f"cannot be inferred (no {exc.args[0] if exc.args else 'expected'} tensor): name the "
                              "architecture in MODEL.BACKBONE.NAME") from None
    return {"embed_dim": embed, "quick_gelu": True, "vision_cfg": vision, "text_cfg": text}


def describe(conf: Dict[str, Any]) -> str:
    """``ViT width 768, 12 layers, patch 16, 224 px; text width 512, 12 layers; QuickGELU``."""
    v, t = conf["vision_cfg"], conf["text_cfg"]
    kind = f"ViT width {v['width']}, {v['layers']} layers, patch {v['patch_size']}" if v.get("patch_size") else \
        f"ResNet {tuple(v['layers'])} width {v['width']}"
    return (f"{kind}, {v['image_size']} px; text width {t['width']}, {t['layers']} layers, {t['heads']} heads; "
            f"embed {conf['embed_dim']}; QuickGELU")


def inferred_arch(pretrained: str) -> str:
    """The open_clip architecture name for the weight file ``pretrained`` (read once per file version).

    Raises:
        ConfigError: ``pretrained`` is empty or not a file.
        CheckpointError: the file cannot be read or is not an OpenAI-layout CLIP.
    """
    global _DIR
    from .checkpoint import find_checkpoint, read_checkpoint
    from .names import REPO_ROOT

    path = find_checkpoint(pretrained or "", REPO_ROOT) if pretrained else None
    if path is None:
        raise ConfigError(f"MODEL.BACKBONE.NAME infer needs MODEL.BACKBONE.PRETRAINED to name an OpenAI-format CLIP "
                          f"weight file (got {pretrained!r})")
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key in _REGISTERED:
        return _REGISTERED[key]
    conf = infer_config(read_checkpoint(path).state_dict, path)
    text = json.dumps(conf, sort_keys=True)
    name = "openai-inferred-" + hashlib.sha1(text.encode()).hexdigest()[:10]
    if _DIR is None:
        _DIR = tempfile.mkdtemp(prefix="emolab_clip_arch_")
    target = os.path.join(_DIR, f"{name}.json")
    with open(target, "w", encoding="utf-8") as f:
        f.write(text)
    import open_clip

    from .names import register_project_models

    register_project_models()
    open_clip.add_model_config(target)
    logger.info(f"CLIP architecture inferred from {path} (as OpenAI's build_model): {describe(conf)}")
    _REGISTERED[key] = name
    return name
