"""Tests of the datasets package: formats, splits, few-shot, transforms, loaders, generator."""
from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from PIL import Image

from configs.config import merge_from_list
from configs.defaults import get_cfg_default
from utils.errors import ConfigError, DatasetError
from datasets import DATASET_REGISTRY, DatasetBase, Datum, build_data_loader, build_dataset, build_transform, check_images
from datasets.formats.csv_dataset import add_csv_dataset_config
from datasets.fewshot import sample_fewshot, subsample_classes
from datasets.formats.image_folder import add_image_folder_config
from datasets.splits import read_split, split_train_val, write_split
from datasets.synthetic.images import CLASSNAMES, SyntheticSettings, write_synthetic
from datasets.synthetic.emotion import add_synthetic_config

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def make_cfg(*opts: str):
    cfg = get_cfg_default()
    for fn in (add_csv_dataset_config, add_image_folder_config, add_synthetic_config):
        fn(cfg)
    merge_from_list(cfg, list(opts))
    return cfg


def png(path, color=(120, 60, 30), size=(12, 10)) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return str(path)


def image_folder(root, counts={"train": 6, "test": 2}, classes=("b_sad", "a_happy", "c_calm")) -> str:
    for split, n in counts.items():
        for c, name in enumerate(classes):
            for i in range(n):
                png(root / split / name / f"{i}.png", COLORS[c])
    return str(root)


def write_csv(path, header, rows) -> str:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    return str(path)


def toy(n_per_class=8, classes=3, multi=False):
    data = []
    for c in range(classes):
        for i in range(n_per_class):
            labels = (c, (c + 1) % classes) if multi and i % 2 else (c,)
            data.append(Datum(f"/r/{c}_{i}.png", -1 if multi else c, str(c), labels if multi else ()))
    return data


# ---------------------------------------------------------------- registry, contract, splits
def test_registration_by_import_and_require():
    assert {"ImageFolderDataset", "CSVDataset", "SyntheticEmotion"} <= set(DATASET_REGISTRY.names())
    ds = DatasetBase(toy(2), [], toy(1), ["a", "b", "c"], {"label"}, name="Toy")
    assert ds.num_classes == 3 and ds.lab2cname == {0: "a", 1: "b", 2: "c"}
    ds.require({"label"})
    with pytest.raises(DatasetError, match=r"dataset Toy provides targets \['label'\]; trainer needs \['dist', 'label'\]"):
        ds.require({"label", "dist"})
    with pytest.raises(DatasetError, match="label 3"):
        DatasetBase([Datum("/x.png", 3)], [], [], ["a", "b", "c"], {"label"})
    with pytest.raises(ConfigError, match="did you mean 'CSVDataset'"):
        build_dataset(make_cfg("DATASET.NAME", "CsvDataset"))


def test_split_json_relative_and_roundtrip(tmp_path):
    d1 = Datum(str(tmp_path / "img" / "a.png"), 1, "b")
    d2 = Datum(str(tmp_path / "img" / "c.png"), 0, "a", labels=(0, 1), dist=(0.25, 0.75), va=(3.5, 6.0))
    path = tmp_path / "split.json"
    write_split({"train": [d1, d2], "val": [], "test": [d2]}, str(path), str(tmp_path))
    raw = json.loads(path.read_text())
    assert raw["train"][0] == ["img/a.png", 1, "b"]
    assert raw["train"][1][:3] == ["img/c.png", 0, "a"] and raw["train"][1][3]["dist"] == [0.25, 0.75]
    back = read_split(str(path), str(tmp_path))
    assert back["train"] == [d1, d2] and back["test"] == [d2] and back["val"] == []
    for bad in (["../out.png", 0, "a"], ["/etc/passwd", 0, "a"]):
        path.write_text(json.dumps({"train": [bad]}))
        with pytest.raises(DatasetError, match="escapes the dataset root"):
            read_split(str(path), str(tmp_path))


