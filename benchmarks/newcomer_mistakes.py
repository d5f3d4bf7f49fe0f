"""Plausible newcomer mistakes with ``train.py``: each must stop with one line naming the fix, before
anything it does not need is built. ``tests/test_newcomer.py`` checks every row (exit code, one line,
the words, and that torch was never imported where the row says so); run this file to measure the
CPU seconds from the start of the command to its error:

    python benchmarks/newcomer_mistakes.py [--markdown]

Each row runs ``train.py`` in a fresh Python process (``python -c`` around ``train.cli()``, which also
records whether torch was imported); the time is ``getrusage(RUSAGE_CHILDREN)`` user + system
around that process. ``{run}`` is a finished two-epoch CoOp run on the small synthetic data made
once (``prepare``), ``{data}`` its dataset root, ``{tmp}`` a fresh folder.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COOP = os.path.join(ROOT, "configs/trainers/CoOp/tiny_synthetic.yaml")
SYN = os.path.join(ROOT, "configs/datasets/synthetic_emotion.yaml")
SMALL = ["DATASET.SYNTHETIC.N_TRAIN_PER_CLASS", "4", "DATASET.SYNTHETIC.N_VAL_PER_CLASS", "2",
         "DATASET.SYNTHETIC.N_TEST_PER_CLASS", "3"]

#: (id, what the newcomer did, argv, words the one line must contain, torch-free, hide modules)
MISTAKES: List[Tuple[str, str, List[str], Tuple[str, ...], bool, Tuple[str, ...]]] = [
    ("trainer-typo", "trainer name in the wrong case", ["--trainer", "CoOP"], ("did you mean 'CoOp'",), True, ()),
    ("dataset-typo", "dataset name misspelt", ["DATASET.NAME", "FII"], ("did you mean 'FI'",), True, ()),
    ("key-typo", "config key misspelt", ["OPTIM.LRR", "0.1"], ("did you mean 'OPTIM.LR'",), True, ()),
    ("value-type", "a word where a number goes", ["OPTIM.MAX_EPOCH", "ten"], ("expects int",), True, ()),
    ("zero-epochs", "no epoch to train", ["OPTIM.MAX_EPOCH", "0"], ("OPTIM.MAX_EPOCH", ">= 1"), True, ()),
    ("choice-typo", "a value outside its choices", ["TEST.FINAL_MODEL", "best"], ("TEST.FINAL_MODEL", "did you mean"),
     True, ()),
    ("opts-before-flags", "KEY VALUE pairs before the flags", ["DATASET.NUM_SHOTS", "4", "--trainer", "CoOp"],
     ("put every flag first",), True, ()),
    ("list-typo", "--list with a singular", ["--list", "trainer"], ("invalid choice", "trainers"), True, ()),
    ("flag-typo", "a flag that does not exist", ["--output_dir", "x"], ("unrecognized", "--help"), True, ()),
    ("seed-negative", "a negative seed", ["--seed", "-3"], ("--seed -3", "out of range"), True, ()),
    ("config-missing", "a trainer yaml that is not there", ["--config-file", "configs/trainers/CoOp/tiny.yaml"],
     ("configs/trainers/CoOp/tiny.yaml",), True, ()),
    ("resume-missing", "--resume to a folder that is not there", ["--resume", "/nonexistent/run"],
     ("--resume /nonexistent/run", "not a folder"), True, ()),
    ("model-dir-missing", "--model-dir to a folder that is not there", ["--eval-only", "--model-dir", "/nonexistent/run"],
     ("--model-dir", "does not exist"), True, ()),
    ("eval-without-run", "--eval-only with no run anywhere", ["--eval-only", "--seed", "7"],
     ("no run to evaluate", "--model-dir"), True, ()),
    ("load-epoch-missing", "an epoch that was not saved", ["--eval-only", "--model-dir", "{run}", "--load-epoch", "9"],
     ("checkpoint not found", "saved epochs: 2"), True, ()),
    ("load-epoch-no-eval", "--load-epoch without --eval-only", ["--load-epoch", "2"], ("--eval-only",), True, ()),
    ("model-dir-no-eval", "--model-dir without --eval-only", ["--model-dir", "{run}"], ("--eval-only",), True, ()),
    ("restart-eval", "--restart with --eval-only", ["--eval-only", "--restart"], ("--restart",), True, ()),
    ("require-gpu", "--require-gpu on a machine without a GPU", ["--require-gpu"], ("GPU is required",), True, ()),
    ("decoded-cache-gpu", "a GPU-only cache on a CPU machine", ["DATALOADER.DECODED_CACHE", "gpu"],
     ("needs a CUDA device",), True, ()),
    ("logger-typo", "a tracker name misspelt", ["TRAIN.LOGGERS", '["tensorbord"]'], ("did you mean 'tensorboard'",),
     True, ()),
    ("wandb-missing", "W&B asked for, not installed", ["TRAIN.LOGGERS", '["tensorboard","wandb"]'],
     ("pip install wandb",), True, ("wandb",)),
    ("dataset-root-missing", "--root to a folder that is not there", [
        "--root", "/nonexistent/data", "--dataset-config-file", os.path.join(ROOT, "configs/datasets/fi.yaml")],
     ("dataset folder not found", "/nonexistent/data"), True, ()),
    ("print-config-restart", "--print-config with --restart", ["--print-config", "--restart"], ("--print-config",),
     True, ()),
    ("shots-too-many", "more shots than the data has (needs the data, not the model)", [
        "--root", "{data}", "--output-dir", "{tmp}/shots", "--dataset-config-file", SYN, "--config-file", COOP,
        *SMALL, "DATASET.NUM_SHOTS", "1000"], ("NUM_SHOTS=1000",), False, ()),
    ("checkpoint-misfit", "evaluating a run with a changed prompt length (needs the model)", [
        "--eval-only", "--model-dir", "{run}", "TRAINER.COOP.N_CTX", "8"], ("does not fit", "keys changed from the run's config.yaml: TRAINER.COOP.N_CTX 4 -> 8"), False, ()),
]

PRELUDE = """
import atexit, json, os, sys
for m in {hide!r}:
    sys.modules[m] = None
