"""``load_clip``: build a frozen CLIP by architecture name, with random, local or downloaded weights."""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Union

import torch

from utils.errors import CheckpointError, ConfigError
from utils.registry import closest

from .backbone import ClipBackbone
from .checkpoint import CheckpointWeights, find_checkpoint, load_weights, looks_like_path, read_checkpoint
from .names import REPO_ROOT, check_text_tower, model_config, resolve_model_name
from .quiet import quiet_open_clip

logger = logging.getLogger(__name__)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _tag_config(arch: str, tag: str) -> Dict[str, Any]:
    """open_clip's pretrained config for ``arch``/``tag``; a :class:`ConfigError` naming the
    closest valid tag otherwise."""
    from open_clip import pretrained as oc_pretrained

    tags = oc_pretrained.list_pretrained_tags_by_model(arch)
    clean = tag.strip().lower().replace("-", "_")
    if clean in tags:
        return dict(oc_pretrained.get_pretrained_cfg(arch, clean))
    if not tags:
        raise ConfigError(
            f"CLIP pretrained {tag!r} is neither a file nor a tag: architecture {arch} has no downloadable weights"
        )
    prefixed = [t for t in tags if t.startswith(clean)]
    hint = prefixed[0] if prefixed else closest(clean, tags)
    msg = f"unknown pretrained tag {tag!r} for CLIP {arch}"
    msg += f" (did you mean {hint!r}?)" if hint else f" (valid: {', '.join(tags)})"
    raise ConfigError(msg)


def _download(arch: str, tag: str, tag_info: Dict[str, Any]) -> str:
    """Download (or find in open_clip's cache) the weights of ``arch``/``tag``; local file path."""
    from open_clip import pretrained as oc_pretrained

    try:
        path = oc_pretrained.download_pretrained(tag_info)
    except Exception as exc:  # noqa: BLE001 - network, hub and disk errors all mean "no weights"
        raise CheckpointError(f"could not download CLIP weights {arch}/{tag}: {_one_line(exc)}") from None
    if not path:
        raise CheckpointError(f"could not download CLIP weights {arch}/{tag}: open_clip has no address for them")
    return str(path)


def _build(arch: str, quick_gelu: bool, preprocess: Optional[Dict[str, Any]]) -> torch.nn.Module:
    """A randomly initialised fp32 open_clip model on the CPU (never downloads anything)."""
    import open_clip

    try:
        with quiet_open_clip():
            return open_clip.create_model(
                arch,
                pretrained=None,
                precision="fp32",
                device="cpu",
                force_quick_gelu=quick_gelu,
                force_preprocess_cfg=preprocess or None,
                pretrained_image=False,
                pretrained_text=False,
            )
    except Exception as exc:  # noqa: BLE001 - a bad architecture config is a user error
        raise ConfigError(f"could not build CLIP architecture {arch}: {_one_line(exc)}") from None


def sequence_first(model: torch.nn.Module, enable: bool = True) -> None:
    """Run both transformers of an open_clip ``CLIP`` in OpenAI's sequence-first layout ([L, N, D])
    (``enable=False``: back to open_clip's batch-first one).

    open_clip computes attention batch-first; OpenAI's CLIP (which CoOp / CoCoOp run) sequence-first.
    The values are the same math, but PyTorch's attention without a mask (the image tower) rounds
    differently for the two memory layouts (up to ~2e-6 per layer here), which is enough to move the
    official code's logits by ~5e-6. OpenAI weights therefore run in OpenAI's layout, so that their
    image features equal the official code's bit for bit (``tests/test_official_interop.py``); on the
    CPU it is no slower (``tools/benchmark.py --layout``). Callers keep passing
    [N, L, D] (``clip/text.py: run_transformer``): open_clip's ``Transformer`` transposes inside.
    """
    visual = getattr(model, "visual", None)
    for transformer in (getattr(visual, "transformer", None), getattr(model, "transformer", None)):
        if transformer is None or not hasattr(transformer, "batch_first"):
            continue
        attns = [getattr(block, "attn", None) for block in transformer.resblocks]
        if not all(isinstance(a, torch.nn.MultiheadAttention) for a in attns):
            continue  # custom attention blocks keep open_clip's layout
        transformer.batch_first = not enable
        for attn in attns:
            attn.batch_first = not enable


