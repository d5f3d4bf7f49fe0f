"""Synthetic visual-emotion data: small PNGs whose emotion is carried by visual cues.

Each of Mikels' 8 emotions has a cue profile: colour (hue, saturation, brightness), a
background texture, a foreground shape and a shape count (arousal). Difficulty controls cue
jitter, how often a cue is borrowed from a random other class ("shared" cues), distractor
shapes, lighting changes and pixel noise. Some images blend a second emotion's cues; their
targets say so: multi-hot ``labels``, a soft-vote ``dist`` and ``va`` mixed from the class VA.
Same settings and seed -> identical bytes. Layout written by :func:`write_synthetic`:
``images/<split>/<id>.png``, ``annotations.csv``, ``classes.txt``, ``meta.json``.
"""
from __future__ import annotations

import colorsys
import csv
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
CLASSNAMES = ("amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness")
#: Class valence / arousal on the 1..9 SAM scale (NRC-VAD, rescaled).
CLASS_VA = {
    "amusement": (8.43, 7.70), "anger": (2.34, 7.92), "awe": (4.75, 6.92), "contentment": (8.00, 5.88),
    "disgust": (1.42, 7.20), "excitement": (8.17, 6.47), "fear": (1.58, 7.72), "sadness": (1.42, 3.30),
}
#: Cue profile per class: hue (degrees), saturation, brightness, texture, shape, shape count.
PROFILES = {
    "amusement": (50, 0.75, 0.92, "dots", "circle", 3),
    "anger": (0, 0.90, 0.60, "diagonal", "triangle", 3),
    "awe": (225, 0.60, 0.70, "radial", "star", 1),
    "contentment": (115, 0.45, 0.85, "hstripes", "square", 1),
    "disgust": (75, 0.50, 0.45, "speckle", "cross", 2),
    "excitement": (320, 0.95, 0.95, "checker", "diamond", 4),
    "fear": (275, 0.55, 0.25, "chevron", "ring", 2),
    "sadness": (210, 0.20, 0.42, "vstripes", "bar", 1),
}
SHAPES = tuple(p[4] for p in PROFILES.values())
DIFFICULTY_LEVELS = {"easy": 0.2, "medium": 0.5, "hard": 0.8}
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def difficulty_level(difficulty: Union[str, float]) -> float:
    """easy / medium / hard or a number in [0, 1] -> a float in [0, 1]; ValueError otherwise."""
    if isinstance(difficulty, str) and difficulty.strip().lower() in DIFFICULTY_LEVELS:
        return DIFFICULTY_LEVELS[difficulty.strip().lower()]
    try:
        level = float(difficulty)
    except (TypeError, ValueError):
        level = -1.0
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"difficulty must be easy, medium, hard or a number in [0, 1], got {difficulty!r}")
    return level


@dataclass(frozen=True)
class SyntheticSettings:
    """Generator settings; all of them (and the version) go into meta.json."""

    n_train_per_class: int = 40
    n_val_per_class: int = 10
    n_test_per_class: int = 25
    image_size: int = 32
    difficulty: str = "medium"
    seed: int = 0
    multi_label_rate: float = 0.25

    def meta(self) -> dict:
        return {"version": GENERATOR_VERSION, **asdict(self), "level": difficulty_level(self.difficulty), "classes": list(CLASSNAMES)}


