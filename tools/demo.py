"""The quick-start demo: zero-shot CLIP, a linear probe, CoOp and CoCoOp on the synthetic emotion data.

    python tools/demo.py [--seeds 1 2] [--shots 1 4 16 -1] [--output-root output/demo] [--root data]

Everything runs on the CPU with the project's tiny CLIP (``emolab-tiny-vit``, pre-trained by
``tools/pretrain_tiny_clip.py`` on captions that describe the scene, shapes and colours of
synthetic images generated with another seed; emotion words are rare in them). The synthetic data
(8 emotions, 40 train / 10 val / 25 test images per class) is generated on first use.

It shows two protocols of the CoOp / CoCoOp papers:

1. **few-shot**: each method trained on 1, 4 and 16 images per class and on all 40 (zero-shot CLIP
   needs none), tested on all 8 classes;
2. **base-to-new** (CoCoOp): prompts learnt on the 4 base classes (16 shots), tested on the base
   classes and on the 4 new classes never seen in training (``DATASET.SUBSAMPLE_CLASSES base|new``);
   HM = harmonic mean of the base and new accuracies.

Each run is ``train.py`` called in this process (one import of torch for all runs; the frozen
image features are cached once and shared), writing the usual run folder
``<output-root>/SyntheticEmotion/<Trainer>/<config>_<shots>shots/<tag>/seed<k>`` (logs, metrics,
plots). Finished runs are skipped when the demo is run again. At the end it prints the tables and
draws ``<output-root>/fewshot.png`` and ``<output-root>/base_to_new.png`` with
``tools/plot_results.py``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
DATASET = "configs/datasets/synthetic_emotion.yaml"
DATASET_NAME = "SyntheticEmotion"
TEMPLATE = "a photo that evokes {}."
#: trainer -> (config file, how the table names it)
METHODS = {
    "ZeroshotCLIP": ("configs/trainers/ZeroshotCLIP/tiny_synthetic.yaml", f'Zero-shot CLIP (prompt "{TEMPLATE}")'),
    "LinearProbeCLIP": ("configs/trainers/LinearProbeCLIP/tiny_synthetic.yaml", "Linear probe on CLIP image features"),
    "CoOp": ("configs/trainers/CoOp/tiny_synthetic.yaml", "CoOp (4 learnt context tokens)"),
    "CoCoOp": ("configs/trainers/CoCoOp/tiny_synthetic.yaml", "CoCoOp (4 context tokens + meta-net)"),
}
BASE_TO_NEW = ("ZeroshotCLIP", "CoOp", "CoCoOp")
BASE_TO_NEW_SHOTS = 16


class Run:
    """One ``train.py`` run of the demo."""

    def __init__(self, trainer: str, shots: int, seed: int, classes: str = "all", root: str = "output/demo",
                 data_root: str = "data", eval_from: Optional["Run"] = None) -> None:
        self.trainer, self.shots, self.seed, self.classes = trainer, shots, seed, classes
        self.config = METHODS[trainer][0]
        cfg_name = os.path.splitext(os.path.basename(self.config))[0]
        shots_dir = f"{cfg_name}_{'all' if shots < 0 else shots}shots"
        tag = "default" if classes == "all" else f"subsample_classes-{classes}"
        self.output_dir = os.path.join(root, DATASET_NAME, trainer, shots_dir, tag, f"seed{seed}")
        self.data_root = data_root
        self.eval_from = eval_from  # evaluate the model trained by that run (base -> new)

    def argv(self) -> List[str]:
        args = ["--root", self.data_root, "--seed", str(self.seed), "--trainer", self.trainer,
                "--dataset-config-file", DATASET, "--config-file", self.config, "--output-dir", self.output_dir]
        if self.eval_from is not None and self.trainer != "ZeroshotCLIP":
            args += ["--eval-only", "--model-dir", self.eval_from.output_dir]
        opts = ["DATASET.NUM_SHOTS", str(self.shots), "DATASET.SUBSAMPLE_CLASSES", self.classes]
        return args + opts

    def label(self) -> str:
        shots = shots_label(0 if self.trainer == "ZeroshotCLIP" else self.shots)
        what = "" if self.classes == "all" else f", {self.classes} classes"
        return f"{self.trainer}, {shots}{what}, seed {self.seed}"


def plan(seeds: Sequence[int], shots: Sequence[int], root: str, data_root: str) -> List[Run]:
    runs: List[Run] = []
    for seed in seeds:
        runs.append(Run("ZeroshotCLIP", -1, seed, root=root, data_root=data_root))
    for trainer in ("LinearProbeCLIP", "CoOp", "CoCoOp"):
        for k in shots:
            for seed in seeds:
                runs.append(Run(trainer, k, seed, root=root, data_root=data_root))
    for trainer in BASE_TO_NEW:
        for seed in seeds:
            k = -1 if trainer == "ZeroshotCLIP" else BASE_TO_NEW_SHOTS
            base = Run(trainer, k, seed, "base", root, data_root)
            runs += [base, Run(trainer, k, seed, "new", root, data_root, eval_from=base)]
    return runs


def final_result(output_dir: str) -> Optional[Dict[str, float]]:
    from tools.parse_results import read_metrics_jsonl

    path = os.path.join(output_dir, "metrics.jsonl")
    return read_metrics_jsonl(path, "test") if os.path.isfile(path) else None


def run_one(run: Run) -> Tuple[int, str]:
    """Run ``train.py`` in this process with its console output captured (it still goes to log.txt)."""
    import train

    buf_out, buf_err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        try:
            code = train.main(run.argv())
        except SystemExit as e:  # argparse
            code = int(e.code or 0)
        except Exception as e:  # noqa: BLE001 - one failed run must not stop the demo
            code, _ = 1, print(f"{type(e).__name__}: {e}", file=buf_err)
    err = buf_err.getvalue().strip().splitlines()
    return code, err[-1] if err else ""


def mean_std(values: List[float]) -> Tuple[float, float]:
    from tools.parse_results import summarize

    m, s, _ = summarize(values)
    return m, s


def fmt(values: List[float]) -> str:
    if not values:
        return "-"
    m, s = mean_std(values)
    return f"{m:.1f} ± {s:.1f}"


def shots_label(k: int) -> str:
    return "all shots (40)" if k < 0 else "1 shot" if k == 1 else f"{k} shots"


def fewshot_table(runs: List[Run], shots: Sequence[int]) -> str:
    cols = ["0"] + [str(k) for k in shots]
    lines = ["| method | " + " | ".join(shots_label(int(c)) for c in cols) + " |",
             "|---|" + "--:|" * len(cols)]
    for trainer, (_, name) in METHODS.items():
        cells = []
        for c in cols:
            k = int(c)
            vals = [r.result["accuracy"] for r in runs if r.trainer == trainer and r.classes == "all"
                    and getattr(r, "result", None) and (trainer == "ZeroshotCLIP") == (k == 0)
                    and (trainer == "ZeroshotCLIP" or r.shots == k)]
            cells.append(fmt(vals))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def base_to_new_table(runs: List[Run]) -> str:
    lines = ["| method | base accuracy | new accuracy | HM |", "|---|--:|--:|--:|"]
    for trainer in BASE_TO_NEW:
        acc = {}
        for classes in ("base", "new"):
            acc[classes] = [r.result["accuracy"] for r in runs
                            if r.trainer == trainer and r.classes == classes and getattr(r, "result", None)]
        if not acc["base"] or not acc["new"]:
            continue
        b, n = mean_std(acc["base"])[0], mean_std(acc["new"])[0]
        hm = 2 * b * n / (b + n) if b + n > 0 else 0.0
        shots = "" if trainer == "ZeroshotCLIP" else f", {BASE_TO_NEW_SHOTS} shots on base"
        lines.append(f"| {METHODS[trainer][1].split(' (')[0]}{shots} | {fmt(acc['base'])} | {fmt(acc['new'])} | {hm:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    p.add_argument("--shots", nargs="+", type=int, default=[1, 4, 16, -1], help="-1 = all 40 per class")
    p.add_argument("--output-root", default="output/demo")
    p.add_argument("--root", default="data")
    args = p.parse_args(argv)
    os.chdir(REPO)
    os.environ.setdefault("EMOLAB_PROGRESS", "0")  # the runs' own bars would fight the demo's
    t0 = time.time()
    runs = plan(args.seeds, args.shots, args.output_root, args.root)
    print(f"EmoLab demo: {len(runs)} runs (zero-shot CLIP, linear probe, CoOp, CoCoOp; "
          f"{', '.join(shots_label(k) for k in args.shots)}; seeds {', '.join(map(str, args.seeds))}; then base-to-new). "
          f"Each run's log, metrics and plots: {args.output_root}/", flush=True)
    bar = None
    try:
        from tqdm import tqdm

        if sys.stderr.isatty():
            bar = tqdm(total=len(runs), unit="run", dynamic_ncols=True)
    except ImportError:
        pass
    failed = 0
    for i, run in enumerate(runs, 1):
        if bar is not None:
            bar.set_description(run.label())
        t = time.time()
        run.result = final_result(run.output_dir)
        status = "done before"
        if run.result is None:
            code, err = run_one(run)
            run.result = final_result(run.output_dir)
            status = f"{time.time() - t:.0f}s"
            if code != 0 or run.result is None:
                failed += 1
                status = f"FAILED (exit {code}: {err}); see {run.output_dir}/log.txt"
        acc = f"accuracy {run.result['accuracy']:.1f}" if run.result else ""
        line = f"[{i:2d}/{len(runs)}] {run.label():48s} {acc:15s} ({status})"
        if bar is not None:
            bar.write(line)
            bar.update()
        else:
            print(line, flush=True)
    if bar is not None:
        bar.close()
    elapsed = time.time() - t0
    print(f"\nFew-shot: test accuracy (%) on all 8 classes (200 images, chance 12.5%), mean ± std over seeds "
          f"{', '.join(map(str, args.seeds))} (sample std, ddof=1):\n")
    print(fewshot_table(runs, args.shots))
    print("\nBase-to-new: prompts learnt on the 4 base classes, tested on the base classes and on the 4 new ones "
          "(100 test images each; chance 25%); HM = harmonic mean of the mean base and new accuracies:\n")
    print(base_to_new_table(runs))
    from tools import plot_results

    with contextlib.redirect_stdout(io.StringIO()):
        figs = plot_results.main([args.output_root, "--out", args.output_root])
    print(f"\nFigures: {args.output_root}/fewshot.png, {args.output_root}/base_to_new.png; "
          f"per-run plots in each run's plots/ folder. Total time {elapsed:.0f}s.")
    return 1 if failed or figs else 0


if __name__ == "__main__":
    sys.exit(main())