def test_stratified_train_val_split():
    data = toy(10)
    tr, va = split_train_val(data, 0.2, seed=0)
    assert sorted(d.impath for d in tr + va) == sorted(d.impath for d in data)
    assert [sum(d.label == c for d in va) for c in range(3)] == [2, 2, 2]
    assert split_train_val(data, 0.2, seed=0) == (tr, va) and split_train_val(data, 0.2, seed=1)[1] != va


# ---------------------------------------------------------------- few-shot and subsampling
def test_fewshot_counts_determinism_and_cache(tmp_path, monkeypatch):
    root = image_folder(tmp_path / "ds", {"train": 8, "val": 6, "test": 2})
    cfg = make_cfg("DATASET.NAME", "ImageFolderDataset", "DATASET.ROOT", root, "DATASET.NUM_SHOTS", "5", "SEED", "1")
    ds = build_dataset(cfg)
    assert [sum(d.label == c for d in ds.train_x) for c in range(3)] == [5, 5, 5]
    assert [sum(d.label == c for d in ds.val) for c in range(3)] == [4, 4, 4]
    assert len(ds.test) == 6
    cache = tmp_path / "ds" / "split_fewshot" / "shot_5-seed_1.json"
    raw = json.loads(cache.read_text())
    assert all(not os.path.isabs(e[0]) for e in raw["train"] + raw["val"])
    assert [e[0] for e in raw["train"]] == [os.path.relpath(d.impath, root) for d in ds.train_x]

    monkeypatch.setattr("datasets.fewshot.sample_single_label", lambda *a, **k: pytest.fail("cache not reused"))
    again = build_dataset(cfg)
    assert again.train_x == ds.train_x and again.val == ds.val
    monkeypatch.undo()
    other = build_dataset(make_cfg("DATASET.NAME", "ImageFolderDataset", "DATASET.ROOT", root, "DATASET.NUM_SHOTS", "5", "SEED", "2"))
    assert {d.impath for d in other.train_x} != {d.impath for d in ds.train_x}
    os.remove(cache)
    assert build_dataset(cfg).train_x == ds.train_x  # same seed -> same sample


def test_fewshot_stale_cache_and_errors(tmp_path):
    root = image_folder(tmp_path / "ds", {"train": 8, "val": 2, "test": 1})
    cfg = make_cfg("DATASET.NAME", "ImageFolderDataset", "DATASET.ROOT", root, "DATASET.NUM_SHOTS", "2", "SEED", "0")
    build_dataset(cfg)
    os.remove(os.path.join(root, "train", "a_happy", "0.png"))
    os.remove(os.path.join(root, "train", "a_happy", "1.png"))
    ds = build_dataset(cfg)  # the cache refers to the full split; it is resampled, not trusted
    assert all(os.path.isfile(d.impath) for d in ds.train_x)
    too_many = make_cfg("DATASET.NAME", "ImageFolderDataset", "DATASET.ROOT", root, "DATASET.NUM_SHOTS", "7")
    with pytest.raises(DatasetError, match=r"class 'a_happy' has 6 train images; NUM_SHOTS=7 needs 7"):
        build_dataset(too_many)


def test_fewshot_multilabel_positives():
    data, names = toy(6, 4, multi=True), ["a", "b", "c", "d"]
    tr, va = sample_fewshot(data, data, num_shots=3, seed=0, classnames=names, multi_label=True)
    for c in range(4):
        assert sum(c in d.labels for d in tr) >= 3 and sum(c in d.labels for d in va) >= 3
    assert len(tr) < len(data)
    assert sample_fewshot(data, [], num_shots=3, seed=0, classnames=names, multi_label=True)[0] == tr
    with pytest.raises(DatasetError, match="class 'a' has 9 positive train images; NUM_SHOTS=10"):
        sample_fewshot(data, [], num_shots=10, seed=0, classnames=names, multi_label=True)


