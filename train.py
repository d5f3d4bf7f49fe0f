"""EmoLab command line: train or evaluate any registered trainer on any registered dataset.

    python train.py --root data --trainer CoOp \
        --dataset-config-file configs/datasets/synthetic_emotion.yaml \
        --config-file configs/trainers/CoOp/tiny_synthetic.yaml \
        --output-dir output/coop --seed 1 DATASET.NUM_SHOTS 16

Config merge order: defaults -> registered extensions -> dataset yaml -> trainer yaml ->
flags -> trailing KEY VALUE opts -> freeze. User errors print one line and exit with 2.

Methods, datasets and evaluators kept outside the repository are imported with
``--import my_project.methods`` (repeatable) or ``EMOLAB_IMPORT=my_project.methods,other``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

from configs.config import merge_from_file, merge_from_list, save_cfg
from configs.validate import check_config

from trainers import get_cfg
from utils.errors import ConfigError, EmoLabError

logger = logging.getLogger("emolab")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, carrying the trainer's last commit (``{"dir", "epoch", "finished"}``,
    empty before the first one) so that :func:`cli` can say where the run resumes."""

    def __init__(self, last_commit=None) -> None:
        super().__init__()
        self.last_commit = dict(last_commit or {})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=str, default=None, help="path to the dataset root (DATASET.ROOT)")
    p.add_argument("--output-dir", type=str, default=None, help="output directory (OUTPUT_DIR)")
    p.add_argument("--resume", type=str, default=None, help="checkpoint directory to resume from (RESUME)")
    p.add_argument("--seed", type=int, default=None, help="random seed; any value >= 0 (0 included) is used")
    p.add_argument("--source-domains", type=str, nargs="+", default=None, help="source domains (Dassl)")
    p.add_argument("--target-domains", type=str, nargs="+", default=None, help="target domains (Dassl)")
    p.add_argument("--transforms", type=str, nargs="+", default=None, help="training transforms (INPUT.TRANSFORMS)")
    p.add_argument("--config-file", type=str, default="", help="trainer config yaml")
    p.add_argument("--dataset-config-file", type=str, default="", help="dataset config yaml")
    p.add_argument("--trainer", type=str, default="", help="trainer name (TRAINER.NAME)")
    p.add_argument("--backbone", type=str, default="", help="backbone name (MODEL.BACKBONE.NAME)")
    p.add_argument("--head", type=str, default="", help="head name (MODEL.HEAD.NAME)")
    p.add_argument("--eval-only", action="store_true", help="evaluate only")
    p.add_argument("--model-dir", type=str, default="", help="load the model from this directory for --eval-only")
    p.add_argument("--load-epoch", type=int, default=None, help="epoch of the checkpoint to load (default: best, else last)")
    p.add_argument("--no-train", action="store_true", help="build everything, do not train")
    p.add_argument("--restart", action="store_true",
                   help="start over in an OUTPUT_DIR that holds a run (its checkpoints and metrics are removed)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module that registers trainers, components, datasets or evaluators "
                        "(repeatable; also $EMOLAB_IMPORT, comma-separated)")
    p.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p


