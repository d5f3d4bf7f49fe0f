"""Native dataset formats: parsed targets against the values written in each real layout."""
from __future__ import annotations

import json
import logging
import os

import pytest

from configs.config import merge_from_file, merge_from_list

from trainers import get_cfg
from datasets import build_data_loader, build_dataset
from datasets.formats.emotion6 import EMOTIONS, class_targets, read_ground_truth
from datasets.synthetic.images import CLASSNAMES as MIKELS
from datasets.synthetic.native import DONGBA, EMOSET_VOCAB, NativeSettings, write_native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = NativeSettings(n_train_per_class=5, n_val_per_class=1, n_test_per_class=1, image_size=16)
E7 = EMOTIONS + ("neutral",)


def cfg_for(yaml_name: str, root, *opts: str):
    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(ROOT, "configs", "datasets", yaml_name))
    merge_from_list(cfg, ["DATASET.ROOT", str(root), *opts])
    return cfg


def written(tmp_path, fmt: str, folder: str):
    """Write ``fmt`` into tmp_path/folder; returns {relative path: Record}."""
    return {r.path: r for r in write_native(str(tmp_path / folder), fmt, SETTINGS)}


def rel(d, base) -> str:
    return os.path.relpath(d.impath, base).replace(os.sep, "/")


def every(ds):
    return ds.train_x + ds.val + ds.test


def expected_counts(strata, val: float, test: float = 0.0):
    """(train, val, test) sizes by the documented per-stratum rule: round(n * share), at least one
    val (n >= 3, or n >= 2 without a test share) and one test (n >= 2) item, never the last training item."""
    out = [0, 0, 0]
    for n in strata:
        n_test = max(round(n * test), 1 if test > 0 and n >= 2 else 0)
        n_val = max(round(n * val), 1 if val > 0 and n >= (3 if test > 0 else 2) else 0)
        while n_test + n_val > n - 1 and n_test + n_val > 0:
            if n_val >= n_test and n_val > 0:
                n_val -= 1
            else:
                n_test -= 1
        out = [out[0] + n - n_val - n_test, out[1] + n_val, out[2] + n_test]
    return tuple(out)


def strata(keys):
    return [list(keys).count(k) for k in sorted(set(keys))]


# ---------------------------------------------------------------- Emotion6
def test_emotion6_readme_row_and_policies(tmp_path):
    gt = tmp_path / "ground_truth.txt"
    gt.write_text(
        "[image_filename]\t[valence]\t[arousal]\t[prob. anger]\t[prob. disgust]\t[prob. fear]\t[prob. joy]\t[prob. sadness]\t[prob. surprise]\t[prob. neutral]\n"
        "disgust/1.jpg\t2.5\t3.8\t0.133333\t0.7\t0\t0.0666667\t0.1\t0\t0\n"  # the README's example row
        "joy/2.jpg\t7\t5\t0\t0\t0\t0.4\t0\t0.2\t0.4\n"
        "fear/3.jpg\t5\t5\t0\t0\t0\t0\t0\t0\t1\n"
        "sadness/4.jpg\t3\t4\t0.5\t0\t0\t0\t0\t0\t0.5\n"
    )
    rows = read_ground_truth(str(gt))
    assert [(r.path, r.folder, r.valence, r.arousal, r.line) for r in rows][:2] == [("disgust/1.jpg", "disgust", 2.5, 3.8, 2), ("joy/2.jpg", "joy", 7.0, 5.0, 3)]
    assert rows[0].probs == (0.133333, 0.7, 0.0, 0.0666667, 0.1, 0.0, 0.0)
    dist, label, top = class_targets(rows[0].probs, 1, 6, "drop", "dominant")
    assert dist == pytest.approx([0.133333 / 0.9999997, 0.7 / 0.9999997, 0, 0.0666667 / 0.9999997, 0.1 / 0.9999997, 0]) and (label, top) == (1, (1,))
    assert class_targets(rows[1].probs, 3, 6, "drop", "dominant")[0] == pytest.approx([0, 0, 0, 2 / 3, 0, 1 / 3])
    assert class_targets(rows[1].probs, 3, 7, "drop", "dominant")[1:] == (3, (3, 6))  # joy ties neutral: folder wins
    assert class_targets(rows[2].probs, 2, 6, "drop", "dominant") is None  # all mass on neutral
    assert class_targets(rows[2].probs, 2, 6, "uniform", "dominant") == (tuple([1 / 6] * 6), 2, (0, 1, 2, 3, 4, 5))
    assert class_targets(rows[2].probs, 2, 6, "folder", "dominant") == ((0, 0, 1.0, 0, 0, 0), 2, (2,))
    assert class_targets(rows[2].probs, 2, 7, "drop", "dominant") == ((0, 0, 0, 0, 0, 0, 1.0), 6, (6,))
    assert class_targets(rows[3].probs, 4, 6, "drop", "dominant")[1] == 0  # dominant anger, not the sadness folder
    assert class_targets(rows[3].probs, 4, 6, "drop", "folder")[1:] == (4, (0,))


