"""Run logging: ``log.txt`` (appended, never renamed), ``metrics.jsonl`` and TensorBoard.

Only rank 0 writes files; other ranks log warnings to stderr.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import Any, Dict, Optional

LOGGER_NAME = "emolab"


def setup_logging(output_dir: str, is_main: bool) -> logging.Logger:
    """Configure the root logger: stdout + ``output_dir/log.txt`` (append mode) on rank 0."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_emolab", False):
            root.removeHandler(h)
            h.close()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(message)s")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    stream._emolab = True  # type: ignore[attr-defined]
    root.addHandler(stream)
    if is_main:
        os.makedirs(output_dir, exist_ok=True)
        fh = logging.FileHandler(os.path.join(output_dir, "log.txt"), mode="a", encoding="utf-8")
        fh.setFormatter(fmt)
        fh._emolab = True  # type: ignore[attr-defined]
        root.addHandler(fh)
    return logging.getLogger(LOGGER_NAME)


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, output_dir: str, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._tb: Optional[Any] = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard"))
            except ImportError:
                logging.getLogger(LOGGER_NAME).warning("tensorboard is not installed: no TensorBoard logs")

    #: records of the epoch in progress, written out only after the epoch's commit (None: write at once)
    held: Optional[list] = None

    def write(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {**record, "time": now()}
        if self.held is not None:
            self.held.append(record)
            return
        self.append([record])

    def append(self, records: list) -> None:
        """Append ``records`` to the file (one write; the run state holds them already)."""
        if self.enabled and records:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r) + "\n" for r in records))
                f.flush()

    def rewrite(self, records: list) -> None:
        """Replace the file by exactly ``records`` (atomically; a resumed run's committed records)."""
        if not self.enabled:
            return
        from configs.fileio import atomic_write

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("".join(json.dumps(r) + "\n" for r in records))

        atomic_write(self.path, write)

    def scalars(self, tag: str, values: Dict[str, float], step: int) -> None:
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{tag}/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
