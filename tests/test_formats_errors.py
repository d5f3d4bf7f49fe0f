"""Bad inputs to the native-format readers: each is a one-line error naming the culprit."""
from __future__ import annotations

import json
import logging
import os
import re

import pytest

from configs.config import merge_from_file, merge_from_list

from trainers import get_cfg
from utils.errors import ConfigError, DatasetError
from conftest import COOP_CFG, run_cli
from datasets import build_dataset
from datasets.synthetic.native import NativeSettings, write_native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = NativeSettings(n_train_per_class=4, n_val_per_class=1, n_test_per_class=2, image_size=16)
YAML = {"emotion6": "emotion6.yaml", "folders": "fi.yaml", "ldl": "flickr_ldl.yaml", "ldl_images": "twitter_ldl.yaml",
        "emoset": "emoset.yaml", "emotion_csv": "emotion_dataset.yaml", "class_folders": "ube.yaml"}
DIRS = {"emotion6": "Emotion6", "folders": "FI", "ldl": "FlickrLDL", "ldl_images": "TwitterLDL", "emoset": "EmoSet-118K",
        "emotion_csv": "Dongba", "class_folders": "UBE"}


def cfg_for(fmt: str, root, *opts: str):
    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(ROOT, "configs", "datasets", YAML[fmt]))
    if fmt == "emotion_csv":
        base = os.path.join(str(root), "Dongba")
        opts = ("DATASET.CSV_PATH", os.path.join(base, "data_csv", "train_data_coco.csv"), "DATASET.TEST_CSV",
                os.path.join(base, "data_csv", "test_data_coco.csv"), "DATASET.TEST_ROOT", os.path.join(base, "test_data"), *opts)
        root = os.path.join(base, "train_data")
    merge_from_list(cfg, ["DATASET.ROOT", str(root), *opts])
    return cfg


def make(tmp_path, fmt: str):
    """Write ``fmt`` under tmp_path/<its folder>; returns that folder."""
    write_native(str(tmp_path / DIRS[fmt]), fmt, SETTINGS)
    return tmp_path / DIRS[fmt]


