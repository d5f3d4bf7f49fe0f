"""VEGA's conversation network: gated intra- and cross-modal transformers, gated fusion, heads,
and the anchor branch that projects utterances into CLIP image space.

Shapes: B dialogues, L utterances (padded), H hidden size, C classes, D anchor (CLIP) dimension.
``mask`` [B, L] is True at real utterances. Padding never reaches a real utterance: the
projections, embeddings, norms, gates and heads act per utterance and every attention layer
masks padded keys, so a real utterance's outputs do not depend on what (or how much) padding
its batch holds.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from trainers.components.anchors import anchor_logits

MODALITIES = ("text", "audio", "visual")
BRANCHES = ("all",) + MODALITIES


def sinusoid_positions(length: int, dim: int, device: Optional[torch.device] = None) -> Tensor:
    """Transformer sinusoidal position codes [length, dim] (sin on even, cos on odd channels)."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


class GatedTransformer(nn.Module):
    """``n_layers`` post-norm transformer layers whose queries come from ``x`` and keys / values from
    ``y`` (``y is x``: intra-modal), then a sigmoid gate ``sigmoid(W h) * h``.

    Args:
        dim: H. heads: attention heads. ff_dim: feed-forward width. dropout: dropout rate.
    """

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float, n_layers: int = 1) -> None:
        super().__init__()
        self.attn = nn.ModuleList([nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True) for _ in range(n_layers)])
        self.ff = nn.ModuleList([
            nn.Sequential(nn.Linear(dim, ff_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim))
            for _ in range(n_layers)
        ])
        self.norm1 = nn.ModuleList([nn.LayerNorm(dim) for _ in range(n_layers)])
        self.norm2 = nn.ModuleList([nn.LayerNorm(dim) for _ in range(n_layers)])
        self.drop = nn.Dropout(dropout)
        self.gate = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, y: Tensor, pad: Tensor) -> Tensor:
        """x, y [B, L, H], pad [B, L] (True = padding) -> [B, L, H]."""
        h = x
        for attn, ff, n1, n2 in zip(self.attn, self.ff, self.norm1, self.norm2):
            kv = h if y is x else y
            a, _ = attn(h, kv, kv, key_padding_mask=pad, need_weights=False)
            h = n1(h + self.drop(a))
            h = n2(h + self.drop(ff(h)))
        return torch.sigmoid(self.gate(h)) * h


