"""Distributed helpers (torchrun / DistributedDataParallel).

A run started by ``torchrun`` has RANK / WORLD_SIZE / LOCAL_RANK in its environment;
:func:`init_distributed` then joins the process group (NCCL on GPU, gloo on CPU).
Everything here degrades to single-process no-ops otherwise.
"""
from __future__ import annotations

import datetime
import os
from typing import Any, List

import torch
import torch.distributed as dist

from utils.errors import EmoLabError
from utils.killpoints import killpoint


_TIMEOUT = {"seconds": 600.0}


class RankStopped(EmoLabError):
    """Another process of the run stopped answering within ``TRAIN.DIST_TIMEOUT``."""


def init_distributed(use_cuda: bool, timeout_s: float = 600.0) -> torch.device:
    """Join the process group if launched by torchrun; return this process's device. Collectives
    wait at most ``timeout_s`` seconds (``TRAIN.DIST_TIMEOUT``) for the other processes."""
    cuda = use_cuda and torch.cuda.is_available()
    _TIMEOUT["seconds"] = float(timeout_s)
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
        _start_heartbeat()
    if cuda:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


_CALLS = {"n": 0}


def _store():
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no store: the error cannot name the rank
        return None


#: seconds between two heartbeats of a rank; a rank whose heartbeat stays still for HEARTBEAT_WAIT is frozen
HEARTBEAT_S = 1.0
HEARTBEAT_WAIT = 3.5


def _start_heartbeat() -> None:
    """A daemon thread that counts up ``emolab/alive/<rank>`` in the key-value store every second.

    A rank stopped by SIGSTOP, a debugger or a frozen machine stops counting even when it had
    already entered the collective that timed out (its collective count then looks up to date)."""
    import threading
    import time

    store, me = _store(), get_rank()
    if store is None:
        return

    def beat() -> None:
        n = 0
        while True:
            n += 1
            try:
                store.set(f"emolab/alive/{me}", str(n))
            except Exception:  # noqa: BLE001 - the store is gone: the run is ending
                return
            time.sleep(HEARTBEAT_S)

    threading.Thread(target=beat, name="emolab-heartbeat", daemon=True).start()


def _read_counts(store, prefix: str, ranks: List[int]) -> dict:
    out = {}
    for r in ranks:
        key = f"{prefix}/{r}"
        try:
            out[r] = int(store.get(key)) if store.check([key]) else 0
        except Exception:  # noqa: BLE001 - unreadable: say nothing about that rank
            continue
    return out


def stopped_ranks(store, me: int, world: int, n: int) -> List[int]:
    """The ranks that stopped answering: behind this one's collective count ``n``, or with a heartbeat
    that did not move for :data:`HEARTBEAT_WAIT` seconds."""
    import time

    others = [r for r in range(world) if r != me]
    entered = _read_counts(store, "emolab/collectives", others)
    behind = {r for r, c in entered.items() if c < n}
    beats = _read_counts(store, "emolab/alive", others)
    if beats:
        time.sleep(HEARTBEAT_WAIT)
        later = _read_counts(store, "emolab/alive", others)
        behind |= {r for r, c in beats.items() if r in later and later[r] == c}
    return sorted(behind)


def _checked(what: str, fn) -> Any:
    """Run a collective; a process that stopped answering becomes one line naming its rank.

    Before each collective every rank records in the process group's key-value store how many
    collectives it has entered, and a heartbeat thread counts up while the process runs; when a
    collective times out (``TRAIN.DIST_TIMEOUT``), the ranks whose count is behind this one's, or whose
    heartbeat stands still, are the ones that stopped answering."""
    _CALLS["n"] += 1
    n, me = _CALLS["n"], get_rank()
    store = _store()
    if store is not None:
        try:
            store.set(f"emolab/collectives/{me}", str(n))
        except Exception:  # noqa: BLE001
            store = None
    killpoint("collective")  # a rank frozen here has announced this collective but never joins it
    try:
        return fn()
    except RuntimeError:
        behind = stopped_ranks(store, me, get_world_size(), n) if store is not None else []
        who = ("rank " + ", ".join(map(str, behind))) if behind else "another process"
        raise RankStopped(f"{who} stopped answering during {what} (no reply within TRAIN.DIST_TIMEOUT "
                          f"{_TIMEOUT['seconds']:g} s); this is rank {me}") from None


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order (a one-element list without a process group)."""
    if not is_dist():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    _checked("all_gather_object", lambda: dist.all_gather_object(out, obj))
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    _checked("broadcast_object", lambda: dist.broadcast_object_list(box, src=src))
    return box[0]


def any_rank(flag: bool) -> bool:
    """True if ``flag`` is true on any rank (used to stop all ranks together)."""
    if not is_dist():
        return flag
    return any(all_gather_object(bool(flag)))


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
