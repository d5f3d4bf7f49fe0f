"""The shell commands of README.md and docs/*.md run as written, so the docs cannot drift from the code.

A fenced ``bash`` block preceded by the line ``<!-- test: run -->`` is executed (``bash -e``) in a
fresh folder that links the repository's files (``output/``, ``data/`` and ``cache/`` are the
folder's own); the blocks of one page run in order in the same folder, so a later block may
evaluate what an earlier one trained. A ``text`` block preceded by ``<!-- test: expect -->`` right
after a run block lists lines that must appear in that block's output (stdout and stderr). A bash
block that uses the synthetic data must carry ``<!-- test: run -->`` or ``<!-- test: skip: <why> -->``.

Run one page: ``python -m pytest -q tests/test_docs.py -k README``.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"^<!--\s*test:\s*(run|expect|skip)\b(.*?)-->\s*$")
OWN = ("output", "data", "cache")
SYNTHETIC = re.compile(r"synthetic|tools/demo\.py")


def blocks(text: str) -> List[Tuple[str, Optional[str], str, int]]:
    """``(language, mark, body, line)`` for every fenced block; ``mark`` from the line above it."""
    lines = text.splitlines()
    out = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m and m.group(1):
            mark = None
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            if j >= 0:
                mm = MARK.match(lines[j].strip())
                if mm:
                    mark = mm.group(1)
            k = i + 1
            while k < len(lines) and not lines[k].startswith("```"):
                k += 1
            out.append((m.group(1), mark, "\n".join(lines[i + 1:k]), i + 1))
            i = k + 1
        else:
            i += 1
    return out


def runnable(page: Path) -> List[Tuple[str, List[str], int]]:
    """``(script, expected lines, line)`` of the page's run blocks, in order."""
    bs = blocks(page.read_text(encoding="utf-8"))
    out = []
    for n, (lang, mark, body, line) in enumerate(bs):
        if mark == "run" and lang in ("bash", "sh"):
            expect: List[str] = []
            if n + 1 < len(bs) and bs[n + 1][1] == "expect":
                expect = [s.strip() for s in bs[n + 1][2].splitlines() if s.strip()]
            out.append((body, expect, line))
    return out


def test_every_synthetic_command_is_marked():
    """A command on the synthetic data is either run by this test or says why not."""
    unmarked = []
    for page in PAGES:
        for lang, mark, body, line in blocks(page.read_text(encoding="utf-8")):
            if lang in ("bash", "sh") and SYNTHETIC.search(body) and mark not in ("run", "skip"):
                unmarked.append(f"{page.relative_to(ROOT)}:{line}")
    assert not unmarked, "bash blocks on the synthetic data without <!-- test: run --> or <!-- test: skip: -->: " \
        + ", ".join(unmarked)


def _workdir(tmp: Path) -> Path:
    for entry in ROOT.iterdir():
        if entry.name not in OWN and not entry.name.startswith("."):
            (tmp / entry.name).symlink_to(entry)
    return tmp


@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p)], ids=lambda p: p.name)
def test_page_commands_run_and_print_what_the_page_says(page, tmp_path):
    work = _workdir(tmp_path)
    env = {**os.environ, "EMOLAB_PROGRESS": "0", "PYTHONPATH": str(work)}
    for script, expect, line in runnable(page):
        p = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=work, env=env,
                           capture_output=True, text=True)
        output = p.stdout + p.stderr
        where = f"{page.relative_to(ROOT)}:{line}"
        assert p.returncode == 0, f"{where} exited with {p.returncode}:\n{output[-3000:]}"
        missing = [s for s in expect if s not in output]
        assert not missing, f"{where}: output lacks {missing}:\n{output[-3000:]}"
