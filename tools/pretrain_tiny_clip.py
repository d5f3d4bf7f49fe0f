"""Pre-train the tiny CLIP the demo ships with, on captions that describe what an image shows.

Real CLIP learnt from alt-text: captions name the scene, the objects and their colours, and rarely
the emotion an image evokes. This tool does the same in the synthetic world. It renders images
with the demo's generator under a *different seed* (so no demo image is ever seen) and captions
each one from the cues that were actually drawn, not from its emotion label: the background
colour, the texture, the shapes with their number and colour, the clutter and the lighting, with a
random subset of them mentioned in a random template each time the image is seen. Only
``--emotion-rate`` of the captions (default 5%) add an emotion word (the emotion's name, "it evokes
awe", or an adjective, "a gloomy scene"), as an occasional alt-text would. Training is CLIP's symmetric InfoNCE (identical captions in a batch count as positives of
each other). The result is saved as fp16 safetensors:

    python tools/pretrain_tiny_clip.py --out clip/weights/emolab-tiny-vit.safetensors

Deterministic for a given ``--seed`` on a given torch build (CPU: 5 to 10 minutes on 2 cores,
run with ``OMP_NUM_THREADS=1`` when other jobs share them).
"""
from __future__ import annotations

import argparse
import colorsys
import logging
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clip import load_clip  # noqa: E402
from datasets.synthetic.images import CLASSNAMES, GENERATOR_VERSION, difficulty_level, render  # noqa: E402

logger = logging.getLogger("pretrain_tiny_clip")

TEXTURE_WORDS = {
    "dots": ["polka dots", "a dotted pattern", "spots"],
    "diagonal": ["diagonal stripes", "slanted lines", "a diagonal pattern"],
    "radial": ["concentric rings", "ripples", "a circular pattern"],
    "hstripes": ["horizontal stripes", "horizontal bands", "level lines"],
    "vstripes": ["vertical stripes", "vertical bands", "upright lines"],
    "checker": ["a checkerboard", "checks", "a chequered pattern"],
    "chevron": ["zigzags", "a chevron pattern", "zigzag lines"],
    "speckle": ["blotches", "a blotchy texture", "speckles"],
}
SHAPE_WORDS = {
    "circle": ("circle", "circles"), "triangle": ("triangle", "triangles"), "star": ("star", "stars"),
    "square": ("square", "squares"), "cross": ("cross", "crosses"), "diamond": ("diamond", "diamonds"),
    "ring": ("ring", "rings"), "bar": ("bar", "bars"),
}
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
#: words an alt-text might use for the feeling of an image (used by --emotion-rate of captions)
EMOTION_WORDS = {
    "amusement": ["amusing", "funny", "playful"], "anger": ["angry", "furious", "aggressive"],
    "awe": ["awe-inspiring", "majestic", "grand"], "contentment": ["content", "peaceful", "calm"],
    "disgust": ["disgusting", "gross", "repulsive"], "excitement": ["exciting", "thrilling", "energetic"],
    "fear": ["scary", "frightening", "creepy"], "sadness": ["sad", "gloomy", "sorrowful"],
}


def colour_word(rgb) -> str:
    """A plain colour name for an RGB triple in 0..1 (``dark``/``bright``/``pale`` modifiers)."""
    h, s, v = colorsys.rgb_to_hsv(*[float(np.clip(x, 0, 1)) for x in rgb])
    if v < 0.18:
        return "black"
    if s < 0.25:
        return "white" if v > 0.85 else "grey" if v > 0.35 else "dark grey"
    names = [(15, "red"), (40, "orange"), (65, "yellow"), (95, "olive"), (160, "green"), (200, "cyan"),
             (250, "blue"), (290, "purple"), (340, "pink"), (361, "red")]
    word = next(n for lim, n in names if h * 360 < lim)
    if v < 0.45:
        return "dark " + word
    if s < 0.5:
        return "pale " + word
    return ("bright " if v > 0.85 else "") + word