def test_emotion6_native_layout_seven_classes(tmp_path, caplog):
    recs = written(tmp_path, "emotion6", "Emotion6")
    base = tmp_path / "Emotion6"
    (base / "images" / "joy" / "99.jpg").write_bytes((base / "images" / "joy" / "1.jpg").read_bytes())  # no row
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(cfg_for("emotion6.yaml", tmp_path, "DATASET.EMOTION6.NUM_CLASSES", "7"))
    assert any("Emotion6: ignored 1 image(s) without a row in the annotation file, e.g. " in r.getMessage() and "joy/99.jpg" in r.getMessage()
               for r in caplog.records)
    assert ds.classnames == list(E7) and ds.targets == {"label", "labels", "dist", "va"} and ds.task == "single_label"
    assert sorted(rel(d, base) for d in every(ds)) == sorted(recs)  # nothing dropped with 7 classes
    for d in every(ds):
        r = recs[rel(d, base)]
        written_probs = [r.dist[c] for c in E7]
        assert d.dist == pytest.approx([p / sum(written_probs) for p in written_probs], abs=1e-12)
        assert d.va == r.va
        top = [k for k, p in enumerate(written_probs) if p == max(written_probs)]
        assert list(d.labels) == top and d.label == (E7.index(r.label) if E7.index(r.label) in top else top[0])
    assert sum(len(d.labels) > 1 for d in every(ds)) == 1 and sum(d.label == 6 for d in every(ds)) == 2
    # stratified by folder: 7 images per folder -> 5 / 1 / 1, saved with relative paths and reused
    assert [sum(rel(d, base).split("/")[1] == c for d in s) for s in (ds.train_x, ds.val, ds.test) for c in EMOTIONS] == [5] * 6 + [1] * 12
    split = json.loads((base / "split_emotion6.json").read_text())
    assert split["meta"] == {"format": "Emotion6", "ratios": [0.7, 0.1, 0.2], "seed": 42}
    assert sorted(e[0] for e in split["test"]) == sorted(rel(d, base) for d in ds.test)
    batch = next(iter(build_data_loader(ds.test, None, 6, is_train=False, num_classes=7)))
    assert sum(batch["va"].tolist(), []) == pytest.approx(sum((list(recs[rel(d, base)].va) for d in ds.test), []))  # float32
    assert batch["dist"].shape == (6, 7) and batch["label"].tolist() == [d.label for d in ds.test]


@pytest.mark.parametrize("policy", ["drop", "uniform", "folder"])
def test_emotion6_six_classes_neutral_policy(tmp_path, caplog, policy):
    recs = written(tmp_path, "emotion6", "Emotion6")
    base = tmp_path / "Emotion6"
    neutral_only = {p for p, r in recs.items() if r.dist["neutral"] == 1.0}
    assert neutral_only == {"images/anger/1.jpg", "images/joy/1.jpg"}
    seven = build_dataset(cfg_for("emotion6.yaml", tmp_path, "DATASET.EMOTION6.NUM_CLASSES", "7"))
    with caplog.at_level(logging.INFO):
        ds = build_dataset(cfg_for("emotion6.yaml", tmp_path, "DATASET.EMOTION6.NEUTRAL_POLICY", policy))
    assert ds.classnames == list(EMOTIONS)
    kept = {rel(d, base): d for d in every(ds)}
    assert set(kept) == set(recs) - (neutral_only if policy == "drop" else set())
    assert {rel(d, base) for d in ds.test} == {rel(d, base) for d in seven.test} - set(neutral_only)  # same test images
    msg = "2 image(s) have all their mass on neutral; NEUTRAL_POLICY " + policy
    assert any(msg in r.getMessage() for r in caplog.records)
    if policy == "drop":
        assert any("dropped train" in r.getMessage() for r in caplog.records if msg in r.getMessage())
    for p, d in kept.items():
        probs = [recs[p].dist[c] for c in EMOTIONS]
        folder = EMOTIONS.index(recs[p].label)
        if p in neutral_only:
            assert d.dist == ((1 / 6,) * 6 if policy == "uniform" else tuple(float(k == folder) for k in range(6)))
            assert d.label == folder
        else:
            assert d.dist == pytest.approx([q / sum(probs) for q in probs], abs=1e-12)


