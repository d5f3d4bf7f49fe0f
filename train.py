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

from configs.cli import build_parser  # noqa: F401  (the parser; torch-free, as --help, --list, --print-config)
from configs.config import merge_from_file, merge_from_list, save_cfg
from configs.validate import check_config
from utils.errors import CheckpointError, ConfigError, EmoLabError

logger = logging.getLogger("emolab")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or a stop signal) during a run, carrying the trainer's last commit (``{"dir", "epoch",
    "finished"}``, empty before the first one) so that :func:`cli` can say where the run resumes."""

    def __init__(self, last_commit=None) -> None:
        super().__init__()
        self.last_commit = dict(last_commit or {})


def setup_cfg(args: argparse.Namespace, light: bool = False):
    """The merged, checked and frozen config for ``args``.

    ``light``: built from the source files without importing the trainers (torch-free; for
    ``--print-config`` and the checks that run before anything is built). With ``--eval-only
    --model-dir RUN`` the run's own ``RUN/config.yaml`` comes first, then files, flags and opts.
    """
    from configs import cli

    if light:
        cfg = cli.light_cfg()
    else:
        from trainers import get_cfg

        cfg = get_cfg()
    saved = run_config_path(args)
    if saved and not (args.config_file or args.dataset_config_file):
        # the run's own config; yaml files given on the command line replace it (e.g. another dataset)
        merge_from_file(cfg, saved)
        cfg.RESUME = ""
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
    if getattr(args, "require_gpu", False):
        cfg.TRAIN.REQUIRE_GPU = True
    opts = list(args.opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    cli.check_opts_order(opts)
    merge_from_list(cfg, opts)
    if light:
        cli.check_names(cfg)
    else:
        from datasets import DATASET_REGISTRY
        from trainers import TRAINER_REGISTRY

        trainer_cls = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
        DATASET_REGISTRY.get(cfg.DATASET.NAME)
        if hasattr(trainer_cls, "finalize_config"):
            trainer_cls.finalize_config(cfg)
    check_config(cfg)
    if not args.output_dir and not saved and cfg.OUTPUT_DIR in (cli.DEFAULT_OUTPUT, "output", "output/"):
        cfg.OUTPUT_DIR = cli.default_output_dir(cfg, args)  # never the folder every sweep shares
    if args.eval_only:
        args.run_dir = args.model_dir or (args.output_dir if saved else cfg.OUTPUT_DIR)
        # --output-dir X alone (no --model-dir) into a folder that holds no run: evaluate into X itself
        # (a zero-shot evaluation); every other evaluation goes to <run>/eval/<time>
        plain = bool(args.output_dir and not args.model_dir and not saved)
        if not args.print_config and not plain and (not args.output_dir or _same(args.output_dir, args.run_dir)):
            # an evaluation never writes over the training's files: RUN/eval/<time>
            cfg.OUTPUT_DIR = getattr(args, "eval_dir", None) or cli.eval_output_dir(args.run_dir)
            args.eval_dir = cfg.OUTPUT_DIR  # the light and the full config name the same folder
    cfg.freeze()
    return cfg


def _same(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def run_config_path(args: argparse.Namespace) -> str:
    """``RUN/config.yaml`` for ``--eval-only --model-dir RUN`` (or ``--output-dir RUN``), else ""."""
    if not args.eval_only:
        return ""
    run = args.model_dir or args.output_dir or ""
    path = os.path.join(run, "config.yaml")
    return path if run and os.path.isdir(run) and os.path.isfile(path) else ""


def preflight(args: argparse.Namespace) -> None:
    """Every check that needs neither torch nor data, before anything is imported or built:
    flags, config values and names, ``--resume`` / ``--model-dir`` / ``--load-epoch`` on disk,
    the device, the trackers. Skipped with ``--import`` (extensions may add keys)."""
    from configs import cli

    check_args(args)
    if args.imports or os.environ.get("EMOLAB_IMPORT"):
        return
    # light (torch-free) unless the trainers are imported already (a notebook or a test: nothing to save)
    cfg = setup_cfg(args, light="trainers" not in sys.modules)
    if args.eval_only and (args.model_dir or not args.output_dir):
        cli.check_model_dir(args.run_dir, args.load_epoch)
    cli.check_paths(cfg)
    # warnings go to the log once it is set up (before anything is built); stderr keeps one line for errors
    args.preflight_warnings = cli.check_device(cfg, bool(cfg.TRAIN.REQUIRE_GPU))
    cli.check_loggers(cfg)


def log_environment(cfg) -> None:
    import platform

    import torch

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
    if args.resume and not os.path.isdir(args.resume):
        raise ConfigError(f"--resume {args.resume} is not a folder: name the run folder to resume (a run also "
                          "resumes from its own --output-dir without --resume)")
    if args.print_config and (args.restart or args.no_train):
        raise ConfigError("--print-config only prints the config: drop --restart / --no-train")


def answer_without_building(args: argparse.Namespace) -> bool:
    """``--list`` and ``--print-config``: print, build nothing (torch is not imported unless
    ``--import`` modules must register first). True when answered."""
    if args.list:
        from configs import cli

        if args.imports or os.environ.get("EMOLAB_IMPORT"):
            return _list_imported(args)
        print("\n".join(cli.list_lines(args.list)))
        return True
    if args.print_config:
        check_args(args)
        if args.imports or os.environ.get("EMOLAB_IMPORT"):
            from trainers.extensions import import_extensions

            import_extensions(args.imports)
            cfg = setup_cfg(args)
        else:
            cfg = setup_cfg(args, light=True)
        print(cfg.dump(), end="")
        return True
    return False


def _list_imported(args: argparse.Namespace) -> bool:
    """``--list`` with ``--import``: the registries after importing everything."""
    from configs import cli
    from trainers.extensions import import_extensions

    import_extensions(args.imports)
    from datasets import DATASET_REGISTRY
    from trainers import TRAINER_REGISTRY

    if args.list in ("trainers", "datasets"):
        reg = TRAINER_REGISTRY if args.list == "trainers" else DATASET_REGISTRY
        print("\n".join(reg.names()))
    else:
        print("\n".join(cli.list_lines(args.list)))
    return True


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
    if answer_without_building(args):
        return 0
    preflight(args)  # torch-free: a mistake costs no import of the trainers
    from trainers.extensions import import_extensions
    from trainers import build_trainer

    import_extensions(args.imports)  # before the config: extensions add config nodes
    from trainers.engine import dist, runstate
    from trainers.engine.logger import setup_logging

    check_args(args)
    cfg = setup_cfg(args)
    check_output_outside_data(cfg)
    if args.imports or os.environ.get("EMOLAB_IMPORT"):  # the torch-free checks were skipped: run them now
        from configs import cli

        cli.check_paths(cfg)
        args.preflight_warnings = cli.check_device(cfg, bool(cfg.TRAIN.REQUIRE_GPU))
        cli.check_loggers(cfg)
    if cfg.TRAIN.REQUIRE_GPU:
        import torch

        if not (cfg.USE_CUDA and torch.cuda.is_available()):
            raise ConfigError("a GPU is required (--require-gpu / TRAIN.REQUIRE_GPU) but torch sees no usable CUDA "
                              f"device (torch {torch.__version__}, CUDA build {torch.version.cuda}): fix the CUDA "
                              "install, or drop --require-gpu to train on the CPU")
    is_main = int(os.environ.get("RANK", 0)) == 0
    out = cfg.OUTPUT_DIR
    if is_main:
        runstate.prepare_output_dir(out)
        runstate.lock_output_dir(out)
    try:
        if is_main:
            from utils.fileio import remove_stale_temporaries

            remove_stale_temporaries(out, depth=2, any_pid=True)  # half-written files of a killed run (we hold the lock)
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
                name = "config-eval.yaml"  # keep the training run's config (an explicit --output-dir)
            if what != "resume" or not os.path.exists(os.path.join(out, name)):
                save_cfg(cfg, os.path.join(out, name))  # a resumed run keeps the config.yaml that describes it
        log_environment(cfg)
        for w in getattr(args, "preflight_warnings", None) or []:
            logger.warning(w)
        argv = getattr(args, "argv", None)
        logger.info(f"command: {' '.join(sys.argv) if argv is None else 'train.py ' + ' '.join(argv)}")
        if cfg.VERBOSE:
            from configs.config import config_diff
            from trainers import get_cfg

            diff = config_diff(cfg, get_cfg())
            where = os.path.join(out, name) if is_main else "config.yaml"
            logger.info(f"config ({len(diff)} keys differ from the defaults; all keys in {where}):"
                        + "".join(f"\n  {k}: {v!r}" for k, v in diff))
        if args.eval_only:
            log_eval_source(args, cfg)
        trainer = build_trainer(cfg, mode="eval" if args.eval_only else "train")
        try:
            if args.eval_only:
                model_dir = args.run_dir
                if getattr(args, "eval_dir", None) == out:
                    trainer.writer.path = os.path.join(out, runstate.EVAL_RECORDS)  # not a run: parse_results skips it
                epoch = runstate.eval_epoch(model_dir, args.load_epoch)
                try:
                    trainer.load_model(model_dir, epoch=epoch)
                except CheckpointError as e:
                    if "does not fit" in str(e) and getattr(args, "changed_keys", None):
                        raise CheckpointError(f"{e} -- keys changed from the run's config.yaml: "
                                              f"{'; '.join(args.changed_keys[:4])}") from None
                    raise
                trainer.final_checkpoint = trainer.loaded_checkpoint
                if trainer.loaded_checkpoint:
                    ck = trainer.loaded_checkpoint
                    if isinstance(ck.get("epoch"), int) and ck["epoch"] >= 1:
                        trainer.epoch = ck["epoch"] - 1  # records and figures name the checkpoint's epoch
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


def log_eval_source(args: argparse.Namespace, cfg) -> None:
    """Name the config an evaluation used and the keys that differ from the run's config.yaml."""
    saved = run_config_path(args)
    if not saved:
        return
    from configs.cli import changed_keys

    changes = changed_keys(saved, cfg)
    args.changed_keys = changes
    files = args.config_file or args.dataset_config_file
    logger.info((f"evaluating with the config files given, compared with the run's config {saved}" if files else
                 f"evaluating with the run's config {saved}")
                + (f"; {len(changes)} key(s) differ from it: " + "; ".join(changes) if changes else
                   " (no key differs)") + f"; outputs in {cfg.OUTPUT_DIR}")


def main(argv=None) -> int:
    """Run the command line in this process; Ctrl-C propagates as KeyboardInterrupt (see :func:`cli`)."""
    args = build_parser().parse_args(argv)
    args.argv = None if argv is None else list(argv)
    try:
        return run(args)
    except EmoLabError as e:
        print(f"error: {e}", file=sys.stderr)
        if "trainers.engine" not in sys.modules:  # a check before anything was built: never a training error
            return 2
        from trainers.engine import TrainingError

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
