"""Start-up image screening, so a bad file stops the run before training instead of mid-epoch.

``DATASET.IMAGE_CHECK``:
    exists  only check that every file exists (cheapest)
    header  open every file and parse its header: catches non-images, empty and mangled files
    decode  fully decode every file: also catches truncated images (reads all the pixels once)
``DATASET.SKIP_BAD_IMAGES``: False = one-line error naming the first bad files and their count;
True = drop them from their split and log (WARNING) how many were skipped, per split.
Missing files are always an error (the annotation and the disk disagree).
Files that passed before, unchanged in size and time, are not opened again (``datasets/screening.py``).
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image, UnidentifiedImageError

from utils.errors import DatasetError

from datasets.base import DatasetBase, Datum, missing_files_error
from datasets.formats.common import NativeOptions, check_image_mode

logger = logging.getLogger(__name__)

MAX_SHOWN = 3


def probe_image(path: str, mode: str) -> Optional[str]:
    """None if ``path`` passes the ``mode`` check, else the reason it fails (one line)."""
    try:
        with Image.open(path) as img:
            if mode == "decode":
                img.load()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


def find_bad_images(paths: Sequence[str], mode: str, workers: int = 8, memo: str = "",
                    now: Optional[Dict[str, Optional[Tuple[int, int]]]] = None) -> List[Tuple[str, str]]:
    """[(path, reason)] of the files failing the ``mode`` check, in input order (no check for "exists").
    With ``memo`` (a file: ``datasets/screening.py``) files that passed before, unchanged, are not opened;
    ``now``: the stamps of exactly ``paths`` when the caller has them already (one ``stat`` per file per start)."""
    if mode == "exists" or not paths:
        return []
    from datasets import screening

    unique = list(dict.fromkeys(paths))
    if memo:
        now = now if now is not None else screening.stamps(unique)
        if screening.all_passed(memo, now):  # the warm start: one line read, no image opened
            return []
    known = screening.load(memo)
    todo = [p for p in unique if not memo or now[p] is None or known.get(p) != now[p]]
    reasons = _probe_all(todo, mode, workers)
    if memo and todo:
        screening.save(memo, {p: now[p] for p in unique if reasons.get(p) is None and now[p] is not None}, now)
    return [(p, reasons[p]) for p in unique if reasons.get(p) is not None]


def _probe_all(unique: List[str], mode: str, workers: int) -> Dict[str, Optional[str]]:
    if not unique:
        return {}
    n_workers = max(1, min(workers, (os.cpu_count() or 1) * 2, len(unique)))
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        from utils.progress import progress

        checked = progress(pool.map(lambda p: probe_image(p, mode), unique), total=len(unique),
                           desc=f"screening images ({mode})", unit="img")
        return dict(zip(unique, checked))


def screen_images(ds: DatasetBase, mode: str, skip: bool) -> DatasetBase:
    """``ds`` after the start-up check (module docstring); a copy without bad images when ``skip``.

    Raises:
        DatasetError: missing files (count and first few), or unreadable ones when not ``skip``.
    """
    check_image_mode(mode)
    splits: Dict[str, List[Datum]] = {"train_x": ds.train_x, "val": ds.val, "test": ds.test}
    every = [d for data in splits.values() for d in data]
    from datasets import screening

    now = screening.stamps(dict.fromkeys(d.impath for d in every))  # one stat per file: existence and memo key
    missing = [p for p, s in now.items() if s is None]
    if missing:
        raise missing_files_error(missing, len(every), max_shown=MAX_SHOWN)
    bad = find_bad_images(list(now), mode, memo=screening_memo(ds, mode), now=now)
    if not bad:
        return ds.with_existing(frozenset(now))
    shown = "; ".join(f"{p} ({why})" for p, why in bad[:MAX_SHOWN]) + ("; ..." if len(bad) > MAX_SHOWN else "")
    if not skip:
        raise DatasetError(
            f"dataset {ds.name}: {len(bad)} unreadable image(s) (of {len(set(d.impath for d in every))}), e.g. {shown}; "
            "fix or remove them, or set DATASET.SKIP_BAD_IMAGES True to skip them"
        )
    bad_paths = {p for p, _ in bad}
    kept = {k: [d for d in data if d.impath not in bad_paths] for k, data in splits.items()}
    counts = ", ".join(f"{k.replace('_x', '')} {len(splits[k]) - len(kept[k])}" for k in splits)
    logger.warning("dataset %s: skipped %d unreadable image(s) (%s), e.g. %s", ds.name, len(bad), counts, shown)
    if not kept["train_x"]:
        raise DatasetError(f"dataset {ds.name}: no readable training images left after skipping {len(bad)} unreadable one(s)")
    return ds.replace(**kept).with_existing(frozenset(now))


def screening_memo(ds: DatasetBase, mode: str) -> str:
    """Where the passes of the ``mode`` check are remembered (``datasets/screening.py``)."""
    from datasets.screening import memo_path

    return memo_path(ds.root, mode)


def screen_from_config(ds: DatasetBase, cfg) -> DatasetBase:  # noqa: ANN001
    """:func:`screen_images` with DATASET.IMAGE_CHECK / SKIP_BAD_IMAGES."""
    opts = NativeOptions.from_config(cfg)
    return screen_images(ds, opts.image_check, opts.skip_bad_images)
