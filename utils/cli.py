"""What every command-line tool shares with train.py: one line per user error, no traceback, exit 2,
and no file overwritten that the tool did not write.

:func:`run_tool` wraps a tool's ``main``: an :class:`~utils.errors.EmoLabError` becomes ``error:
<message>``; an ``OSError`` (a folder given for a file, a full disk, no permission) becomes one line
naming the path; ``MemoryError`` one line too. :func:`check_overwrite` is called before a tool writes an
output file: an existing file is replaced only when the tool wrote it (``is_ours(path)``) or with
``--force``.
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Callable, Optional, Sequence

from .errors import EmoLabError


class ToolError(EmoLabError):
    """A tool's input or output cannot be used."""


def os_error_line(e: OSError, what: str = "") -> str:
    """One line for an OSError: the path it names and why."""
    path = e.filename or what
    why = {errno.ENOSPC: "no space left on device", errno.EISDIR: "it is a folder, not a file",
           errno.ENOTDIR: "a part of the path is a file, not a folder", errno.EEXIST: "it exists and is not a folder",
           errno.EACCES: "permission denied", errno.EROFS: "read-only file system"}.get(e.errno, e.strerror or str(e))
    return f"cannot use {path}: {why}" if path else why


def run_tool(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """``main(argv)`` with user errors as one ``error: ...`` line on stderr and exit status 2."""
    try:
        return main(argv)
    except EmoLabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
        return 2


def check_output_folder(path: str, flag: str = "--out") -> str:
    """``path`` created as a folder, or a one-line ToolError (a file, not writable)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ToolError(f"{flag} {path} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ToolError(f"{flag} {path}: {os_error_line(e)}") from None
    return path


def check_overwrite(path: str, force: bool, is_ours: Callable[[str], bool], flag: str = "--force") -> None:
    """Refuse to replace an existing ``path`` the tool did not write (``is_ours``) unless ``force``."""
    if os.path.isdir(path):
        raise ToolError(f"{path} is a folder: give a file name")
    if os.path.exists(path) and not force:
        try:
            ours = is_ours(path)
        except Exception:  # noqa: BLE001 - unreadable: not recognisably ours
            ours = False
        if not ours:
            raise ToolError(f"{path} exists and was not written by this tool: choose another name, or add {flag} "
                            "to replace it")


def starts_with(prefix: bytes) -> Callable[[str], bool]:
    """``is_ours`` for files whose first bytes identify the writer."""
    def check(path: str) -> bool:
        with open(path, "rb") as f:
            return f.read(len(prefix)) == prefix
    return check


#: the PNG text chunk the tools put in their figures (``Software``), read back by :func:`png_is_ours`
PNG_SOFTWARE = "EmoLab tools"


def png_is_ours(path: str) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        return str(im.info.get("Software", "")).startswith(PNG_SOFTWARE)
