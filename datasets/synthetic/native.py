"""Synthetic emotion images written in the on-disk layouts of the public datasets.

:func:`write_native` renders images with the cue model of :mod:`datasets.synthetic.images` and lays them
out exactly like the real downloads (folder names, file names, annotation syntax), so every
reader is tested on files shaped like the real ones. It returns a :class:`Record` per image
holding the values written (parsed back from the written text where the format is text).

Formats (``FORMATS``; default folder name under a dataset root in ``DEFAULT_DIRS``):
    emotion6           ground_truth.txt + images/<class>/<n>.jpg (15 votes per image; some images
                       all-neutral, some tied)
    folders            FI: {train,val,test}/<class>/*.jpg, the 8 Mikels classes
    sentiment_folders  Flickr / Instagram: {train,val,test}/{negative,positive}/*.jpg
    class_folders      one unsplit set: <class>/*.jpg
    ldl                FlickrLDL: train/*.jpg, test/*.jpg + flickrldl_config.csv (image + 8 vote columns)
    ldl_images         images/*.jpg + twitterldl_config.csv, unsplit
    emoset             EmoSet-118K: info.json, {train,val,test}.json, image/, annotation/, person_boxes.json
    emotion_csv        EmoCoOp: train_data/*.jpg, test_data/*.jpg, data_csv/{train,test}_data_coco.csv
                       (filename,label; the 13 Dongba labels)
Same settings -> identical files.
"""
from __future__ import annotations

import csv
import json
import os
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from datasets.synthetic.images import CLASS_VA, CLASSNAMES as MIKELS, difficulty_level, render
from utils.registry import Registry

NATIVE_VERSION = 1
EMOTION6 = ("anger", "disgust", "fear", "joy", "sadness", "surprise")
EMOTION6_CUES = {"anger": "anger", "disgust": "disgust", "fear": "fear", "joy": "amusement", "sadness": "sadness", "surprise": "awe"}
EMOTION6_HEADER = ["[image_filename]", "[valence]", "[arousal]"] + [f"[prob. {c}]" for c in EMOTION6 + ("neutral",)]
LDL_COLUMNS = ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")  # file order
POSITIVE = ("amusement", "awe", "contentment", "excitement")
DONGBA = ("approval", "bloom", "calm", "devil", "fly", "guard", "negative", "neutral", "positive", "rest", "wilt", "work", "worried")
EMOSET_VOCAB = {
    "scene": ("amusement_park", "beach", "cemetery", "forest_path", "street"),
    "facial_expression": ("happy", "sad", "angry", "fear", "surprise", "disgust"),
    "human_action": ("dancing", "running", "crying", "hugging"),
    "object": ("Person", "Dog", "Human face", "Alarm clock", "Flower"),  # EmoSet names, some of several words
}


@dataclass(frozen=True)
class NativeSettings:
    """Images per class (train / val / test where the format has splits; their sum when unsplit)."""

    n_train_per_class: int = 4
    n_val_per_class: int = 1
    n_test_per_class: int = 2
    image_size: int = 32
    difficulty: str = "medium"
    seed: int = 0

    @property
    def total(self) -> int:
        return self.n_train_per_class + self.n_val_per_class + self.n_test_per_class


@dataclass
class Record:
    """One written image: its split ("" if unsplit), path relative to the output folder and targets."""

    split: str
    path: str
    label: str = ""
    labels: Tuple[str, ...] = ()
    dist: Optional[Dict[str, float]] = None
    va: Optional[Tuple[float, float]] = None
    attrs: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NativeFormat:
    """A registered on-disk layout: its writer, default folder under a dataset root, and seed key."""

    name: str
    write: Callable[[str, NativeSettings], List[Record]]
    default_dir: str
    seed_key: int  # part of every random draw's seed: fixed per format, so the files never change


#: format name -> :class:`NativeFormat`; each writer registers its formats with :func:`native_format`
NATIVE_FORMATS = Registry("synthetic data format")