class GatedFusion(nn.Module):
    """``h_all = sum_m softmax_m(W h_m) * h_m`` (softmax over modalities, per channel)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, feats: Mapping[str, Tensor]) -> Tensor:
        """feats: modality -> [B, L, H]; returns [B, L, H]."""
        h = torch.stack([feats[m] for m in MODALITIES], dim=-2)  # [B, L, 3, H]
        w = torch.softmax(self.proj(h), dim=-2)
        return (w * h).sum(-2)


def mlp_head(dim: int, num_classes: int, dropout: float) -> nn.Sequential:
    """3-layer MLP with GELU: H -> H -> H -> C."""
    return nn.Sequential(
        nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout),
        nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout),
        nn.Linear(dim, num_classes),
    )


class VEGANet(nn.Module):
    """The conversation model with optional anchor projections.

    Args:
        dims: input feature sizes ``{"text": Dt, "audio": Da, "visual": Dv}``.
        num_classes: C. num_speakers: size of the speaker embedding table.
        hidden: H. heads: attention heads (H must be divisible). n_layers: layers per transformer.
        ff_dim: feed-forward width (0 = H). dropout: dropout rate of the input projections and the
            nine transformers. head_dropout: of the classification heads (None = ``dropout``).
            anchor_dropout: after the ELU of each anchor projection (0 = none).
        clip_dim: D of the anchor space (0 = no anchor branch).
        temp_init: initial distillation temperature T of all six temperatures (one per modality
            for the logits and one per modality for the anchor logits; stored as log T).
        learn_temp: whether the temperatures train.
    """

    def __init__(
        self, dims: Mapping[str, int], num_classes: int, num_speakers: int, hidden: int = 768, heads: int = 4,
        n_layers: int = 1, ff_dim: int = 0, dropout: float = 0.1, clip_dim: int = 0, temp_init: float = 2.0,
        learn_temp: bool = True, head_dropout: Optional[float] = None, anchor_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.hidden, self.num_classes, self.clip_dim = hidden, num_classes, clip_dim
        self.proj = nn.ModuleDict({m: nn.Conv1d(int(dims[m]), hidden, kernel_size=1) for m in MODALITIES})
        self.speaker = nn.Embedding(max(1, num_speakers), hidden)
        self.in_drop = nn.Dropout(dropout)
        ff = ff_dim or hidden
        self.blocks = nn.ModuleDict(
            {f"{m}_from_{s}": GatedTransformer(hidden, heads, ff, dropout, n_layers) for m in MODALITIES for s in MODALITIES}
        )
        self.reduce = nn.ModuleDict({m: nn.Linear(3 * hidden, hidden) for m in MODALITIES})
        self.fusion = GatedFusion(hidden)
        head_dropout = dropout if head_dropout is None else head_dropout
        self.heads = nn.ModuleDict({b: mlp_head(hidden, num_classes, head_dropout) for b in BRANCHES})
        self.anchor_proj = (  # Linear - ELU - Dropout - Linear; the dropout is named so the weights keep keys 0 and 2
            nn.ModuleDict({b: nn.Sequential(OrderedDict([
                ("0", nn.Linear(hidden, hidden)), ("1", nn.ELU()), ("drop", nn.Dropout(anchor_dropout)),
                ("2", nn.Linear(hidden, clip_dim))])) for b in BRANCHES})
            if clip_dim > 0 else None
        )
        log_t = math.log(float(temp_init))
        self.log_temp = nn.ParameterDict({
            f"{kind}_{m}": nn.Parameter(torch.tensor(log_t), requires_grad=learn_temp)
            for kind in ("cls", "anchor") for m in MODALITIES
        })

    def encode(self, inputs: Mapping[str, Tensor], speaker: Tensor, mask: Tensor) -> Dict[str, Tensor]:
        """Utterance representations [B, L, H] per modality and fused (key "all")."""
        pad = ~mask.bool()
        B, L = mask.shape
        extra = self.speaker(speaker) + sinusoid_positions(L, self.hidden, mask.device)[None]
        x = {m: self.in_drop(self.proj[m](inputs[m].transpose(1, 2)).transpose(1, 2) + extra) for m in MODALITIES}
        h: Dict[str, Tensor] = {}
        for m in MODALITIES:
            parts = [self.blocks[f"{m}_from_{s}"](x[m], x[m] if s == m else x[s], pad) for s in MODALITIES]
            h[m] = self.reduce[m](torch.cat(parts, dim=-1))
        h["all"] = self.fusion(h)
        return h

    def forward(
        self, inputs: Mapping[str, Tensor], speaker: Tensor, mask: Tensor, anchors: Optional[Tensor] = None,
        anchor_scale: float = 100.0,
    ) -> Dict[str, Dict[str, Tensor]]:
        """Logits of every branch, and anchor logits when ``anchors`` [C, D] are given.

        Args:
            inputs: ``{"text": [B, L, Dt], "audio": [B, L, Da], "visual": [B, L, Dv]}``.
            speaker: [B, L] long. mask: [B, L] bool.

        Returns:
            ``{"logits": {branch: [B, L, C]}, "anchor_logits": {branch: [B, L, C]} (only with anchors),
            "embeddings": {branch: [B, L, D]} (only with anchors), "temperatures": {"cls_text": T, ...}}``;
            branch in all / text / audio / visual. (Temperatures are returned here so that they are
            used inside ``forward``, as DistributedDataParallel requires.)
        """
        h = self.encode(inputs, speaker, mask)
        out: Dict[str, Dict[str, Tensor]] = {"logits": {b: self.heads[b](h[b]) for b in BRANCHES}}
        out["temperatures"] = self.temperatures
        if anchors is not None:
            if self.anchor_proj is None:
                raise RuntimeError("this VEGANet was built without an anchor branch (clip_dim=0)")
            z = {b: self.anchor_proj[b](h[b]) for b in BRANCHES}
            out["embeddings"] = {b: F.normalize(z[b].float(), dim=-1) for b in BRANCHES}
            out["anchor_logits"] = {b: anchor_logits(z[b], anchors, anchor_scale) for b in BRANCHES}
        return out

    @property
    def temperatures(self) -> Dict[str, Tensor]:
        """The distillation temperatures T = exp(log T), keys ``cls_<modality>`` and ``anchor_<modality>``."""
        return {k: v.exp() for k, v in self.log_temp.items()}


# ---------------------------------------------------------------------------------------- losses
@dataclass(frozen=True)
class VEGALossSettings:
    """Which of the four losses are on, their weights, and the distillation options.

    ``*_modality`` weights: CE terms in order (all, text, audio, visual); KL terms (text, audio, visual).
    Defaults: the released IEMOCAP configuration.
    """

    ce: bool = True
    ce_weight: float = 0.952
    ce_modality: Tuple[float, ...] = (0.767, 0.513, 0.354, 0.775)
    kl: bool = True
    kl_weight: float = 0.347
    kl_modality: Tuple[float, ...] = (0.389, 0.687, 0.782)
    anchor_ce: bool = True
    anchor_ce_weight: float = 0.462
    anchor_ce_modality: Tuple[float, ...] = (0.528, 0.169, 0.302, 0.225)
    anchor_kl: bool = True
    anchor_kl_weight: float = 0.487
    anchor_kl_modality: Tuple[float, ...] = (0.936, 0.273, 0.716)
    detach_teacher: bool = True

    @property
    def needs_anchors(self) -> bool:
        return self.anchor_ce or self.anchor_kl


def masked_cross_entropy(logits: Tensor, labels: Tensor, class_weights: Optional[Tensor] = None) -> Tensor:
    """Class-weighted cross-entropy over real utterances: ``sum_i w[y_i] * nll_i / sum_i w[y_i]``.

    logits [B, L, C]; labels [B, L] with -1 at padding; class_weights [C] or None (all 1).
    """
    C = logits.shape[-1]
    w = class_weights.to(logits.device, torch.float32) if class_weights is not None else None
    return F.cross_entropy(logits.reshape(-1, C).float(), labels.reshape(-1), weight=w, ignore_index=-1)


def masked_distillation(
    student: Tensor, teacher: Tensor, mask: Tensor, temperature: Tensor, detach_teacher: bool = True
) -> Tensor:
    """Temperature-scaled distillation over real utterances, normalised as the released code does:

        T^2 * mean over real utterances i and classes c of  p_t[i, c] * (log p_t[i, c] - log p_s[i, c])
        = (T^2 / C) * mean_i KL(p_t[i] || p_s[i]),   p = softmax(logits / T)

    student, teacher [B, L, C]; mask [B, L]; temperature: scalar tensor T. With ``detach_teacher``
    no gradient reaches the teacher (the released code lets it flow into the teacher too).
    """
    if detach_teacher:
        teacher = teacher.detach()
    T = temperature.float()
    log_p_t = F.log_softmax(teacher.float() / T, dim=-1)
    log_p_s = F.log_softmax(student.float() / T, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s))[mask.bool()]  # [N, C]
    return kl.mean() * T * T


def vega_loss(
    out: Mapping[str, Mapping[str, Tensor]], labels: Tensor, mask: Tensor, temperatures: Mapping[str, Tensor],
    s: VEGALossSettings, class_weights: Optional[Tensor] = None,
) -> Dict[str, Tensor]:
    """The four VEGA terms (each already times its global weight) and their sum ``loss``.

    * ``loss_ce``        = CE_WEIGHT * sum_b w_b CE(logits_b), b in all/text/audio/visual;
    * ``loss_kl``        = KL_WEIGHT * sum_m w_m KD(logits_m <- logits_all; T_cls_m);
    * ``loss_anchor_ce`` = ANCHOR_CE_WEIGHT * sum_b w_b CE(anchor_logits_b);
    * ``loss_anchor_kl`` = ANCHOR_KL_WEIGHT * sum_m w_m KD(anchor_logits_m <- anchor_logits_all; T_anchor_m).

    CE terms use ``class_weights``; KD is :func:`masked_distillation`.
    """
    terms: Dict[str, Tensor] = {}

    def ce(logits: Mapping[str, Tensor], weights: Sequence[float]) -> Tensor:
        return sum(w * masked_cross_entropy(logits[b], labels, class_weights) for b, w in zip(BRANCHES, weights) if w)

    def kd(logits: Mapping[str, Tensor], weights: Sequence[float], kind: str) -> Tensor:
        return sum(
            w * masked_distillation(logits[m], logits["all"], mask, temperatures[f"{kind}_{m}"], s.detach_teacher)
            for m, w in zip(MODALITIES, weights) if w
        )

    if s.ce:
        terms["loss_ce"] = s.ce_weight * ce(out["logits"], s.ce_modality)
    if s.kl:
        terms["loss_kl"] = s.kl_weight * kd(out["logits"], s.kl_modality, "cls")
    if s.anchor_ce:
        terms["loss_anchor_ce"] = s.anchor_ce_weight * ce(out["anchor_logits"], s.anchor_ce_modality)
    if s.anchor_kl:
        terms["loss_anchor_kl"] = s.anchor_kl_weight * kd(out["anchor_logits"], s.anchor_kl_modality, "anchor")
    terms = {  # a term whose weights are all 0 is the plain number 0
        k: v if torch.is_tensor(v) else torch.as_tensor(v, dtype=torch.float32, device=labels.device) for k, v in terms.items()
    }
    terms["loss"] = sum(terms.values()) if terms else torch.zeros((), device=labels.device)
    return terms