def test_subsample_base_new_relabels():
    data = [Datum(f"/r/{c}.png", c, n, (c,), dist=tuple(0.4 if k == c else 0.15 for k in range(5))) for c, n in enumerate("abcd")]
    data.append(Datum("/r/x.png", 4, "e", (4,), dist=(0.0, 0.0, 0.0, 0.5, 0.5)))
    names = list("abcde")
    (base,), bnames = subsample_classes([data], names, "base", False)
    assert bnames == ["a", "b", "c"] and [d.label for d in base] == [0, 1, 2]
    assert base[0].dist == pytest.approx((0.4 / 0.7, 0.15 / 0.7, 0.15 / 0.7))
    (new,), nnames = subsample_classes([data], names, "new", False)
    assert nnames == ["d", "e"] and [(d.label, d.classname) for d in new] == [(0, "d"), (1, "e")]
    assert new[1].dist == pytest.approx((0.5, 0.5))
    (ml,), _ = subsample_classes([toy(2, 4, multi=True)], list("abcd"), "new", True)
    assert all(set(d.labels) <= {0, 1} and d.labels for d in ml)
    got = {os.path.basename(d.impath): d.labels for d in ml}  # toy: odd items of class c also have c+1
    assert got == {"1_1.png": (0,), "2_0.png": (0,), "2_1.png": (0, 1), "3_0.png": (1,), "3_1.png": (1,)}


# ---------------------------------------------------------------- formats
def test_image_folder_labels_and_carved_val(tmp_path):
    root = image_folder(tmp_path / "ds", {"train": 10, "test": 2})
    cfg = make_cfg("DATASET.NAME", "ImageFolderDataset", "DATASET.ROOT", str(tmp_path), "DATASET.IMAGE_FOLDER.DIR", "ds")
    ds = build_dataset(cfg)
    assert ds.classnames == ["a_happy", "b_sad", "c_calm"] and ds.targets == {"label"}
    assert all(os.path.basename(os.path.dirname(d.impath)) == ds.classnames[d.label] for d in ds.train_x + ds.test)
    assert [sum(d.label == c for d in ds.val) for c in range(3)] == [1, 1, 1] and len(ds.train_x) == 27
    raw = json.loads((tmp_path / "ds" / "split_imagefolder.json").read_text())
    assert raw["val"][0][0].startswith("train/") and not os.path.isabs(raw["val"][0][0])
    assert build_dataset(cfg).val == ds.val
    png(tmp_path / "ds" / "test" / "zz_unknown" / "0.png")
    with pytest.raises(DatasetError, match="zz_unknown"):
        build_dataset(cfg)
    with pytest.raises(DatasetError, match="dataset folder not found: .*nowhere"):
        build_dataset(make_cfg("DATASET.NAME", "ImageFolderDataset", "DATASET.ROOT", str(tmp_path / "nowhere")))


@pytest.fixture
def csv_root(tmp_path):
    for i in range(6):
        png(tmp_path / "images" / f"{i}.png", COLORS[i % 3])
    return tmp_path


def test_csv_single_label_values_and_splits(csv_root):
    rows = [[f"{i}.png", ["joy", "1", "fear"][i % 3], ["train", "train", "train", "val", "test", "test"][i],
             0.2 * (i % 3), 1 - 0.2 * (i % 3), 0.0, 2.5 + i, 7.25 - i] for i in range(6)]
    write_csv(csv_root / "ann.csv", ["image", "label", "split", "dist_fear", "dist_joy", "dist_sad", "valence", "arousal"], rows)
    cfg = make_cfg("DATASET.NAME", "CSVDataset", "DATASET.ROOT", str(csv_root), "DATASET.CSV.FILE", "ann.csv",
                   "DATASET.CSV.IMAGE_DIR", "images", "DATASET.CSV.CLASSNAMES", "['fear', 'joy', 'sad']")
    ds = build_dataset(cfg)
    assert ds.targets == {"label", "dist", "va"} and ds.task == "single_label"
    assert [(os.path.basename(d.impath), d.label, d.classname) for d in ds.train_x] == [("0.png", 1, "joy"), ("1.png", 1, "joy"), ("2.png", 0, "fear")]
    assert [os.path.basename(d.impath) for d in ds.val] == ["3.png"] and len(ds.test) == 2
    assert ds.train_x[2].dist == pytest.approx((0.4, 0.6, 0.0)) and ds.test[1].va == (7.5, 2.25)


