"""UniEmoX's two CLIP distillation losses.

Notation (one batch of B images): ``S`` the student features, ``C`` CLIP's image features, ``T``
CLIP's text features of each image's caption, all L2-normalised rows; ``s`` CLIP's logit scale.

* ``L_sim = 1 - mean_i cos(S_i, C_i)``;
* ``A = s S T^T`` and ``Ĉ = s C T^T`` (B x B image-caption similarities, paired captions on the
  diagonal, the batch's other captions off it); ``L_con = 1 - mean_i cos(A_i, Ĉ_i)``: each row's
  similarity profile over the batch's captions matched to CLIP's. ``s`` cancels (cosine is
  scale-invariant); it is kept so the code reads as the method is written.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity_loss(student: torch.Tensor, clip_image: torch.Tensor) -> torch.Tensor:
    """``1 - mean_i cos(student_i, clip_image_i)`` for ``[B, E]`` inputs (normalised here)."""
    s = F.normalize(student.float().reshape(student.shape[0], -1), dim=-1)
    c = F.normalize(clip_image.float(), dim=-1)
    return 1.0 - (s * c).sum(dim=-1).mean()


def contrastive_similarity_loss(student: torch.Tensor, clip_image: torch.Tensor, text: torch.Tensor,
                                logit_scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """``1 - mean_i cos(A_i, Ĉ_i)`` with ``A = s S T^T``, ``Ĉ = s C T^T`` (module docstring)."""
    s = F.normalize(student.float().reshape(student.shape[0], -1), dim=-1)
    c = F.normalize(clip_image.float(), dim=-1)
    t = F.normalize(text.float(), dim=-1)
    scale = torch.as_tensor(logit_scale, dtype=s.dtype, device=s.device)
    a, c_hat = scale * s @ t.t(), scale * c @ t.t()
    return 1.0 - F.cosine_similarity(a, c_hat, dim=-1).mean()