def native_format(name: str, default_dir: str, seed_key: int, **options: Any) -> Callable:
    """Register the decorated writer ``fn(out_dir, settings, **options)`` as format ``name`` (a writer with a
    ``fmt`` parameter gets ``fmt=name``)."""

    def deco(fn: Callable) -> Callable:
        if any(f.seed_key == seed_key for _, f in NATIVE_FORMATS.items()):
            raise KeyError(f"synthetic format {name!r}: seed key {seed_key} is already used")
        if "fmt" in inspect.signature(fn).parameters:  # a writer of several formats is told which one
            options["fmt"] = name
        NATIVE_FORMATS.register(NativeFormat(name, functools.partial(fn, **options), default_dir, seed_key), name=name)
        return fn

    return deco


def _rng(settings: NativeSettings, fmt: str, *key: int) -> np.random.Generator:
    return np.random.default_rng([NATIVE_VERSION, settings.seed, NATIVE_FORMATS.get(fmt).seed_key, *key])


def _image(out_dir: str, rel: str, cue: str, settings: NativeSettings, rng: np.random.Generator, blend: str = "") -> None:
    """Render an image with the cues of Mikels class ``cue`` (optionally blended) as JPEG at ``rel``."""
    b = MIKELS.index(blend) if blend else -1
    img = render(MIKELS.index(cue), b, 0.35 if blend else 0.0, settings.image_size, difficulty_level(settings.difficulty), rng)
    path = os.path.join(out_dir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(img).save(path, format="JPEG", quality=90)


def _votes(rng: np.random.Generator, n_votes: int, n_cls: int, main: int, tie_with: int = -1) -> np.ndarray:
    """Integer vote counts with the most votes on ``main`` (tied with ``tie_with`` if >= 0)."""
    votes = np.zeros(n_cls, dtype=int)
    if tie_with >= 0:
        half = n_votes // 2
        votes[main] = votes[tie_with] = half
        rest = n_votes - 2 * half
    else:
        votes[main] = int(rng.integers(n_votes // 2 + 1, n_votes - 1))
        rest = n_votes - votes[main]
    others = [k for k in range(n_cls) if k not in (main, tie_with)]
    for _ in range(rest):
        votes[others[int(rng.integers(len(others)))]] += 1
    return votes


def _split_counts(settings: NativeSettings) -> Dict[str, int]:
    return {"train": settings.n_train_per_class, "val": settings.n_val_per_class, "test": settings.n_test_per_class}


def _write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


@native_format("emotion6", "Emotion6", seed_key=0)
def write_emotion6(out_dir: str, s: NativeSettings) -> List[Record]:
    """Emotion6: 15 votes per image over 7 categories; image 1 of anger and joy is all-neutral, image 2 of disgust tied."""
    lines, records = ["\t".join(EMOTION6_HEADER)], []
    for c, cls in enumerate(EMOTION6):
        for k in range(s.total):
            rng = _rng(s, "emotion6", c, k)
            rel = f"{cls}/{k + 1}.jpg"
            _image(out_dir, f"images/{rel}", EMOTION6_CUES[cls], s, rng)
            if k == 0 and cls in ("anger", "joy"):
                votes = np.zeros(7, dtype=int)
                votes[6] = 15
            else:
                votes = _votes(rng, 15, 7, c, tie_with=(c + 1) % 6 if (k == 1 and cls == "disgust") else -1)
            probs = [f"{v / 15:.6g}" for v in votes]
            v0, a0 = CLASS_VA[EMOTION6_CUES[cls]]
            va = [f"{float(np.clip(x + rng.normal(0, 0.5), 1, 9)):.1f}" for x in (v0, a0)]
            lines.append("\t".join([rel] + va + probs))
            values = [float(p) for p in probs]
            dist = dict(zip(EMOTION6 + ("neutral",), values))
            records.append(Record("", f"images/{rel}", cls, dist=dist, va=(float(va[0]), float(va[1]))))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "ground_truth.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return records


@native_format("folders", "FI", seed_key=1)
@native_format("sentiment_folders", "Flickr", seed_key=2, classes="sentiment")
@native_format("class_folders", "UBE", seed_key=3, split=False)
def write_folders(out_dir: str, s: NativeSettings, classes: str = "mikels", split: bool = True,
                  fmt: str = "folders") -> List[Record]:
    """Class-folder layouts: Mikels (FI) or sentiment (Flickr/Instagram) classes, split or unsplit."""
    names = list(MIKELS) if classes == "mikels" else ["negative", "positive"]
    splits = _split_counts(s) if split else {"": s.total}
    records = []
    for si, (sp, n) in enumerate(splits.items()):
        for c, cls in enumerate(names):
            for k in range(n):
                rng = _rng(s, fmt, si, c, k)
                cue = cls if classes == "mikels" else (POSITIVE if cls == "positive" else ("anger", "disgust", "fear", "sadness"))[k % 4]
                rel = "/".join(p for p in (sp, cls, f"{cls}_{k:05d}.jpg") if p)
                _image(out_dir, rel, cue, s, rng)
                records.append(Record(sp, rel, cls))
    return records


@native_format("ldl", "FlickrLDL", seed_key=4)
@native_format("ldl_images", "TwitterLDL", seed_key=5, split=False)
def write_ldl(out_dir: str, s: NativeSettings, split: bool = True, fmt: str = "ldl") -> List[Record]:
    """FlickrLDL-style votes of 11 annotators (TwitterLDL-style unsplit with 8); every 5th image tied."""
    n_votes = 11 if split else 8
    splits = {"train": s.n_train_per_class + s.n_val_per_class, "test": s.n_test_per_class} if split else {"": s.total}
    rows, records = [], []
    for si, (sp, n) in enumerate(splits.items()):
        for c, cls in enumerate(MIKELS):
            for k in range(n):
                rng = _rng(s, fmt, si, c, k)
                name = f"{cls}_{si}{k:04d}.jpg"
                _image(out_dir, f"{sp or 'images'}/{name}", cls, s, rng)
                tie = (c + 3) % 8 if k % 5 == 4 else -1
                votes = _votes(rng, n_votes, 8, c, tie_with=tie)
                by_name = dict(zip(MIKELS, votes.tolist()))
                rows.append([name] + [by_name[col] for col in LDL_COLUMNS])
                total = sum(by_name.values())
                top = max(by_name.values())
                records.append(Record(sp, f"{sp or 'images'}/{name}", cls, tuple(m for m in MIKELS if by_name[m] == top),
                                      dist={m: v / total for m, v in by_name.items()}))
    csv_name = "flickrldl_config.csv" if split else "twitterldl_config.csv"
    _write_csv(os.path.join(out_dir, csv_name), ["image", *LDL_COLUMNS], rows)
    return records


def _person_box(s: NativeSettings, si: int, c: int, k: int) -> Optional[List[float]]:
    """A person box ``[x1, y1, x2, y2, score]`` for images with a facial expression (every 3rd has none)."""
    if k % 3 == 2:
        return None
    rng = np.random.default_rng([NATIVE_VERSION, s.seed, NATIVE_FORMATS.get("emoset").seed_key, 99, si, c, k])
    size = s.image_size
    w, h = (float(v) for v in rng.uniform(0.35, 0.7, size=2) * size)
    x1, y1 = (float(v) for v in rng.uniform(0, 1, size=2) * (size - np.array([w, h])))
    return [round(x1, 2), round(y1, 2), round(x1 + w, 2), round(y1 + h, 2), round(float(rng.uniform(0.8, 1.0)), 3)]


@native_format("emoset", "EmoSet-118K", seed_key=6)
def write_emoset(out_dir: str, s: NativeSettings) -> List[Record]:
    """EmoSet-118K layout with attribute annotations (facial_expression/human_action absent for every 3rd image),
    and ``person_boxes.json`` as ``tools/detect_persons.py`` writes it (a box where a face is annotated)."""
    from datasets.formats.person_boxes import write_person_boxes

    boxes: Dict[str, Optional[List[float]]] = {}
    info: Dict[str, Any] = {}
    for key, vocab in (("emotion", MIKELS), *EMOSET_VOCAB.items()):
        info[key] = {"label2idx": {v: i for i, v in enumerate(vocab)}, "idx2label": {str(i): v for i, v in enumerate(vocab)}}
    for key in ("brightness", "colorfulness"):
        info[key] = {"label2idx": {f"{i / 10:.1f}": i for i in range(11)}}
    os.makedirs(out_dir, exist_ok=True)
    records = []
    for si, (sp, n) in enumerate(_split_counts(s).items()):
        entries = []
        for c, emo in enumerate(MIKELS):
            for k in range(n):
                rng = _rng(s, "emoset", si, c, k)
                image_id = f"{emo}_{si}{k:04d}"
                img_rel, ann_rel = f"image/{emo}/{image_id}.jpg", f"annotation/{emo}/{image_id}.json"
                _image(out_dir, img_rel, emo, s, rng)
                ann: Dict[str, Any] = {"name": image_id, "emotion": emo, "brightness": round(float(rng.integers(11)) / 10, 1),
                                       "colorfulness": round(float(rng.integers(11)) / 10, 1),
                                       "scene": EMOSET_VOCAB["scene"][int(rng.integers(5))],
                                       "object": sorted({EMOSET_VOCAB["object"][int(i)] for i in rng.integers(5, size=2)})}
                if k % 3 != 2:
                    ann["facial_expression"] = EMOSET_VOCAB["facial_expression"][int(rng.integers(6))]
                    ann["human_action"] = EMOSET_VOCAB["human_action"][int(rng.integers(4))]
                os.makedirs(os.path.join(out_dir, os.path.dirname(ann_rel)), exist_ok=True)
                with open(os.path.join(out_dir, ann_rel), "w", encoding="utf-8") as f:
                    json.dump(ann, f)
                entries.append([emo, image_id, img_rel, ann_rel])
                boxes[img_rel] = _person_box(s, si, c, k)
                records.append(Record(sp, img_rel, emo, attrs=dict(ann, image_id=image_id, person_box=boxes[img_rel])))
        with open(os.path.join(out_dir, f"{sp}.json"), "w", encoding="utf-8") as f:
            json.dump(entries, f)
    with open(os.path.join(out_dir, "info.json"), "w", encoding="utf-8") as f:
        json.dump(info, f)
    write_person_boxes(os.path.join(out_dir, "person_boxes.json"), boxes, "synthetic (datasets/synthetic/native.py)", 0.8)
    return records


@native_format("emotion_csv", "Dongba", seed_key=7)
def write_emotion_csv(out_dir: str, s: NativeSettings) -> List[Record]:
    """EmoCoOp layout: train_data/, test_data/, data_csv/{train,test}_data_coco.csv (filename,label).

    Every label is the first label of some images; a third of the images carry two or three labels.
    """
    records = []
    splits = {"train": s.n_train_per_class + s.n_val_per_class, "test": s.n_test_per_class}
    os.makedirs(os.path.join(out_dir, "data_csv"), exist_ok=True)
    for si, (sp, n) in enumerate(splits.items()):
        rows = []
        for c, lab in enumerate(DONGBA):
            for k in range(n):
                rng = _rng(s, "emotion_csv", si, c, k)
                extra = sorted({DONGBA[int(i)] for i in rng.integers(13, size=int(rng.integers(1, 3)))} - {lab}) if k % 3 == 1 else []
                labels = tuple([lab] + extra)
                name = f"{c:02d}_{k:04d}.jpg"
                _image(out_dir, f"{sp}_data/{name}", MIKELS[c % 8], s, rng, blend=MIKELS[DONGBA.index(extra[0]) % 8] if extra else "")
                rows.append([name, "_".join(labels)])
                records.append(Record(sp, f"{sp}_data/{name}", labels=labels))
        _write_csv(os.path.join(out_dir, "data_csv", f"{sp}_data_coco.csv"), ["filename", "label"], rows)
    return records


#: the registered formats (in seed-key order) and their default folders under a dataset root
FORMATS = tuple(n for n, _ in sorted(NATIVE_FORMATS.items(), key=lambda kv: kv[1].seed_key))
DEFAULT_DIRS = {n: NATIVE_FORMATS.get(n).default_dir for n in FORMATS}


def write_native(out_dir: str, fmt: str, settings: NativeSettings = NativeSettings()) -> List[Record]:
    """Write synthetic data in format ``fmt`` (see module docstring) into ``out_dir``."""
    if fmt not in NATIVE_FORMATS:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    difficulty_level(settings.difficulty)
    return NATIVE_FORMATS.get(fmt).write(out_dir, settings)
