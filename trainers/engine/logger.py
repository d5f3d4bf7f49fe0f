"""Run logging: ``log.txt`` (appended, never renamed), ``metrics.jsonl`` and TensorBoard.

Every line carries a timestamp (``HH:MM:SS`` on the console, the full date in ``log.txt``);
warnings say so. Console lines go through tqdm so they never glue to a progress bar.
Third-party chatter (gensim's lifecycle records, matplotlib, PIL) is kept at WARNING.
Only rank 0 writes files; other ranks log warnings to stderr.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
from typing import Any, Dict, Iterator, Optional

LOGGER_NAME = "emolab"
#: loggers of libraries whose INFO records are noise in a run log
QUIET_LOGGERS = ("gensim", "smart_open", "matplotlib", "PIL", "h5py", "urllib3", "fsspec")


class _Formatter(logging.Formatter):
    """``<time> [WARNING|ERROR ]<message>``; a record logged with ``extra={"bare": True}`` is written
    as its message alone (Dassl's ``Finish training`` line, which CoOp's parse_test_res.py matches
    exactly)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if getattr(record, "bare", False):
            return message
        level = f"{record.levelname} " if record.levelno >= logging.WARNING else ""
        text = f"{self.formatTime(record, self.datefmt)} {level}{message}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def quiet_third_party() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def setup_logging(output_dir: str, is_main: bool) -> logging.Logger:
    """Configure the root logger: stdout + ``output_dir/log.txt`` (append mode) on rank 0."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_emolab", False):
            root.removeHandler(h)
            h.close()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    from utils.progress import TqdmLoggingHandler

    quiet_third_party()
    stream = TqdmLoggingHandler()  # follows sys.stdout
    stream.setFormatter(_Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    stream._emolab = True  # type: ignore[attr-defined]
    root.addHandler(stream)
    if is_main:
        os.makedirs(output_dir, exist_ok=True)
        fh = logging.FileHandler(os.path.join(output_dir, "log.txt"), mode="a", encoding="utf-8")
        fh.setFormatter(_Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
        fh._emolab = True  # type: ignore[attr-defined]
        root.addHandler(fh)
    return logging.getLogger(LOGGER_NAME)


def format_value(key: str, value: float) -> str:
    """A metric for a log line: two decimals, four significant digits for small values."""
    return f"{value:.4g}" if abs(value) < 1 and value != 0 else f"{value:.2f}"


def summary_line(split: str, epoch: int, max_epoch: int, results: Dict[str, float], main_metric: str,
                 limit: int = 6) -> str:
    """``val [3/10] accuracy 71.25 | macro_f1 70.10 | ...``: the main metric first, at most ``limit``."""
    keys = [main_metric] if main_metric in results else []
    keys += [k for k in results if k != main_metric and k != "error" and not k.startswith(("f1_", "ap_", "acc_"))]
    shown = " | ".join(f"{k} {format_value(k, results[k])}" for k in keys[:limit])
    more = len(keys) - limit
    return f"{split} [{epoch}/{max_epoch}] {shown}" + (f" (+{more} more in metrics.jsonl)" if more > 0 else "")


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO


@contextlib.contextmanager
def quiet_evaluator() -> Iterator[None]:
    """Drop the evaluators' INFO lines (their ``* metric`` block) for the duration of the block."""
    filt = _DropInfo()
    loggers = [logging.getLogger("trainers.evaluation")] + [
        logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("trainers.evaluation.")
    ]
    for lg in loggers:
        lg.addFilter(filt)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(filt)


def checkpoint_summary(ckpt: Dict[str, Any], main_metric: str = "") -> str:
    """``epoch 10, val accuracy 75.00`` for one loaded checkpoint."""
    parts = [f"epoch {ckpt.get('epoch')}"]
    val = ckpt.get("val_result")
    if isinstance(val, dict) and val:
        key = main_metric if main_metric in val else next(iter(val))
        try:
            parts.append(f"val {key} {format_value(key, float(val[key]))}")
        except (TypeError, ValueError):
            pass
    return ", ".join(parts)


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, output_dir: str, enabled: bool, tensorboard: bool = True, trackers: Any = ()) -> None:
        self.enabled = enabled
        #: W&B / MLflow (trainers/engine/trackers.py): each gets what TensorBoard gets
        self.trackers = list(trackers) if enabled else []
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
            from utils.fileio import mend_cut_line
            from utils.killpoints import killpoint

            mend_cut_line(self.path)  # a line a kill cut short would swallow the next record
            text = "".join(json.dumps(r) + "\n" for r in records)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(text[: len(text) // 2])
                f.flush()
                killpoint(f"append:{os.path.basename(self.path)}")  # the kill harness: half a line written
                f.write(text[len(text) // 2:])
                f.flush()

    def rewrite(self, records: list) -> None:
        """Replace the file by exactly ``records`` (atomically; a resumed run's committed records)."""
        if not self.enabled:
            return
        from utils.fileio import atomic_write

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("".join(json.dumps(r) + "\n" for r in records))

        atomic_write(self.path, write)

    def scalars(self, tag: str, values: Dict[str, float], step: int) -> None:
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{tag}/{k}", v, step)
        for t in self.trackers:
            t.scalars(tag, values, step)

    def figure(self, tag: str, fig: Any, step: int = 0) -> None:
        """A matplotlib figure to TensorBoard and the trackers (not closed here)."""
        if self._tb is not None:
            self._tb.add_figure(tag, fig, step, close=False)
        for t in self.trackers:
            t.figure(tag, fig, step)

    def hparams(self, hparams: Dict[str, Any], metrics: Dict[str, float]) -> None:
        """The run's hyper-parameters with its final metrics (TensorBoard's HPARAMS tab)."""
        for t in self.trackers:
            t.hparams(hparams, metrics)
        if self._tb is None:
            return
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        self._tb.add_hparams(clean, {f"hparam/{k}": float(v) for k, v in metrics.items()}, run_name=".")

    def close(self) -> None:
        trackers, self.trackers = self.trackers, []
        for t in trackers:
            t.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
