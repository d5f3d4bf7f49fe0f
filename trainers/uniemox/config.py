"""Config nodes of the two UniEmoX trainers and the ViT size lookup they share.

``TRAINER.UNIEMOX`` (fine-tuning, trainer ``UniEmoX``) and ``TRAINER.UNIEMOX_PRETRAIN``
(pre-training, trainer ``UniEmoXPretrain``); defaults are the released scripts' unless a comment
says otherwise. The learning rate follows the released rule ``lr = BLR * batch * processes / 256``
when ``BLR > 0`` (``OPTIM.LR`` is then ignored).
"""
from __future__ import annotations

from typing import Tuple

from yacs.config import CfgNode as CN

from utils.errors import ConfigError
from configs.registry import register_config

#: ARCH -> (patch, width, depth, heads) of the encoders; decoders are 512-d, 8 blocks, 16 heads
ARCHS = {
    "vit_base_patch16": (16, 768, 12, 12),
    "vit_large_patch16": (16, 1024, 24, 16),
    "vit_huge_patch14": (14, 1280, 32, 16),
}


def _vit_keys(node: CN) -> None:
    node.ARCH = "vit_large_patch16"  # vit_base_patch16 | vit_large_patch16 | vit_huge_patch14 | custom
    node.CUSTOM = CN()  # the encoder when ARCH is custom (tiny models for CPU runs)
    node.CUSTOM.PATCH_SIZE = 16
    node.CUSTOM.EMBED_DIM = 64
    node.CUSTOM.DEPTH = 2
    node.CUSTOM.NUM_HEADS = 2
    node.INIT = ""  # weights to start from: a checkpoint file or run folder, or "random" (must be given)
    node.BLR = 1e-3  # base lr: lr = BLR * batch * processes / 256 (0 = use OPTIM.LR)


def vit_size(node: CN, key: str) -> Tuple[int, int, int, int]:
    """``(patch, width, depth, heads)`` for ``node.ARCH``; ConfigError naming ``key`` otherwise."""
    if node.ARCH == "custom":
        c = node.CUSTOM
        size = (int(c.PATCH_SIZE), int(c.EMBED_DIM), int(c.DEPTH), int(c.NUM_HEADS))
        if min(size) <= 0 or size[1] % size[3]:
            raise ConfigError(f"{key}.CUSTOM: sizes must be positive and EMBED_DIM divisible by NUM_HEADS, got {size}")
        return size
    if node.ARCH not in ARCHS:
        from utils.registry import closest

        hint = closest(node.ARCH, list(ARCHS) + ["custom"])
        raise ConfigError(f"unknown {key}.ARCH {node.ARCH!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
    return ARCHS[node.ARCH]


def effective_lr(blr: float, lr: float, batch_size: int, world_size: int, key: str = "TRAINER.UNIEMOX") -> float:
    """``blr * batch_size * world_size / 256`` when ``blr > 0`` (``BLR``), ``lr`` (``OPTIM.LR``) when it is 0;
    a negative (or NaN) BLR is refused, naming ``key``."""
    if not blr >= 0:  # NaN included
        raise ConfigError(f"{key}.BLR must be >= 0 (0 = use OPTIM.LR), got {blr}")
    if blr > 0:
        return float(blr) * batch_size * world_size / 256.0
    return float(lr)


@register_config
def add_uniemox_config(cfg: CN) -> None:
    cfg.TRAINER.UNIEMOX = CN()
    u = cfg.TRAINER.UNIEMOX
    _vit_keys(u)
    u.GLOBAL_POOL = True  # mean of the patch tokens -> fc_norm -> head (False: CLS token after norm)
    u.DROP_PATH = 0.2  # stochastic depth, rising linearly to this over the blocks
    u.MIN_LR = 1e-6  # floor of the half-cycle cosine
    u.LAYER_DECAY_ENABLED = False  # layer-wise lr decay: off as the released code runs (declared, never applied); MAE's: on
    u.LAYER_DECAY = 0.75  # lr scale of block i = LAYER_DECAY ** (depth - i); stem ** (depth + 1)
    u.AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"  # timm RandAugment policy ("" = off, then colour jitter)
    u.COLOR_JITTER = 0.0  # colour jitter strength when AUTO_AUGMENT is off
    u.RE_PROB = 0.25  # random erasing probability
    u.RE_MODE = "pixel"  # random erasing fill
    u.RE_COUNT = 1  # random erasing regions
    u.CROP_PCT = 0.875  # evaluation: resize to size / CROP_PCT, then centre crop
    u.MIXUP = 0.8  # mixup alpha (0 = off)
    u.CUTMIX = 1.0  # cutmix alpha (0 = off)
    u.MIXUP_PROB = 1.0  # probability of applying mixup or cutmix to a batch
    u.MIXUP_SWITCH_PROB = 0.5  # probability of cutmix instead of mixup when both are on
    u.MIXUP_MODE = "batch"  # batch | pair | elem
    u.SMOOTHING = 0.1  # label smoothing


@register_config
def add_uniemox_pretrain_config(cfg: CN) -> None:
    cfg.TRAINER.UNIEMOX_PRETRAIN = CN()
    p = cfg.TRAINER.UNIEMOX_PRETRAIN
    _vit_keys(p)
    p.MIN_LR = 0.0  # floor of the half-cycle cosine
    p.MASK_RATIO = 0.90  # share of patches removed from the student's input
    p.DECODER_EMBED_DIM = 512  # decoder width; must equal the teacher's embedding size
    p.DECODER_DEPTH = 8
    p.DECODER_NUM_HEADS = 16
    p.NORM_PIX_LOSS = False  # reconstruct per-patch standardised pixels
    p.RRCROP_SCALE = (0.2, 1.0)  # random resized crop of both views
    p.TRAIN_PHASES = ("train", "val")  # EmoSet phases pre-trained on (as released); the rest is held out
    p.MAE_WEIGHT = 1.0  # weight of the reconstruction loss (0 = off)
    p.SIM_WEIGHT = 1.0  # weight of L_sim, student vs CLIP image feature (0 = off)
    p.CON_WEIGHT = 1.0  # weight of L_con, image-text similarity profiles (0 = off)
    p.FUSION = "released"  # scene + person fusion (trainers/components/fusion.py) | none = scene token only
    p.PERSON_BOXES = ""  # person boxes JSON of tools/detect_persons.py ("" = <dataset folder>/person_boxes.json)
    p.DECODE = "auto"  # where JPEGs are decoded: worker (loader processes) | device (batched, nvJPEG on CUDA) | auto
    p.TEACHER = CN()
    p.TEACHER.NAME = "ViT-B-16"  # CLIP architecture of the frozen teacher
    p.TEACHER.PRETRAINED = "openai"  # its weights: a local file or an open_clip tag
    p.TEXT_CACHE_DIR = "cache/uniemox_captions"  # caption embeddings computed once are kept here ("" = memory only)
    p.HANDOFF = True  # also write OUTPUT_DIR/uniemox_pretrain.pth ({'model', 'att_fusion', 'epoch'}) for fine-tuning
