"""Test-only restatement of the official code paths EmoLab must match, written for these tests from
the public behaviour of OpenAI's CLIP (``clip/model.py``: ``build_model``), CoOp / CoCoOp
(``trainers/coop.py``, ``trainers/cocoop.py``: ``PromptLearner``, ``TextEncoder``, ``CustomCLIP``,
``load_model``) and Dassl (the test transform, ``read_image``, ``save_checkpoint``).

What is kept exactly: the OpenAI ViT layout (pre-LN blocks on ``nn.MultiheadAttention`` in
sequence-first layout, QuickGELU, fp32 LayerNorm, class token, ``ln_post`` + ``proj``; heads =
width / 64; weights rounded to fp16 by ``convert_weights`` and, for PREC fp32, cast back with
``.float()``), prompts built as ``[SOS] [ctx] name . [EOS]`` from ``token_prefix`` /
``token_suffix`` buffers cut from the tokenised ``"X X .. X name."``, EOT pooling at
``argmax(token ids)``, CoCoOp's meta-net ``linear1 -> relu -> linear2`` shifting every context token
with one text-encoder pass per image, and ``load_model``'s deletion of the token buffers followed
by ``load_state_dict(strict=False)``. Nothing here is imported by EmoLab.
"""
from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_WEIGHTS = os.path.join(ROOT, "clip", "weights", "emolab-tiny-vit.safetensors")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "official_coop")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLASSNAMES = ["amusement", "anger", "awe", "sadness"]


