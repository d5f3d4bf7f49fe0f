"""Default CLIP weights: what ``MODEL.BACKBONE.PRETRAINED ""`` means, never silently random.

For ``""`` the weights are, in this order:

1. the project's shipped weights for its own architectures (``clip/weights/<name>.safetensors``);
2. for an architecture OpenAI released (``RN50``, ``ViT-B/16``, ...), OpenAI's weights, found in
   the places users already keep them, without any network access:

   * ``$EMOLAB_CLIP_DIR/<file>`` (``<file>`` = OpenAI's file name, ``ViT-B-16.pt``; also
     ``<arch>.pt`` / ``<arch>.safetensors`` with the open_clip name);
   * OpenAI's ``clip`` package cache and open_clip's URL cache: ``~/.cache/clip/<file>``
     (``$XDG_CACHE_HOME/clip/<file>`` as well);
   * the Hugging Face hub cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub``,
     ``$XDG_CACHE_HOME/huggingface/hub`` or ``~/.cache/huggingface/hub``), where open_clip keeps
     the same weights under ``timm/<model>.openai``;

   else downloaded through open_clip (unless ``HF_HUB_OFFLINE`` or ``EMOLAB_OFFLINE`` is set),
   else a one-line :class:`CheckpointError` that says which file to put where;
3. any other architecture: a one-line error asking for a file, an open_clip tag or ``random``.

``random`` is the only way to get random weights; it is logged as a warning.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from utils.errors import CheckpointError, ConfigError
from utils.fileio import downloads_off

from .names import REPO_ROOT, resolve_model_name

logger = logging.getLogger(__name__)
RANDOM = "random"
SHIPPED_DIR = REPO_ROOT / "clip" / "weights"


@dataclass
class Resolved:
    """What ``MODEL.BACKBONE.PRETRAINED`` resolved to.

    Attributes:
        value: what to pass to :func:`clip.load_clip` (a file, an open_clip tag, or ``""`` = random).
        source: a human-readable description for the log.
        quick_gelu: True for OpenAI weights (trained with QuickGELU), None = decide from the file.
    """

    value: str
    source: str
    quick_gelu: Optional[bool] = None


def _cache_home() -> str:
    return os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


def hf_cache_dir() -> str:
    """The Hugging Face hub cache, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return os.path.join(_cache_home(), "huggingface", "hub")


def openai_config(arch: str) -> Optional[Dict[str, Any]]:
    """open_clip's ``openai`` pretrained config of ``arch`` (url, hf_hub, quick_gelu, ...), or None."""
    from open_clip import pretrained as oc_pretrained

    if "openai" not in oc_pretrained.list_pretrained_tags_by_model(arch):
        return None
    return dict(oc_pretrained.get_pretrained_cfg(arch, "openai"))


def openai_filename(arch: str, oc_cfg: Dict[str, Any]) -> str:
    """OpenAI's file name for ``arch`` (``ViT-B-16.pt``, ``ViT-L-14-336px.pt``)."""
    url = oc_cfg.get("url", "")
    return os.path.basename(url) if url else f"{arch}.pt"


def openai_candidates(arch: str, oc_cfg: Dict[str, Any]) -> List[str]:
    """Local files that may hold OpenAI's ``arch`` weights, in search order (existing or not)."""
    fname = openai_filename(arch, oc_cfg)
    out: List[str] = []
    if os.environ.get("EMOLAB_CLIP_DIR"):
        d = os.path.expanduser(os.environ["EMOLAB_CLIP_DIR"])
        out += [os.path.join(d, fname), os.path.join(d, f"{arch}.pt"), os.path.join(d, f"{arch}.safetensors")]
    out.append(os.path.join(os.path.expanduser("~"), ".cache", "clip", fname))
    if os.environ.get("XDG_CACHE_HOME"):
        out.append(os.path.join(os.environ["XDG_CACHE_HOME"], "clip", fname))
    return out


