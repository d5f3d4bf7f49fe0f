"""Conversation features: the pickled 7-tuple reader, its safety and format checks, the validation
split, the synthetic generator and dialogue batches."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from configs.config import merge_from_list

from trainers import get_cfg
from utils.errors import DatasetError
from datasets import DATASET_REGISTRY, build_dataset
from datasets.conversation.features import ConversationFeatures, IEMOCAPFeatures, MELDFeatures, split_dialogues
from datasets.conversation.format import SafeUnpickler, load_pickle, parse_conversation
from datasets.conversation.loader import build_dialogue_loader, collate_dialogues
from datasets.synthetic.conversation import ConversationSettings, ensure_conversation, generate_conversation

SMALL = ConversationSettings(
    n_train_dialogues=12, n_test_dialogues=5, min_len=3, max_len=7, text_dim=6, audio_dim=5, visual_dim=4
)


def tiny_tuple(n_train=4, n_test=2, dims=(3, 2, 2), seed=0, speakers="MF"):
    """A hand-made 7-tuple with random features."""
    rng = np.random.default_rng(seed)
    spk, lab, txt, aud, vis = {}, {}, {}, {}, {}
    ids = [f"d{k}" for k in range(n_train + n_test)]
    for k, vid in enumerate(ids):
        L = 2 + k % 3
        lab[vid] = [int(x) for x in rng.integers(0, 6, L)]
        spk[vid] = [speakers[i % len(speakers)] for i in range(L)]
        txt[vid], aud[vid], vis[vid] = (rng.normal(size=(L, d)).astype(np.float32) for d in dims)
    return spk, lab, txt, aud, vis, ids[:n_train], ids[n_train:]


def dump(obj, path, protocol=4):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


def test_synthetic_file_is_the_7_tuple_with_class_signal_in_every_modality(tmp_path):
    path = ensure_conversation(str(tmp_path), SMALL)
    obj = load_pickle(path)
    assert isinstance(obj, tuple) and len(obj) == 7
    speakers, labels, text, audio, visual, train_vid, test_vid = obj
    vid = train_vid[0]
    L = len(labels[vid])
    assert text[vid].shape == (L, 6) and audio[vid].shape == (L, 5) and visual[vid].shape == (L, 4)
    assert set(speakers[vid]) <= {"M", "F"} and len(train_vid) == 12 and len(test_vid) == 5
    # same settings -> same bytes; the file is not rewritten when nothing changed
    mtime = os.path.getmtime(path)
    assert ensure_conversation(str(tmp_path), SMALL) == path and os.path.getmtime(path) == mtime
    with open(path, "rb") as f:
        assert f.read() == pickle.dumps(generate_conversation(SMALL), protocol=4)
    # every modality alone carries the label: nearest class mean beats chance (1/6) clearly
    big = ConversationSettings(n_train_dialogues=60, n_test_dialogues=20)
    sp, lab, *feats, tr, te = generate_conversation(big)
    for feat in feats:
        x_tr = np.concatenate([feat[v] for v in tr])
        y_tr = np.concatenate([lab[v] for v in tr])
        means = np.stack([x_tr[y_tr == c].mean(0) for c in range(6)])
        x_te = np.concatenate([feat[v] for v in te])
        y_te = np.concatenate([lab[v] for v in te])
        pred = ((x_te[:, None] - means[None]) ** 2).sum(-1).argmin(1)
        assert (pred == y_te).mean() > 0.3


def test_reader_speakers_split_and_saved_split(tmp_path):
    path = dump(tiny_tuple(n_train=10, n_test=3), tmp_path / "IEMOCAP.pkl")
    ds = IEMOCAPFeatures.load(path, val_percent=0.2, split_seed=0)
    assert ds.classnames == ["happy", "sad", "neutral", "anger", "excited", "frustration"]
    assert ds.dims == {"text": 3, "audio": 2, "visual": 2} and ds.num_speakers == 2
    assert [d.vid for d in ds.test] == ["d10", "d11", "d12"]  # testVid, in its order
    train, val = {d.vid for d in ds.train_x}, {d.vid for d in ds.val}
    assert len(val) == 2 and not train & val and train | val == {f"d{k}" for k in range(10)}
    assert ds.train_x[0].speakers.tolist()[:2] == [0, 1]  # 'M' -> 0, 'F' -> 1
    split_file = tmp_path / "split_IEMOCAP.json"
    saved = json.loads(split_file.read_text())
    assert set(saved["val"]) == val and saved["test"] == ["d10", "d11", "d12"]
    assert saved["meta"] == {"file": "IEMOCAP.pkl", "val_percent": 0.2, "seed": 0}
    # reused as saved (even if edited by hand), redone for other settings
    saved["val"], saved["train"] = saved["train"][:2], saved["train"][2:] + saved["val"]
    split_file.write_text(json.dumps(saved))
    assert {d.vid for d in IEMOCAPFeatures.load(path, val_percent=0.2).val} == set(saved["val"])
    assert {d.vid for d in IEMOCAPFeatures.load(path, val_percent=0.2, split_seed=5).val} == set(split_dialogues(
        [f"d{k}" for k in range(10)], 0.2, 5)[1])


def test_dialoguernn_layout_meld_speakers_and_python2_style_pickle(tmp_path):
    spk, lab, txt, aud, vis, tr, te = tiny_tuple()
    onehot = {v: [np.eye(9)[(i * 4) % 9].tolist() for i in range(len(lab[v]))] for v in lab}
    nine = ({v: v for v in lab}, onehot, lab, txt, aud, vis, {v: ["hi"] * len(lab[v]) for v in lab}, tr, te)
    ds = MELDFeatures.load(dump(nine, tmp_path / "MELD.pkl", protocol=2))
    assert ds.num_speakers == 9 and ds.num_classes == 7
    first = ds.train_x[0] if ds.train_x[0].vid == "d0" else next(d for d in ds.train_x + ds.val if d.vid == "d0")
    assert first.speakers.tolist() == [0, 4]


def test_restricted_unpickler_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = dump((Evil(),) * 7, tmp_path / "evil.pkl")
    with pytest.raises(DatasetError, match=r"forbidden global (posix|nt)\.system"):
        load_pickle(path)
    assert not marker.exists()
    path = dump(tiny_tuple()[:6] + (torch.zeros(1),), tmp_path / "torch.pkl")
    with pytest.raises(DatasetError, match="forbidden global torch"):
        load_pickle(path)
    import io
    import pickle

    ndarray = SafeUnpickler(io.BytesIO(pickle.dumps(0))).find_class("numpy", "ndarray")  # charged for its shape
    assert getattr(ndarray, "_real_ndarray", None) is np.ndarray


def _broken(kind):
    spk, lab, txt, aud, vis, tr, te = tiny_tuple()
    if kind == "missing":
        del aud["d1"]
    elif kind == "length":
        txt["d2"] = txt["d2"][:1]
    elif kind == "dims":
        vis["d3"] = np.zeros((len(lab["d3"]), 7), np.float32)
    elif kind == "label":
        lab["d0"][0] = 9
    elif kind == "overlap":
        te = te + ["d0"]
    elif kind == "rank":
        txt["d0"] = np.zeros(len(lab["d0"]), np.float32)
    elif kind == "nan":
        aud["d1"][0, 0] = np.nan
    return spk, lab, txt, aud, vis, tr, te


@pytest.mark.parametrize("obj, message", [
    ({"a": 1}, "expected a 7-tuple (videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, trainVid, testVid) "
               "or the 9-item DialogueRNN layout, got a dict"),
    (tiny_tuple()[:6], "got a tuple of 6 items"),
    (("x",) + tiny_tuple()[1:], "videoSpeakers must be a dict keyed by dialogue id, got str"),
    (_broken("missing"), "dialogue 'd1' is listed in trainVid/testVid but missing from videoAudio"),
    (_broken("length"), "videoText['d2'] has 1 utterances but videoLabels has 4"),
    (_broken("dims"), "videoVisual['d3'] is 7-d but other dialogues' visual features are 2-d"),
    (_broken("label"), "label 9 outside [0, 5]"),
    (_broken("overlap"), "1 dialogue(s) in both trainVid and testVid, e.g. 'd0'"),
    (_broken("rank"), "videoText['d0'] has shape (2,), expected [L, D]"),
    (_broken("nan"), "videoAudio['d1'] holds non-finite values"),
])
def test_format_errors_are_one_line(obj, message):
    with pytest.raises(DatasetError) as e:
        parse_conversation(obj, "f.pkl", num_classes=6)
    assert message in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("f.pkl: ")


def test_truncated_file_and_image_trainer_refusal(tmp_path):
    path = dump(tiny_tuple(), tmp_path / "IEMOCAP.pkl")
    data = open(path, "rb").read()
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="cannot read conversation features .*bad.pkl"):
        IEMOCAPFeatures.load(str(bad))
    cfg = get_cfg()
    merge_from_list(cfg, ["DATASET.NAME", "IEMOCAPFeatures", "DATASET.ROOT", str(tmp_path)])
    with pytest.raises(DatasetError, match="holds conversation features, not images: .*--trainer VEGA"):
        build_dataset(cfg)
    assert {"IEMOCAPFeatures", "MELDFeatures", "ConversationFeatures", "SyntheticConversation"} <= set(DATASET_REGISTRY.names())
    assert issubclass(DATASET_REGISTRY.get("SyntheticConversation"), ConversationFeatures)


def test_dialogue_batches_pad_mask_and_index_every_utterance_once(tmp_path):
    ds = ConversationFeatures.load(dump(tiny_tuple(n_train=5, n_test=4), tmp_path / "c.pkl"), val_percent=0.0)
    assert ds.classnames == [f"class{k}" for k in range(max(int(d.labels.max()) for d in ds.train_x + ds.test) + 1)]
    loader = build_dialogue_loader(ds.test, 3, is_train=False)
    seen = []
    for batch in loader:
        B, L = batch["mask"].shape
        lengths = [len(d) for d in ds.test if d.vid in batch["vid"]]
        assert L == max(lengths) and batch["text"].shape == (B, L, 3) and batch["audio"].shape == (B, L, 2)
        assert batch["mask"].sum(1).tolist() == lengths
        assert (batch["label_padded"][~batch["mask"]] == -1).all() and (batch["text"][~batch["mask"]] == 0).all()
        assert torch.equal(batch["label"], batch["label_padded"][batch["mask"]])
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(sum(len(d) for d in ds.test)))
    items = [{"position": 0, "dialogue": ds.test[1], "offset": 7}]
    one = collate_dialogues(items)
    assert one["index"].tolist() == list(range(7, 7 + len(ds.test[1]))) and one["label"].tolist() == ds.test[1].labels.tolist()
    train = build_dialogue_loader(ds.train_x, 2, is_train=True, seed=1)  # EpochSampler keys (index, epoch)
    train.sampler.set_epoch(3)
    assert sorted(v for b in train for v in b["vid"]) == sorted(d.vid for d in ds.train_x)