def test_csv_multilabel_formats(csv_root):
    write_csv(csv_root / "train.csv", ["filename", "label"], [[f"images/{i}.png", ["calm_positive", "worried", "calm"][i % 3]] for i in range(4)])
    write_csv(csv_root / "test.csv", ["filename", "label"], [["images/5.png", "positive_worried"]])
    cfg = make_cfg("DATASET.NAME", "CSVDataset", "DATASET.ROOT", str(csv_root.parent), "DATASET.CSV.DIR", csv_root.name,
                   "DATASET.CSV.FILE", "train.csv", "DATASET.CSV.TEST_FILE", "test.csv", "DATASET.CSV.CLASSNAMES", "['calm', 'positive', 'worried']")
    ds = build_dataset(cfg)
    assert ds.task == "multi_label" and ds.targets == {"labels"}
    assert sorted(d.labels for d in ds.train_x + ds.val) == [(0,), (0, 1), (0, 1), (2,)] and ds.test[0].labels == (1, 2)
    write_csv(csv_root / "m.csv", ["path", "labels", "split"], [["images/0.png", "a|b", "train"], ["images/1.png", "b", "test"]])
    ds = build_dataset(make_cfg("DATASET.NAME", "CSVDataset", "DATASET.ROOT", str(csv_root), "DATASET.CSV.FILE", "m.csv", "DATASET.CSV.SEPARATOR", "|"))
    assert ds.classnames == ["a", "b"] and ds.train_x[0].labels == (0, 1) and ds.test[0].labels == (1,)


@pytest.mark.parametrize("path,label,message", [
    ("images/0.png", "anger", r"bad\.csv line 3: label 'anger' is not in the class list \(2 classes: joy, fear\)"),
    ("../outside.png", "joy", r"bad\.csv line 3: image path '\.\./outside\.png' escapes the dataset root"),
    ("/etc/hosts", "joy", r"bad\.csv line 3: image path '/etc/hosts' escapes the dataset root"),
])
def test_csv_errors(csv_root, path, label, message):
    write_csv(csv_root / "bad.csv", ["path", "label", "split"], [["images/1.png", "joy", "test"], [path, label, "train"]])
    cfg = make_cfg("DATASET.NAME", "CSVDataset", "DATASET.ROOT", str(csv_root), "DATASET.CSV.FILE", "bad.csv",
                   "DATASET.CSV.CLASSNAMES", "['joy', 'fear']")
    with pytest.raises(DatasetError, match=message):
        build_dataset(cfg)


def test_missing_root(tmp_path):
    for name in ("CSVDataset", "ImageFolderDataset", "SyntheticEmotion"):
        with pytest.raises(DatasetError, match="DATASET.ROOT is empty"):
            build_dataset(make_cfg("DATASET.NAME", name, "DATASET.ROOT", ""))
    with pytest.raises(DatasetError, match=r"dataset folder not found: .*missing \(DATASET.ROOT\)"):
        build_dataset(make_cfg("DATASET.NAME", "CSVDataset", "DATASET.ROOT", str(tmp_path / "missing"), "DATASET.CSV.FILE", "a.csv"))
    with pytest.raises(DatasetError, match=r"annotation file not found: .*nope\.csv"):
        build_dataset(make_cfg("DATASET.NAME", "CSVDataset", "DATASET.ROOT", str(tmp_path), "DATASET.CSV.FILE", "nope.csv"))


