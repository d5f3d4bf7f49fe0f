"""Build a VEGA anchor file from emotion images with the project's CLIP image encoder.

    python tools/build_anchors.py --image-dir anchor/35_anchor --output anchor/35_anchor.pt
    python tools/build_anchors.py --image-list data/synthetic_emotion/annotations.csv --split train \\
        --classes happy sad neutral anger excited frustration \\
        --map happy=amusement sad=sadness neutral=contentment anger=anger excited=excitement frustration=disgust \\
        --output data/anchors/synthetic_anchor.pt

Images: ``--image-dir DIR`` holds one folder per class (``DIR/<class>/*.png``); ``--image-list FILE``
is a CSV with a header naming ``path`` and ``label`` columns (optionally ``split``, filtered by
``--split``), or lines ``<path> <class>``; relative paths start at the list's folder.
``--classes`` fixes the anchor classes and their order (default: the classes found);
``--map TARGET=SOURCE`` gives class TARGET the images of class SOURCE.
Every image is resized (shorter side) and centre-cropped to the backbone's resolution and
normalised; its feature is the L2-normalised CLIP image embedding. A class centre is the mean
of its features. Output: ``{"anchor_center": [C, D], "anchor_img_dict": {class: {"feature": [N, D]}}}``.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import random
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.errors import ConfigError, DatasetError, EmoLabError  # noqa: E402
from datasets.loader import read_image  # noqa: E402
from datasets.transforms import TransformSettings, compose  # noqa: E402
from trainers.components.anchors import AnchorSet, anchors_from_features, save_anchors  # noqa: E402

logger = logging.getLogger("build_anchors")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def images_from_dir(image_dir: str) -> Dict[str, List[str]]:
    """``{class: sorted image paths}`` of ``image_dir/<class>/*`` (classes sorted)."""
    if not os.path.isdir(image_dir):
        raise DatasetError(f"image folder not found: {image_dir}")
    out: Dict[str, List[str]] = OrderedDict()
    for cname in sorted(e.name for e in os.scandir(image_dir) if e.is_dir() and not e.name.startswith(".")):
        folder = os.path.join(image_dir, cname)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        if files:
            out[cname] = [os.path.join(folder, f) for f in files]
    if not out:
        raise DatasetError(f"no class folders with images in {image_dir}")
    return out


def images_from_list(list_file: str, split: str = "") -> Dict[str, List[str]]:
    """``{class: image paths}`` (classes in order of first appearance) from a CSV or ``<path> <class>`` lines."""
    if not os.path.isfile(list_file):
        raise DatasetError(f"image list not found: {list_file}")
    base = os.path.dirname(os.path.abspath(list_file))
    with open(list_file, encoding="utf-8", newline="") as f:
        text = f.read()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise DatasetError(f"image list {list_file} is empty")
    rows = list(csv.reader(lines)) if "," in lines[0] else [ln.split() for ln in lines]
    header = [h.strip().lower() for h in rows[0]]
    if "path" in header and "label" in header:
        ip, il = header.index("path"), header.index("label")
        isp = header.index("split") if "split" in header else None
        if split and isp is None:
            raise DatasetError(f"--split {split} given but {list_file} has no split column")
        body = [r for r in rows[1:] if not split or r[isp].strip() == split]
    else:
        if split:
            raise DatasetError(f"--split needs a CSV list with a header (path, label, split): {list_file}")
        ip, il, body = 0, 1, rows
    out: Dict[str, List[str]] = OrderedDict()
    for n, r in enumerate(body, 1):
        if len(r) <= max(ip, il):
            raise DatasetError(f"{list_file}: row {n} {r!r} has no path and class")
        path = r[ip].strip()
        out.setdefault(r[il].strip(), []).append(path if os.path.isabs(path) else os.path.join(base, path))
    if not out:
        raise DatasetError(f"no images listed in {list_file}" + (f" for split {split}" if split else ""))
    return out


def parse_map(pairs: Sequence[str]) -> Dict[str, str]:
    """``["happy=amusement"] -> {"happy": "amusement"}``."""
    out: Dict[str, str] = {}
    for p in pairs:
        target, sep, source = p.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise ConfigError(f"bad --map {p!r} (expected TARGET=SOURCE)")
        out[target.strip()] = source.strip()
    return out


def assign_classes(
    found: Dict[str, List[str]], classes: Sequence[str] = (), mapping: Optional[Dict[str, str]] = None,
    max_per_class: int = 0, seed: int = 0,
) -> Dict[str, List[str]]:
    """``{anchor class: image paths}`` in anchor-class order (see the module docstring)."""
    mapping = mapping or {}
    targets = list(classes) or list(found)
    if len(set(targets)) != len(targets):
        raise ConfigError(f"--classes lists a class twice: {targets}")
    unknown = [t for t in mapping if t not in targets]
    if unknown:
        raise ConfigError(f"--map targets {unknown} are not anchor classes {targets}")
    out: Dict[str, List[str]] = OrderedDict()
    for t in targets:
        src = mapping.get(t, t)
        if src not in found:
            raise DatasetError(f"no images for anchor class {t!r}" + (f" (mapped to {src!r})" if src != t else "") +
                               f"; image classes: {', '.join(found)}")
        paths = list(found[src])
        if max_per_class > 0 and len(paths) > max_per_class:
            paths = sorted(random.Random(f"anchors-{seed}-{t}").sample(paths, max_per_class))
        out[t] = paths
    return out


@torch.no_grad()
def encode_images(clip, paths: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """L2-normalised CLIP image features [N, E] of the images at ``paths``."""
    size = clip.image_size
    settings = TransformSettings(size=(size, size), interpolation="bicubic", mean=clip.mean, std=clip.std)
    tfm = compose(["center_crop", "normalize"], settings)
    feats = []
    for s in range(0, len(paths), batch_size):
        x = torch.stack([tfm(read_image(p)) for p in paths[s:s + batch_size]]).to(clip.device)
        feats.append(F.normalize(clip.encode_image(x).float(), dim=-1).cpu())
    return torch.cat(feats)


def build_anchor_set(clip, images: Dict[str, List[str]], batch_size: int = 64) -> AnchorSet:
    """Encode each class's images and return the anchors (centre = mean feature)."""
    return anchors_from_features(OrderedDict((c, encode_images(clip, p, batch_size)) for c, p in images.items()))


def main(argv: Optional[List[str]] = None) -> int:
    from utils.cli import run_tool

    return run_tool(_main, argv)


def _main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--image-dir", help="folder with one subfolder of images per class")
    src.add_argument("--image-list", help="CSV (path,label[,split] header) or '<path> <class>' lines")
    ap.add_argument("--split", default="", help="with a CSV list: use only rows of this split (e.g. train)")
    ap.add_argument("--output", required=True, help="anchor file to write (.pt)")
    ap.add_argument("--force", action="store_true", help="replace an existing --output that is not an anchor file")
    ap.add_argument("--classes", nargs="+", default=[], help="anchor classes in dataset label order (default: those found)")
    ap.add_argument("--map", nargs="+", default=[], metavar="TARGET=SOURCE",
                    help="anchor class TARGET uses images of class SOURCE")
    ap.add_argument("--backbone", default="emolab-tiny-vit", help="CLIP architecture (default: emolab-tiny-vit)")
    ap.add_argument("--pretrained", default="",
                    help="weights: '' = shipped weights of project models, else OpenAI's (local caches or a "
                         "download; see README), a file, an open_clip tag, or 'random'")
    ap.add_argument("--max-per-class", type=int, default=0, help="use at most N images per class (seeded sample; 0 = all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of --max-per-class sampling")
    ap.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from utils.cli import check_overwrite

    def is_anchor_file(path: str) -> bool:
        from trainers.components.anchors import load_anchors

        load_anchors(path)
        return True

    check_overwrite(args.output, args.force, is_anchor_file)
    try:
        from trainers.clip_prompting.base import load_configured_clip

        found = images_from_dir(args.image_dir) if args.image_dir else images_from_list(args.image_list, args.split)
        images = assign_classes(found, args.classes, parse_map(args.map), args.max_per_class, args.seed)
        clip = load_configured_clip(args.backbone, args.pretrained, torch.device(args.device)).eval()
        anchors = build_anchor_set(clip, images, args.batch_size)
        save_anchors(anchors, args.output)
    except EmoLabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    c = F.normalize(anchors.centers, dim=-1)
    off_diag = (c @ c.t())[~torch.eye(len(c), dtype=torch.bool)]
    logger.info(f"wrote {args.output}: {len(anchors.classnames)} classes, {anchors.dim}-d CLIP {args.backbone} features")
    for name, ex in zip(anchors.classnames, anchors.exemplars):
        logger.info(f"  {name}: {ex.shape[0]} images")
    if len(off_diag):
        logger.info(f"cosine between class centres: mean {off_diag.mean():.3f}, max {off_diag.max():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
