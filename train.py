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

from trainers import get_cfg
from configs.errors import EmoLabError

logger = logging.getLogger("emolab")


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
    cfg.freeze()
    return cfg


def log_environment(cfg) -> None:
    import platform

    logger.info(f"EmoLab | python {platform.python_version()} | torch {torch.__version__}")
    if torch.cuda.is_available() and cfg.USE_CUDA:
        logger.info(f"device: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    else:
        logger.info(f"device: cpu ({os.cpu_count()} cores)")


def run(args: argparse.Namespace) -> int:
    from trainers.extensions import import_extensions
    from trainers import build_trainer

    import_extensions(args.imports)
    from trainers.engine import dist
    from trainers.engine.logger import setup_logging

    cfg = setup_cfg(args)
    is_main = int(os.environ.get("RANK", 0)) == 0
    setup_logging(cfg.OUTPUT_DIR, is_main)
    name = "config.yaml"
    if is_main:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        if args.eval_only and os.path.exists(os.path.join(cfg.OUTPUT_DIR, name)):
            name = "config-eval.yaml"  # keep the training run's config
        save_cfg(cfg, os.path.join(cfg.OUTPUT_DIR, name))
    log_environment(cfg)
    argv = getattr(args, "argv", None)
    logger.info(f"command: {' '.join(sys.argv) if argv is None else 'train.py ' + ' '.join(argv)}")
    if cfg.VERBOSE:
        from configs.config import config_diff

        diff = config_diff(cfg, get_cfg())
        where = os.path.join(cfg.OUTPUT_DIR, name) if is_main else "config.yaml"
        logger.info(f"config ({len(diff)} keys differ from the defaults; all keys in {where}):"
                    + "".join(f"\n  {k}: {v!r}" for k, v in diff))
    trainer = build_trainer(cfg)
    try:
        if args.eval_only:
            trainer.load_model(args.model_dir or cfg.OUTPUT_DIR, epoch=args.load_epoch)
            trainer.test()
        elif not args.no_train:
            trainer.train()
    finally:
        trainer.close()
        dist.cleanup()
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = None if argv is None else list(argv)
    try:
        return run(args)
    except EmoLabError as e:
        from trainers.engine import TrainingError

        print(f"error: {e}", file=sys.stderr)
        return 1 if isinstance(e, TrainingError) else 2


if __name__ == "__main__":
    sys.exit(main())
