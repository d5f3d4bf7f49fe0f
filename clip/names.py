"""Architecture names: open_clip's built-ins, OpenAI spellings and the project's tiny CLIPs.

The project's architectures are open_clip model configs (JSON) in ``configs/clip_models/``.
They are registered with open_clip the first time a name is resolved, never at import time.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, List

from utils.errors import ConfigError
from utils.registry import closest

logger = logging.getLogger(__name__)

#: the repository root (the directory holding ``clip/``)
REPO_ROOT = Path(__file__).resolve().parent.parent
#: where the project's architecture JSONs live
PROJECT_CONFIG_DIR = REPO_ROOT / "configs" / "clip_models"
_REQUIRED_KEYS = ("embed_dim", "vision_cfg", "text_cfg")

_registered = False


def project_models() -> List[str]:
    """Names of the architectures defined in ``configs/clip_models/*.json``."""
    if not PROJECT_CONFIG_DIR.is_dir():
        return []
    return sorted(p.stem for p in PROJECT_CONFIG_DIR.glob("*.json"))


def _check_config_file(path: Path) -> None:
    """A :class:`ConfigError` naming ``path`` if it is not an open_clip model config."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"CLIP model config {path} cannot be read: {str(exc).splitlines()[0]}") from None
    missing = [k for k in _REQUIRED_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise ConfigError(f"CLIP model config {path} lacks {', '.join(missing)}")


def register_project_models() -> None:
    """Add ``configs/clip_models/`` to open_clip's model configs (once per process)."""
    global _registered
    if _registered:
        return
    import open_clip

    if PROJECT_CONFIG_DIR.is_dir():
        for path in sorted(PROJECT_CONFIG_DIR.glob("*.json")):
            _check_config_file(path)
        open_clip.add_model_config(PROJECT_CONFIG_DIR)
        logger.debug("registered CLIP architectures %s", ", ".join(project_models()))
    _registered = True


def available_models() -> List[str]:
    """Every architecture name :func:`load_clip` accepts (open_clip's and the project's)."""
    import open_clip

    register_project_models()
    return list(open_clip.list_models())


def _canonical(name: str) -> str:
    """OpenAI spelling -> open_clip spelling: ``ViT-B/16`` -> ``ViT-B-16``,
    ``ViT-L/14@336px`` -> ``ViT-L-14-336``."""
    name = re.sub(r"@(\d+)px$", r"-\1", name.strip())
    return name.replace("/", "-")


def resolve_model_name(name: str) -> str:
    """The open_clip architecture name for ``name``; a :class:`ConfigError` with the closest
    valid name if there is none.

    Accepts open_clip names (``ViT-B-16``), OpenAI names (``ViT-B/16``, ``RN50x4``,
    ``ViT-L/14@336px``), any capitalisation of those, and project names (``emolab-tiny-vit``).
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"CLIP architecture name is empty (e.g. ViT-B/16, RN50, emolab-tiny-vit): {name!r}")
    models = available_models()
    cand = _canonical(name)
    if cand in models:
        return cand
    lower = {m.lower(): m for m in models}
    if cand.lower() in lower:
        return lower[cand.lower()]
    hint = closest(cand, models)
    msg = f"unknown CLIP architecture {name!r}"
    msg += f" (did you mean {hint!r}?)" if hint else " (see clip.available_models())"
    raise ConfigError(msg)


def model_config(arch: str) -> Dict[str, Any]:
    """A copy of the open_clip model config of a resolved architecture name."""
    import open_clip

    register_project_models()
    conf = open_clip.get_model_config(arch)
    if conf is None:
        raise ConfigError(f"unknown CLIP architecture {arch!r} (see clip.available_models())")
    return conf


def check_text_tower(arch: str, conf: Dict[str, Any]) -> None:
    """Refuse architectures whose text tower cannot take prompt embeddings (HF / CoCa towers),
    before anything is built or downloaded."""
    text_conf = conf.get("text_cfg", {})
    if conf.get("custom_text") or text_conf.get("hf_model_name") or "multimodal_cfg" in conf:
        raise ConfigError(f"architecture {arch} has a text tower that does not take prompt embeddings")
    pool = text_conf.get("pool_type", "argmax")
    if pool not in ("argmax", "eos"):
        raise ConfigError(f"architecture {arch} pools its text features with {pool!r}, not at the EOT token")
    if text_conf.get("embed_cls"):
        raise ConfigError(f"architecture {arch} has a text class token; prompting needs EOT pooling")
