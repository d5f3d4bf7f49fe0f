"""``python train.py`` runs CoOp for one epoch on every image dataset format (synthetic files)."""
from __future__ import annotations

import os
import re

import pytest

from conftest import COOP_CFG, ROOT, final_test, run_cli
from datasets.synthetic.native import DEFAULT_DIRS, NativeSettings, write_native

SETTINGS = NativeSettings(n_train_per_class=3, n_val_per_class=1, n_test_per_class=1, image_size=16)
# format -> (dataset yaml, extra opts, test images, metric the final test must report)
CASES = {
    "emotion6": ("emotion6.yaml", [], 6, "accuracy"),
    "folders": ("fi.yaml", [], 8, "accuracy"),
    "sentiment_folders": ("flickr.yaml", [], 2, "accuracy"),
    "class_folders": ("ube.yaml", [], 8, "accuracy"),
    "ldl": ("flickr_ldl.yaml", [], 8, "mAP"),
    "ldl_images": ("twitter_ldl.yaml", ["DATASET.LDL.LABEL", "argmax"], 8, "accuracy"),
    "emoset": ("emoset.yaml", [], 8, "accuracy"),
    "emotion_csv": ("emotion_dataset.yaml", [], 13, "mAP"),
}


@pytest.fixture(scope="module")
def native_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("native")
    for fmt in CASES:
        write_native(str(root / DEFAULT_DIRS[fmt]), fmt, SETTINGS)
    return str(root)


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_coop_one_epoch_on_each_format(tmp_path, native_root, fmt):
    yaml_name, opts, n_test, metric = CASES[fmt]
    root = native_root
    if fmt == "emotion_csv":  # EmoCoOp keys: ROOT = training images, CSVs and test images given explicitly
        base = os.path.join(native_root, "Dongba")
        root = os.path.join(base, "train_data")
        opts = ["DATASET.CSV_PATH", os.path.join(base, "data_csv", "train_data_coco.csv"), "DATASET.TEST_CSV",
                os.path.join(base, "data_csv", "test_data_coco.csv"), "DATASET.TEST_ROOT", os.path.join(base, "test_data")]
    out = tmp_path / "out"
    args = ["--root", root, "--seed", "1", "--output-dir", str(out), "--config-file", COOP_CFG,
            "--dataset-config-file", os.path.join(ROOT, "configs", "datasets", yaml_name),
            "OPTIM.MAX_EPOCH", "1", "TRAIN.PRINT_FREQ", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "8", *opts]
    assert run_cli(args) == 0
    log = (out / "log.txt").read_text()
    task = "multi_label" if metric == "mAP" else "single_label"
    assert re.search(rf"dataset \S+: \d+ classes, task {task}, train \d+, val \d+, test {n_test}\n", log)
    result = final_test(str(out))
    assert metric in result and 0.0 <= result[metric] <= 100.0
    assert os.listdir(out / "prompt_learner")  # the epoch finished and was saved
