"""Convert CoOp / CoCoOp prompt-learner checkpoints between EmoLab and the official layout.

EmoLab's CoOp / CoCoOp trainers already save under the official names (the official code loads
their ``prompt_learner/model.pth.tar-<epoch>`` unchanged); this tool serves older EmoLab files
(``context.ctx``) and copies a run's checkpoint into a clean Dassl folder. Usage::

    # EmoLab run -> a folder the official CoOp / CoCoOp code evaluates with --model-dir
    python tools/convert_coop_checkpoint.py output/coop_seed1 official_run
    # official file -> an EmoLab-named checkpoint file
    python tools/convert_coop_checkpoint.py coop/prompt_learner/model.pth.tar-50 emolab.pth.tar --to emolab

``SRC`` is a checkpoint file or a run folder: by default the epoch the run's own final test used
(its run state), else ``model-best.pth.tar``, else the latest; ``--epoch E`` picks
``model.pth.tar-E``. ``DST`` is a folder receiving the Dassl layout
``DST/prompt_learner/model.pth.tar-<epoch>`` plus the ``checkpoint`` file naming it, unless it
names a file (ends in ``.pth``, ``.pt``, ``.tar`` or ``.pth.tar-<N>``). ``--to`` defaults to
official for an EmoLab file, emolab for an official file from elsewhere.

Official layout (what CoOp's / CoCoOp's ``load_model`` reads): ``state_dict`` with ``ctx``
[n_ctx, D] (CSC: [C, n_ctx, D]) and, for CoCoOp, ``meta_net.linear1/2.{weight,bias}``; plus
``epoch``, ``optimizer`` / ``scheduler`` (None: optimiser state is not converted) and
``val_result``. ``token_prefix`` / ``token_suffix`` are not written: they are fixed embeddings of
the class names, which CoOp's loader deletes before loading. The file holds only tensors and plain
values, so ``torch.load(..., weights_only=True)`` reads it. Official files are read without
running pickled code (the Dassl scheduler object inside them is skipped; see README).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.errors import EmoLabError  # noqa: E402
from utils.cli import check_overwrite, run_tool  # noqa: E402
from utils.fileio import atomic_torch_save, atomic_write  # noqa: E402

logger = logging.getLogger("convert_coop_checkpoint")
MODEL_NAME = "prompt_learner"


def source_file(src: str, epoch: Optional[int]) -> str:
    """The checkpoint file ``src`` names (a file, or a run / model folder)."""
    from utils.errors import CheckpointError
    from trainers.engine.checkpoint import checkpoint_path

    if os.path.isfile(src):
        return src
    if not os.path.isdir(src):
        raise CheckpointError(f"no such checkpoint file or folder: {src}")
    from trainers.engine.runstate import eval_epoch

    run = os.path.dirname(src.rstrip("/")) if os.path.basename(src.rstrip("/")) == MODEL_NAME else src
    return checkpoint_path(run, MODEL_NAME, eval_epoch(run, epoch))


def is_file_target(dst: str) -> bool:
    """True when ``dst`` names a checkpoint file rather than a folder (module docstring)."""
    if dst.endswith(("/", os.sep)) or os.path.isdir(dst):
        return False
    return bool(re.search(r"(\.pth|\.pt|\.tar|\.pth\.tar-\d+)$", os.path.basename(dst)))


def to_emolab_state(state):
    """Official names -> EmoLab's (CoCoOp's meta-net as ``Sequential(Linear, ReLU, Linear)``)."""
    from trainers.clip_prompting.coop_checkpoint import OFFICIAL_TOKEN_KEYS

    conditional = any(k.startswith("meta_net.") for k in state)
    out = {}
    for key, value in state.items():
        if key in OFFICIAL_TOKEN_KEYS:
            continue
        if key == "ctx":
            out["context.ctx"] = value if conditional or value.dim() == 3 else value.unsqueeze(0)
        elif key.startswith("meta_net.linear1."):
            out["context.meta_net.0." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("meta_net.linear2."):
            out["context.meta_net.2." + key.rsplit(".", 1)[1]] = value
        else:
            raise EmoLabError(f"unexpected key {key!r} in an official CoOp / CoCoOp checkpoint")
    return {k: v.float().contiguous() for k, v in out.items()}


#: recorded in every file this tool writes: an existing destination is replaced only when it holds it (or --force)
WRITER = "EmoLab tools/convert_coop_checkpoint.py"


def _is_ours(path: str) -> bool:
    from utils.fileio import safe_torch_load

    obj = safe_torch_load(path, "checkpoint")
    return isinstance(obj, dict) and obj.get("converted_by") == WRITER


def convert(src: str, dst: str, to: str = "", epoch: Optional[int] = None, force: bool = False) -> str:
    """Write the converted checkpoint; returns the path written."""
    from trainers.clip_prompting.coop_checkpoint import is_official, to_official
    from trainers.engine.checkpoint import load_checkpoint

    path = source_file(src, epoch)
    ckpt = load_checkpoint(path)
    state = ckpt["state_dict"]
    official = is_official(state)
    written_by_emolab = "engine" in ckpt  # EmoLab's files carry the engine state; official ones do not
    to = to or ("emolab" if official and not written_by_emolab else "official")
    if to not in ("official", "emolab"):
        raise EmoLabError(f"--to must be official or emolab, got {to!r}")
    if to == "official":
        new_state = state if official else to_official(state)
        new_state = {k: v.detach().clone().contiguous() for k, v in new_state.items()
                     if k not in ("token_prefix", "token_suffix")}
    elif official:
        new_state = to_emolab_state(state)
    else:
        raise EmoLabError(f"{path} already has EmoLab's names")
    ep = int(ckpt.get("epoch") or 0)
    val = ckpt.get("val_result")
    out = {"state_dict": new_state, "epoch": ep, "optimizer": None, "scheduler": None,
           "val_result": val if isinstance(val, (int, float, dict)) or val is None else None, "converted_by": WRITER}
    if not is_file_target(dst):
        fname = f"model.pth.tar-{ep}"
        target = os.path.join(dst, MODEL_NAME, fname)
        check_overwrite(target, force, _is_ours)
        atomic_torch_save(out, target)

        def marker(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(fname + "\n")

        atomic_write(os.path.join(dst, MODEL_NAME, "checkpoint"), marker)
    else:
        target = dst
        check_overwrite(target, force, _is_ours)
        atomic_torch_save(out, target)
    logger.info(f"wrote {target} ({to} layout, epoch {ep}: {', '.join(f'{k} {tuple(v.shape)}' for k, v in new_state.items())})")
    return target


def main(argv=None) -> int:
    return run_tool(_main, argv)


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", help="checkpoint file or run folder")
    ap.add_argument("dst", help="output folder (Dassl layout), or a file ending in .pth / .pt / .tar / .pth.tar-N")
    ap.add_argument("--to", default="", choices=["", "official", "emolab"], help="target layout (default: the other one)")
    ap.add_argument("--epoch", type=int, default=None,
                    help="epoch to convert when SRC is a folder (default: the one the run's final test used)")
    ap.add_argument("--force", action="store_true", help="replace an existing file this tool did not write")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    convert(args.src, args.dst, args.to, args.epoch, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