def caption(cues: dict, primary: str, rng: np.random.Generator, emotion_rate: float) -> str:
    """One caption of an image from its drawn ``cues``: each cue mentioned with a high probability,
    in one of a few sentence forms (alt-text is rarely complete or uniform)."""
    bg = colour_word(cues["background"]) if rng.random() < 0.85 else ""
    texture = TEXTURE_WORDS[cues["texture"]][int(rng.integers(3))] if rng.random() < 0.85 else ""
    objs = []
    for shape, count, rgb in cues["shapes"]:
        one, many = SHAPE_WORDS[shape]
        noun = one if count == 1 else many
        num = "a" if count == 1 else NUMBERS.get(count, "several")
        objs.append(f"{num} {colour_word(rgb)} {noun}" if rng.random() < 0.7 else f"{num} {noun}")
    things = " and ".join(objs)
    kind = rng.random()
    if kind < 0.4:
        text = things + (f" on a {bg} background" if bg else "") + (f" with {texture}" if texture else "")
    elif kind < 0.7:
        text = (f"a {bg} picture" if bg else "a picture") + (f" with {texture}" if texture else "") + f" showing {things}"
    else:
        text = (f"{texture} in {bg}" if texture and bg else texture or (f"a {bg} background" if bg else "a background"))
        text += f", {things}"
    parts = [text]
    if cues["distractors"] >= 2 and rng.random() < 0.5:
        parts.append("cluttered with small shapes")
    if rng.random() < 0.2:
        light = cues["lighting"]
        parts.append("dimly lit" if light < 0.95 else "brightly lit" if light > 1.05 else "evenly lit")
    if rng.random() < emotion_rate:  # the emotion named as alt-text sometimes does: the noun or an adjective
        if rng.random() < 0.4:
            parts.append(f"it evokes {primary}")
        else:
            word = EMOTION_WORDS[primary][int(rng.integers(3))]
            parts.append(f"a {word} scene" if rng.random() < 0.5 else f"it feels {word}")
    return ", ".join(parts) + "."


def render_set(per_class: int, gen_seed: int, size: int, difficulty: str, multi_label_rate: float):
    """Images uint8 [N, S, S, 3], their cues and primary class names (the demo generator, another seed)."""
    level = difficulty_level(difficulty)
    n_cls = len(CLASSNAMES)
    imgs, cues, primaries = [], [], []
    for k in range(per_class * n_cls):
        primary = k % n_cls
        rng = np.random.default_rng([GENERATOR_VERSION, gen_seed, 0, k])
        blend, w = -1, 0.0
        if rng.random() < multi_label_rate:
            blend = int((primary + rng.integers(1, n_cls)) % n_cls)
            w = float(rng.uniform(0.25, 0.4))
        c: dict = {}
        imgs.append(render(primary, blend, w, size, level, rng, c))
        cues.append(c)
        primaries.append(CLASSNAMES[primary])
    return np.stack(imgs), cues, primaries


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="emolab-tiny-vit")
    p.add_argument("--out", default="clip/weights/emolab-tiny-vit.safetensors")
    p.add_argument("--per-class", type=int, default=500, help="pre-training images per class")
    p.add_argument("--gen-seed", type=int, default=1000, help="generator seed (the demo data uses 0)")
    p.add_argument("--emotion-rate", type=float, default=0.05, help="share of captions with an emotion word")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    clip = load_clip(args.arch)
    size = clip.image_size if hasattr(clip, "image_size") else 32
    raw, cues, primaries = render_set(args.per_class, args.gen_seed, 32, "medium", 0.25)
    mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.std).view(1, 3, 1, 1)
    imgs = ((torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255.0) - mean) / std  # [N, 3, S, S]
    n = len(imgs)
    logger.info(f"pre-training {args.arch} ({size}px) on {n} synthetic images; captions e.g.:")
    for i in range(3):
        logger.info(f"  {caption(cues[i], primaries[i], np.random.default_rng(i), args.emotion_rate)!r}")

    for prm in clip.parameters():
        prm.requires_grad_(True)
    clip.train()
    opt = torch.optim.AdamW(clip.parameters(), lr=args.lr, weight_decay=0.1)
    steps = args.epochs * (n // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    t0 = time.time()
    for epoch in range(args.epochs):
        perm = torch.randperm(n)
        total = 0.0
        for b in range(n // args.batch_size):
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            x = imgs[idx]
            flip = torch.rand(len(idx)) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            texts = [caption(cues[i], primaries[i], rng, args.emotion_rate) for i in idx.tolist()]
            img = F.normalize(clip.encode_image(x), dim=-1)
            txt = F.normalize(clip.encode_text(clip.tokenize(texts)), dim=-1)
            logits = clip.logit_scale.exp() * img @ txt.t()
            target = torch.arange(len(idx))
            same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.float32)
            soft = same / same.sum(1, keepdim=True)  # identical captions are positives of each other
            loss = 0.5 * (torch.sum(-soft * logits.log_softmax(1), 1).mean() + F.cross_entropy(logits.t(), target))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                clip.logit_scale.clamp_(0, 4.6052)
            total += loss.item()
        logger.info(f"epoch {epoch + 1}/{args.epochs} loss {total / max(1, n // args.batch_size):.4f} "
                    f"({time.time() - t0:.0f}s)")

    from safetensors.torch import save_file

    state = {k: v.detach().half().contiguous() for k, v in clip.model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file(state, args.out + ".tmp", metadata={
        "arch": args.arch, "source": "tools/pretrain_tiny_clip.py", "gen_seed": str(args.gen_seed),
        "seed": str(args.seed), "captions": "drawn visual cues", "emotion_rate": str(args.emotion_rate)})
    os.replace(args.out + ".tmp", args.out)
    logger.info(f"saved {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
