"""UniEmoX captions from EmoSet annotations, and their CLIP text embeddings computed once.

The caption joins, with single spaces, the sentences whose attribute is annotated (a missing
or empty attribute drops its sentence)::

    The scene type of this photo is {scene}. The main subjects are {o1, o2 and o3}.
    The image has a brightness of {b} and color saturation of {c}. Human facial expression is {f}.
    The action being performed is {a}. The overall emotion conveyed is {emotion}.

Differences from the released builder (all faults there): object names made of several words
stay whole ("Human face", not "Human and face"); the brightness clause ends with a full stop
when the colourfulness is not annotated (and the colourfulness clause stands alone when the
brightness is not); a caption longer than CLIP's 77-token context is shortened so that the
sentence naming the emotion stays: objects are dropped from the end of the list first (the list
may go entirely), then the action, facial-expression, brightness and scene sentences in that order
(the released code raises; cutting the token sequence at 77 would remove the emotion sentence).

The embedding cache holds the float32 features of the distinct captions and each image's index
into them, so a run that reads the cache gets exactly the numbers the first run computed.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from utils.fileio import atomic_torch_save

logger = logging.getLogger(__name__)


def _present(value: Any) -> bool:
    return value is not None and str(value).strip() not in ("", "-1")


def _number(value: Any) -> str:
    """``0.5 -> "0.5"`` (as ``str()`` of the annotation's number)."""
    try:
        return str(float(value))
    except (TypeError, ValueError):
        return str(value)


def join_objects(objects: Sequence[str]) -> str:
    """``[a] -> "a"``, ``[a, b] -> "a and b"``, ``[a, b, c] -> "a, b and c"`` (names kept whole)."""
    names = [str(o).strip() for o in objects if str(o).strip()]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


#: BPE tokens a caption may have: CLIP's context of 77 less the start and end tokens
MAX_CAPTION_TOKENS = 75
#: sentences dropped (in this order) when a caption without objects is still too long
_DROP_ORDER = ("action", "face", "light", "scene")


def bpe_count(text: str) -> int:
    """Number of CLIP BPE tokens of ``text`` (without start / end tokens)."""
    from open_clip.tokenizer import _tokenizer

    return len(_tokenizer.encode(text))


def _sentences(attrs: Mapping[str, Any], emotion: str, objects: Sequence[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    if _present(attrs.get("scene")):
        out["scene"] = f"The scene type of this photo is {attrs['scene']}."
    if join_objects(objects):
        out["objects"] = f"The main subjects are {join_objects(objects)}."
    bright, color = attrs.get("brightness"), attrs.get("colorfulness")
    if _present(bright) and _present(color):
        out["light"] = f"The image has a brightness of {_number(bright)} and color saturation of {_number(color)}."
    elif _present(bright):
        out["light"] = f"The image has a brightness of {_number(bright)}."
    elif _present(color):
        out["light"] = f"The image has a color saturation of {_number(color)}."
    if _present(attrs.get("facial_expression")):
        out["face"] = f"Human facial expression is {attrs['facial_expression']}."
    if _present(attrs.get("human_action")):
        out["action"] = f"The action being performed is {attrs['human_action']}."
    out["emotion"] = f"The overall emotion conveyed is {emotion}."
    return out


def build_caption(attrs: Mapping[str, Any], emotion: str, max_tokens: int = MAX_CAPTION_TOKENS,
                  count: Callable[[str], int] = bpe_count) -> str:
    """The caption of one image from its EmoSet attributes (``Datum.attrs``) and emotion name,
    shortened to ``max_tokens`` BPE tokens (``count``) keeping the emotion sentence (module docstring)."""
    objects = attrs.get("object") or []
    if isinstance(objects, str):
        objects = [objects]
    objects = [o for o in objects if str(o).strip()]
    parts = _sentences(attrs, emotion, objects)
    caption = " ".join(parts.values())
    if max_tokens <= 0 or count(caption) <= max_tokens:
        return caption
    n = len(objects)
    while n > 0:
        n -= 1
        parts = _sentences(attrs, emotion, objects[:n])
        caption = " ".join(parts.values())
        if count(caption) <= max_tokens:
            return caption
    for key in _DROP_ORDER:
        parts.pop(key, None)
        caption = " ".join(parts.values())
        if count(caption) <= max_tokens:
            break
    return caption


def _fingerprint(clip: Any, captions: Sequence[str]) -> str:
    """Key of a text-embedding cache: the CLIP architecture, a checksum of its text weights, the captions."""
    h = hashlib.sha256()
    h.update(b"v2: float32 table + index\0")  # the earlier layout (per-image rows, fp16 when large) is not reused
    h.update(str(getattr(clip, "model_name", "")).encode())
    with torch.no_grad():
        for t in (clip.token_embedding.weight, clip.model.text_projection, clip.model.ln_final.weight):
            if isinstance(t, torch.nn.Linear):
                t = t.weight
            if t is not None:
                h.update(f"{float(t.double().sum()):.10e}|{float(t.double().abs().sum()):.10e}".encode())
    for c in captions:
        h.update(c.encode("utf-8") + b"\0")
    return h.hexdigest()[:20]


@torch.no_grad()
def caption_embeddings(clip: Any, captions: Sequence[str], cache_dir: str = "", batch_size: int = 256,
                       device: Optional[torch.device] = None) -> torch.Tensor:
    """L2-normalised CLIP text features ``[N, E]`` (float32, CPU) of ``captions``.

    Each distinct caption is encoded once. With ``cache_dir`` the result is stored as
    ``<cache_dir>/captions-<fingerprint>.pt`` and read back by later runs with the same CLIP
    weights and captions (written atomically, read with ``weights_only=True``).
    """
    path = ""
    if cache_dir:
        path = os.path.join(cache_dir, f"captions-{_fingerprint(clip, captions)}.pt")
        if os.path.isfile(path):
            from .checkpoints import read_checkpoint

            cached = read_checkpoint(path, "caption embedding cache", allow=())
            ok = isinstance(cached, dict) and torch.is_tensor(cached.get("table")) and torch.is_tensor(cached.get("index"))
            if ok and cached["table"].dtype == torch.float32 and cached["index"].shape[0] == len(captions):
                logger.info(f"caption embeddings read from {path}")
                return cached["table"][cached["index"].long()]
            logger.warning(f"ignoring caption embedding cache {path}: unexpected content")
    unique: Dict[str, int] = {}
    for c in captions:
        unique.setdefault(c, len(unique))
    texts = list(unique)
    device = device or clip.device
    feats = []
    for i in range(0, len(texts), batch_size):
        tokens = clip.tokenize(texts[i:i + batch_size]).to(device)
        feats.append(F.normalize(clip.encode_text(tokens).float(), dim=-1).cpu())
    table = torch.cat(feats) if feats else torch.zeros(0, getattr(clip, "embed_dim", 0))
    index = torch.tensor([unique[c] for c in captions], dtype=torch.long)
    out = table[index] if captions else table
    logger.info(f"caption embeddings: {len(captions)} captions, {len(texts)} distinct, encoded once")
    if path:  # float32 distinct features + per-image index: exact, and small (few distinct captions)
        atomic_torch_save({"table": table.float().contiguous(), "index": index, "n": len(captions)}, path)
    return out