def load_clip(
    name: str,
    pretrained: str = "",
    device: Union[str, torch.device] = "cpu",
    quick_gelu: Optional[bool] = None,
) -> ClipBackbone:
    """Build the CLIP architecture ``name`` and load its weights; frozen, eval mode, fp32.

    Args:
        name: an open_clip architecture (``ViT-B-16``), an OpenAI spelling (``ViT-B/16``,
            ``RN50``), a project architecture from ``configs/clip_models/`` (``emolab-tiny-vit``), or
            ``infer``: the architecture of the OpenAI-format file ``pretrained`` (``clip/openai_arch.py``).
        pretrained: ``""`` or ``"random"`` for random weights (nothing is downloaded; this is the
            low-level builder: configs resolve ``""`` to real weights first, see
            ``clip/pretrained.py``); a local file (OpenAI
            TorchScript archive or state dict, open_clip state dict or ``{"state_dict": ...}``,
            safetensors; relative paths are also tried from the repository root); or an
            open_clip pretrained tag such as ``openai`` / ``laion2b_s34b_b88k`` (downloaded).
        device: where the returned model lives.
        quick_gelu: activation override; None picks QuickGELU when the architecture config,
            the pretrained tag or OpenAI-format weights call for it.

    Returns:
        A :class:`ClipBackbone` whose parameters all have ``requires_grad=False``.

    Raises:
        ConfigError: unknown architecture or tag; a text tower that cannot take prompts.
        CheckpointError: a missing, unreadable or mismatched weight file; a failed download.
    """
    from .openai_arch import inferred_arch, is_infer

    arch = inferred_arch(pretrained) if is_infer(name) else resolve_model_name(name)  # "infer": clip/openai_arch.py
    arch_conf = model_config(arch)
    check_text_tower(arch, arch_conf)

    weights: Optional[CheckpointWeights] = None
    preprocess: Dict[str, Any] = {}
    tag_quick_gelu = False
    pretrained = (pretrained or "").strip()
    if pretrained.lower() == "random":
        pretrained = ""
    if pretrained:
        path = find_checkpoint(pretrained, REPO_ROOT)
        if path is None and looks_like_path(pretrained):
            raise CheckpointError(f"CLIP checkpoint not found: {pretrained}")
        if path is None:
            tag_info = _tag_config(arch, pretrained)
            tag_quick_gelu = bool(tag_info.get("quick_gelu", False))
            preprocess = {k: tag_info[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_info}
            logger.info("fetching CLIP weights %s/%s with open_clip", arch, pretrained)
            path = _download(arch, pretrained, tag_info)
        weights = read_checkpoint(path)

    if quick_gelu is None:
        quick_gelu = bool(arch_conf.get("quick_gelu", False)) or tag_quick_gelu or bool(weights and weights.openai)
        if quick_gelu and not arch_conf.get("quick_gelu", False):
            logger.info("CLIP %s: using QuickGELU activations, as the weights were trained with them", arch)

    model = _build(arch, quick_gelu, preprocess)
    if weights is not None:
        load_weights(model, weights, arch)
    else:
        logger.warning("CLIP %s built with RANDOM weights", arch)
    if quick_gelu:  # same forward values, one autograd node (clip/activations.py)
        from .activations import fuse_quick_gelu

        fuse_quick_gelu(model)
    if (weights is not None and weights.openai) or pretrained.lower() == "openai":
        sequence_first(model)
    model = model.float().to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return ClipBackbone(model, arch).eval()
