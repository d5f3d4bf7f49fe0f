"""Generate the synthetic emotion dataset (and optionally measure how hard it is).

    python tools/make_synthetic.py --root data [--difficulty medium] [--seed 0] [--probe]
    python tools/make_synthetic.py --root data --format emotion6 [--dir Emotion6]

Without ``--format`` (or with ``--format synthetic``) it writes ``<root>/synthetic_emotion/``
exactly as ``SyntheticEmotion`` would (same settings -> same files). ``--probe`` fits a logistic
regression on raw downsampled pixels (train) and reports its test accuracy: a linear probe
should stay clearly below 100%.

``--format`` emotion6 | folders | sentiment_folders | class_folders | ldl | ldl_images | emoset |
emotion_csv writes the same kind of images in a public dataset's own layout into
``<root>/<dir>`` (default dir: Emotion6, FI, Flickr, UBE, FlickrLDL, TwitterLDL, EmoSet-118K,
Dongba), ready for the matching config in configs/datasets/ (see docs/DATASETS.md). The
per-class counts are those of --n-train / --n-val / --n-test (summed for unsplit formats).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import List, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.errors import EmoLabError  # noqa: E402
from datasets.synthetic.images import SyntheticSettings  # noqa: E402
from datasets.synthetic.emotion import DATASET_DIR, ensure_synthetic, load_synthetic  # noqa: E402
from datasets.synthetic.native import DEFAULT_DIRS, FORMATS, NativeSettings, write_native  # noqa: E402

logger = logging.getLogger("make_synthetic")


def _pixels(paths: Sequence[str], size: int) -> np.ndarray:
    """[N, size*size*3] float features in [0, 1] (bilinear downsampling)."""
    from PIL import Image

    feats = []
    for p in paths:
        with Image.open(p) as im:
            feats.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32).ravel() / 255.0)
    return np.stack(feats)


def probe_accuracy(dataset_dir: str, size: int = 16) -> float:
    """Test accuracy of a logistic regression on raw ``size`` x ``size`` pixels of the train split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    ds = load_synthetic(dataset_dir)
    x_tr = _pixels([d.impath for d in ds.train_x + ds.val], size)
    y_tr = np.array([d.label for d in ds.train_x + ds.val])
    x_te = _pixels([d.impath for d in ds.test], size)
    y_te = np.array([d.label for d in ds.test])
    scaler = StandardScaler().fit(x_tr)
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(scaler.transform(x_tr), y_tr)
    return float((clf.predict(scaler.transform(x_te)) == y_te).mean())


def write_format(args: argparse.Namespace) -> int:
    """Write ``--format`` data into ``<root>/<dir>``; refuses a non-empty target folder."""
    out = os.path.join(args.root, args.dir or DEFAULT_DIRS[args.format])
    if os.path.isdir(out) and os.listdir(out):
        print(f"error: {out} exists and is not empty; remove it or choose another --root / --dir", file=sys.stderr)
        return 2
    settings = NativeSettings(
        n_train_per_class=args.n_train, n_val_per_class=args.n_val, n_test_per_class=args.n_test,
        image_size=args.image_size, difficulty=str(args.difficulty), seed=args.seed,
    )
    try:
        t0 = time.perf_counter()
        records = write_native(out, args.format, settings)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logger.info("%s data written to %s: %d images (%.2fs)", args.format, out, len(records), time.perf_counter() - t0)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from utils.cli import run_tool

    return run_tool(_main, argv)


def _main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, help="DATASET.ROOT; data goes to <root>/synthetic_emotion")
    d = SyntheticSettings()
    ap.add_argument("--n-train", type=int, default=d.n_train_per_class, help="training images per class")
    ap.add_argument("--n-val", type=int, default=d.n_val_per_class, help="validation images per class")
    ap.add_argument("--n-test", type=int, default=d.n_test_per_class, help="test images per class")
    ap.add_argument("--image-size", type=int, default=d.image_size, help="image side in pixels")
    ap.add_argument("--difficulty", default=d.difficulty, help="easy | medium | hard | a number in [0, 1]")
    ap.add_argument("--seed", type=int, default=d.seed, help="generator seed")
    ap.add_argument("--multi-label-rate", type=float, default=d.multi_label_rate, help="share of images blending two emotions")
    ap.add_argument("--probe", action="store_true", help="report a pixel logistic-regression probe's test accuracy")
    ap.add_argument("--format", default="synthetic", choices=("synthetic",) + FORMATS,
                    help="synthetic (SyntheticEmotion's own layout) or a public dataset's on-disk layout")
    ap.add_argument("--dir", default="", help="folder under --root for --format other than synthetic (default per format)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.format != "synthetic":
        return write_format(args)
    settings = SyntheticSettings(
        n_train_per_class=args.n_train, n_val_per_class=args.n_val, n_test_per_class=args.n_test,
        image_size=args.image_size, difficulty=str(args.difficulty), seed=args.seed, multi_label_rate=args.multi_label_rate,
    )
    try:
        t0 = time.perf_counter()
        out = ensure_synthetic(args.root, settings)
        logger.info("dataset ready at %s (%.2fs)", out, time.perf_counter() - t0)
        if args.probe:
            acc = probe_accuracy(os.path.join(args.root, DATASET_DIR))
            logger.info("pixel logistic-regression probe: test accuracy %.1f%%", 100 * acc)
    except (EmoLabError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