atexit.register(lambda: open({marker!r}, "w").write(json.dumps({{"torch": "torch" in sys.modules}})))
sys.argv = ["train.py"] + {argv!r}
sys.path.insert(0, {root!r})
import train
sys.exit(train.cli())
"""


def fill(argv: List[str], places: Dict[str, str]) -> List[str]:
    return [a.format(**places) for a in argv]


def run_mistake(argv: List[str], hide=(), cwd: Optional[str] = None) -> Dict[str, object]:
    """Run ``train.py argv`` in a fresh process: exit code, stderr, whether torch was imported, CPU seconds."""
    marker = tempfile.mktemp(suffix=".json")
    code = PRELUDE.format(hide=tuple(hide), marker=marker, argv=list(argv), root=ROOT)
    env = {**os.environ, "EMOLAB_PROGRESS": "0", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("EMOLAB_IMPORT", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd or ROOT, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    torch = None
    if os.path.exists(marker):
        with open(marker) as f:
            torch = json.load(f)["torch"]
        os.remove(marker)
    return {"rc": p.returncode, "stderr": p.stderr, "stdout": p.stdout, "torch": torch, "cpu_s": cpu}


def prepare(base: str) -> Dict[str, str]:
    """A finished two-epoch CoOp run on the small synthetic data (the ``{run}`` of the table)."""
    data, run = os.path.join(base, "data"), os.path.join(base, "run")
    if not os.path.isfile(os.path.join(run, "run_state.json")):
        argv = ["--root", data, "--seed", "1", "--output-dir", run, "--dataset-config-file", SYN,
                "--config-file", COOP, *SMALL, "OPTIM.MAX_EPOCH", "2", "TRAIN.PROGRESS_BAR", "False"]
        res = run_mistake(argv)
        assert res["rc"] == 0, res["stderr"]
    tmp = tempfile.mkdtemp(dir=base)
    return {"run": run, "data": data, "tmp": tmp}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = ap.parse_args()
    places = prepare(tempfile.mkdtemp(prefix="emolab_mistakes_"))
    rows = []
    for name, what, argv, words, _, hide in MISTAKES:
        res = run_mistake(fill(argv, places), hide, cwd=places["tmp"])
        line = res["stderr"].strip().splitlines()[-1] if res["stderr"].strip() else ""
        rows.append((name, what, res["rc"], res["cpu_s"], res["torch"], line))
        if not args.markdown:
            print(f"{name:22s} rc {res['rc']} cpu {res['cpu_s']:.2f}s torch {res['torch']}  {line[:120]}", flush=True)
    if args.markdown:
        print("| # | mistake | exit | CPU s to the error | torch imported | the one line |")
        print("|--:|---|--:|--:|---|---|")
        for i, (name, what, rc, cpu, torch, line) in enumerate(rows, 1):
            print(f"| {i} | {what} (`{name}`) | {rc} | {cpu:.2f} | {'yes' if torch else 'no'} | "
                  f"`{line.replace('|', '/')}` |")
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average)", file=sys.stderr)


if __name__ == "__main__":
    main()
