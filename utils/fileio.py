"""File helpers shared by every package: atomic writes, safe tensor loading, a process lock.

Everything the framework writes (checkpoints, caches, anchor files, generated data) goes through
:func:`atomic_torch_save` or :func:`atomic_write`, so a crash never leaves a half-written file
under the final name; tensor files are read with :func:`safe_torch_load` (``weights_only=True``,
declared sizes checked first, a one-line :class:`CheckpointError` naming the file otherwise).
"""
from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Callable, Dict, Iterator, List, Optional

from .errors import CheckpointError, WriteError

#: The repository's root folder (parent of ``utils/``): relative paths in configs may be given from here.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]


_TMP_RE = re.compile(r"\.tmp\.(\d+)$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


def remove_stale_temporaries(directory: str, depth: int = 2, any_pid: bool = False, prefix: str = "") -> List[str]:
    """Delete the ``<name>.tmp.<pid>`` files a killed writer left in ``directory`` (and ``depth - 1``
    levels of sub-folders): those of processes no longer running, or of every other process with
    ``any_pid`` (the caller holds the folder's lock, so nobody else writes there). Only names starting
    with ``prefix`` are considered. Returns the removed paths."""
    removed: List[str] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False):
                if depth > 1 and not prefix:
                    removed += remove_stale_temporaries(e.path, depth - 1, any_pid)
                continue
        except OSError:
            continue
        m = _TMP_RE.search(e.name)
        if not m or not e.name.startswith(prefix):
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or (not any_pid and _pid_alive(pid)):
            continue
        try:
            os.remove(e.path)
            removed.append(e.path)
        except OSError:
            pass
    return removed


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file to ``path`` (parents created).

    Temporaries of ``path`` left by killed processes (``path.tmp.<pid>``) are deleted first; the
    kill harness may stop the process between the two steps (instant ``write:<file name>``)."""
    from .killpoints import killpoint

    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a setting naming a file where a folder belongs
        raise WriteError(f"cannot write {path}: {folder} (or a folder above it) is a file, not a folder") from None
    remove_stale_temporaries(folder, depth=1, prefix=os.path.basename(path) + ".tmp.")
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        write(tmp)
        killpoint(f"write:{os.path.basename(path)}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through a temporary file."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def safe_torch_load(path: str, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; one-line errors for missing/bad files."""
    import torch

    from .safe_unpickle import check_tensor_sizes, check_torch_file

    if not os.path.isfile(path):
        raise CheckpointError(f"{what} not found: {path}")
    try:  # declared sizes before reading, tensors larger than their storage after (utils.safe_unpickle)
        budget = check_torch_file(path)
        obj = torch.load(path, map_location="cpu", weights_only=True)
        check_tensor_sizes(obj, budget)
        return obj
    except CheckpointError as e:
        raise CheckpointError(f"cannot read {what} {path}: {e}") from None
    except MemoryError:
        raise CheckpointError(f"cannot read {what} {path}: reading it ran out of memory (a damaged or crafted file)") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot read {what} {path}: {first}") from None


def mend_cut_line(path: str) -> bool:
    """Cut off a last line without its newline (what a kill during an append leaves); True if one was."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return False
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return False
            pos = size
            while pos > 0:  # back to the last newline, 64 KiB at a time
                step = min(pos, 1 << 16)
                f.seek(pos - step)
                chunk = f.read(step)
                i = chunk.rfind(b"\n")
                if i >= 0:
                    pos = pos - step + i + 1
                    break
                pos -= step
            f.truncate(pos)
            return True
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """An exclusive inter-process lock held on ``path`` (a no-op where fcntl is missing)."""
    with open(path, "a", encoding="utf-8") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def optional_path(path: Optional[str]) -> str:
    """``path`` as given when it exists, else relative to the repository root when that exists."""
    if not path or os.path.isabs(path) or os.path.exists(path):
        return path or ""
    alt = os.path.join(REPO_ROOT, path)
    return alt if os.path.exists(alt) else path


def downloads_off(host: str, timeout: float = 3.0) -> str:
    """Why a download from ``host`` cannot happen now ("" when it may be tried).

    ``HF_HUB_OFFLINE`` or ``EMOLAB_OFFLINE`` set to a true value turns downloads off; otherwise a
    TCP connection to ``host:443`` is tried for ``timeout`` seconds (skipped behind an HTTP(S)
    proxy), so a machine without network fails in seconds instead of after a client's retries.
    """
    flags = [k for k in ("HF_HUB_OFFLINE", "EMOLAB_OFFLINE") if os.environ.get(k, "").strip() not in ("", "0", "false", "False")]
    if flags:
        return f"downloads are off ({'/'.join(flags)})"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return ""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return f"{host} is unreachable"
    return ""


def read_records(path: str) -> List[Dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (``path`` is the file or the run folder), in order.

    Each is ``{"split", "epoch", "final", "metrics": {...}, ...}``; lines that are not such JSON
    objects (a line cut by a kill before the run state restored it) are skipped. ``[]`` without a file.
    """
    import json

    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    out: List[Dict[str, Any]] = []
    if not os.path.isfile(path):
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("metrics"), dict):
                out.append(rec)
    return out