# ------------------------------------------------------------------ OpenAI CLIP (ViT)
class LayerNorm(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mask: Optional[torch.Tensor], act=QuickGELU):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", act()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = LayerNorm(width)
        self.mask = mask

    def forward(self, x):  # x: [L, N, D]
        mask = self.mask.to(x.dtype) if self.mask is not None else None
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mask: Optional[torch.Tensor] = None, act=QuickGELU):
        super().__init__()
        self.resblocks = nn.Sequential(*[Block(width, heads, mask, act) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class Visual(nn.Module):
    def __init__(self, resolution: int, patch: int, width: int, layers: int, heads: int, out_dim: int, act=QuickGELU):
        super().__init__()
        self.input_resolution, self.output_dim = resolution, out_dim
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((resolution // patch) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, act=act)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, out_dim))

    def forward(self, x):
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x).permute(1, 0, 2)
        x = self.transformer(x).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class OpenAIClip(nn.Module):
    def __init__(self, embed, res, v_layers, v_width, patch, ctx_len, vocab, t_width, t_heads, t_layers,
                 v_heads=None, act=QuickGELU):
        super().__init__()
        self.visual = Visual(res, patch, v_width, v_layers, v_heads or v_width // 64, embed, act)
        mask = torch.full((ctx_len, ctx_len), float("-inf")).triu_(1)
        self.transformer = Transformer(t_width, t_layers, t_heads, mask, act)
        self.token_embedding = nn.Embedding(vocab, t_width)
        self.positional_embedding = nn.Parameter(torch.zeros(ctx_len, t_width))
        self.ln_final = LayerNorm(t_width)
        self.text_projection = nn.Parameter(torch.zeros(t_width, embed))
        self.logit_scale = nn.Parameter(torch.zeros([]))

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype


def _to_fp16(module: nn.Module) -> None:
    """OpenAI's ``convert_weights``: linear / conv / attention weights and the projections to fp16."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.data = m.weight.data.half()
            if m.bias is not None:
                m.bias.data = m.bias.data.half()
        if isinstance(m, nn.MultiheadAttention):
            for name in ("in_proj_weight", "in_proj_bias"):
                t = getattr(m, name)
                if t is not None:
                    t.data = t.data.half()
        for name in ("text_projection", "proj"):
            t = getattr(m, name, None)
            if isinstance(t, torch.Tensor):
                t.data = t.data.half()


def build_model(state: Dict[str, torch.Tensor]) -> OpenAIClip:
    """OpenAI's ``build_model`` for a ViT state dict (architecture from the shapes), then ``.float()``
    as CoOp does for PREC fp32 / amp."""
    state = dict(state)
    width = state["visual.conv1.weight"].shape[0]
    layers = len([k for k in state if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
    patch = state["visual.conv1.weight"].shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    t_width = state["ln_final.weight"].shape[0]
    t_layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks")})
    model = OpenAIClip(state["text_projection"].shape[1], patch * grid, layers, width, patch,
                       state["positional_embedding"].shape[0], state["token_embedding.weight"].shape[0],
                       t_width, t_width // 64, t_layers)
    for key in ("input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    _to_fp16(model)
    model.load_state_dict(state)
    return model.eval().float()


def tiny_named_clip() -> OpenAIClip:
    """The shipped tiny CLIP as ``emolab-tiny-vit`` defines it, in the OpenAI model classes: 4 vision
    heads (head width 32) and 2 text heads, exact GELU, fp32 weights. OpenAI's ``build_model`` cannot
    express this architecture (it fixes heads = width / 64 and QuickGELU); only those two settings
    and the fp16 rounding differ from :func:`build_model`."""
    from safetensors.torch import load_file

    state = load_file(TINY_WEIGHTS)
    model = OpenAIClip(128, 32, 4, 128, 8, 77, 49408, 64, 2, 2, v_heads=4, act=nn.GELU)
    model.load_state_dict(state)
    return model.eval().float()


def openai_tiny_state_dict() -> Dict[str, torch.Tensor]:
    """The shipped tiny CLIP as OpenAI distributes its CLIPs: fp16 tensors plus the three metadata entries."""
    from safetensors.torch import load_file

    state = {k: v.half() for k, v in load_file(TINY_WEIGHTS).items()}
    state["input_resolution"] = torch.tensor(32)
    state["context_length"] = torch.tensor(77)
    state["vocab_size"] = torch.tensor(49408)
    return state


# ------------------------------------------------------------------ tokeniser (CLIP's BPE)
def tokenize(texts: List[str]) -> torch.Tensor:
    import open_clip

    return open_clip.tokenize(texts)


def bpe_len(text: str) -> int:
    from open_clip.tokenizer import _tokenizer

    return len(_tokenizer.encode(text))


# ------------------------------------------------------------------ CoOp / CoCoOp
class TextEncoder(nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.transformer, self.positional_embedding = clip.transformer, clip.positional_embedding
        self.ln_final, self.text_projection, self.dtype = clip.ln_final, clip.text_projection, clip.dtype

    def forward(self, prompts, tokenized):
        x = (prompts + self.positional_embedding.to(self.dtype)).permute(1, 0, 2)
        x = self.transformer(x).permute(1, 0, 2)
        x = self.ln_final(x).to(self.dtype)
        return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ self.text_projection


def _context(clip, n_ctx: int, ctx_init: str, csc: bool, n_cls: int):
    """(ctx vectors, prompt prefix, n_ctx) as both official prompt learners set them up."""
    dim = clip.ln_final.weight.shape[0]
    if ctx_init:
        words = ctx_init.replace("_", " ")
        n_ctx = len(words.split(" "))
        with torch.no_grad():
            emb = clip.token_embedding(tokenize([words])).to(clip.dtype)
        return emb[0, 1:1 + n_ctx, :], words, n_ctx
    vectors = torch.empty(n_cls, n_ctx, dim) if csc else torch.empty(n_ctx, dim)
    nn.init.normal_(vectors, std=0.02)
    return vectors, " ".join(["X"] * n_ctx), n_ctx


class CoOpPromptLearner(nn.Module):
    def __init__(self, clip, classnames, n_ctx=4, ctx_init="", csc=False, position="end"):
        super().__init__()
        vectors, prefix_words, n_ctx = _context(clip, n_ctx, ctx_init, csc, len(classnames))
        self.ctx = nn.Parameter(vectors)
        names = [c.replace("_", " ") for c in classnames]
        self.name_lens = [bpe_len(n) for n in names]
        self.tokenized_prompts = tokenize([prefix_words + " " + n + "." for n in names])
        with torch.no_grad():
            emb = clip.token_embedding(self.tokenized_prompts).to(clip.dtype)
        self.register_buffer("token_prefix", emb[:, :1, :])
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx:, :])
        self.n_cls, self.n_ctx, self.position = len(classnames), n_ctx, position

    def forward(self):
        ctx = self.ctx
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        pre, suf = self.token_prefix, self.token_suffix
        if self.position == "end":
            return torch.cat([pre, ctx, suf], dim=1)
        rows = []
        for i in range(self.n_cls):
            k = self.name_lens[i]
            name, rest = suf[i:i + 1, :k], suf[i:i + 1, k:]
            if self.position == "middle":
                h = self.n_ctx // 2
                rows.append(torch.cat([pre[i:i + 1], ctx[i:i + 1, :h], name, ctx[i:i + 1, h:], rest], dim=1))
            else:
                rows.append(torch.cat([pre[i:i + 1], name, ctx[i:i + 1], rest], dim=1))
        return torch.cat(rows, dim=0)


class CoOpModel(nn.Module):
    def __init__(self, clip, classnames, **kw):
        super().__init__()
        self.prompt_learner = CoOpPromptLearner(clip, classnames, **kw)
        self.image_encoder, self.text_encoder = clip.visual, TextEncoder(clip)
        self.logit_scale, self.dtype = clip.logit_scale, clip.dtype

    def forward(self, image):
        img = self.image_encoder(image.to(self.dtype))
        txt = self.text_encoder(self.prompt_learner(), self.prompt_learner.tokenized_prompts)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return self.logit_scale.exp() * img @ txt.t()


class CoCoOpPromptLearner(nn.Module):
    def __init__(self, clip, classnames, n_ctx=4, ctx_init=""):
        super().__init__()
        vectors, prefix_words, n_ctx = _context(clip, n_ctx, ctx_init, False, len(classnames))
        self.ctx = nn.Parameter(vectors)
        vis, dim = clip.visual.output_dim, clip.ln_final.weight.shape[0]
        self.meta_net = nn.Sequential(OrderedDict([("linear1", nn.Linear(vis, vis // 16)), ("relu", nn.ReLU(inplace=True)),
                                                   ("linear2", nn.Linear(vis // 16, dim))]))
        names = [c.replace("_", " ") for c in classnames]
        self.tokenized_prompts = tokenize([prefix_words + " " + n + "." for n in names])
        with torch.no_grad():
            emb = clip.token_embedding(self.tokenized_prompts).to(clip.dtype)
        self.register_buffer("token_prefix", emb[:, :1, :])
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx:, :])
        self.n_cls = len(classnames)

    def forward(self, im_features):
        shifted = self.ctx.unsqueeze(0) + self.meta_net(im_features).unsqueeze(1)
        out = []
        for ctx_i in shifted:
            ctx_i = ctx_i.unsqueeze(0).expand(self.n_cls, -1, -1)
            out.append(torch.cat([self.token_prefix, ctx_i, self.token_suffix], dim=1))
        return torch.stack(out)


class CoCoOpModel(nn.Module):
    def __init__(self, clip, classnames, **kw):
        super().__init__()
        self.prompt_learner = CoCoOpPromptLearner(clip, classnames, **kw)
        self.image_encoder, self.text_encoder = clip.visual, TextEncoder(clip)
        self.logit_scale, self.dtype = clip.logit_scale, clip.dtype

    def forward(self, image):
        img = self.image_encoder(image.to(self.dtype))
        img = img / img.norm(dim=-1, keepdim=True)
        out = []
        for prompts_i, img_i in zip(self.prompt_learner(img), img):
            txt = self.text_encoder(prompts_i, self.prompt_learner.tokenized_prompts)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            out.append(self.logit_scale.exp() * img_i @ txt.t())
        return torch.stack(out)


def load_model(module: nn.Module, directory: str, epoch: Optional[int] = None, name: str = "prompt_learner") -> None:
    """The official trainers' ``load_model`` for one model: the best file unless ``epoch``; the token
    buffers deleted; ``load_state_dict(strict=False)`` (Dassl reads the file with ``torch.load``; here
    with ``weights_only=True``, which EmoLab's files must pass). A file the official trainer wrote holds
    its pickled warm-up scheduler, which ``weights_only=True`` refuses and whose classes (Dassl's) are not
    installed here: its tensors are read with EmoLab's restricted reader (``read_dassl_checkpoint``)."""
    fname = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
    path = os.path.join(directory, name, fname)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        from trainers.engine.checkpoint import read_dassl_checkpoint

        ckpt = read_dassl_checkpoint(path)
    state = ckpt["state_dict"]
    state.pop("token_prefix", None)
    state.pop("token_suffix", None)
    module.load_state_dict(state, strict=False)


# ------------------------------------------------------------------ Dassl's evaluation input
def dassl_test_transform(size: int = 32):
    """Dassl's test transform for INPUT.INTERPOLATION bicubic and CLIP's statistics (torchvision v1 on PIL)."""
    from torchvision import transforms as V1

    return V1.Compose([V1.Resize(size, interpolation=V1.InterpolationMode.BICUBIC), V1.CenterCrop(size),
                       V1.ToTensor(), V1.Normalize(CLIP_MEAN, CLIP_STD)])


def read_image(path: str) -> Image.Image:
    return Image.open(path).convert("RGB")


def write_jpeg_folders(root: str, classnames=CLASSNAMES, per_split=(3, 1, 3), seed: int = 0) -> str:
    """``<root>/FI/{train,val,test}/<class>/*.jpg``: JPEGs of assorted sizes and aspect ratios."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val", "test"), per_split):
        for c, name in enumerate(classnames):
            os.makedirs(os.path.join(root, "FI", split, name), exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(33, 90)), int(rng.integers(33, 90))
                yy, xx = np.mgrid[0:h, 0:w]
                base = np.stack([np.sin(xx / (3 + c) + i) * 90 + 128, np.cos(yy / (4 + i)) * 80 + 128,
                                 (xx + yy) * 255.0 / (h + w)], -1)
                img = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(os.path.join(root, "FI", split, name, f"{i:03d}.jpg"), quality=85)
    return root
