"""Checkpoints in the Dassl layout.

``OUTPUT_DIR/<model_name>/model.pth.tar-<epoch>``, ``model-best.pth.tar`` and a text file
``checkpoint`` naming the latest. Each holds ``state_dict, epoch (1-based), optimizer,
scheduler, val_result`` (+ ``scaler``, ``engine``). Files are written to a temporary name
and renamed, so a crash never leaves a half-written checkpoint; they are read with
``weights_only=True``, so loading a checkpoint cannot run code.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Dict, Optional

from utils.errors import CheckpointError
from utils.fileio import atomic_torch_save, atomic_write, safe_torch_load

logger = logging.getLogger(__name__)

#: the file names of the Dassl layout, defined here only
BEST = "model-best.pth.tar"
MARKER = "checkpoint"  # a text file naming the latest epoch file
CKPT_RE = re.compile(r"^model\.pth\.tar-(\d+)$")


def ckpt_name(epoch: int) -> str:
    return f"model.pth.tar-{epoch}"


def save_checkpoint(state: Dict[str, Any], model_dir: str, is_best: bool = False, name: Optional[str] = None) -> str:
    """Atomically write ``state`` as ``model.pth.tar-<epoch>`` (or ``name``) and update ``checkpoint``."""
    os.makedirs(model_dir, exist_ok=True)
    fname = name or ckpt_name(int(state["epoch"]))
    path = os.path.join(model_dir, fname)
    atomic_torch_save(state, path)
    if is_best:
        atomic_torch_save(state, os.path.join(model_dir, BEST))
    if name is None:
        def write_marker(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(fname + "\n")

        atomic_write(os.path.join(model_dir, MARKER), write_marker)
    return path


def latest_checkpoint(model_dir: str) -> Optional[str]:
    """Path named by ``model_dir/checkpoint``, or None."""
    marker = os.path.join(model_dir, MARKER)
    if not os.path.isfile(marker):
        return None
    with open(marker, encoding="utf-8") as f:
        fname = f.readline().strip()
    path = os.path.join(model_dir, fname)
    return path if os.path.isfile(path) else None


#: globals a Dassl / CoOp checkpoint may hold besides tensors: its pickled LR scheduler (Dassl's
#: warm-up wrappers around torch schedulers), the optimizer that scheduler points to, and numpy
#: scalars in ``val_result``. They are read as inert stubs (nothing of them runs) and dropped.
DASSL_ALLOWED = (
    "dassl.optim.lr_scheduler.*", "torch.optim.lr_scheduler.*", "torch.optim.*",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype", "numpy.dtypes.*",
)


def read_dassl_checkpoint(path: str) -> Dict[str, Any]:
    """A checkpoint written by Dassl / CoOp / CoCoOp, read without running pickled code.

    Tensors and plain values are read; the scheduler and optimizer objects Dassl pickles (the
    classes in :data:`DASSL_ALLOWED`) become None; any other class refuses the file.
    """
    from utils.safe_unpickle import allow_patterns, read_torch_zip, strip_stubs, stub_names

    obj, _ = read_torch_zip(path, allow_patterns(DASSL_ALLOWED), what="checkpoint")
    dropped = stub_names(obj)
    if dropped:
        logger.info(f"{path}: pickled objects not restored ({', '.join(dropped[:4])}"
                    + (", ..." if len(dropped) > 4 else "") + "): only tensors and plain values are read")
    return strip_stubs(obj)


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``; a Dassl / CoOp file holding a pickled
    scheduler through :func:`read_dassl_checkpoint`); one-line errors for missing/bad files."""
    try:
        ckpt = safe_torch_load(path, "checkpoint")
    except CheckpointError:
        import zipfile

        if not (os.path.isfile(path) and zipfile.is_zipfile(path)):
            raise
        ckpt = read_dassl_checkpoint(path)  # its own one-line error names what it refuses
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} has no 'state_dict' entry")
    return ckpt


def checkpoint_path(directory: str, model_name: str, epoch: Optional[int]) -> str:
    """The file for ``--model-dir/--load-epoch`` (epoch None = best, else latest)."""
    model_dir = os.path.join(directory, model_name)
    if epoch is not None and epoch > 0:
        return os.path.join(model_dir, ckpt_name(epoch))
    best = os.path.join(model_dir, BEST)
    if epoch is None and os.path.isfile(best):
        return best
    latest = latest_checkpoint(model_dir)
    if latest is None:
        raise CheckpointError(f"no checkpoint found in {model_dir}")
    return latest