def _texture(name: str, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A pattern in [-1, 1] of shape [S, S]."""
    ph = rng.uniform(0, 2 * np.pi)
    f = rng.uniform(3.0, 5.0)
    if name == "dots":
        return np.clip(2 * np.cos(2 * np.pi * f * xx + ph) * np.cos(2 * np.pi * f * yy + ph) - 0.5, -1, 1)
    if name == "diagonal":
        return np.sign(np.sin(2 * np.pi * f * (xx + yy) + ph))
    if name == "radial":
        cy, cx = rng.uniform(0.3, 0.7, size=2)
        return np.cos(2 * np.pi * f * 0.6 * np.hypot(yy - cy, xx - cx) + ph)
    if name == "hstripes":
        return np.sin(2 * np.pi * f * 0.6 * yy + ph)
    if name == "vstripes":
        return np.sin(2 * np.pi * f * xx + ph)
    if name == "checker":
        return np.sign(np.sin(2 * np.pi * f * xx + ph) * np.sin(2 * np.pi * f * yy))
    if name == "chevron":
        return np.sign(np.sin(2 * np.pi * f * (yy + 0.5 * np.abs(((xx * f) % 1.0) - 0.5)) + ph))
    # speckle: blotchy low-resolution noise
    g = rng.uniform(-1, 1, size=(6, 6))
    n = yy.shape[0]
    idx = np.minimum((np.arange(n) * 6) // n, 5)
    return g[np.ix_(idx, idx)]


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> List[Tuple[float, float]]:
    """Vertices of a polygonal shape centred at (cx, cy) with radius r."""
    if shape == "star":
        angles = rot + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    elif shape == "cross":
        w = 0.35 * r
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
        c, s = np.cos(rot), np.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    elif shape == "bar":
        return [(cx - 0.3 * r, cy - 1.2 * r), (cx + 0.3 * r, cy - 1.2 * r), (cx + 0.3 * r, cy + 1.2 * r), (cx - 0.3 * r, cy + 1.2 * r)]
    elif shape == "diamond":
        return [(cx, cy - 1.3 * r), (cx + 0.7 * r, cy), (cx, cy + 1.3 * r), (cx - 0.7 * r, cy)]
    else:  # triangle (3) / square (4)
        k = 3 if shape == "triangle" else 4
        angles = rot + np.arange(k) * 2 * np.pi / k
        radii = np.full(k, r)
    return [(cx + rr * np.cos(a), cy + rr * np.sin(a)) for rr, a in zip(radii, angles)]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, rot: float, color: tuple) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, width=max(1, int(r / 3)))
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rot), fill=color)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h / 360.0) % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))))


def render(primary: int, blend: int, w: float, size: int, level: float, rng: np.random.Generator,
           cues: Union[dict, None] = None) -> np.ndarray:
    """One image, uint8 [size, size, 3]. ``blend`` = -1 for none, else a second class at weight ``w``.

    ``cues``, when given, is filled with what was actually drawn (the same random draws either way):
    ``background`` (RGB in 0..1), ``texture`` (name), ``shapes`` (list of ``(shape, count, RGB)``),
    ``distractors`` (count), ``lighting`` (factor). Used to caption images (``tools/pretrain_tiny_clip.py``).
    """
    n_cls = len(CLASSNAMES)
    share = 0.3 * level
    hue_j, sv_j = 4 + 20 * level, 0.03 + 0.1 * level

    def source() -> int:  # class a cue comes from
        if rng.random() < share:
            return int(rng.integers(n_cls))
        if blend >= 0 and rng.random() < w:
            return blend
        return primary

    def profile_color(c: int) -> np.ndarray:
        h, s, v = PROFILES[CLASSNAMES[c]][:3]
        return _hsv(h + rng.normal(0, hue_j), s + rng.normal(0, sv_j), v + rng.normal(0, sv_j))

    color = profile_color(source())
    if blend >= 0:
        color = (1 - w) * color + w * profile_color(blend)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    texture = PROFILES[CLASSNAMES[source()]][3]
    pattern = _texture(texture, yy, xx, rng)
    drawn: list = []
    amp = rng.uniform(0.15, 0.3)
    img = np.clip(color[None, None, :] * (1 + amp * pattern[..., None]), 0, 1)

    pil = Image.fromarray((img * 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    shape_classes = [source()] + ([blend] if blend >= 0 else [])
    for c in shape_classes:
        h, s, v, _, shape, count = PROFILES[CLASSNAMES[c]]
        count = max(1, count + int(rng.integers(-1, 2)))
        for _ in range(count if c != blend else 1):
            r = size * (rng.uniform(0.28, 0.38) if count == 1 else rng.uniform(0.12, 0.2))
            cx, cy = rng.uniform(r, size - r, size=2) if count > 1 else rng.uniform(0.4, 0.6, size=2) * size
            sv = v - 0.45 if v > 0.5 else v + 0.45
            fg = _hsv(h + rng.normal(0, hue_j), s + rng.normal(0, sv_j), sv + rng.normal(0, sv_j))
            _draw_shape(draw, shape, cx, cy, r, rng.uniform(0, 2 * np.pi), tuple(int(x) for x in (fg * 255)))
        drawn.append((shape, count if c != blend else 1, fg))
    n_distractors = int(rng.integers(0, round(4 * level) + 1))
    for _ in range(n_distractors):  # distractors
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        r = size * rng.uniform(0.08, 0.16)
        fg = _hsv(rng.uniform(0, 360), rng.uniform(0.2, 1), rng.uniform(0.1, 1))
        _draw_shape(draw, shape, *rng.uniform(0, size, size=2), r, rng.uniform(0, 2 * np.pi), tuple(int(x) for x in fg * 255))
    out = np.asarray(pil, dtype=np.float64) / 255.0
    light = rng.uniform(1 - 0.25 * level, 1 + 0.25 * level)
    out = out * light  # lighting
    out = out + rng.normal(0, 0.02 + 0.1 * level, size=out.shape)
    if cues is not None:
        cues.update(background=tuple(float(x) for x in color), texture=texture, shapes=drawn,
                    distractors=n_distractors, lighting=float(light))
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def targets(primary: int, blend: int, w: float, rng: np.random.Generator) -> Tuple[np.ndarray, Tuple[float, float]]:
    """Soft-vote distribution [C] (argmax = primary) and (valence, arousal) mixed by it, plus noise."""
    n_cls = len(CLASSNAMES)
    base = np.zeros(n_cls)
    base[primary] = 1 - (w if blend >= 0 else 0)
    if blend >= 0:
        base[blend] = w
    mass = rng.uniform(0.03, 0.1) if blend >= 0 else rng.uniform(0.05, 0.3)  # < 1/6 keeps argmax = primary
    dist = (1 - mass) * base + mass * rng.dirichlet(np.full(n_cls, 0.5))
    dist = np.round(dist, 6)
    dist[primary] += 1.0 - dist.sum()
    va_cls = np.array([CLASS_VA[c] for c in CLASSNAMES])
    va = np.clip(dist @ va_cls + rng.normal(0, 0.25, size=2), 1.0, 9.0)
    return dist, (round(float(va[0]), 4), round(float(va[1]), 4))


def write_synthetic(out_dir: str, settings: SyntheticSettings) -> Dict[str, int]:
    """Generate the dataset into ``out_dir`` (created); returns image counts per split."""
    level = difficulty_level(settings.difficulty)
    counts = {"train": settings.n_train_per_class, "val": settings.n_val_per_class, "test": settings.n_test_per_class}
    n_cls = len(CLASSNAMES)
    rows: List[list] = []
    from utils.progress import progress

    bar = progress(total=sum(counts.values()) * n_cls, desc="generating synthetic images", unit="img")
    for split, per_class in counts.items():
        os.makedirs(os.path.join(out_dir, "images", split), exist_ok=True)
        for k in range(per_class * n_cls):
            bar.update()
            primary = k % n_cls
            rng = np.random.default_rng([GENERATOR_VERSION, settings.seed, SPLIT_CODES[split], k])
            blend, w = -1, 0.0
            if rng.random() < settings.multi_label_rate:
                blend = int((primary + rng.integers(1, n_cls)) % n_cls)
                w = float(rng.uniform(0.25, 0.4))
            img = render(primary, blend, w, settings.image_size, level, rng)
            dist, va = targets(primary, blend, w, rng)
            rel = f"images/{split}/{split}_{k:05d}.png"
            Image.fromarray(img).save(os.path.join(out_dir, rel), format="PNG")
            names = [CLASSNAMES[primary]] + ([CLASSNAMES[blend]] if blend >= 0 else [])
            rows.append([rel, split, CLASSNAMES[primary], "_".join(names)] + [f"{p:.6f}" for p in dist] + [va[0], va[1]])
    bar.close()
    header = ["path", "split", "label", "labels"] + [f"dist_{c}" for c in CLASSNAMES] + ["valence", "arousal"]
    with open(os.path.join(out_dir, "annotations.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    with open(os.path.join(out_dir, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(CLASSNAMES) + "\n")
    with open(os.path.join(out_dir, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(settings.meta(), f, indent=1, sort_keys=True)
    logger.info("synthetic emotion data written to %s (%s, difficulty %s)", out_dir, counts, settings.difficulty)
    return {s: n * n_cls for s, n in counts.items()}
