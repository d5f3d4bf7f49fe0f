"""Pre-train a tiny CLIP on synthetic image-caption pairs (the weights the demo ships with).

A randomly initialised tiny CLIP has no image-text alignment, so zero-shot CLIP means
nothing and prompt learning starts from noise. This tool trains one contrastively (CLIP's
symmetric InfoNCE) on synthetic emotion images generated with a *different seed* from the
demo's data, each paired with a caption built from its visual cues (colour, texture,
shapes) and, in a minority of captions, an emotion word or a synonym. The result is saved
as fp16 safetensors:

    python tools/pretrain_tiny_clip.py --out clip/weights/emolab-tiny-vit.safetensors

Deterministic for a given ``--seed`` on a given torch build (CPU, ~2 minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clip import load_clip  # noqa: E402
from datasets.synthetic.images import PROFILES, SyntheticSettings  # noqa: E402
from datasets.synthetic.emotion import ensure_synthetic, load_synthetic  # noqa: E402

logger = logging.getLogger("pretrain_tiny_clip")
SYNONYMS = {
    "amusement": ["amusing", "funny", "playful"], "anger": ["angry", "furious", "rage"],
    "awe": ["awe-inspiring", "majestic", "wonder"], "contentment": ["content", "peaceful", "calm"],
    "disgust": ["disgusting", "gross", "repulsive"], "excitement": ["exciting", "thrilling", "energetic"],
    "fear": ["scary", "frightening", "fearful"], "sadness": ["sad", "gloomy", "sorrowful"],
}


def colour_word(hue: float, sat: float, val: float) -> str:
    """A plain colour name for an HSV triple (degrees, 0..1, 0..1)."""
    if sat < 0.3:
        return "grey"
    names = [(15, "red"), (40, "orange"), (65, "yellow"), (95, "olive"), (160, "green"), (200, "cyan"),
             (250, "blue"), (290, "purple"), (340, "magenta"), (361, "red")]
    word = next(n for h, n in names if hue % 360 < h)
    return ("dark " if val < 0.5 else "bright " if val > 0.85 else "") + word


def captions_for(label: str, labels: list, rng: np.random.Generator) -> str:
    """One caption for an image whose primary emotion is ``label`` (``labels``: all present)."""
    hue, sat, val, texture, shape, count = PROFILES[label]
    colour = colour_word(hue, sat, val)
    plural = shape + ("s" if count > 1 else "")
    kind = rng.random()
    if kind < 0.45:
        return f"a {colour} picture with {texture} and {plural}."
    if kind < 0.6:
        return f"{colour} {texture}, {plural}."
    emo = label if rng.random() < 0.5 else SYNONYMS[label][int(rng.integers(3))]
    if kind < 0.8:
        return f"a {colour} image with {plural} that feels {emo}."
    if len(labels) > 1:
        return f"a photo of {' and '.join(labels)}."
    return f"a photo of {emo}."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="emolab-tiny-vit")
    p.add_argument("--out", default="clip/weights/emolab-tiny-vit.safetensors")
    p.add_argument("--data-root", default="data", help="where the pre-training images are generated")
    p.add_argument("--per-class", type=int, default=300, help="pre-training images per class")
    p.add_argument("--gen-seed", type=int, default=1000, help="generator seed (the demo data uses 0)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    settings = SyntheticSettings(n_train_per_class=args.per_class, n_val_per_class=1, n_test_per_class=1,
                                 seed=args.gen_seed)
    ds = load_synthetic(ensure_synthetic(os.path.join(args.data_root, "pretrain"), settings))
    from PIL import Image

    clip = load_clip(args.arch)
    mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.std).view(1, 3, 1, 1)
    imgs = torch.stack([torch.from_numpy(np.asarray(Image.open(d.impath).convert("RGB"))) for d in ds.train_x])
    imgs = ((imgs.permute(0, 3, 1, 2).float() / 255.0) - mean) / std  # [N, 3, S, S]
    labels = [(d.classname, [ds.classnames[i] for i in d.labels] or [d.classname]) for d in ds.train_x]
    n = len(imgs)
    logger.info(f"pre-training {args.arch} on {n} synthetic image-caption pairs")

    for prm in clip.parameters():
        prm.requires_grad_(True)
    clip.train()
    opt = torch.optim.AdamW(clip.parameters(), lr=args.lr, weight_decay=0.1)
    steps = args.epochs * (n // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    t0, step = time.time(), 0
    for epoch in range(args.epochs):
        perm = torch.randperm(n)
        total = 0.0
        for b in range(n // args.batch_size):
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            x = imgs[idx]
            flip = torch.rand(len(idx)) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            texts = [captions_for(*labels[i], rng) for i in idx.tolist()]
            img = F.normalize(clip.encode_image(x), dim=-1)
            txt = F.normalize(clip.encode_text(clip.tokenize(texts)), dim=-1)
            logits = clip.logit_scale.exp() * img @ txt.t()
            target = torch.arange(len(idx))
            # captions repeat across images: treat identical captions as positives for each other
            same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.float32)
            soft = same / same.sum(1, keepdim=True)
            loss = 0.5 * (torch.sum(-soft * logits.log_softmax(1), 1).mean() + F.cross_entropy(logits.t(), target))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                clip.logit_scale.clamp_(0, 4.6052)
            total += loss.item()
            step += 1
        logger.info(f"epoch {epoch + 1}/{args.epochs} loss {total / max(1, n // args.batch_size):.4f} "
                    f"({time.time() - t0:.0f}s)")

    from safetensors.torch import save_file

    state = {k: v.detach().half().contiguous() for k, v in clip.model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file(state, args.out + ".tmp", metadata={"arch": args.arch, "source": "tools/pretrain_tiny_clip.py",
                                                  "gen_seed": str(args.gen_seed), "seed": str(args.seed)})
    os.replace(args.out + ".tmp", args.out)
    logger.info(f"saved {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