def test_missing_files_and_unreadable_image(csv_root):
    data = [Datum(str(csv_root / "images" / "0.png"))] + [Datum(str(csv_root / f"gone{i}.png")) for i in range(5)]
    with pytest.raises(DatasetError, match=r"5 image file\(s\) missing \(of 6\), e\.g\. .*gone0\.png, .*gone1\.png, .*gone2\.png, \.\.\."):
        check_images(data)
    (csv_root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    loader = build_data_loader([Datum(str(csv_root / "broken.png"), 0)], None, 1, is_train=False, num_classes=1)
    with pytest.raises(DatasetError, match="cannot read image .*broken.png"):
        next(iter(loader))


# ---------------------------------------------------------------- transforms and loaders
def test_transforms(tmp_path):
    cfg = make_cfg("INPUT.SIZE", "(20, 24)", "INPUT.TRANSFORMS", "('random_resized_crop', 'random_flip', 'normalize')")
    img = Image.new("RGB", (50, 30), (255, 0, 0))
    assert build_transform(cfg, True)(img).shape == (3, 20, 24)
    test_out = build_transform(cfg, False)(img)
    assert test_out.shape == (3, 20, 24) and test_out[0].mean().item() == pytest.approx((1 - cfg.INPUT.PIXEL_MEAN[0]) / cfg.INPUT.PIXEL_STD[0], abs=1e-4)
    with pytest.raises(ConfigError, match=r"unknown transform 'random_flp' in INPUT.TRANSFORMS \(did you mean 'random_flip'\?\)"):
        build_transform(make_cfg("INPUT.TRANSFORMS", "('random_flp',)"), True)


def test_loader_batches(tmp_path):
    data = [Datum(png(tmp_path / f"{i}.png", COLORS[i % 4], (16, 16)), i % 4, "", (i % 4, 0), tuple([0.25] * 4), (1.0 * i, 2.0)) for i in range(10)]
    tf = build_transform(make_cfg("INPUT.SIZE", "(8, 8)"), False)
    batches = list(build_data_loader(data, tf, 4, is_train=False, num_classes=4))
    b = batches[0]
    assert [len(x["index"]) for x in batches] == [4, 4, 2]
    assert b["img"].shape == (4, 3, 8, 8) and b["img"].dtype == torch.float32
    assert b["label"].dtype == torch.int64 and b["label"].tolist() == [0, 1, 2, 3] and b["index"].tolist() == [0, 1, 2, 3]
    assert b["labels"].shape == (4, 4) and b["labels"][1].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert b["dist"].shape == (4, 4) and b["va"].tolist()[3] == [3.0, 2.0] and b["impath"][2] == data[2].impath
    train = build_data_loader(data, tf, 4, is_train=True, num_classes=4, num_workers=1, seed=3)
    assert train.drop_last and len(train) == 2 and hasattr(train.sampler, "set_epoch")
    assert not build_data_loader(data, tf, 16, is_train=True, num_classes=4).drop_last
    aug = build_transform(make_cfg("INPUT.SIZE", "(8, 8)", "INPUT.TRANSFORMS", "('random_resized_crop', 'colorjitter')"), True)
    runs = [next(iter(build_data_loader(data, aug, 4, is_train=True, num_classes=4, num_workers=1, seed=3)))["img"] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])  # worker seeds come from `seed`, not from global state
    plain = build_data_loader([Datum(d.impath, d.label) for d in data], tf, 4, is_train=False, num_classes=4)
    assert set(next(iter(plain))) == {"img", "index", "impath", "label"}


def order(data, tf, epoch, seed, **kw):
    loader = build_data_loader(data, tf, 2, is_train=True, num_classes=4, seed=seed, drop_last=False, **kw)
    loader.sampler.set_epoch(epoch)
    return [i for b in loader for i in b["index"].tolist()]


def test_sampler_order_depends_on_seed_and_epoch_and_shards(tmp_path):
    data = [Datum(png(tmp_path / f"{i}.png"), 0) for i in range(11)]
    tf = build_transform(make_cfg("INPUT.SIZE", "(4, 4)"), False)
    first = order(data, tf, 0, 5)
    assert sorted(first) == list(range(11)) and order(data, tf, 0, 5) == first
    assert order(data, tf, 1, 5) != first and order(data, tf, 0, 6) != first
    shards = [order(data, tf, 2, 5, distributed=True, rank=r, world_size=3) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4] and set(sum(shards, [])) == set(range(11))
    g = torch.Generator()
    g.manual_seed(5 + 2)  # seed + epoch
    perm = torch.randperm(11, generator=g).tolist()
    assert shards == [(perm + perm[:1])[r::3] for r in range(3)]  # padded like DistributedSampler
    test_idx = []
    for r in range(3):
        loader = build_data_loader(data, tf, 2, is_train=False, num_classes=1, distributed=True, rank=r, world_size=3)
        test_idx += [i for b in loader for i in b["index"].tolist()]
    assert sorted(test_idx) == list(range(11))