# ---------------------------------------------------------------- class folders
def test_split_class_folders_fi_and_flickr(tmp_path, caplog):
    recs = written(tmp_path, "folders", "FI")
    (tmp_path / "FI" / "train" / "awe" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(cfg_for("fi.yaml", tmp_path))
    assert ds.classnames == sorted(MIKELS) and ds.task == "single_label"
    for split, data in (("train", ds.train_x), ("val", ds.val), ("test", ds.test)):
        assert sorted(rel(d, tmp_path / "FI") for d in data) == sorted(p for p, r in recs.items() if r.split == split)
        assert all(ds.classnames[d.label] == recs[rel(d, tmp_path / "FI")].label for d in data)
    assert any("FI: ignored 1 entr(ies)" in r.getMessage() and "notes.txt" in r.getMessage() for r in caplog.records)
    recs = written(tmp_path, "sentiment_folders", "Flickr")
    ds = build_dataset(cfg_for("flickr.yaml", tmp_path))
    assert ds.classnames == ["negative", "positive"] and (len(ds.train_x), len(ds.val), len(ds.test)) == (10, 2, 2)
    assert all(ds.classnames[d.label] == recs[rel(d, tmp_path / "Flickr")].label for d in every(ds))


def test_single_class_folder_set_is_split_and_saved(tmp_path, monkeypatch):
    recs = written(tmp_path, "class_folders", "UBE")
    cfg = cfg_for("ube.yaml", tmp_path)
    ds = build_dataset(cfg)
    base = tmp_path / "UBE"
    assert sorted(rel(d, base) for d in every(ds)) == sorted(recs)  # every image in exactly one split
    for c in range(8):  # 7 per class at 0.7 / 0.1 / 0.2 -> 5 / 1 / 1
        assert [sum(d.label == c for d in s) for s in (ds.train_x, ds.val, ds.test)] == [5, 1, 1]
    saved = json.loads((base / "split_imagefolder.json").read_text())
    assert saved["meta"] == {"layout": "class_folders", "ratios": [0.7, 0.1, 0.2], "seed": 42}
    assert sorted(e[0] for e in saved["val"]) == sorted(rel(d, base) for d in ds.val)
    monkeypatch.setattr("datasets.formats.image_folder.split_three", lambda *a, **k: pytest.fail("saved split not reused"))
    assert build_dataset(cfg).test == ds.test
    monkeypatch.undo()
    other = build_dataset(cfg_for("ube.yaml", tmp_path, "DATASET.SPLIT_SEED", "7"))
    assert {d.impath for d in other.test} != {d.impath for d in ds.test}
    for _ in range(2):  # the few-shot cache (split_fewshot/) beside the class folders is not a class
        shots = build_dataset(cfg_for("ube.yaml", tmp_path, "DATASET.NUM_SHOTS", "2", "SEED", "1"))
        assert shots.classnames == sorted(MIKELS) and len(shots.train_x) == 16
    assert (base / "split_fewshot").is_dir()


# ---------------------------------------------------------------- LDL vote CSVs
def test_flickr_ldl_votes_dominant_and_argmax(tmp_path, caplog):
    recs = written(tmp_path, "ldl", "FlickrLDL")
    base = tmp_path / "FlickrLDL"
    ds = build_dataset(cfg_for("flickr_ldl.yaml", tmp_path))
    assert ds.task == "multi_label" and ds.targets == {"dist", "labels"} and ds.classnames == list(MIKELS)
    assert sorted(rel(d, base) for d in ds.train_x + ds.val) == sorted(p for p, r in recs.items() if r.split == "train")
    assert sorted(rel(d, base) for d in ds.test) == sorted(p for p, r in recs.items() if r.split == "test")
    train_keys = [MIKELS.index(r.labels[0]) for r in recs.values() if r.split == "train"]  # first dominant class
    assert (len(ds.train_x), len(ds.val)) == expected_counts(strata(train_keys), 0.2)[:2] == (40, 8)
    for d in every(ds):
        r = recs[rel(d, base)]
        assert d.dist == pytest.approx([r.dist[c] for c in MIKELS], abs=1e-12) and sum(d.dist) == pytest.approx(1.0)
        assert [MIKELS[k] for k in d.labels] == list(r.labels) and d.label == -1
    ties = [d for d in every(ds) if len(d.labels) > 1]
    assert len(ties) == 8
    with caplog.at_level(logging.INFO):
        am = build_dataset(cfg_for("flickr_ldl.yaml", tmp_path, "DATASET.LDL.LABEL", "argmax"))
    assert am.task == "single_label" and "label" in am.targets
    assert all(d.label == d.labels[0] for d in every(am)) and [d.impath for d in am.val] == [d.impath for d in ds.val]
    assert any("8 image(s) have tied dominant classes; their single label is the lower class index" in r.getMessage() for r in caplog.records)


def test_twitter_ldl_unsplit_images_folder(tmp_path):
    recs = written(tmp_path, "ldl_images", "TwitterLDL")
    base = tmp_path / "TwitterLDL"
    ds = build_dataset(cfg_for("twitter_ldl.yaml", tmp_path))
    assert sorted(rel(d, base) for d in every(ds)) == sorted(recs)
    keys = [MIKELS.index(r.labels[0]) for r in recs.values()]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == expected_counts(strata(keys), 0.1, 0.2) == (37, 8, 11)
    for d in every(ds):
        assert d.dist == pytest.approx([recs[rel(d, base)].dist[c] for c in MIKELS], abs=1e-12)
    assert json.loads((base / "split_ldl.json").read_text())["meta"]["layout"] == "images"


# ---------------------------------------------------------------- EmoSet
def test_emoset_lists_and_attributes(tmp_path):
    recs = written(tmp_path, "emoset", "EmoSet-118K")
    base = tmp_path / "EmoSet-118K"
    ds = build_dataset(cfg_for("emoset.yaml", tmp_path))
    assert ds.classnames == list(MIKELS) and ds.targets == {"label"}
    for split, data in (("train", ds.train_x), ("val", ds.val), ("test", ds.test)):
        assert [rel(d, base) for d in data] == [p for p, r in recs.items() if r.split == split]
    for d in every(ds):
        r = recs[rel(d, base)]
        assert ds.classnames[d.label] == r.label == d.attrs["emotion"]
        for key in ("scene", "brightness", "colorfulness", "object", "image_id"):
            assert d.attrs[key] == r.attrs[key]
        assert d.attrs["facial_expression"] == r.attrs.get("facial_expression") and d.attrs["human_action"] == r.attrs.get("human_action")
    assert any(d.attrs["facial_expression"] is None for d in ds.train_x) and d.attrs["scene"] in EMOSET_VOCAB["scene"]
    binary = build_dataset(cfg_for("emoset.yaml", tmp_path, "DATASET.EMOSET.NUM_CLASSES", "2"))
    assert binary.classnames == ["positive", "negative"]
    assert all(d.label == (0 if d.attrs["emotion"] in ("amusement", "awe", "contentment", "excitement") else 1) for d in every(binary))


# ---------------------------------------------------------------- EmoCoOp CSV
RELEASED_YAML = """DATASET:
  NAME: "EmotionDataset"
  ROOT: "{root}"
  CSV_PATH: "{csv}"
  SOURCE_DOMAINS: ["emotion"]
  TARGET_DOMAINS: ["emotion"]
  LABEL_MAPPING:
{mapping}
"""


def test_emotion_dataset_released_yaml_keeps_every_row(tmp_path, monkeypatch):
    recs = written(tmp_path, "emotion_csv", "Dongba")
    base = tmp_path / "Dongba"
    mapping = "\n".join(f"    {name}: {i}" for i, name in enumerate(DONGBA))
    released = tmp_path / "released.yaml"
    released.write_text(RELEASED_YAML.format(root=base / "train_data", csv=base / "data_csv" / "train_data_coco.csv", mapping=mapping))
    cfg = get_cfg()
    merge_from_file(cfg, str(released))  # the released file loads unchanged
    assert dict(cfg.DATASET.LABEL_MAPPING) == {n: i for i, n in enumerate(DONGBA)} and cfg.DATASET.SOURCE_DOMAINS == ("emotion",)
    merge_from_list(cfg, ["DATASET.TEST_CSV", str(base / "data_csv" / "test_data_coco.csv"), "DATASET.TEST_ROOT", "../test_data"])
    monkeypatch.chdir(tmp_path)  # "../test_data" is not found from here, so it is taken relative to ROOT
    ds = build_dataset(cfg)
    assert ds.classnames == list(DONGBA) and ds.task == "multi_label" and ds.targets == {"labels"}
    train_rows = [p for p, r in recs.items() if r.split == "train"]
    got = sorted(rel(d, base) for d in ds.train_x + ds.val)
    assert got == sorted(train_rows) and len(set(got)) == len(train_rows) == 78  # every row, once
    keys = [min(DONGBA.index(x) for x in recs[p].labels) for p in train_rows]
    assert (len(ds.train_x), len(ds.val)) == expected_counts(strata(keys), 0.15 / 0.85)[:2] == (63, 15)
    assert sorted(rel(d, base) for d in ds.test) == sorted(p for p, r in recs.items() if r.split == "test")
    for d in every(ds):
        assert tuple(DONGBA[k] for k in d.labels) == tuple(sorted(recs[rel(d, base)].labels, key=DONGBA.index))
        assert d.label == -1 and d.classname == "_".join(DONGBA[k] for k in d.labels)
    assert any(len(d.labels) > 1 for d in ds.train_x)
    saved = json.loads((base / "train_data" / "split_emotion_dataset.json").read_text())
    assert saved["meta"]["val_share"] == pytest.approx(0.15 / 0.85) and len(saved["train"]) + len(saved["val"]) == 78
    assert saved["test"] == []


def test_emotion_dataset_shipped_yaml_and_label_mapping(tmp_path):
    written(tmp_path, "emotion_csv", "Dongba")
    base = tmp_path / "Dongba"
    opts = ["DATASET.CSV_PATH", str(base / "data_csv" / "train_data_coco.csv"), "DATASET.TEST_CSV",
            str(base / "data_csv" / "test_data_coco.csv"), "DATASET.TEST_ROOT", str(base / "test_data")]
    cfg = cfg_for("emotion_dataset.yaml", base / "train_data", *opts)
    assert (cfg.DATASET.TRAIN_RATIO, cfg.DATASET.VAL_RATIO) == (0.7, 0.15)
    ds = build_dataset(cfg)
    assert ds.classnames == list(DONGBA) and len(ds.test) == 13
    cfg = get_cfg()  # empty mapping -> the 13 Dongba labels; a mapping reorders the classes
    merge_from_list(cfg, ["DATASET.NAME", "EmotionDataset", "DATASET.ROOT", str(base / "train_data"), *opts])
    assert build_dataset(cfg).classnames == list(DONGBA)
    for i, name in enumerate(reversed(DONGBA)):
        merge_from_list(cfg, [f"DATASET.LABEL_MAPPING.{name}", str(i)])
    rev = build_dataset(cfg)
    assert rev.classnames == list(reversed(DONGBA))
    first = {rel(d, base): d for d in ds.test}
    assert all({rev.classnames[k] for k in d.labels} == {ds.classnames[k] for k in first[rel(d, base)].labels} for d in rev.test)


# ---------------------------------------------------------------- generator command
def test_make_synthetic_writes_native_layouts_deterministically(tmp_path, capsys):
    from tools.make_synthetic import main

    def files(d):
        return {os.path.relpath(os.path.join(p, f), d): open(os.path.join(p, f), "rb").read() for p, _, fs in os.walk(d) for f in fs}

    args = ["--n-train", "2", "--n-val", "1", "--n-test", "1", "--image-size", "16", "--seed", "3"]
    assert main(["--root", str(tmp_path / "a"), "--format", "emoset", *args]) == 0
    assert main(["--root", str(tmp_path / "b"), "--format", "emoset", *args]) == 0
    a, b = files(tmp_path / "a" / "EmoSet-118K"), files(tmp_path / "b" / "EmoSet-118K")
    assert a == b and len(a) == 5 + 2 * 8 * 4  # info + 3 lists + person boxes, an image and an annotation per item
    assert main(["--root", str(tmp_path / "a"), "--format", "emoset", *args]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["--root", str(tmp_path / "c"), "--format", "emotion6", "--dir", "E6", *args]) == 0
    assert (tmp_path / "c" / "E6" / "ground_truth.txt").read_text().count("\n") == 1 + 6 * 4
