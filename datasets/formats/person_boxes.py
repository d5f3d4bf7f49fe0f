"""Person boxes per image, as written once by ``tools/detect_persons.py`` (UniEmoX's person branch).

File format (JSON)::

    {"format": "emolab-person-boxes", "version": 1,
     "detector": "<what produced the boxes>", "score_threshold": 0.8,
     "boxes": {"image/amusement/amusement_00001.jpg": [x1, y1, x2, y2, score], "...": null}}

Keys are image paths relative to the dataset folder (``/`` separators); a box is in pixels of
the original image (top-left inclusive, bottom-right exclusive); ``null`` means no person above
the threshold (the whole image is used).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from utils.errors import DatasetError
from utils.fileio import atomic_write

FORMAT = "emolab-person-boxes"
VERSION = 1
Box = Tuple[float, float, float, float]


def relative_key(impath: str, root: str) -> str:
    return os.path.relpath(impath, root).replace(os.sep, "/")


def write_person_boxes(path: str, boxes: Dict[str, Optional[Sequence[float]]], detector: str,
                       score_threshold: float) -> None:
    """Write ``boxes`` (relative image path -> ``[x1, y1, x2, y2, score]`` or None) atomically."""
    doc = {"format": FORMAT, "version": VERSION, "detector": detector, "score_threshold": float(score_threshold),
           "boxes": {k: (None if v is None else [round(float(x), 2) for x in v]) for k, v in sorted(boxes.items())}}

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=0)

    atomic_write(path, write)


def _check_box(value, key: str, path: str) -> Optional[Box]:
    if value is None:
        return None
    ok = isinstance(value, list) and len(value) in (4, 5) and all(isinstance(x, (int, float)) for x in value)
    if ok:
        x1, y1, x2, y2 = (float(x) for x in value[:4])
        ok = x2 > x1 and y2 > y1 and min(x1, y1) >= 0
    if not ok:
        raise DatasetError(f"{path}: box of {key!r} must be null or [x1, y1, x2, y2(, score)] with x2 > x1 >= 0 "
                           f"and y2 > y1 >= 0, got {value!r}")
    return x1, y1, x2, y2


def read_person_boxes(path: str, root: str, impaths: Sequence[str]) -> List[Optional[Box]]:
    """The box (or None) of each image in ``impaths``; DatasetError for a bad file or images without an entry."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"person boxes file not found: {path} (write it once with tools/detect_persons.py)") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read person boxes file {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("boxes"), dict):
        raise DatasetError(f"{path} is not a person boxes file (expected {{\"format\": \"{FORMAT}\", \"boxes\": {{...}}}})")
    table = doc["boxes"]
    keys = [relative_key(p, root) for p in impaths]
    absent = [k for k in keys if k not in table]
    if absent:
        raise DatasetError(f"{path}: {len(absent)} image(s) have no entry (of {len(keys)}), e.g. {absent[0]}; "
                           f"run tools/detect_persons.py again")
    return [_check_box(table[k], k, path) for k in keys]