def edit_line(path, lineno: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n")


def raises(cfg, exc, pattern: str):
    with pytest.raises(exc) as info:
        build_dataset(cfg)
    msg = str(info.value)
    assert "\n" not in msg and re.search(pattern, msg), msg
    return msg


# ---------------------------------------------------------------- missing root / folder
@pytest.mark.parametrize("fmt", sorted(YAML))
def test_missing_root(tmp_path, fmt):
    raises(cfg_for(fmt, tmp_path / "nowhere"), DatasetError, r"dataset folder not found: .*nowhere.* \(DATASET\.ROOT\)")


@pytest.mark.parametrize("fmt,key", [("emotion6", "EMOTION6"), ("folders", "IMAGE_FOLDER"), ("ldl", "LDL"), ("emoset", "EMOSET")])
def test_missing_dataset_folder_names_the_key(tmp_path, fmt, key):
    raises(cfg_for(fmt, tmp_path), DatasetError, rf"dataset folder not found: .*{DIRS[fmt]} \(DATASET\.ROOT / DATASET\.{key}\.DIR\)")


# ---------------------------------------------------------------- missing files
def test_missing_files_count_and_first_few(tmp_path):
    base = make(tmp_path, "emotion6")
    for n in (3, 4, 5, 6):
        os.remove(base / "images" / "fear" / f"{n}.jpg")
    raises(cfg_for("emotion6", tmp_path), DatasetError, r"^4 image file\(s\) missing \(of 40\), e\.g\. .*fear/\d\.jpg, .*fear/\d\.jpg, .*fear/\d\.jpg, \.\.\.$")
    ldl = make(tmp_path, "ldl")
    os.remove(ldl / "train" / "awe_00001.jpg")
    raises(cfg_for("ldl", tmp_path), DatasetError, r"1 image file\(s\) missing \(of 56 rows of .*flickrldl_config\.csv\): in neither train/ nor test/, e\.g\. awe_00001\.jpg")
    os.rename(ldl / "test" / "fear_10000.jpg", ldl / "train" / "awe_00001.jpg")  # back, and one image without a row
    (ldl / "test" / "extra.jpg").write_bytes((ldl / "train" / "awe_00001.jpg").read_bytes())
    raises(cfg_for("ldl", tmp_path), DatasetError, r"FlickrLDL: 1 image\(s\) have no row in .*flickrldl_config\.csv, e\.g\. .*test/extra\.jpg")
    emoset = make(tmp_path, "emoset")
    os.remove(emoset / "annotation" / "anger" / "anger_10000.json")
    raises(cfg_for("emoset", tmp_path), DatasetError, r"^1 annotation file\(s\) missing \(of 56\), e\.g\. .*annotation/anger/anger_10000\.json$")
    dongba = make(tmp_path, "emotion_csv")
    os.remove(dongba / "test_data" / "12_0001.jpg")
    raises(cfg_for("emotion_csv", tmp_path), DatasetError, r"^1 image file\(s\) missing \(of 91\), e\.g\. .*test_data/12_0001\.jpg$")


# ---------------------------------------------------------------- labels outside the class list
def test_label_outside_class_list(tmp_path):
    base = make(tmp_path, "emotion6")
    edit_line(base / "ground_truth.txt", 3, "happy/2.jpg\t5\t5\t0\t0\t0\t1\t0\t0\t0")
    raises(cfg_for("emotion6", tmp_path), DatasetError,
           r"ground_truth\.txt line 3: image 'happy/2\.jpg' is not in a class folder of the class list \(anger, disgust, fear, joy, sadness, surprise\)")
    dongba = make(tmp_path, "emotion_csv")
    edit_line(dongba / "data_csv" / "train_data_coco.csv", 4, "00_0002.jpg,calm_angry")
    raises(cfg_for("emotion_csv", tmp_path), DatasetError,
           r"train_data_coco\.csv line 4: label 'angry' is not in the class list \(13 classes: approval, bloom, calm, .*, worried\)")
    emoset = make(tmp_path, "emoset")
    entries = json.loads((emoset / "val.json").read_text())
    entries[2][0] = "joy"
    (emoset / "val.json").write_text(json.dumps(entries))
    raises(cfg_for("emoset", tmp_path), DatasetError, r"val\.json entry 2: emotion 'joy' is not in the class list \(amusement, anger, .*\)")
    fi = make(tmp_path, "folders")
    os.rename(fi / "test" / "awe", fi / "test" / "wonder")
    raises(cfg_for("folders", tmp_path), DatasetError, r"class folder .*test/wonder \(test\) is not a class of train/")
    make(tmp_path, "ldl")
    raises(cfg_for("ldl", tmp_path, "DATASET.LDL.CLASSNAMES", "['amusement', 'joy']"), DatasetError,
           r"flickrldl_config\.csv: vote column\(s\) joy not found \(columns: image, amusement, awe, .*\)")


# ---------------------------------------------------------------- rows that are not distributions
@pytest.mark.parametrize("row,pattern", [
    ("anger/2.jpg\t3\t6\t0.6\t0.8\t0\t0\t0\t0\t0", r"line 3: the 7 probabilities are not a distribution \(each in \[0, 1\], sum 1\.4, expected 1\)"),
    ("anger/2.jpg\t3\t6\t1.2\t-0.2\t0\t0\t0\t0\t0", r"line 3: the 7 probabilities are not a distribution \(each in \[0, 1\], sum 1, expected 1\)"),
    ("anger/2.jpg\t3\t6\tlots\t0\t0\t0\t0\t0\t1", r"line 3: valence, arousal and probabilities must be numbers"),
    ("anger/2.jpg\t3\t6\t0.5\t0.5", r"line 3: expected 10 fields \(image, valence, arousal, 7 probabilities\), got 5"),
    ("anger/3.jpg\t3\t6\t1\t0\t0\t0\t0\t0\t0", r"line 4: image 'anger/3\.jpg' is listed twice \(first on line 3\)"),
])
def test_emotion6_row_not_a_distribution(tmp_path, row, pattern):
    base = make(tmp_path, "emotion6")
    edit_line(base / "ground_truth.txt", 3, row)
    raises(cfg_for("emotion6", tmp_path), DatasetError, r"ground_truth\.txt " + pattern)


@pytest.mark.parametrize("votes,pattern", [
    ("3,-1,0,0,0,0,0,0", r"line 5: votes amusement=3, anger=0, awe=-1, contentment=0, .* are not a distribution \(need >= 0 with a positive sum\)"),
    ("0,0,0,0,0,0,0,0", r"line 5: votes amusement=0, .*, sadness=0 are not a distribution"),
    ("3,many,0,0,0,0,0,0", r"line 5: votes must be numbers"),
])
def test_ldl_votes_not_a_distribution(tmp_path, votes, pattern):
    base = make(tmp_path, "ldl_images")
    name = (base / "twitterldl_config.csv").read_text().splitlines()[4].split(",")[0]
    edit_line(base / "twitterldl_config.csv", 5, f"{name},{votes}")
    raises(cfg_for("ldl_images", tmp_path), DatasetError, r"twitterldl_config\.csv " + pattern)


# ---------------------------------------------------------------- unreadable and truncated images
def test_unreadable_and_truncated_images(tmp_path, caplog):
    base = make(tmp_path, "folders")
    garbage, truncated = base / "train" / "fear" / "fear_00001.jpg", base / "train" / "awe" / "awe_00002.jpg"
    garbage.write_bytes(b"this is not a JPEG file")
    data = truncated.read_bytes()
    truncated.write_bytes(data[:-40])  # header intact, pixel data cut
    raises(cfg_for("folders", tmp_path), DatasetError,
           r"^dataset FI: 1 unreadable image\(s\) \(of 56\), e\.g\. .*fear_00001\.jpg \(cannot identify image file .*\); fix or remove them, "
           r"or set DATASET\.SKIP_BAD_IMAGES True to skip them$")
    raises(cfg_for("folders", tmp_path, "DATASET.IMAGE_CHECK", "decode"), DatasetError,
           r"2 unreadable image\(s\) \(of 56\), e\.g\. .*awe_00002\.jpg \(image file is truncated.*\); .*fear_00001\.jpg \(cannot identify")
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(cfg_for("folders", tmp_path, "DATASET.IMAGE_CHECK", "decode", "DATASET.SKIP_BAD_IMAGES", "True"))
    assert len(ds.train_x) + len(ds.val) + len(ds.test) == 54 and str(garbage) not in {d.impath for d in ds.train_x}
    assert any("dataset FI: skipped 2 unreadable image(s) (train 2, val 0, test 0)" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match=r"DATASET\.IMAGE_CHECK must be one of exists, header, decode, got 'full'"):
        build_dataset(cfg_for("folders", tmp_path, "DATASET.IMAGE_CHECK", "full"))


# ---------------------------------------------------------------- few-shot
def test_num_shots_larger_than_a_class_and_empty_class(tmp_path):
    make(tmp_path, "emotion6")
    raises(cfg_for("emotion6", tmp_path, "DATASET.NUM_SHOTS", "8"), DatasetError, r"^class '\w+' has [0-7] train images; NUM_SHOTS=8 needs 8$")
    make(tmp_path, "emotion_csv")
    raises(cfg_for("emotion_csv", tmp_path, "DATASET.LABEL_MAPPING.unused", "13", "DATASET.NUM_SHOTS", "1"), DatasetError,
           r"^class 'unused' has 0 positive train images; NUM_SHOTS=1 needs 1$")
    fi = make(tmp_path, "class_folders")
    os.makedirs(fi / "boredom")
    raises(cfg_for("class_folders", tmp_path), DatasetError, r"UBE: class folder\(s\) without images in .*UBE: boredom$")


# ---------------------------------------------------------------- paths that leave the dataset root
def test_paths_cannot_escape_the_root(tmp_path):
    base = make(tmp_path, "emotion6")
    edit_line(base / "ground_truth.txt", 3, "anger/../../../outside.jpg\t5\t5\t1\t0\t0\t0\t0\t0\t0")
    raises(cfg_for("emotion6", tmp_path), DatasetError, r"ground_truth\.txt line 3: path 'images/anger/\.\./\.\./\.\./outside\.jpg' escapes the dataset root")
    dongba = make(tmp_path, "emotion_csv")
    for bad in ("../test_data/00_0000.jpg", "/etc/hosts"):
        edit_line(dongba / "data_csv" / "train_data_coco.csv", 2, f"{bad},calm")
        raises(cfg_for("emotion_csv", tmp_path), DatasetError, rf"train_data_coco\.csv line 2: path '{re.escape(bad)}' escapes the dataset root")
    emoset = make(tmp_path, "emoset")
    entries = json.loads((emoset / "train.json").read_text())
    entries[0][2] = "../Dongba/train_data/00_0000.jpg"
    (emoset / "train.json").write_text(json.dumps(entries))
    raises(cfg_for("emoset", tmp_path), DatasetError, r"train\.json entry 0: path '\.\./Dongba/train_data/00_0000\.jpg' escapes the dataset root")
    for fmt, csv_name in (("ldl", "flickrldl_config.csv"), ("ldl_images", "twitterldl_config.csv")):
        ldl = make(tmp_path, fmt)
        edit_line(ldl / csv_name, 2, "../../secret.jpg,1,0,0,0,0,0,0,0")
        raises(cfg_for(fmt, tmp_path), DatasetError, rf"{csv_name} line 2: path '.*\.\./\.\./secret\.jpg' escapes the dataset root")


# ---------------------------------------------------------------- settings
def test_bad_settings(tmp_path):
    make(tmp_path, "emotion6")
    raises(cfg_for("emotion6", tmp_path, "DATASET.EMOTION6.NEUTRAL_POLICY", "ignore"), ConfigError,
           r"DATASET\.EMOTION6\.NEUTRAL_POLICY must be one of drop, uniform, folder, got 'ignore'")
    raises(cfg_for("emotion6", tmp_path, "DATASET.EMOTION6.NUM_CLASSES", "8"), ConfigError, r"NUM_CLASSES must be 6 or 7, got 8")
    raises(cfg_for("emotion6", tmp_path, "DATASET.SPLIT_RATIOS", "(0.5, 0.5, 0.5)"), ConfigError,
           r"DATASET\.SPLIT_RATIOS must be three shares \(train, val, test\) >= 0 that sum to 1 with train > 0, got \(0\.5, 0\.5, 0\.5\)")
    make(tmp_path, "emotion_csv")
    cfg = cfg_for("emotion_csv", tmp_path)
    cfg.DATASET.LABEL_MAPPING.clear()
    merge_from_list(cfg, ["DATASET.LABEL_MAPPING.calm", "0", "DATASET.LABEL_MAPPING.rest", "2"])
    raises(cfg, ConfigError, r"DATASET\.LABEL_MAPPING indices must be 0\.\.1, each once; got \[0, 2\]")
    raises(cfg_for("emotion_csv", tmp_path, "DATASET.TEST_CSV", ""), DatasetError, r"DATASET\.TEST_CSV is empty")
    raises(cfg_for("emotion_csv", tmp_path, "DATASET.CSV_PATH", "no/such.csv"), DatasetError,
           r"DATASET\.CSV_PATH not found: .*no/such\.csv or .*train_data/no/such\.csv")


def test_cli_prints_one_line_error_at_start_up(tmp_path, capsys):
    base = make(tmp_path, "emotion6")
    edit_line(base / "ground_truth.txt", 3, "anger/2.jpg\t3\t6\t0.6\t0.8\t0\t0\t0\t0\t0")
    code = run_cli(["--root", str(tmp_path), "--output-dir", str(tmp_path / "out"), "--config-file", COOP_CFG,
                    "--dataset-config-file", os.path.join(ROOT, "configs", "datasets", "emotion6.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert re.match(r"error: .*ground_truth\.txt line 3: the 7 probabilities are not a distribution", err[0])
    assert not (tmp_path / "out" / "prompt_learner").exists()
