"""The UniEmoX student: a masked-autoencoder ViT (encoder + light decoder) built from timm blocks.

Parameter names equal those of MAE / UniEmoX checkpoints (``cls_token``, ``pos_embed``,
``mask_token``, ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``, ``decoder_embed.*``,
``decoder_pos_embed``, ``decoder_blocks.N.*``, ``decoder_norm.*``, ``decoder_pred.*``), so those
files load with ``strict=True``.

* :func:`random_masking` - per-sample random shuffle; keeps ``int(N * (1 - ratio))`` patches.
* :func:`patchify` / :func:`unpatchify` - ``[B, 3, H, W] <-> [B, N, p*p*3]`` (MAE's ``nhwpqc`` order).
* :func:`masked_reconstruction_loss` - mean squared error over the MASKED patches of the decoder's
  PATCH predictions (the released code broadcasts the CLS prediction instead: not done here).
* :class:`MaskedAutoencoderViT` - ``forward(images) -> MAEOutput(loss, pred, mask, student)`` where
  ``student`` is the encoder's CLS token through the decoder's input embedding ``decoder_embed``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn as nn


def sincos_pos_embed_2d(dim: int, grid: int, cls_token: bool = True) -> np.ndarray:
    """MAE's fixed 2-D sine-cosine embedding ``[grid*grid (+1), dim]`` (a zero row first for CLS)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    gh, gw = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))  # w first, as MAE

    def one_axis(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_axis(dim // 2, gh), one_axis(dim // 2, gw)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return emb


def random_masking(x: torch.Tensor, mask_ratio: float, noise: Optional[torch.Tensor] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random subset of tokens per sample.

    Args:
        x: ``[B, N, D]`` patch tokens.
        mask_ratio: share of tokens removed; ``int(N * (1 - mask_ratio))`` are kept.
        noise: optional ``[B, N]`` scores (lowest kept first); uniform random when None.

    Returns:
        ``x_kept [B, K, D]``, ``mask [B, N]`` (1 = removed, in the ORIGINAL order) and
        ``ids_restore [B, N]`` (the permutation that puts shuffled tokens back in place).
    """
    b, n, d = x.shape
    keep = int(n * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(b, n, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(b, n, device=x.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_kept, mask, ids_restore


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, 3, H, W] -> [B, (H/p)(W/p), p*p*3]`` (per patch: rows, columns, channels)."""
    b, c, h, w = images.shape
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify` for a square grid."""
    b, n, _ = x.shape
    g = int(round(n ** 0.5))
    if g * g != n:
        raise ValueError(f"{n} patches do not form a square grid")
    x = x.reshape(b, g, g, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, channels, g * p, g * p)


def masked_reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                               norm_pix: bool = False) -> torch.Tensor:
    """Mean over masked patches of the per-patch mean squared error.

    ``pred``, ``target``: ``[B, N, P]`` (one prediction per patch); ``mask``: ``[B, N]`` with 1 = masked.
    With ``norm_pix`` each target patch is standardised by its own mean and variance first.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


@dataclass
class MAEOutput:
    loss: Optional[torch.Tensor]  # reconstruction loss (None when not computed)
    pred: Optional[torch.Tensor]  # [B, N, p*p*3] patch predictions
    mask: torch.Tensor  # [B, N], 1 = masked
    student: torch.Tensor  # [B, decoder_dim]: decoder_embed(encoder CLS)


class MaskedAutoencoderViT(nn.Module):
    """MAE with a ViT encoder and a narrower decoder; the sizes of ``mae_vit_*`` are in ``MAE_SIZES``."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 1024, depth: int = 24,
                 num_heads: int = 16, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0, norm_pix_loss: bool = False) -> None:
        super().__init__()
        from timm.layers import PatchEmbed
        from timm.models.vision_transformer import Block

        norm = partial(nn.LayerNorm, eps=1e-6)
        self.patch_size, self.norm_pix_loss = patch_size, norm_pix_loss
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        n = self.patch_embed.num_patches
        self.grid = int(round(n ** 0.5))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)])
        self.norm = norm(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(decoder_depth)])
        self.decoder_norm = norm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * 3, bias=True)
        self.embed_dim, self.decoder_embed_dim = embed_dim, decoder_embed_dim
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE's initialisation: fixed sin-cos positions, xavier-uniform Linear / patch projection, N(0, 0.02) tokens."""
        self.pos_embed.data.copy_(torch.from_numpy(sincos_pos_embed_2d(self.embed_dim, self.grid)).float().unsqueeze(0))
        self.decoder_pos_embed.data.copy_(
            torch.from_numpy(sincos_pos_embed_2d(self.decoder_embed_dim, self.grid)).float().unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ parts
    def forward_encoder(self, images: torch.Tensor, mask_ratio: float, noise: Optional[torch.Tensor] = None):
        """``latent [B, 1+K, D]`` (normed), ``mask [B, N]``, ``ids_restore [B, N]``."""
        x = self.patch_embed(images) + self.pos_embed[:, 1:]
        x, mask, ids_restore = random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, embedded: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Patch predictions ``[B, N, p*p*3]`` from ``decoder_embed(latent)`` (``[B, 1+K, Dd]``)."""
        b, n = ids_restore.shape
        x = embedded
        masks = self.mask_token.expand(b, n + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], masks], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:]  # the patch predictions (the released code keeps x[:, :1], the CLS row)

    def forward(self, images: torch.Tensor, mask_ratio: float = 0.75, reconstruct: bool = True,
                target: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None) -> MAEOutput:
        """Encode a masked view; ``student`` = ``decoder_embed(CLS)``; decode and score when ``reconstruct``.

        ``target``: the images to reconstruct (default ``images``).
        """
        latent, mask, ids_restore = self.forward_encoder(images, mask_ratio, noise)
        embedded = self.decoder_embed(latent)
        student = embedded[:, 0]
        if not reconstruct:
            return MAEOutput(None, None, mask, student)
        pred = self.forward_decoder(embedded, ids_restore)
        tgt = patchify(images if target is None else target, self.patch_size)
        loss = masked_reconstruction_loss(pred, tgt, mask, self.norm_pix_loss)
        return MAEOutput(loss, pred, mask, student)


#: (patch, width, depth, heads, decoder width, decoder depth, decoder heads) of MAE's ``mae_vit_*`` models
MAE_SIZES = {
    "vit_base_patch16": (16, 768, 12, 12, 512, 8, 16),
    "vit_large_patch16": (16, 1024, 24, 16, 512, 8, 16),
    "vit_huge_patch14": (14, 1280, 32, 16, 512, 8, 16),
}
