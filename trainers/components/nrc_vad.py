"""Categories -> valence-arousal through the NRC-VAD lexicon, and back (docs/METHODS.md, two-stage VA).

The lexicon file is tab-separated ``word <TAB> valence <TAB> arousal <TAB> dominance`` with values
in 0..1 (NRC-VAD v1; an optional header line is skipped; a word may contain spaces). Values are
rescaled ``v * scale + offset`` (default 8, 1: the 1..9 SAM scale of Emotion6; NRC-VAD v2's
-1..1 values map there with scale 4, offset 5).

* :func:`category_va`: ``[C, 2]`` (valence, arousal) of the class names (``words`` renames a
  class to its lexicon word);
* :func:`label_va`: per-sample VA targets from categorical data: the class VA of ``label``; for
  label distributions the mean over the dominant categories (ties kept), for multi-hot labels the
  mean over the positive classes;
* :func:`va_class_scores` / :func:`va_to_class`: back-conversion of predicted VA to the closest
  category by cosine similarity (of the VA vectors minus ``center``) or Euclidean distance.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

from utils.errors import ConfigError, DatasetError
from utils.fileio import optional_path
from utils.registry import closest

from .emotion_wheel import parse_pairs

logger = logging.getLogger(__name__)

BACK_CONVERSIONS = ("cosine", "euclidean")


def load_nrc_vad(path: str, scale: float = 8.0, offset: float = 1.0) -> Dict[str, Tuple[float, float, float]]:
    """``{word (lower case): (valence, arousal, dominance)}`` rescaled ``v * scale + offset``.

    Raises:
        DatasetError: a missing or empty file, or a line without 4 fields / numeric values
            (named with its line number); the first line may be a header.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"NRC-VAD lexicon not found: {path}")
    out: Dict[str, Tuple[float, float, float]] = {}
    first = True
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            is_first, first = first, False
            fields = line.split("\t")
            if len(fields) != 4:
                raise DatasetError(
                    f"{path}:{lineno}: expected 4 tab-separated fields (word, valence, arousal, dominance), "
                    f"got {len(fields)}"
                )
            try:
                v, a, d = (float(x) for x in fields[1:])
            except ValueError:
                if is_first:
                    continue  # header
                raise DatasetError(f"{path}:{lineno}: non-numeric value in {line!r}") from None
            word = fields[0].strip().lower()
            if word in out:
                logger.debug("%s:%d: duplicate word %r ignored", path, lineno, word)
                continue
            out[word] = (v * scale + offset, a * scale + offset, d * scale + offset)
    if not out:
        raise DatasetError(f"NRC-VAD lexicon {path} has no entries")
    return out


def category_va(
    lexicon: Mapping[str, Tuple[float, ...]], classnames: Sequence[str], words: Optional[Mapping[str, str]] = None
) -> torch.Tensor:
    """``[C, 2]`` (valence, arousal) of each class; ``words`` maps a class name to its lexicon word.

    Raises:
        ConfigError: a class whose word is not in the lexicon.
    """
    words = {k.lower(): v.lower() for k, v in (words or {}).items()}
    rows = []
    for c in classnames:
        w = words.get(c.lower(), c.lower()).replace("_", " ")
        if w not in lexicon:
            hint = closest(w, list(lexicon))
            raise ConfigError(
                f"class {c!r}: word {w!r} is not in the NRC-VAD lexicon; map it in TRAINER.VA.LEXICON_WORDS "
                f"as '{c}:<word>'" + (f" (closest: {hint!r})" if hint else "")
            )
        rows.append(lexicon[w][:2])
    return torch.tensor(rows, dtype=torch.float32)


def dominant_mask(dist: torch.Tensor, atol: float = 1e-6) -> torch.Tensor:
    """``[N, C]`` booleans: the classes of maximal probability in each row of ``dist`` (ties kept)."""
    return dist >= dist.max(dim=1, keepdim=True).values - atol


def mean_va(mask: torch.Tensor, class_va: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` mean class VA over the True entries of ``mask`` ``[N, C]`` (rows without any: 0)."""
    m = mask.to(class_va.dtype)
    return (m @ class_va) / m.sum(1, keepdim=True).clamp_min(1.0)


def label_va(class_va: torch.Tensor, label: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
             dist: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """VA targets ``[N, 2]`` of categorical samples and a ``[N]`` mask of the samples that have one.

    Uses ``dist`` (mean over the dominant categories) when given, else multi-hot ``labels``
    (mean over the positives), else ``label`` (``-1`` = no label).
    """
    if dist is not None:
        valid = dist.sum(1) > 0
        return mean_va(dominant_mask(dist) & valid[:, None], class_va), valid
    if labels is not None:
        mask = labels > 0.5
        return mean_va(mask, class_va), mask.any(1)
    if label is None:
        raise ValueError("label_va needs label, labels or dist")
    valid = label >= 0
    return class_va[label.clamp_min(0)] * valid[:, None].to(class_va.dtype), valid


def va_class_scores(va: torch.Tensor, class_va: torch.Tensor, metric: str = "cosine", center: float = 0.0) -> torch.Tensor:
    """``[N, C]`` closeness of each predicted VA ``[N, 2]`` to each category ``[C, 2]`` (higher = closer):
    cosine similarity of ``va - center`` and ``class_va - center``, or minus the Euclidean distance."""
    if metric not in BACK_CONVERSIONS:
        hint = closest(metric, list(BACK_CONVERSIONS))
        raise ConfigError(f"unknown VA back-conversion {metric!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
    va, class_va = va.float(), class_va.float().to(va.device)
    if metric == "euclidean":
        return -torch.cdist(va, class_va)
    a = torch.nn.functional.normalize(va - center, dim=1)
    b = torch.nn.functional.normalize(class_va - center, dim=1)
    return a @ b.t()


def va_to_class(va: torch.Tensor, class_va: torch.Tensor, metric: str = "cosine", center: float = 0.0) -> torch.Tensor:
    """``[N]`` index of the closest category (see :func:`va_class_scores`)."""
    return va_class_scores(va, class_va, metric, center).argmax(dim=1)


@functools.lru_cache(maxsize=4)
def _lexicon(path: str, scale: float, offset: float) -> Dict[str, Tuple[float, float, float]]:
    return load_nrc_vad(path, scale, offset)


def lexicon_class_va(
    lexicon: str, classnames: Sequence[str], scale: float = 8.0, offset: float = 1.0, words: Sequence[str] = (),
) -> torch.Tensor:
    """``[C, 2]`` lexicon VA of ``classnames`` from the NRC-VAD file ``lexicon`` (read once per
    process), values rescaled ``v * scale + offset``; ``words`` holds ``"class:word"`` overrides."""
    lex = _lexicon(optional_path(lexicon), float(scale), float(offset))
    return category_va(lex, classnames, parse_pairs(words, "TRAINER.VA.LEXICON_WORDS"))
