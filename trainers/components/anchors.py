"""Visual emotion anchors: class prototypes in CLIP image space (VEGA's anchor file).

File format (``torch.save`` of a dict; read with ``torch.load(..., weights_only=True)``)::

    {"anchor_center": Tensor[C, D],                       # one centre per class
     "anchor_img_dict": {classname: {"feature": Tensor[N_c, D]}, ...}}   # the exemplars

Features are L2-normalised CLIP image embeddings; a centre is the mean of its class's exemplars
(as written by :func:`anchors_from_features`). Anchors are L2-normalised again where logits are
computed (:func:`anchor_logits`), so a centre's norm does not matter.
Rows of ``anchor_center`` follow the order of ``anchor_img_dict``'s keys; :func:`match_anchors`
reorders them to a dataset's class order by name.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from utils.fileio import atomic_torch_save, safe_torch_load
from utils.errors import CheckpointError

logger = logging.getLogger(__name__)


@dataclass
class AnchorSet:
    """Class names, centres [C, D] and exemplars (one [N_c, D] tensor per class), CPU float32."""

    classnames: List[str]
    centers: Tensor
    exemplars: List[Tensor]

    @property
    def dim(self) -> int:
        return int(self.centers.shape[1])


def anchors_from_features(features: Mapping[str, Tensor]) -> AnchorSet:
    """An :class:`AnchorSet` from exemplar features per class (in the mapping's order); centre = mean."""
    names = list(features)
    if not names:
        raise CheckpointError("no anchor classes given")
    ex = [torch.as_tensor(features[n]).detach().float().cpu() for n in names]
    for n, e in zip(names, ex):
        if e.dim() != 2 or e.shape[0] == 0:
            raise CheckpointError(f"anchor class {n!r} needs features of shape [N >= 1, D], got {tuple(e.shape)}")
    return AnchorSet(names, torch.stack([e.mean(0) for e in ex]), ex)


def save_anchors(anchors: AnchorSet, path: str) -> None:
    """Write ``anchors`` in VEGA's format (atomically)."""
    obj = {
        "anchor_center": anchors.centers.clone(),
        "anchor_img_dict": {n: {"feature": e.clone()} for n, e in zip(anchors.classnames, anchors.exemplars)},
    }
    atomic_torch_save(obj, path)


def load_anchors(path: str) -> AnchorSet:
    """Read and check an anchor file (any producer) with ``weights_only=True``.

    Raises:
        CheckpointError: missing / unreadable file or a structure other than the format above.
    """
    obj = safe_torch_load(path, "anchor file")
    if not isinstance(obj, dict) or "anchor_center" not in obj or "anchor_img_dict" not in obj:
        raise CheckpointError(f"anchor file {path} must hold a dict with 'anchor_center' and 'anchor_img_dict'")
    centers, table = obj["anchor_center"], obj["anchor_img_dict"]
    if not torch.is_tensor(centers) or centers.dim() != 2:
        raise CheckpointError(f"anchor file {path}: anchor_center must be a [C, D] tensor")
    if not isinstance(table, dict) or len(table) != centers.shape[0]:
        n = len(table) if isinstance(table, dict) else type(table).__name__
        raise CheckpointError(
            f"anchor file {path}: anchor_img_dict has {n} classes but anchor_center has {centers.shape[0]} rows"
        )
    names, exemplars = [], []
    for name, entry in table.items():
        feat = entry.get("feature") if isinstance(entry, dict) else None
        if not torch.is_tensor(feat) or feat.dim() != 2 or feat.shape[0] == 0 or feat.shape[1] != centers.shape[1]:
            shape = tuple(feat.shape) if torch.is_tensor(feat) else type(feat).__name__
            raise CheckpointError(
                f"anchor file {path}: anchor_img_dict[{name!r}]['feature'] must be [N >= 1, {centers.shape[1]}], got {shape}"
            )
        names.append(str(name))
        exemplars.append(feat.detach().float().cpu())
    centers = centers.detach().float().cpu()
    if not torch.isfinite(centers).all() or not all(torch.isfinite(e).all() for e in exemplars):
        raise CheckpointError(f"anchor file {path} holds non-finite features")
    return AnchorSet(names, centers, exemplars)


def match_anchors(
    anchors: AnchorSet, classnames: Sequence[str], dim: Optional[int] = None, source: str = "anchor file"
) -> AnchorSet:
    """``anchors`` reordered to ``classnames``; CheckpointError when the classes or the dimension differ."""
    have, want = list(anchors.classnames), list(classnames)
    if set(have) != set(want) or len(have) != len(want):
        missing = [c for c in want if c not in have]
        extra = [c for c in have if c not in want]
        raise CheckpointError(
            f"{source} classes do not match the dataset: missing {missing}, unexpected {extra} "
            f"(anchor classes {have}, dataset classes {want})"
        )
    if dim is not None and dim > 0 and anchors.dim != dim:
        raise CheckpointError(f"{source} has {anchors.dim}-d features but the anchor projection outputs {dim}-d")
    order = [have.index(c) for c in want]
    if order != list(range(len(want))):
        logger.info("anchor classes reordered to the dataset's class order")
    return AnchorSet(want, anchors.centers[order], [anchors.exemplars[i] for i in order])


class AnchorBank(nn.Module):
    """Anchors as (non-persistent) buffers, so they follow the model's device but stay out of checkpoints.

    Buffers: ``centers`` [C, D], ``exemplars`` [sum N_c, D], ``offsets`` [C] and ``counts`` [C].
    """

    def __init__(self, anchors: AnchorSet) -> None:
        super().__init__()
        counts = torch.tensor([e.shape[0] for e in anchors.exemplars], dtype=torch.long)
        self.register_buffer("centers", anchors.centers.clone(), persistent=False)
        self.register_buffer("exemplars", torch.cat(anchors.exemplars), persistent=False)
        self.register_buffer("counts", counts, persistent=False)
        self.register_buffer("offsets", torch.cumsum(counts, 0) - counts, persistent=False)

    @property
    def num_classes(self) -> int:
        return int(self.centers.shape[0])

    def sample_exemplars(self, generator: Optional[torch.Generator] = None) -> Tensor:
        """One exemplar per class, uniformly at random: [C, D]."""
        u = torch.rand(self.num_classes, generator=generator).to(self.counts.device)
        pick = self.offsets + (u * self.counts).long().clamp_max(self.counts - 1)
        return self.exemplars[pick]

    def select(self, use_exemplars: bool, generator: Optional[torch.Generator] = None) -> Tensor:
        """The anchors of a batch: sampled exemplars when ``use_exemplars``, else the centres ([C, D])."""
        return self.sample_exemplars(generator) if use_exemplars else self.centers


def anchor_logits(z: Tensor, anchors: Tensor, scale: float = 100.0) -> Tensor:
    """``scale * norm(z) @ norm(anchors)^T`` (cosine similarities): z [..., D], anchors [C, D] -> [..., C]."""
    z = torch.nn.functional.normalize(z.float(), dim=-1)
    return scale * z @ torch.nn.functional.normalize(anchors.float(), dim=-1).t()


def describe(anchors: AnchorSet) -> Dict[str, int]:
    """Exemplar count per class (for logs)."""
    return {n: int(e.shape[0]) for n, e in zip(anchors.classnames, anchors.exemplars)}
