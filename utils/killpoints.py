"""Named instants at which a test can kill the process (the kill harness of ``tests/test_killpoints.py``).

The engine and the caches call :func:`killpoint` at the instants where a crash matters: before
and after each module's checkpoint file, after the epoch's commit and before its metrics record,
at an early-stop epoch, during evaluation and during cache building. Nothing happens unless the
environment variable ``EMOLAB_KILL_AT`` names the instant::

    EMOLAB_KILL_AT="after_save:prompt_learner@2"   # at epoch 2 (1-based), after that module's file
    EMOLAB_KILL_AT="eval:val@3,cache:kmeans"       # several instants, the first one reached wins

A name may be a glob (``write:captions-*.pt``: the atomic write of any such file, between its temporary
file and the rename). ``name@E`` matches only at epoch ``E``; ``name#N`` at the N-th time the instant is reached in this
process; a bare ``name`` the first time. The process then sends itself ``SIGKILL`` (no cleanup runs,
exactly like a power cut), or, with ``EMOLAB_KILL_MODE=raise``, raises :class:`SimulatedKill` (a
``BaseException`` no handler of the framework catches) so in-process tests can do the same faster;
``EMOLAB_KILL_MODE=stop`` freezes it instead (SIGSTOP: a rank that stops answering; ``hang`` sleeps), and
``EMOLAB_KILL_RANK=R`` limits all this to the process of rank ``R``.
"""
from __future__ import annotations

import fnmatch
import os
import signal
from collections import Counter
from typing import Optional

_seen: Counter = Counter()


class SimulatedKill(BaseException):
    """Raised instead of SIGKILL when ``EMOLAB_KILL_MODE=raise``."""


def reset() -> None:
    """Forget how often each instant was reached (between in-process runs)."""
    _seen.clear()


def killpoint(name: str, epoch: Optional[int] = None) -> None:
    """Kill the process here if ``EMOLAB_KILL_AT`` names this instant (see the module docstring)."""
    spec = os.environ.get("EMOLAB_KILL_AT")
    if not spec:
        return
    only = os.environ.get("EMOLAB_KILL_RANK")
    if only is not None and only != os.environ.get("RANK", "0"):
        return
    _seen[name] += 1
    for item in spec.split(","):
        item = item.strip()
        want, at_epoch, nth = item, None, None
        if "@" in item:
            want, e = item.rsplit("@", 1)
            at_epoch = int(e)
        elif "#" in item:
            want, n = item.rsplit("#", 1)
            nth = int(n)
        if want != name and not fnmatch.fnmatchcase(name, want):
            continue
        if at_epoch is not None and epoch != at_epoch:
            continue
        if nth is not None and _seen[name] != nth:
            continue
        if at_epoch is None and nth is None and _seen[name] != 1:
            continue
        mode = os.environ.get("EMOLAB_KILL_MODE")
        if mode == "raise":
            raise SimulatedKill(f"{name}" + (f"@{epoch}" if epoch is not None else ""))
        if mode == "hang":
            import time

            time.sleep(24 * 3600)
        os.kill(os.getpid(), signal.SIGSTOP if mode == "stop" else signal.SIGKILL)
