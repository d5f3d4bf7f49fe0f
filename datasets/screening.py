"""What the start-up image screening remembers between runs, so a warm start opens no image.

The files that passed a ``header`` or ``decode`` check are kept in ``.screening_<mode>.json`` in the
dataset folder (beside the split files), each with its size and modification time (ns). A later
start probes only the files that are new or whose size or time changed; a file that fails is never
remembered, so it is found again at every start (the same one-line error as before). A folder that
cannot be written simply gets no memo (every start probes, as before). A file changed in place
without a new size or time escapes the memo; the loader still fails on it with one line naming it.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, Optional, Sequence, Tuple

from utils.errors import WriteError
from utils.fileio import atomic_write

logger = logging.getLogger(__name__)
VERSION = 1

Stamp = Tuple[int, int]


def memo_path(root: str, mode: str) -> str:
    """The memo file of ``mode`` in the dataset folder ``root`` ("" when there is no folder)."""
    return os.path.join(root, f".screening_{mode}.json") if root else ""


def stamps(paths: Sequence[str]) -> Dict[str, Optional[Stamp]]:
    """(size, mtime_ns) of every path (None when it cannot be stat'ed)."""
    out: Dict[str, Optional[Stamp]] = {}
    for p in paths:
        try:
            st = os.stat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
        except OSError:
            out[p] = None
    return out


def load(path: str) -> Dict[str, Stamp]:
    """The remembered passes ({} when there is no readable memo of this version)."""
    if not path or not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            blob = json.load(f)
        if blob.get("version") != VERSION:
            return {}
        return {p: (int(s[0]), int(s[1])) for p, s in blob["passed"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        logger.info(f"image screening memo {path} unreadable: every image is checked again")
        return {}


def save(path: str, passed: Dict[str, Stamp]) -> None:
    """Write the memo; a folder that cannot be written gets none (logged at INFO)."""
    if not path:
        return

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": VERSION, "passed": {p: list(s) for p, s in passed.items()}}, f)

    try:
        atomic_write(path, write)
    except (OSError, WriteError) as e:  # a read-only dataset folder, or a file where a folder should be
        logger.info(f"image screening memo not written ({e}): the next start checks every image again")