def setup_cfg(args: argparse.Namespace):
    """The merged, checked and frozen config for ``args``."""
    from datasets import DATASET_REGISTRY
    from trainers import TRAINER_REGISTRY

    cfg = get_cfg()
    if args.dataset_config_file:
        merge_from_file(cfg, args.dataset_config_file)
    if args.config_file:
        merge_from_file(cfg, args.config_file)
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed is not None:
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = tuple(args.source_domains)
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = tuple(args.target_domains)
    if args.transforms:
        cfg.INPUT.TRANSFORMS = tuple(args.transforms)
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head
    opts = list(args.opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    merge_from_list(cfg, opts)
    trainer_cls = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
    DATASET_REGISTRY.get(cfg.DATASET.NAME)
    if hasattr(trainer_cls, "finalize_config"):
        trainer_cls.finalize_config(cfg)
    check_config(cfg)
    cfg.freeze()
    return cfg


def log_environment(cfg) -> None:
    import platform

    logger.info(f"EmoLab | python {platform.python_version()} | torch {torch.__version__}")
    if torch.cuda.is_available() and cfg.USE_CUDA:
        logger.info(f"device: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    else:
        logger.info(f"device: cpu ({os.cpu_count()} cores)")


def check_args(args: argparse.Namespace) -> None:
    """Flag values that argparse accepts but that cannot work."""
    if args.seed is not None and not 0 <= args.seed <= 2**32 - 1:
        raise ConfigError(f"--seed {args.seed} is out of range: use 0 .. {2**32 - 1}")
    if args.load_epoch is not None and args.load_epoch <= 0:
        raise ConfigError(f"--load-epoch {args.load_epoch} must be a positive epoch")
    if args.load_epoch is not None and not args.eval_only:
        raise ConfigError("--load-epoch is only used with --eval-only")
    if args.model_dir and not args.eval_only:
        raise ConfigError("--model-dir is only used with --eval-only")
    if args.eval_only and args.restart:
        raise ConfigError("--restart starts a training run over; it cannot go with --eval-only")
    if args.model_dir and not os.path.exists(args.model_dir):
        # a run folder, or a checkpoint file for trainers that read one (UniEmoX's released files)
        raise ConfigError(f"--model-dir {args.model_dir} does not exist")


_DATA_FILES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pkl")


def _holds_data(folder: str, depth: int = 3) -> bool:
    """True when ``folder`` holds images or feature pickles within ``depth`` levels (run folders skipped)."""
    top = folder.rstrip(os.sep).count(os.sep)
    for cur, dirs, files in os.walk(folder):
        if "run_state.json" in files or "metrics.jsonl" in files:
            dirs[:] = []  # an EmoLab run (its plots are not data)
            continue
        if any(f.lower().endswith(_DATA_FILES) for f in files):
            return True
        if cur.count(os.sep) - top >= depth - 1:
            dirs[:] = []
    return False


def check_output_outside_data(cfg) -> None:
    """OUTPUT_DIR may not be DATASET.ROOT, nor a folder of data below it (a run would write into the data)."""
    root, out = cfg.DATASET.ROOT, cfg.OUTPUT_DIR
    if not root or not out:
        return
    r, o = os.path.realpath(root), os.path.realpath(out)
    if o == r:
        raise ConfigError(f"OUTPUT_DIR {out} is the dataset root DATASET.ROOT {root}: a run writes its checkpoints and "
                          "logs there; choose an --output-dir outside the data")
    if not o.startswith(r.rstrip(os.sep) + os.sep):
        return
    cur = r
    for part in os.path.relpath(o, r).split(os.sep):
        cur = os.path.join(cur, part)
        if not os.path.isdir(cur):
            return
        if _holds_data(cur):
            raise ConfigError(f"OUTPUT_DIR {out} is inside the dataset folder {cur} (it holds images or features): "
                              "a run writes its checkpoints and logs there; choose an --output-dir outside the data")


def run(args: argparse.Namespace) -> int:
    from trainers.extensions import import_extensions
    from trainers import build_trainer

    import_extensions(args.imports)  # before the config: extensions add config nodes
    from trainers.engine import dist, runstate
    from trainers.engine.logger import setup_logging

    check_args(args)
    cfg = setup_cfg(args)
    check_output_outside_data(cfg)
    is_main = int(os.environ.get("RANK", 0)) == 0
    out = cfg.OUTPUT_DIR
    if is_main:
        runstate.prepare_output_dir(out)
        runstate.lock_output_dir(out)
        from utils.fileio import remove_stale_temporaries

        remove_stale_temporaries(out, depth=2, any_pid=True)  # half-written files of a killed run (we hold the lock)
    try:
        what = runstate.check_rerun(out, cfg.dump(), args.restart, args.eval_only)
        if what == "finished":
            restored = runstate.repair_finished(out) if is_main else False
            m = runstate.read_manifest(out) or {}
            print(f"the run in {out} has finished (epoch {m.get('epoch')}, final test done): nothing to do"
                  + ("; metrics.jsonl restored from its run state" if restored else "")
                  + " (use --restart to train it again, or another --output-dir)")
            return 0
        setup_logging(out, is_main)
        name = "config.yaml"
        if is_main:
            if what == "restart":
                removed = runstate.clear_run(out)
                logger.info(f"--restart: removed the earlier run's {len(removed)} file(s) in {out}")
            if args.eval_only and os.path.exists(os.path.join(out, name)):
                name = "config-eval.yaml"  # keep the training run's config
            if what != "resume" or not os.path.exists(os.path.join(out, name)):
                save_cfg(cfg, os.path.join(out, name))  # a resumed run keeps the config.yaml that describes it
        log_environment(cfg)
        argv = getattr(args, "argv", None)
        logger.info(f"command: {' '.join(sys.argv) if argv is None else 'train.py ' + ' '.join(argv)}")
        if cfg.VERBOSE:
            from configs.config import config_diff

            diff = config_diff(cfg, get_cfg())
            where = os.path.join(out, name) if is_main else "config.yaml"
            logger.info(f"config ({len(diff)} keys differ from the defaults; all keys in {where}):"
                        + "".join(f"\n  {k}: {v!r}" for k, v in diff))
        trainer = build_trainer(cfg, mode="eval" if args.eval_only else "train")
        try:
            if args.eval_only:
                model_dir = args.model_dir or out
                epoch = runstate.eval_epoch(model_dir, args.load_epoch)
                trainer.load_model(model_dir, epoch=epoch)
                trainer.final_checkpoint = trainer.loaded_checkpoint
                if trainer.loaded_checkpoint:
                    ck = trainer.loaded_checkpoint
                    logger.info(f"evaluating {os.path.join(model_dir, '<module>', ck['file'])} (epoch {ck['epoch']})")
                trainer.test()
            elif not args.no_train:
                trainer.train()
        except KeyboardInterrupt as e:
            raise Interrupted(trainer.last_commit) from e
        finally:
            trainer.close()
            dist.cleanup()
    finally:
        if is_main:
            runstate.unlock_output_dir(out)
    return 0


def main(argv=None) -> int:
    """Run the command line in this process; Ctrl-C propagates as KeyboardInterrupt (see :func:`cli`)."""
    args = build_parser().parse_args(argv)
    args.argv = None if argv is None else list(argv)
    try:
        return run(args)
    except EmoLabError as e:
        from trainers.engine import TrainingError

        print(f"error: {e}", file=sys.stderr)
        return 1 if isinstance(e, TrainingError) else 2


def interrupted_line(last_commit=None, how: str = "interrupted") -> str:
    """The one line printed on Ctrl-C (or a stop signal, ``how``): where the run can resume
    (``last_commit``: the trainer's, carried by :class:`Interrupted`)."""
    last = last_commit or {}
    if last.get("dir"):
        if last.get("finished"):
            return f"{how}: the run in {last['dir']} had finished"
        return (f"{how}: rerun the same command to resume the run in {last['dir']} "
                f"from epoch {last['epoch']} (the last saved epoch)")
    return f"{how} before the first epoch was saved: rerun the same command to start again"


def cli(argv=None) -> int:
    """``python train.py``: :func:`main`, with Ctrl-C, SIGTERM, SIGUSR1 and SIGUSR2 as one line and
    exit status 128 + the signal number (130, 143, 138, 140; see utils/signals.py)."""
    from utils import signals

    with signals.stop_signals_raise():
        try:
            return main(argv)
        except KeyboardInterrupt as e:  # Ctrl-C or signals.StopSignal, wrapped in Interrupted during a run
            cause = e.__cause__ if isinstance(e, Interrupted) and e.__cause__ is not None else e
            how = f"stopped by {cause.name}" if isinstance(cause, signals.StopSignal) else "interrupted"
            print(interrupted_line(getattr(e, "last_commit", None), how), file=sys.stderr)
            return signals.exit_code(cause)


if __name__ == "__main__":
    sys.exit(cli())
