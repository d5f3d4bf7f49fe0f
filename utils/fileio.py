"""File helpers shared by every package: atomic writes, safe tensor loading, a process lock.

Everything the framework writes (checkpoints, caches, anchor files, generated data) goes through
:func:`atomic_torch_save` or :func:`atomic_write`, so a crash never leaves a half-written file
under the final name; tensor files are read with :func:`safe_torch_load` (``weights_only=True``,
declared sizes checked first, a one-line :class:`CheckpointError` naming the file otherwise).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Dict, Iterator, List, Optional

from .errors import CheckpointError

#: The repository's root folder (parent of ``utils/``): relative paths in configs may be given from here.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file to ``path`` (parents created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        write(tmp)
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
