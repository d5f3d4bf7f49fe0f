"""Stop signals (SIGTERM, SIGUSR1, SIGUSR2) handled like Ctrl-C.

A cluster scheduler ends a job with a signal: SLURM sends SIGTERM when a job is cancelled or
preempted (and SIGKILL a grace period later), and can be told to send another signal (``--signal``,
often SIGUSR1; submitit asks for SIGUSR2) some time before the time limit. ``python train.py``
treats them all like Ctrl-C: the signal raises :class:`StopSignal` (a ``KeyboardInterrupt``) in the main thread, so the step in
progress is dropped, every epoch already committed stays on disk (the commit is one atomic rename,
see ``trainers/engine/runstate.py``), one line says where a rerun resumes, and the process exits
with ``128 + signal number``, the code a shell and a scheduler read as "ended by that signal":

=========  ====
SIGINT     130  (Ctrl-C)
SIGTERM    143
SIGUSR1    138
SIGUSR2    140  (submitit's preemption signal; the job around train.py requeues it)
=========  ====

Only the first signal raises; a second one while the run is already stopping is ignored (the
scheduler's SIGKILL ends it anyway).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

#: the signals handled like Ctrl-C (SIGINT keeps Python's own KeyboardInterrupt)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopSignal(KeyboardInterrupt):
    """Raised in the main thread when a stop signal arrives; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def exit_code(exc: BaseException) -> int:
    """``128 + signal number`` for a :class:`StopSignal`, 130 for Ctrl-C (any other KeyboardInterrupt)."""
    if isinstance(exc, StopSignal):
        return 128 + exc.signum
    return 128 + int(signal.SIGINT)


def signal_name(exc: BaseException) -> str:
    """``SIGTERM`` / ``SIGUSR1`` / ``SIGUSR2`` for a :class:`StopSignal`, ``Ctrl-C`` otherwise."""
    return exc.name if isinstance(exc, StopSignal) else "Ctrl-C"


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM, SIGUSR1 and SIGUSR2 raise :class:`StopSignal` once; the earlier handlers
    come back afterwards. Does nothing outside the main thread (Python runs handlers only there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    state = {"raised": False}

    def handler(signum, frame):  # noqa: ARG001
        if state["raised"]:
            return
        state["raised"] = True
        raise StopSignal(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
