"""The prompt learner shared by CoOp, CoCoOp and their descendants.

A class prompt is ``[SOS] ctx_1 .. ctx_M name_tokens . [EOS]`` (class token position
``end``), ``[SOS] name ctx .`` (``front``) or ``[SOS] ctx_1..ctx_M/2 name ctx_M/2+1..ctx_M .``
(``middle``). The learnable context comes from a swappable context generator
(``trainers/components/context.py``); the fixed token embeddings are non-persistent buffers,
so a saved prompt learner holds only what trains and loads on other class names.

Prompt learners are registered in ``PROMPT_LEARNERS`` and built from a trainer's config node by
:func:`build_prompt_learner`, the one builder CoOp, CoCoOp and EmoCoOp share.
"""
from __future__ import annotations

import logging
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.errors import ConfigError
from utils.registry import Registry

from .context import CONTEXT_GENERATORS

logger = logging.getLogger(__name__)
POSITIONS = ("end", "middle", "front")

#: Calling contract: ``cls(clip, classnames, context, n_ctx, position=...)`` (``context``: a context
#: generator, see ``context.py``); ``learner(img_feat or None) -> (prompts [B', C, L, D], eot [C])``,
#: the token embeddings a :class:`PromptedCLIP` encodes and the position of each class's EOT token.
PROMPT_LEARNERS = Registry("prompt learner")


def context_from_words(clip, words: str) -> Tuple[torch.Tensor, int]:
    """Token embeddings [n, D] of ``words`` (without SOS/EOS) and their count n.

    As in CoOp, ``_`` in ``words`` stands for a space (``a_photo_of_a`` = ``a photo of a``), so
    the words can be given on the command line without quoting. The number of context tokens
    is logged; it is the BPE token count, which equals CoOp's word count unless a word splits
    into several tokens (then a warning says so).
    """
    text = words.replace("_", " ").strip()
    tokens = clip.tokenize([text])
    n = int(clip.eot_positions(tokens)[0]) - 1
    if n <= 0:
        raise ConfigError(f"context init {words!r} has no tokens")
    with torch.no_grad():
        emb = clip.embed_tokens(tokens.to(next(clip.parameters()).device))[0, 1 : 1 + n].float().cpu()
    n_words = len(text.split())
    logger.info(f"context: {n} tokens initialised from the words {text!r}")
    if n != n_words:
        logger.warning(f"context init {text!r} has {n_words} words but {n} tokens: EmoLab learns {n} context "
                       f"vectors (CoOp would learn {n_words} and keep the rest of the words fixed)")
    return emb, n