# ---------------------------------------------------------------- synthetic data
SMALL = dict(n_train_per_class=3, n_val_per_class=1, n_test_per_class=2, image_size=16)


def test_generator_determinism(tmp_path):
    def files(d):
        return {os.path.relpath(os.path.join(p, f), d): open(os.path.join(p, f), "rb").read() for p, _, fs in os.walk(d) for f in fs}

    write_synthetic(str(tmp_path / "a"), SyntheticSettings(**SMALL, seed=1))
    write_synthetic(str(tmp_path / "b"), SyntheticSettings(**SMALL, seed=1))
    write_synthetic(str(tmp_path / "c"), SyntheticSettings(**SMALL, seed=2))
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b and len(a) == 8 * 6 + 3
    assert a.keys() == c.keys() and a["images/train/train_00000.png"] != c["images/train/train_00000.png"]
    assert a["annotations.csv"] != c["annotations.csv"]


def test_synthetic_dataset_targets_and_regeneration(tmp_path):
    opts = ["DATASET.NAME", "SyntheticEmotion", "DATASET.ROOT", str(tmp_path), "DATASET.SYNTHETIC.N_TRAIN_PER_CLASS", "3",
            "DATASET.SYNTHETIC.N_VAL_PER_CLASS", "1", "DATASET.SYNTHETIC.N_TEST_PER_CLASS", "2", "DATASET.SYNTHETIC.IMAGE_SIZE", "16",
            "DATASET.SYNTHETIC.MULTI_LABEL_RATE", "0.5"]
    ds = build_dataset(make_cfg(*opts))
    assert ds.classnames == list(CLASSNAMES) and ds.targets == {"label", "labels", "dist", "va"} and ds.task == "single_label"
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (24, 8, 16)
    rows = {r["path"]: r for r in csv.DictReader(open(tmp_path / "synthetic_emotion" / "annotations.csv"))}
    for d in ds.train_x + ds.test:
        r = rows[os.path.relpath(d.impath, tmp_path / "synthetic_emotion")]
        assert d.classname == r["label"] and [CLASSNAMES[k] for k in d.labels] == r["labels"].split("_")
        assert d.dist == pytest.approx([float(r[f"dist_{c}"]) for c in CLASSNAMES], abs=1e-5)
        assert d.va == (float(r["valence"]), float(r["arousal"])) and 1 <= d.va[0] <= 9
        assert max(range(8), key=d.dist.__getitem__) == d.label == d.labels[0]
    assert any(len(d.labels) == 2 for d in ds.train_x)
    with Image.open(ds.train_x[0].impath) as im:
        assert im.size == (16, 16)
    ds2 = build_dataset(make_cfg(*opts, "DATASET.SYNTHETIC.IMAGE_SIZE", "20", "DATASET.TASK", "multi_label"))
    assert ds2.task == "multi_label"
    with Image.open(ds2.train_x[0].impath) as im:
        assert im.size == (20, 20)
    assert json.loads((tmp_path / "synthetic_emotion" / "meta.json").read_text())["image_size"] == 20
    with pytest.raises(ConfigError, match="DIFFICULTY"):
        build_dataset(make_cfg(*opts, "DATASET.SYNTHETIC.DIFFICULTY", "brutal"))


def test_task_override_derives_multihot(tmp_path):
    root = image_folder(tmp_path / "ds", {"train": 4, "val": 1, "test": 1})
    ds = build_dataset(make_cfg("DATASET.NAME", "ImageFolderDataset", "DATASET.ROOT", root, "DATASET.TASK", "multi_label"))
    assert ds.task == "multi_label" and "labels" in ds.targets and all(d.labels == (d.label,) for d in ds.train_x)
    new = build_dataset(make_cfg("DATASET.NAME", "ImageFolderDataset", "DATASET.ROOT", root, "DATASET.SUBSAMPLE_CLASSES", "new",
                                 "DATASET.NUM_SHOTS", "2", "SEED", "3"))
    assert new.classnames == ["c_calm"] and {d.label for d in new.train_x + new.val + new.test} == {0} and len(new.train_x) == 2
