"""What the start-up image screening remembers between runs, so a warm start opens no image.

The files that passed a ``header`` or ``decode`` check are kept in ``.screening_<mode>.json`` in the
dataset folder (beside the split files), each with its size and modification time (ns). A later
start probes only the files that are new or whose size or time changed; a file that fails is never
remembered, so it is found again at every start (the same one-line error as before). A folder that
cannot be written simply gets no memo (every start probes, as before). A file changed in place
without a new size or time escapes the memo; the loader still fails on it with one line naming it.

Format (version 2): two lines. The first is a small JSON header ``{"version", "digest", "count"}``,
the digest (BLAKE2b) of every screened file's path, size and time in the order the dataset lists
them, written only when every file passed; the second is ``{path: [size, mtime_ns]}``. A start whose
files all match the digest reads the first line only; otherwise the second line tells which files
need probing. Memos of version 1 (one JSON object) are read as "no memo": every image is probed once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat as statmod
from typing import Dict, Optional, Sequence, Tuple

from utils.errors import WriteError
from utils.fileio import atomic_write

logger = logging.getLogger(__name__)
VERSION = 2

Stamp = Tuple[int, int]


def memo_path(root: str, mode: str) -> str:
    """The memo file of ``mode`` in the dataset folder ``root`` ("" when there is no folder)."""
    return os.path.join(root, f".screening_{mode}.json") if root else ""


def stamps(paths: Sequence[str]) -> Dict[str, Optional[Stamp]]:
    """(size, mtime_ns) of every path; None when it cannot be stat'ed or is not a regular file
    (one ``stat`` per file: it is also the start-up existence check)."""
    out: Dict[str, Optional[Stamp]] = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out[p] = None
            continue
        out[p] = (st.st_size, st.st_mtime_ns) if statmod.S_ISREG(st.st_mode) else None
    return out


def digest(now: Dict[str, Optional[Stamp]]) -> str:
    """The digest of paths and stamps, in their order (the memo's fast path)."""
    h = hashlib.blake2b(digest_size=20)
    h.update("\n".join(f"{p}\t{s[0]}\t{s[1]}" if s else f"{p}\t-" for p, s in now.items()).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def all_passed(path: str, now: Dict[str, Optional[Stamp]]) -> bool:
    """True when the memo's header says every file of ``now`` passed, unchanged (reads one line)."""
    if not path or not now or not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            head = json.loads(f.readline())
        return (isinstance(head, dict) and head.get("version") == VERSION and head.get("count") == len(now)
                and head.get("digest") == digest(now))
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def load(path: str) -> Dict[str, Stamp]:
    """The remembered passes ({} when there is no readable memo of this version)."""
    if not path or not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            head = json.loads(f.readline())
            if not isinstance(head, dict) or head.get("version") != VERSION:
                return {}
            passed = json.loads(f.readline())
        return {p: (int(s[0]), int(s[1])) for p, s in passed.items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, UnicodeDecodeError):
        logger.info(f"image screening memo {path} unreadable: every image is checked again")
        return {}


def save(path: str, passed: Dict[str, Stamp], now: Optional[Dict[str, Optional[Stamp]]] = None) -> None:
    """Write the memo (``now``: every screened file's stamp; the header's digest is written when all
    of them passed); a folder that cannot be written gets none (logged at INFO)."""
    if not path:
        return
    complete = now is not None and len(passed) == len(now) and all(now[p] is not None for p in now)
    head = {"version": VERSION, "digest": digest(now) if complete else None, "count": len(now) if complete else None}

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(head) + "\n")
            f.write(json.dumps({p: list(s) for p, s in passed.items()}) + "\n")

    try:
        atomic_write(path, write)
    except (OSError, WriteError) as e:  # a read-only dataset folder, or a file where a folder should be
        logger.info(f"image screening memo not written ({e}): the next start checks every image again")