def _hf_cached(oc_cfg: Dict[str, Any]) -> Optional[str]:
    hub = oc_cfg.get("hf_hub", "")
    if not hub:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, fname = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    names = [fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in names:
        try:
            path = try_to_load_from_cache(repo, name, cache_dir=hf_cache_dir())
        except Exception:  # noqa: BLE001 - a malformed cache is "not cached"
            path = None
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def find_openai_weights(arch: str) -> Optional[str]:
    """A local file with OpenAI's weights for ``arch`` (see the module docstring), or None."""
    oc_cfg = openai_config(arch)
    if oc_cfg is None:
        return None
    for path in openai_candidates(arch, oc_cfg):
        if os.path.isfile(path):
            return path
    return _hf_cached(oc_cfg)


def where_to_put(arch: str) -> str:
    oc_cfg = openai_config(arch) or {}
    fname = openai_filename(arch, oc_cfg)
    url = oc_cfg.get("url", "")
    return (f"put OpenAI's {fname}" + (f" ({url})" if url else "")
            + " in ~/.cache/clip/ or in the folder named by $EMOLAB_CLIP_DIR, or set MODEL.BACKBONE.PRETRAINED "
            "to a weight file ('random' for random weights)")


def resolve_pretrained(name: str, pretrained: str) -> Resolved:
    """Resolve ``MODEL.BACKBONE.PRETRAINED`` for the CLIP architecture ``name`` (module docstring).

    Raises:
        CheckpointError: OpenAI weights needed but neither found locally nor downloadable.
        ConfigError: ``""`` for an architecture without default weights.
    """
    pretrained = (pretrained or "").strip()
    if pretrained.lower() == RANDOM:
        logger.warning(f"CLIP {name}: RANDOM weights (MODEL.BACKBONE.PRETRAINED random)")
        return Resolved("", "random weights (MODEL.BACKBONE.PRETRAINED random)")
    if pretrained:
        return Resolved(pretrained, pretrained)
    if name.strip().lower() == "infer":  # clip/openai_arch.py
        raise ConfigError("MODEL.BACKBONE.NAME infer needs MODEL.BACKBONE.PRETRAINED to name an OpenAI-format CLIP weight file")
    arch = resolve_model_name(name)
    shipped = SHIPPED_DIR / f"{arch}.safetensors"
    if shipped.is_file():
        return Resolved(str(shipped), f"the project's shipped weights {shipped}")
    oc_cfg = openai_config(arch)
    if oc_cfg is None:
        raise ConfigError(
            f"CLIP {name} has no default weights: set MODEL.BACKBONE.PRETRAINED to a weight file, an open_clip tag "
            f"or 'random' for random weights"
        )
    path = find_openai_weights(arch)
    if path:
        logger.info(f"CLIP {name}: OpenAI's weights found at {path}")
        return Resolved(path, f"OpenAI's weights ({path})", quick_gelu=bool(oc_cfg.get("quick_gelu", True)))
    hint = where_to_put(arch)
    off = downloads_off("huggingface.co")
    if off:
        raise CheckpointError(f"CLIP {name} needs OpenAI's weights, none found locally and {off}: {hint}")
    from .loading import _download

    logger.info(f"CLIP {name}: OpenAI's weights not found locally; downloading them with open_clip")
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # the error below says it all, in one line
    try:
        path = _download(arch, "openai", oc_cfg)
    except CheckpointError as exc:
        reason = str(exc).split(": ", 1)[-1]
        reason = reason if len(reason) <= 90 else reason[:87] + "..."
        raise CheckpointError(f"CLIP {name} needs OpenAI's weights, none found locally and the download failed "
                              f"({reason}): {hint}") from None
    finally:
        hub_logger.setLevel(level)
    return Resolved(path, f"OpenAI's weights (downloaded to {path})", quick_gelu=bool(oc_cfg.get("quick_gelu", True)))
