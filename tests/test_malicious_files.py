"""No file a user downloads can run code: every load site that reads a user file, fed a pickle whose
``__reduce__`` would create a marker file. The marker never appears and the error is one line.

Sites: training checkpoints (resume, ``--model-dir``, official CoOp files through the allow-list),
CLIP weights (safetensors/pickle and OpenAI TorchScript archives), CNN backbone weights, the k-means
feature extractor's weights, VEGA conversation features, anchor files, VA stage-1 weights, GloVe /
word2vec ``.kv`` and ``.model`` files, the k-means cache, the feature cache and the decoded-image cache.
(UniEmoX's own load sites are covered where that method lives.)
"""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from utils.errors import EmoLabError


class Evil:
    """Unpickling this creates ``path`` (a stand-in for any shell command)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _torch_file(path, marker, wrap=None):
    obj = Evil(marker)
    torch.save(wrap(obj) if wrap else obj, path)


def _pickle_file(path, marker):
    with open(path, "wb") as f:
        pickle.dump((Evil(marker), {}, {}), f, protocol=4)


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, f"not one line: {msg!r}"
    return msg


def site_checkpoint(tmp, bad, marker):
    from trainers.engine.checkpoint import load_checkpoint

    _torch_file(bad, marker, lambda o: {"state_dict": o, "epoch": 1})
    load_checkpoint(bad)


def site_clip_weights(tmp, bad, marker):
    from clip.checkpoint import read_checkpoint

    _torch_file(bad, marker, lambda o: {"visual.conv1.weight": o})
    read_checkpoint(bad)


def site_openai_torchscript_archive(tmp, bad, marker):
    """An OpenAI-style ``.pt`` (TorchScript zip: code/ + data.pkl) whose data.pkl carries the payload."""
    import zipfile

    from clip.checkpoint import read_checkpoint

    pt = os.path.join(tmp, "ViT-B-16.pt")
    _torch_file(pt, marker, lambda o: {"visual.conv1.weight": o})
    with zipfile.ZipFile(pt, "a") as zf:
        prefix = zf.namelist()[0].split("/", 1)[0]
        zf.writestr(f"{prefix}/code/__torch__/model.py", "class CLIP(Module):\n  __parameters__ = []\n")
    read_checkpoint(pt)


def site_cnn_weights(tmp, bad, marker):
    from trainers.cnn.backbones import read_state_dict

    _torch_file(bad, marker, lambda o: {"state_dict": o})
    read_state_dict(bad)


def site_kmeans_extractor_weights(tmp, bad, marker):
    from trainers.components.visual_clusters import TorchvisionFeatures

    _torch_file(bad, marker)
    TorchvisionFeatures("resnet18", bad, [0.5] * 3, [0.5] * 3)


def site_vega_features(tmp, bad, marker):
    from datasets.conversation.format import load_pickle

    _pickle_file(bad, marker)
    load_pickle(bad)


def site_anchor_file(tmp, bad, marker):
    from trainers.components.anchors import load_anchors

    _torch_file(bad, marker, lambda o: {"anchor_center": o, "anchor_img_dict": {}})
    load_anchors(bad)


def site_va_stage1(tmp, bad, marker):
    from trainers.cnn.backbones import build_cnn_backbone
    from trainers.va_regression.common import VANet, load_stage1

    _torch_file(bad, marker, lambda o: {"state_dict": o, "epoch": 1})
    load_stage1(VANet(build_cnn_backbone("resnet18", image_size=32), 0), bad)


def site_glove_kv(tmp, bad, marker):
    from trainers.components.glove_init import load_word_vectors

    kv = bad + ".kv"
    with open(kv, "wb") as f:
        pickle.dump(Evil(marker), f, protocol=4)
    load_word_vectors(kv)


def site_glove_model(tmp, bad, marker):
    from trainers.components.glove_init import load_word_vectors

    path = bad + ".model"
    with open(path, "wb") as f:  # a KeyedVectors-looking pickle with a poisoned attribute
        f.write(b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00")
        pickle.dump({"vectors": Evil(marker)}, f, protocol=4)
    load_word_vectors(path)


def site_kmeans_cache(tmp, bad, marker):
    from trainers.components.visual_clusters import cached_centres

    _torch_file(bad, marker, lambda o: {"centres": o})
    cached_centres(bad, lambda: np.zeros((2, 3), np.float32))


def site_feature_cache(tmp, bad, marker):
    from trainers.clip_prompting.feature_cache import load_or_build

    _torch_file(bad, marker, lambda o: {"key": "{}", "features": o})
    out = load_or_build(bad, {}, lambda: torch.zeros(2, 1, 3))  # refused, then rebuilt: no error to show
    assert torch.equal(out, torch.zeros(2, 1, 3))
    raise EmoLabError("feature cache rebuilt")


def site_decoded_cache(tmp, bad, marker):
    from datasets.base import Datum
    from datasets.decoded_cache import decode_all
    from PIL import Image

    img = os.path.join(tmp, "a.png")
    Image.new("RGB", (8, 8)).save(img)
    data = [Datum(impath=img, label=0)]
    cache = os.path.join(tmp, "dec")
    decode_all(data, cache)  # writes the cache file
    (path,) = [os.path.join(cache, f) for f in os.listdir(cache)]
    _torch_file(path, marker)
    decode_all(data, cache)


SITES = {name[5:]: fn for name, fn in globals().items() if name.startswith("site_")}


@pytest.mark.parametrize("site", sorted(SITES))
def test_malicious_pickle_never_runs(site, tmp_path):
    marker = str(tmp_path / "PWNED")
    bad = str(tmp_path / "evil.pth")
    with pytest.raises(EmoLabError) as ei:
        SITES[site](str(tmp_path), bad, marker)
    _one_line(ei.value)
    assert not os.path.exists(marker), f"{site}: the pickled code ran"


def test_the_evil_file_would_run_with_plain_pickle(tmp_path):
    """The fixture is really malicious: plain unpickling creates the marker."""
    marker = str(tmp_path / "PWNED")
    _pickle_file(str(tmp_path / "x.pkl"), marker)
    with open(tmp_path / "x.pkl", "rb") as f:
        pickle.load(f)
    assert os.path.exists(marker)


def test_real_gensim_kv_files_still_load_and_equal(tmp_path):
    """A real gensim ``KeyedVectors.save`` file (inline arrays and arrays in a side .npy) loads unchanged."""
    gensim = pytest.importorskip("gensim")
    from gensim.models import KeyedVectors

    from trainers.components.glove_init import load_word_vectors

    words = ["happy", "sad", "calm", "fear"]
    vecs = np.random.RandomState(0).randn(4, 6).astype(np.float32)
    for name, sep in (("inline.kv", 10 * 1024**2), ("side.kv", 10)):
        kv = KeyedVectors(6)
        kv.add_vectors(words, vecs)
        kv.save(str(tmp_path / name), sep_limit=sep)
        got = load_word_vectors(str(tmp_path / name))
        assert got.index_to_key == words
        assert np.array_equal(got.vectors, vecs)
        assert np.array_equal(got["calm"], vecs[2])
    assert os.path.isfile(tmp_path / "side.kv.vectors.npy")
    assert gensim is not None
