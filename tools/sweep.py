"""Run a grid of ``train.py`` runs, one subprocess each, skipping finished ones.

Example::

    python tools/sweep.py --trainer CoOp \\
        --dataset-config-file configs/datasets/synthetic_emotion.yaml \\
        --config-file configs/trainers/CoOp/tiny_synthetic.yaml --root data \\
        --seeds 1 2 3 --shots 1 2 4 --grid TRAINER.COOP.N_CTX=4,16 -- TRAINER.COOP.CSC False

Each run writes to ``<output-root>/<dataset>/<Trainer>/<cfg>_<shots>shots/<tag>/seed<k>``:

* ``dataset`` = ``DATASET.NAME`` of the dataset yaml, ``cfg`` = the config file's stem;
* ``<shots>`` = the ``--shots`` value, passed as ``DATASET.NUM_SHOTS``; ``-1`` (all training data,
  the default) gives the folder ``<cfg>_allshots``;
* ``tag`` = CoOp's ``nctx<N>_csc<B>_ctp<pos>`` when the trainer is CoOp and
  ``TRAINER.COOP.{N_CTX, CSC, CLASS_TOKEN_POSITION}`` are all given (as ``--grid`` axes or
  trailing opts), followed by the other grid axes; otherwise the grid axes as ``key-value``
  joined by ``_`` (key = last component of the config key, lowercased; the whole key where
  two axes share a last component); ``default`` without any.

A run is finished when its ``metrics.jsonl`` has a record with ``"final": true``; finished runs
are skipped. A failed run (non-zero exit) is appended to ``<output-root>/sweep_failures.jsonl``
and the sweep goes on. Exit status: 0 all ran or were skipped, 1 some failed, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.fileio import read_records  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
COOP_KEYS = ("TRAINER.COOP.N_CTX", "TRAINER.COOP.CSC", "TRAINER.COOP.CLASS_TOKEN_POSITION")
COOP_SHORT = ("nctx", "csc", "ctp")


class SweepError(Exception):
    """A bad argument or input file: printed as ``error: <msg>``, exit 2."""


@dataclass
class Run:
    cmd: List[str]
    output_dir: str
    opts: List[str] = field(default_factory=list)


def parse_grid(specs: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """``["OPTIM.LR=0.1,0.01"] -> [("OPTIM.LR", ["0.1", "0.01"])]``."""
    axes: List[Tuple[str, List[str]]] = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not vals:
            raise SweepError(f"bad --grid {spec!r} (expected KEY=v1,v2,...)")
        if key.strip() in [k for k, _ in axes]:
            raise SweepError(f"--grid axis {key.strip()} given twice")
        axes.append((key.strip(), vals))
    return axes


def pairs(opts: Sequence[str]) -> Dict[str, str]:
    """Trailing ``KEY VALUE`` opts as a dict."""
    if len(opts) % 2:
        raise SweepError(f"trailing opts must be KEY VALUE pairs, got an odd number: {' '.join(opts)}")
    return dict(zip(opts[0::2], opts[1::2]))


def safe(value: str) -> str:
    """A value usable in a folder name (``ViT-B/16 -> ViT-B-16``)."""
    return re.sub(r"[^A-Za-z0-9.+\-]+", "-", value).strip("-") or "none"


def short_keys(keys: Sequence[str]) -> Dict[str, str]:
    last = [k.split(".")[-1].lower() for k in keys]
    return {k: (s if last.count(s) == 1 else k.lower()) for k, s in zip(keys, last)}


def make_tag(trainer: str, combo: Dict[str, str], extra: Dict[str, str]) -> str:
    """The run-setting folder name (see the module docstring)."""
    given = {**extra, **combo}
    parts: List[str] = []
    grid_keys = list(combo)
    if trainer == "CoOp" and all(k in given for k in COOP_KEYS):
        parts += [f"{s}{safe(given[k])}" for k, s in zip(COOP_KEYS, COOP_SHORT)]
        grid_keys = [k for k in grid_keys if k not in COOP_KEYS]
    short = short_keys(grid_keys)
    parts += [f"{short[k]}-{safe(combo[k])}" for k in grid_keys]
    return "_".join(parts) or "default"


def dataset_name(path: str) -> str:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise SweepError(f"cannot read dataset config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SweepError(f"dataset config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    name = (data.get("DATASET") or {}).get("NAME") if isinstance(data, dict) else None
    if not name:
        raise SweepError(f"dataset config {path} has no DATASET.NAME")
    return str(name)


def plan(args: argparse.Namespace) -> List[Run]:
    """All runs of the sweep, in order shots -> grid point -> seed."""
    if not os.path.isfile(args.config_file):
        raise SweepError(f"config file not found: {args.config_file}")
    dataset = safe(dataset_name(args.dataset_config_file))
    cfg_name = Path(args.config_file).stem
    axes = parse_grid(args.grid)
    extra_opts = list(args.opts)
    if extra_opts and extra_opts[0] == "--":
        extra_opts = extra_opts[1:]
    extra = pairs(extra_opts)
    for key, _ in axes:
        if key in extra:
            raise SweepError(f"{key} is both a --grid axis and a trailing opt")
    if "DATASET.NUM_SHOTS" in extra or any(k == "DATASET.NUM_SHOTS" for k, _ in axes):
        raise SweepError("give the shots with --shots, not DATASET.NUM_SHOTS")
    runs: List[Run] = []
    for shots in args.shots:
        shots_dir = f"{cfg_name}_{'all' if shots < 0 else shots}shots"
        for values in itertools.product(*[v for _, v in axes]):
            combo = dict(zip([k for k, _ in axes], values))
            tag = make_tag(args.trainer, combo, extra)
            for seed in args.seeds:
                out = os.path.join(args.output_root, dataset, args.trainer, shots_dir, tag, f"seed{seed}")
                opts = ["DATASET.NUM_SHOTS", str(shots)]
                for k, v in combo.items():
                    opts += [k, v]
                opts += extra_opts
                cmd = [args.python, args.train_script, "--root", args.root, "--seed", str(seed),
                       "--trainer", args.trainer, "--dataset-config-file", args.dataset_config_file,
                       "--config-file", args.config_file, "--output-dir", out, *opts]
                runs.append(Run(cmd, out, opts))
    return runs


def is_finished(output_dir: str) -> bool:
    """True when ``output_dir/metrics.jsonl`` has a record with ``"final": true``."""
    return any(rec.get("final") is True for rec in read_records(output_dir))


def execute(run: Run) -> Tuple[int, List[str]]:
    """Run one command; stream its stderr through and return (exit code, last 20 stderr lines)."""
    tail: collections.deque = collections.deque(maxlen=20)
    try:
        proc = subprocess.Popen(run.cmd, stderr=subprocess.PIPE, text=True, errors="replace")
    except OSError as e:  # e.g. --python not found
        return 127, [f"cannot start {run.cmd[0]}: {e.strerror}"]
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line.rstrip("\n"))
        return proc.wait(), list(tail)
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise


def record_failure(output_root: str, run: Run, code: int, tail: List[str]) -> None:
    os.makedirs(output_root, exist_ok=True)
    rec = {
        "cmd": shlex.join(run.cmd),
        "output_dir": run.output_dir,
        "exit_code": code,
        "stderr_tail": tail,
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    with open(os.path.join(output_root, "sweep_failures.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Run a grid of train.py runs (one subprocess each); finished runs are skipped.",
        epilog="Anything after '--' is passed to every run as trailing KEY VALUE opts.",
    )
    p.add_argument("--trainer", required=True, help="trainer name, e.g. CoOp")
    p.add_argument("--dataset-config-file", required=True, help="dataset yaml (its DATASET.NAME names the folder)")
    p.add_argument("--config-file", required=True, help="trainer yaml (its stem names the folder)")
    p.add_argument("--root", default="data", help="dataset root passed to train.py (default: data)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds (default: 1 2 3)")
    p.add_argument("--shots", type=int, nargs="+", default=[-1],
                   help="DATASET.NUM_SHOTS values; -1 = all data, folder '<cfg>_allshots' (default: -1)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=v1,v2",
                   help="a grid axis over a config key (repeatable)")
    p.add_argument("--output-root", default="output", help="root of the run folders (default: output)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and output dirs, run nothing")
    p.add_argument("--python", default=sys.executable, help="python interpreter for the runs")
    p.add_argument("--train-script", default=str(REPO_ROOT / "train.py"), help="training script (default: train.py)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE opts for every run (after '--')")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runs = plan(args)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ran = skipped = 0
    failed: List[Run] = []
    for i, run in enumerate(runs, 1):
        head = f"[{i}/{len(runs)}] {run.output_dir}"
        if is_finished(run.output_dir):
            print(f"{head}: finished, skipping", flush=True)
            skipped += 1
            continue
        if args.dry_run:
            print(f"{head}\n  {shlex.join(run.cmd)}", flush=True)
            continue
        print(f"{head}\n  {shlex.join(run.cmd)}", flush=True)
        code, tail = execute(run)
        ran += 1
        if code != 0:
            failed.append(run)
            record_failure(args.output_root, run, code, tail)
            print(f"  FAILED with exit code {code}", flush=True)
    if args.dry_run:
        print(f"dry run: {len(runs)} runs, {len(runs) - skipped} to run, {skipped} finished")
        return 0
    print(f"sweep done: {len(runs)} runs: ran {ran}, skipped {skipped}, failed {len(failed)}")
    if failed:
        print(f"failures recorded in {os.path.join(args.output_root, 'sweep_failures.jsonl')}")
    return 1 if failed else 0


if __name__ == "__main__":
    from utils.cli import run_tool  # one line for OSError / EmoLabError, no traceback

    sys.exit(run_tool(main))
