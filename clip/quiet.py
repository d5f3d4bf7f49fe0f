"""Keep open_clip's chatter out of the project's logs.

open_clip logs through the *root* logger: INFO lines for every model / tokenizer it creates,
and "No pretrained weights loaded ... initialized randomly" even when this package loads the
weights right after creation. While :func:`quiet_open_clip` is active those records are
dropped; open_clip's other warnings and errors pass.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator


class _OpenClipFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        import open_clip

        self._prefix = os.path.dirname(os.path.abspath(open_clip.__file__))

    def filter(self, record: logging.LogRecord) -> bool:
        if not os.path.abspath(record.pathname).startswith(self._prefix):
            return True
        if record.levelno <= logging.INFO:
            return False
        return not str(record.msg).startswith("No pretrained weights loaded")


@contextlib.contextmanager
def quiet_open_clip() -> Iterator[None]:
    """Drop open_clip's INFO records and its random-init warning for the duration of the block."""
    root = logging.getLogger()
    filt = _OpenClipFilter()
    root.addFilter(filt)
    try:
        yield
    finally:
        root.removeFilter(filt)