@PROMPT_LEARNERS.register()
class PromptLearner(nn.Module):
    """Builds prompt embeddings for C classes around a context generator.

    Args:
        clip: a ``clip.ClipBackbone`` (frozen; used here for its tokenizer and token embedding).
        classnames: C class names.
        context: a context generator module (see ``context.py``) producing [B', C', n_ctx, D].
        n_ctx: number of context tokens the generator produces.
        position: class token position, ``end`` | ``middle`` | ``front``.
        suffix: text after the class name (default ``"."``).
    """

    def __init__(
        self, clip, classnames: List[str], context: nn.Module, n_ctx: int,
        position: str = "end", suffix: str = ".",
    ) -> None:
        super().__init__()
        if position not in POSITIONS:
            raise ConfigError(f"unknown class token position {position!r} (choose from {', '.join(POSITIONS)})")
        self.context = context
        self.n_ctx, self.n_cls = n_ctx, len(classnames)
        names = [c.replace("_", " ") for c in classnames]
        texts = [" ".join(["X"] * n_ctx) + " " + name + suffix for name in names]
        tokens = clip.tokenize(texts)  # [C, 77]
        eot = clip.eot_positions(tokens)  # [C]
        name_lens = [int(n) - 1 for n in clip.eot_positions(clip.tokenize(names))]
        length = int(eot.max()) + 1  # causal mask: nothing after the last EOT matters
        with torch.no_grad():
            emb = clip.embed_tokens(tokens[:, :length].to(next(clip.parameters()).device)).float().cpu()
        self.register_buffer("token_embedding", emb, persistent=False)  # [C, L, D]
        self.register_buffer("eot", eot, persistent=False)  # [C]
        self.register_buffer("gather_index", self._index(length, name_lens, position), persistent=False)  # [C, L]

    def _index(self, length: int, name_lens: List[int], position: str) -> torch.Tensor:
        """Where each prompt position reads from: < L a token embedding, >= L a context vector."""
        m, L = self.n_ctx, length
        rows = []
        for n_name in name_lens:
            ctx = list(range(L, L + m))
            name = list(range(1 + m, 1 + m + n_name))
            rest = list(range(1 + m + n_name, L))
            if position == "end":
                seq = ctx + name
            elif position == "front":
                seq = name + ctx
            else:
                seq = ctx[: m // 2] + name + ctx[m // 2 :]
            rows.append([0] + seq + rest)
        return torch.tensor(rows, dtype=torch.long)

    def forward(self, img_feat: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings [B', C, L, D] and EOT positions [C] (B' = 1 unless image-conditioned)."""
        ctx = self.context(img_feat)  # [B', C', M, D]
        b = ctx.shape[0]
        emb = self.token_embedding.to(ctx.dtype)
        full = torch.cat([emb.unsqueeze(0).expand(b, -1, -1, -1), ctx.expand(b, self.n_cls, -1, -1)], dim=2)
        idx = self.gather_index[None, :, :, None].expand(b, -1, -1, full.shape[-1])
        return full.gather(2, idx), self.eot


def build_prompt_learner(clip, classnames: List[str], node, key: str, ctx_init: Optional[str] = None) -> nn.Module:
    """The prompt learner a trainer's config node describes (CoOp, CoCoOp, EmoCoOp and their variants).

    Keys read from ``node`` (``key`` names it in messages, e.g. ``"TRAINER.COOP"``): ``N_CTX``,
    ``CTX_INIT`` (words; when given, their token count replaces ``N_CTX``), ``CONTEXT`` (a context
    generator, plus the keys of its ``from_config``), ``CLASS_TOKEN_POSITION`` (``end`` where the
    node has no such key) and ``PROMPT_LEARNER`` (``PromptLearner`` where it has none).

    Args:
        clip: the frozen ``ClipBackbone`` (tokenizer, token embedding, widths).
        classnames: C class names.
        node: the trainer's config node.
        key: the node's full name, for error messages.
        ctx_init: words used instead of ``node.CTX_INIT``; ``""`` = random init of ``N_CTX`` vectors
            (EmoCoOp with GloVe init, which overwrites the context when training starts).
    """
    words = node.CTX_INIT if ctx_init is None else ctx_init
    if words:
        init, n_ctx = context_from_words(clip, words)  # logs the number of context tokens
    else:
        init, n_ctx = None, int(node.N_CTX)
        if n_ctx < 1:
            raise ConfigError(f"{key}.N_CTX must be >= 1, got {n_ctx}")
        logger.info(f"context: {n_ctx} tokens, random init N(0, 0.02^2)")
    gen_cls = CONTEXT_GENERATORS.get(node.CONTEXT)
    gen_kwargs = gen_cls.from_config(node) if hasattr(gen_cls, "from_config") else {}
    gen = gen_cls(n_ctx=n_ctx, ctx_dim=clip.text_width, vis_dim=clip.embed_dim, n_cls=len(classnames), init=init,
                  **gen_kwargs)
    learner = PROMPT_LEARNERS.get(getattr(node, "PROMPT_LEARNER", "PromptLearner"))
    return learner(clip, classnames, gen, n_ctx, position=getattr(node, "CLASS_TOKEN_POSITION", "end"))


class PromptedCLIP(nn.Module):
    """Frozen CLIP + a prompt learner: ``forward(images) -> logits [B, C]``.

    ``logits = exp(logit_scale) * norm(image) @ norm(text)^T``; with an image-conditioned
    context every image gets its own C prompts, all encoded in one batched text pass.
    """

    def __init__(self, clip, prompt_learner: PromptLearner) -> None:
        super().__init__()
        self.clip = clip
        self.prompt_learner = prompt_learner
        self.reuse_text_features = True  # False: encode the class prompts on every batch (benchmarks)
        self._text_memo: Optional[Tuple[tuple, torch.Tensor]] = None

    def train(self, mode: bool = True) -> "PromptedCLIP":
        super().train(mode)
        self.clip.eval()  # CLIP stays in eval mode (frozen, no dropout / BN updates)
        return self

    def text_features(self, img_feat: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalised class text features [B', C, E]."""
        prompts, eot = self.prompt_learner(img_feat)
        b, c, length, d = prompts.shape
        txt = self.clip.encode_text_embeddings(prompts.reshape(b * c, length, d), eot.repeat(b))
        return F.normalize(txt.reshape(b, c, -1), dim=-1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(images), dim=-1)

    def _memo_key(self) -> tuple:
        """Changes whenever a weight, the device/dtype or the autocast state changes."""
        autocast = tuple(torch.is_autocast_enabled(d) for d in ("cpu", "cuda"))
        return autocast + tuple((id(t), t._version, t.device, t.dtype)
                                for t in (*self.parameters(), *self.prompt_learner.buffers()))

    def eval_text_features(self, img_feat: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`text_features`, computed once and reused while no gradient is recorded and the
        context is image-independent (``context.image_independent``): an evaluation encodes the C
        class prompts once, not once per batch. Recomputed when any weight changes (optimizer step,
        loaded checkpoint: tracked by the tensors' version counters), or the autocast state changes."""
        if not (self.reuse_text_features and not torch.is_grad_enabled()
                and getattr(self.prompt_learner.context, "image_independent", False)):
            return self.text_features(img_feat)
        key = self._memo_key()
        if self._text_memo is None or self._text_memo[0] != key:
            self._text_memo = None  # free the old features first
            self._text_memo = (key, self.text_features(None))
        return self._text_memo[1]

    def logits_from_features(self, img: torch.Tensor) -> torch.Tensor:
        txt = self.eval_text_features(img)
        scale = self.clip.logit_scale.exp()
        if txt.shape[0] == 1:
            return scale * img @ txt[0].t()
        return scale * torch.einsum("be,bce->bc", img, txt.to(img.dtype))

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        """Logits [B, C] from images [B, 3, H, W], or from normalised image features [B, E] (cache)."""
        return self.logits_from_features(x if features else self.image_features(x))
