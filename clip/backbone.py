"""``ClipBackbone``: an open_clip ``CLIP`` with the entry points prompt-learning methods need."""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from utils.errors import ConfigError

from .image import VisualPrompts, encode_vit, vit_tokens
from .quiet import quiet_open_clip
from .text import encode_text_embeddings, text_cast_dtype

logger = logging.getLogger(__name__)

SOT_TOKEN_ID = 49406  # <start_of_text> of CLIP's BPE vocabulary
EOT_TOKEN_ID = 49407  # <end_of_text>
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _first_int(size: Union[int, Sequence[int]]) -> int:
    return int(size[0] if isinstance(size, (tuple, list)) else size)


class ClipBackbone(nn.Module):
    """A CLIP model whose text encoder takes token embeddings and whose ViT takes prompt tokens.

    Args:
        model: an open_clip ``CLIP`` (built-in text transformer). ``CustomTextCLIP`` / CoCa
            (Hugging Face or multimodal text towers) are refused with a :class:`ConfigError`.
        model_name: the open_clip architecture name (used for the tokenizer).

    Attributes:
        model: the wrapped open_clip model.
        model_name: architecture name.
        embed_dim: E, the joint image-text embedding size.
        text_width: D, the token embedding width (the width of a learned context vector).
        vision_width: W, the ViT transformer width (ResNet: input width of the attention pool).
        image_size: input resolution (square side).
        context_length: text context length (77 for CLIP).
        is_vit: whether the image tower is an open_clip ``VisionTransformer``.
        mean, std: the image normalisation the weights expect.
    """

    def __init__(self, model: nn.Module, model_name: str) -> None:
        super().__init__()
        import open_clip
        from open_clip.transformer import VisionTransformer

        if not isinstance(model, open_clip.CLIP):
            raise ConfigError(f"architecture {model_name} has a text tower that does not take prompt embeddings")
        if getattr(model, "text_pool_type", "argmax") not in ("argmax", "eos"):
            raise ConfigError(f"architecture {model_name} does not pool its text features at the EOT token")
        self.model = model
        self.model_name = model_name
        self.context_length = int(model.context_length)
        self.text_width = int(model.token_embedding.weight.shape[1])
        proj = model.text_projection
        if proj is None:
            self.embed_dim = self.text_width
        elif isinstance(proj, nn.Linear):
            self.embed_dim = int(proj.out_features)
        else:
            self.embed_dim = int(proj.shape[1])
        visual = model.visual
        self.is_vit = isinstance(visual, VisionTransformer)
        if self.is_vit:
            self.vision_width = int(visual.conv1.out_channels)
        elif hasattr(visual, "attnpool"):  # ModifiedResNet
            self.vision_width = int(visual.attnpool.k_proj.in_features)
        else:  # timm trunk
            trunk = getattr(visual, "trunk", None)
            self.vision_width = int(getattr(trunk, "num_features", self.embed_dim))
        self.image_size = _first_int(getattr(visual, "image_size", 224))
        pp = open_clip.get_model_preprocess_cfg(model) or {}
        self.mean: Tuple[float, ...] = tuple(float(v) for v in pp.get("mean", OPENAI_MEAN))
        self.std: Tuple[float, ...] = tuple(float(v) for v in pp.get("std", OPENAI_STD))
        self._tokenizer = None

    # ----------------------------------------------------------------------------- properties
    @property
    def logit_scale(self) -> nn.Parameter:
        """CLIP's learned log temperature (frozen by :func:`load_clip`); logits use ``.exp()``."""
        return self.model.logit_scale

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the encoders compute in (float32 after :func:`load_clip`)."""
        return text_cast_dtype(self.model)

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @property
    def tokenizer(self):
        """open_clip's tokenizer for this architecture (built on first use, works offline)."""
        if self._tokenizer is None:
            import open_clip

            with quiet_open_clip():
                self._tokenizer = open_clip.get_tokenizer(self.model_name, context_length=self.context_length)
        return self._tokenizer

    @property
    def sot_token_id(self) -> int:
        return int(getattr(self.tokenizer, "sot_token_id", SOT_TOKEN_ID))

    @property
    def eot_token_id(self) -> int:
        return int(getattr(self.tokenizer, "eot_token_id", EOT_TOKEN_ID))

    @property
    def token_embedding(self) -> nn.Embedding:
        """The token embedding table; ``token_embedding(tokens [N, L]) -> [N, L, D]``."""
        return self.model.token_embedding

    # ----------------------------------------------------------------------------------- text
    def tokenize(self, texts: Union[str, List[str]], context_length: Optional[int] = None) -> torch.Tensor:
        """Token ids [N, context_length] (LongTensor, CPU): SOS, BPE tokens, EOT, zero padding.

        Texts longer than the context are cut (the last kept token becomes EOT) with a warning.
        """
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        tokens = self.tokenizer(list(texts), context_length=length).long()
        cut = (tokens[:, -1] != 0).nonzero().flatten().tolist()
        if cut:
            logger.warning(
                "%d text(s) reach the %d-token context and may be cut, e.g. %r", len(cut), length, texts[cut[0]][:60]
            )
        return tokens

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings [N, L, D] of token ids [N, L]."""
        return self.model.token_embedding(tokens)

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Index [N] of the EOT token in each row of ``tokens`` [N, L] (the largest id)."""
        if getattr(self.model, "text_pool_type", "argmax") == "eos":
            return (tokens == self.model.text_eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)

    def encode_text_embeddings(
        self, x: torch.Tensor, eot_positions: torch.Tensor, truncate: bool = True
    ) -> torch.Tensor:
        """Text features [N, E] of token embeddings ``x`` [N, L, D] pooled at ``eot_positions`` [N].

        With ``truncate`` the sequences are cut after ``eot_positions.max()``; the causal mask
        makes this exact. See :func:`clip.text.encode_text_embeddings`.
        """
        return encode_text_embeddings(self.model, x, eot_positions, truncate=truncate)

    def encode_text(self, tokens: torch.Tensor, truncate: bool = True) -> torch.Tensor:
        """Text features [N, E] of token ids [N, L]; equals open_clip's ``encode_text``."""
        eot = self.eot_positions(tokens)
        if truncate and self.model.attn_mask is not None:
            tokens = tokens[:, : int(eot.max()) + 1]
        return self.encode_text_embeddings(self.embed_tokens(tokens), eot, truncate=truncate)

    # ---------------------------------------------------------------------------------- image
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """ViT input sequence [B, 1 + N, W] of images [B, 3, H, W] (CLS + patches, positions added)."""
        if not self.is_vit:
            raise ConfigError(f"image_tokens needs a ViT image tower; {self.model_name} has none")
        return vit_tokens(self.model.visual, images)

    def encode_image(self, images: torch.Tensor, prompts: VisualPrompts = None) -> torch.Tensor:
        """Image features [B, E] of images [B, 3, H, W].

        Args:
            images: normalised images at ``image_size``.
            prompts: ViT only: a tensor [B or 1, P, W] or a callable ``f([B, 1 + N, W]) -> [B, P, W]``;
                the P tokens join right after the class token and leave before pooling.
        """
        if not self.is_vit:
            if prompts is not None:
                raise ConfigError(f"visual prompts need a ViT image tower; {self.model_name} has a different one")
            return self.model.encode_image(images)
        return encode_vit(self.model.visual, images, prompts)

    def extra_repr(self) -> str:
        return (
            f"name={self.model_name}, embed_dim={self.embed_dim}, text_width={self.text_width}, "
            f"vision_width={self.vision_width}, image_size={self.image_size}, vit={self.is_vit}"
        )
