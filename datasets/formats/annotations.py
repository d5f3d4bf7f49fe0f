"""Parse annotation CSVs into :class:`Datum` lists (used by CSVDataset and SyntheticEmotion).

Recognised columns (names configurable where noted):
    path (PATH_COLUMN; auto: path, impath, image, filename, file)  image path under the image dir
    label (LABEL_COLUMN)       a class name or index; names joined by SEPARATOR = multi-label
    labels                     class names joined by SEPARATOR (multi-label)
    dist_<class> for every class  label distribution (renormalised to sum 1)
    valence, arousal           valence-arousal
    split (SPLIT_COLUMN)       train | val | test (else every row goes to ``default_split``)
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

import pandas as pd

from utils.errors import DatasetError

from datasets.base import Datum

logger = logging.getLogger(__name__)

PATH_COLUMNS = ("path", "impath", "image", "filename", "file")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class CSVSpec:
    """Column names and the label separator (plain values; see the module docstring)."""

    path_column: str = ""
    label_column: str = ""
    separator: str = "_"
    split_column: str = "split"


@dataclass
class ParsedCSV:
    """Rows per split and the targets every row carries."""

    splits: Dict[str, List[Datum]] = field(default_factory=lambda: {"train": [], "val": [], "test": []})
    targets: Set[str] = field(default_factory=set)


def read_table(path: str) -> pd.DataFrame:
    """All cells as stripped strings; DatasetError if the file is missing, unreadable or empty."""
    if not os.path.isfile(path):
        raise DatasetError(f"annotation file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot parse CSV {path}: {str(e).splitlines()[0]}") from None
    if df.empty:
        raise DatasetError(f"CSV {path} has no rows")
    df.columns = [str(c).strip() for c in df.columns]
    return df.apply(lambda col: col.str.strip())


def _columns(df: pd.DataFrame, path: str, spec: CSVSpec) -> Tuple[str, Optional[str], Optional[str]]:
    """(path column, label column or None, labels column or None)."""
    cols = list(df.columns)
    if spec.path_column:
        if spec.path_column not in cols:
            raise DatasetError(f"{path}: path column {spec.path_column!r} not found (columns: {', '.join(cols)})")
        pcol = spec.path_column
    else:
        found = [c for c in PATH_COLUMNS if c in cols]
        if not found:
            raise DatasetError(f"{path}: no path column (looked for {', '.join(PATH_COLUMNS)}; set DATASET.CSV.PATH_COLUMN)")
        pcol = found[0]
    if spec.label_column and spec.label_column not in cols:
        raise DatasetError(f"{path}: label column {spec.label_column!r} not found (columns: {', '.join(cols)})")
    lcol = spec.label_column or ("label" if "label" in cols else None)
    mcol = "labels" if "labels" in cols and lcol != "labels" else None
    return pcol, lcol, mcol


def infer_classnames(frames: Sequence[Tuple[str, pd.DataFrame]], spec: CSVSpec) -> List[str]:
    """Class names from the data: dist_<c> columns (in order), else names in labels/label columns.

    A label column of integers only gives ``class_0 .. class_K``.
    """
    for _, df in frames:
        dist_cols = [c[5:] for c in df.columns if c.startswith("dist_")]
        if dist_cols:
            return dist_cols
    names: Set[str] = set()
    ints: Set[int] = set()
    for path, df in frames:
        _, lcol, mcol = _columns(df, path, spec)
        if mcol:
            names.update(p for v in df[mcol] for p in v.split(spec.separator) if p)
        if lcol:
            values = [v for v in df[lcol] if v]
            if mcol is None and lcol == "labels":
                names.update(p for v in values for p in v.split(spec.separator) if p)
            elif all(v.lstrip("-").isdigit() for v in values) and not names:
                ints.update(int(v) for v in values)
            else:
                names.update(values)
    if names:
        return sorted(names)
    if ints:
        return [f"class_{i}" for i in range(max(ints) + 1)]
    raise DatasetError(f"cannot infer the class list from {', '.join(p for p, _ in frames)}: no label columns")


def _parse_label(value: str, name2idx: Dict[str, int], num: int, sep: str, where: str, multi_ok: bool) -> Tuple[int, ...]:
    """Class indices in one label cell (one for a single label)."""
    if value in name2idx:
        return (name2idx[value],)
    if value.isdigit() and int(value) < num:
        return (int(value),)
    parts = [p for p in value.split(sep)] if sep and multi_ok else [value]
    if len(parts) > 1 and all(p in name2idx for p in parts):
        return tuple(dict.fromkeys(name2idx[p] for p in parts))
    shown = ", ".join(list(name2idx)[:8]) + (", ..." if num > 8 else "")
    bad = next((p for p in parts if p not in name2idx), value) if len(parts) > 1 else value
    raise DatasetError(f"{where}: label {bad!r} is not in the class list ({num} classes: {shown})")


def _floats(values: Sequence[str], where: str, what: str) -> Tuple[float, ...]:
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise DatasetError(f"{where}: {what} must be numbers, got {list(values)}") from None


def parse_table(
    df: pd.DataFrame,
    csv_path: str,
    *,
    root: str,
    image_dir: str,
    classnames: Sequence[str],
    spec: CSVSpec = CSVSpec(),
    default_split: str = "train",
    force_split: bool = False,
) -> ParsedCSV:
    """Datums of one CSV, per split.

    Args:
        root: the dataset folder; no image may resolve outside it.
        image_dir: folder the relative image paths start from (inside ``root``).
        force_split: put every row in ``default_split`` even if the CSV has a split column.

    Raises:
        DatasetError: naming file, line and value for a bad label, path, split or number.
    """
    pcol, lcol, mcol = _columns(df, csv_path, spec)
    name2idx = {n: i for i, n in enumerate(classnames)}
    num = len(classnames)
    dist_cols = [f"dist_{c}" for c in classnames]
    present = [c for c in dist_cols if c in df.columns]
    if present and len(present) != num:
        missing = [c for c in dist_cols if c not in df.columns]
        raise DatasetError(f"{csv_path}: distribution columns incomplete, missing {', '.join(missing[:4])}")
    has_dist = bool(present)
    has_va = "valence" in df.columns and "arousal" in df.columns
    scol = spec.split_column if spec.split_column in df.columns and not force_split else None
    if lcol is None and mcol is None and not has_dist:
        raise DatasetError(f"{csv_path}: no label column (expected 'label', 'labels' or dist_<class>; set DATASET.CSV.LABEL_COLUMN)")
    root_abs = os.path.abspath(root)
    base = os.path.abspath(os.path.join(root_abs, image_dir))
    records = df.to_dict("records")
    singles: List[Optional[Tuple[int, ...]]] = []
    out = ParsedCSV()
    rows: List[Tuple[str, Datum]] = []
    for i, row in enumerate(records):
        where = f"{csv_path} line {i + 2}"
        rel = row[pcol]
        if not rel:
            raise DatasetError(f"{where}: empty image path")
        full = os.path.abspath(rel if os.path.isabs(rel) else os.path.join(base, rel))
        if os.path.commonpath([root_abs, full]) != root_abs:
            raise DatasetError(f"{where}: image path {rel!r} escapes the dataset root {root_abs}")
        single = _parse_label(row[lcol], name2idx, num, spec.separator, where, True) if lcol else None
        singles.append(single)
        labels: Tuple[int, ...] = ()
        if mcol:
            labels = tuple(k for p in row[mcol].split(spec.separator) if p for k in _parse_label(p, name2idx, num, "", where, False))
        dist = None
        if has_dist:
            dist = _floats([row[c] for c in dist_cols], where, "dist_<class> values")
            total = sum(dist)
            if total <= 0 or min(dist) < 0:
                raise DatasetError(f"{where}: label distribution must be non-negative with a positive sum")
            dist = tuple(p / total for p in dist)
        va = _floats([row["valence"], row["arousal"]], where, "valence/arousal") if has_va else None
        split = default_split
        if scol:
            split = SPLIT_ALIASES.get(row[scol].lower(), "")
            if not split:
                raise DatasetError(f"{where}: split {row[scol]!r} is not train, val or test")
        rows.append((split, Datum(impath=full, labels=labels, dist=dist, va=va)))
    label_is_multi = any(s is not None and len(s) > 1 for s in singles) or lcol == "labels"
    for (split, d), single in zip(rows, singles):
        if single is not None and label_is_multi and not mcol:
            d.labels = single
        elif single is not None and not label_is_multi:
            d.label = single[0]
        if d.label < 0 and d.dist is not None and not lcol:
            d.label = max(range(num), key=d.dist.__getitem__)  # dominant emotion
        d.classname = classnames[d.label] if d.label >= 0 else "_".join(classnames[k] for k in d.labels)
        out.splits[split].append(d)
    if (lcol and not label_is_multi) or (has_dist and not lcol):
        out.targets.add("label")
    if mcol or label_is_multi:
        out.targets.add("labels")
    if has_dist:
        out.targets.add("dist")
    if has_va:
        out.targets.add("va")
    return out
