"""The quick-start demo: zero-shot CLIP, linear probe, CoOp and CoCoOp on the synthetic emotion data.

    python tools/demo.py [--seeds 1 2] [--output-root output/demo] [--root data]

Everything runs on the CPU with the project's tiny CLIP (``emolab-tiny-vit``, pre-trained by
``tools/pretrain_tiny_clip.py`` on synthetic image-caption pairs generated with another seed).
The synthetic data (8 emotions, 40 train / 10 val / 25 test images per class) is generated on
first use. Each run is a separate ``train.py`` process driven by ``tools/sweep.py``; finished
runs are skipped when the demo is run again. The table comes from ``tools/parse_results.py``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = "configs/datasets/synthetic_emotion.yaml"
#: (trainer, config, shots)
RUNS = [
    ("ZeroshotCLIP", "configs/trainers/ZeroshotCLIP/tiny_synthetic.yaml", ["-1"]),
    ("LinearProbeCLIP", "configs/trainers/LinearProbeCLIP/tiny_synthetic.yaml", ["-1"]),
    ("CoOp", "configs/trainers/CoOp/tiny_synthetic.yaml", ["4", "-1"]),
    ("CoCoOp", "configs/trainers/CoCoOp/tiny_synthetic.yaml", ["-1"]),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", nargs="+", default=["1", "2"])
    p.add_argument("--output-root", default="output/demo")
    p.add_argument("--root", default="data")
    args = p.parse_args(argv)
    os.chdir(REPO)
    t0 = time.time()
    failed = 0
    for trainer, cfg, shots in RUNS:
        print(f"== {trainer} ({cfg}, shots {' '.join(shots)}, seeds {' '.join(args.seeds)})", flush=True)
        cmd = [sys.executable, "tools/sweep.py", "--trainer", trainer, "--dataset-config-file", DATASET,
               "--config-file", cfg, "--root", args.root, "--output-root", args.output_root,
               "--seeds", *args.seeds, "--shots", *shots]
        failed += subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0
    print(f"\nResults on the synthetic test split (8 classes, 200 images; chance accuracy 12.5%),"
          f" mean ± std over seeds {', '.join(args.seeds)} ({time.time() - t0:.0f}s):\n", flush=True)
    table = subprocess.run([sys.executable, "tools/parse_results.py", args.output_root,
                            "--metric", "accuracy", "--metric", "macro_f1"])
    return 1 if failed or table.returncode else 0


if __name__ == "__main__":
    sys.exit(main())
