"""Progress for every long loop: a tqdm bar on a terminal, periodic plain log lines otherwise.

    from utils.progress import progress
    for batch in progress(loader, desc="evaluate test", unit="batch"):
        ...

* On a terminal (stderr is a TTY) the loop gets a tqdm bar that disappears when it ends; log
  lines are written through the bar (:class:`TqdmLoggingHandler`), so they never glue to it.
* Elsewhere (a log file, a pipe, a sweep) a loop that runs longer than ``interval`` seconds logs a
  plain line ``<desc>: 120/400 (30%), 12s, eta 28s`` at most every ``interval`` seconds; short
  loops print nothing.
* Only the main process shows progress. ``EMOLAB_PROGRESS=0`` turns bars and lines off,
  ``EMOLAB_PROGRESS=bar`` forces bars, ``EMOLAB_PROGRESS=lines`` forces plain lines;
  :func:`set_progress_enabled` does the same from code (``TRAIN.PROGRESS_BAR False`` uses it).

This module sits in the bottom layer so that ``datasets/`` (image screening, caches, generation)
and ``trainers/`` share it.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Iterable, Iterator, Optional

logger = logging.getLogger("emolab.progress")

_enabled: Optional[bool] = None  # None = decided by the environment
DEFAULT_INTERVAL = 15.0


def set_progress_enabled(enabled: Optional[bool]) -> None:
    """Turn progress display on / off for this process (None = back to the environment's choice)."""
    global _enabled
    _enabled = enabled


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def progress_mode() -> str:
    """``bar`` | ``lines`` | ``off`` for this process."""
    env = os.environ.get("EMOLAB_PROGRESS", "").strip().lower()
    if _enabled is False or env in ("0", "off", "false", "no") or not _is_main():
        return "off"
    if env in ("bar", "lines"):
        return env
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "bar" if tty else "lines"


def format_seconds(s: float) -> str:
    s = int(max(0, s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}" if m else f"{sec}s"


class _PlainProgress:
    """Iterates ``iterable`` and logs a plain line at most every ``interval`` seconds."""

    def __init__(self, iterable: Iterable, total: Optional[int], desc: str, unit: str, interval: float) -> None:
        self.iterable, self.desc, self.unit, self.interval = iterable, desc, unit, interval
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total = total
        self.n = 0
        self.t0 = self.last = time.time()
        self.postfix = ""

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.time()
        if now - self.last >= self.interval:
            self.last = now
            elapsed = now - self.t0
            if self.total:
                pct = 100.0 * self.n / self.total
                eta = elapsed / max(self.n, 1) * (self.total - self.n)
                msg = f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct:.0f}%), {format_seconds(elapsed)}, eta {format_seconds(eta)}"
            else:
                msg = f"{self.desc}: {self.n} {self.unit}, {format_seconds(elapsed)}"
            logger.info(msg + (f", {self.postfix}" if self.postfix else ""))

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()

    def close(self) -> None:
        pass

    def __enter__(self) -> "_PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _NoProgress(_PlainProgress):
    def update(self, n: int = 1) -> None:
        self.n += n


def progress(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "", unit: str = "it",
             interval: float = DEFAULT_INTERVAL, leave: bool = False) -> Any:
    """Wrap ``iterable`` (or, with ``iterable=None``, make a manual counter with ``update(n)``)."""
    mode = progress_mode()
    it = iterable if iterable is not None else range(0)
    if mode == "bar":
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is a requirement, but progress must never break a run
            mode = "lines"
        else:
            return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True,
                        file=sys.stderr)
    if mode == "lines":
        return _PlainProgress(it, total, desc, unit, interval)
    return _NoProgress(it, total, desc, unit, interval)


class TqdmLoggingHandler(logging.StreamHandler):
    """A stream handler that writes through ``tqdm.write`` so log lines never glue to a bar.

    Without a stream it writes to whatever ``sys.stdout`` is when a record comes (a notebook's or a
    test's captured output, a redirected one), never to a stream that has since been closed.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._follow_stdout = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._follow_stdout:
                self.stream = sys.stdout
            msg = self.format(record)
            try:
                from tqdm import tqdm
            except ImportError:
                self.stream.write(msg + self.terminator)
            else:
                tqdm.write(msg, file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)
