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


# ------------------------------------------------------------------------------- memory bombs
# Small files built only from what the readers allow (tensors, bytes(N), list(range(N)), empty
# containers, a zip member's declared size) that ask for gigabytes. Each is read in a fresh
# process that measures its own peak memory (resource: the resident high-water mark; tracemalloc:
# Python and numpy allocations) around the load: it may not grow by more than 100 MB, and the
# reader must stop with one EmoLabError line naming the file (never a MemoryError traceback).
MB = 1024 * 1024
BOMB_LIMIT = 100 * MB


class _Storage:
    """Stands for a torch storage in a hand-made ``data.pkl``: pickled as torch's persistent id."""

    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, storage, size, stride):
        self.storage, self.size, self.stride = storage, size, stride

    def __reduce__(self):
        import collections

        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, tuple(self.size), tuple(self.stride), False, collections.OrderedDict()))


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def _torch_zip(path, obj, members):
    """A torch.save-style archive holding ``obj`` (with :class:`_Storage` / :class:`_Tensor` placeholders)
    and ``members`` {key: (bytes or callable(writer)), compress_type, declared size or None}."""
    import io
    import zipfile

    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
        for key, (data, ctype) in members.items():
            info = zipfile.ZipInfo(f"archive/data/{key}")
            info.compress_type = ctype
            if callable(data):
                with zf.open(info, "w", force_zip64=True) as w:
                    data(w)
            else:
                zf.writestr(info, data)


def bomb_dassl_deflate(tmp):
    """A 1 MB ``model-best.pth.tar`` whose only tensor member inflates to 1 GiB of zeros."""
    import zipfile

    path = os.path.join(tmp, "model-best.pth.tar")
    n = 1 << 30

    def zeros(w):
        chunk = bytes(8 * MB)
        for _ in range(n // len(chunk)):
            w.write(chunk)

    sched = {"state_dict": {"w": _Tensor(_Storage("0", n // 4), [n // 4], [1])}, "epoch": 1}
    _torch_zip(path, sched, {"0": (zeros, zipfile.ZIP_DEFLATED)})
    assert os.path.getsize(path) < 2 * MB
    return path, "checkpoint"


def bomb_stride0_giant(tmp):
    """One stored float viewed as a [2^20, 2^20] tensor (stride 0): 4 TiB once anything copies it."""
    import zipfile

    path = os.path.join(tmp, "model-best.pth.tar")
    s = _Storage("0", 1)
    _torch_zip(path, {"state_dict": {"w": _Tensor(s, [1 << 20, 1 << 20], [0, 0])}, "epoch": 1},
               {"0": (b"\0\0\0\0", zipfile.ZIP_STORED)})
    return path, "checkpoint"


def bomb_dassl_stride0_fallback(tmp):
    """The same giant in a Dassl file the fallback reader reads (its pickled scheduler is refused by torch.load)."""
    import zipfile

    path = os.path.join(tmp, "model-best.pth.tar")
    sched = _Call(torch.optim.lr_scheduler.StepLR)  # refused by torch.load, a stub for the Dassl reader
    _torch_zip(path, {"state_dict": {"w": _Tensor(_Storage("0", 1), [1 << 20, 1 << 20], [0, 0])}, "epoch": 1,
                      "scheduler": sched}, {"0": (b"\0\0\0\0", zipfile.ZIP_STORED)})
    return path, "checkpoint"


class _Call:
    """Pickles as ``fn(*args)`` (REDUCE of an allowed global)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _features_pickle(path, payload, protocol=4):
    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=protocol)


def bomb_vega_bytes(tmp):
    path = os.path.join(tmp, "IEMOCAP_features.pkl")
    _features_pickle(path, (_Call(bytes, 1 << 36),) * 7)
    return path, "features"


def bomb_vega_bytearray(tmp):
    path = os.path.join(tmp, "IEMOCAP_features.pkl")
    _features_pickle(path, (_Call(bytearray, 1 << 36),) * 7)
    return path, "features"


def bomb_vega_list_range(tmp):
    path = os.path.join(tmp, "IEMOCAP_features.pkl")
    _features_pickle(path, (_Call(list, range(1 << 33)),) * 7)
    return path, "features"


def bomb_vega_numpy_shape(tmp):
    """``numpy.core.multiarray._reconstruct(ndarray, (2^36,), 'b')``: an array of the shape asked for."""
    import numpy.core.multiarray as ma  # noqa: F401 - the name the pickle carries

    path = os.path.join(tmp, "IEMOCAP_features.pkl")
    with open(path, "wb") as f:
        f.write(b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x00\x00\x10\x85U\x01b\x87R.")
    return path, "features"


def bomb_vega_empty_sets(tmp):
    """1 MB of EMPTY_SET opcodes collected in a list: about 220 bytes of memory per byte of file."""
    path = os.path.join(tmp, "IEMOCAP_features.pkl")
    with open(path, "wb") as f:
        f.write(b"\x80\x04(" + b"\x8f" * MB + b"l.")
    return path, "features"


def _kv_pickle(state_pickle: bytes) -> bytes:
    """A gensim ``KeyedVectors`` pickle whose state is the dict pickled in ``state_pickle`` (protocol 3)."""
    return b"\x80\x03cgensim.models.keyedvectors\nKeyedVectors\n)\x81" + state_pickle[2:-1] + b"b."


def bomb_glove_bytes(tmp):
    path = os.path.join(tmp, "glove.kv")
    state = pickle.dumps({"index_to_key": ["a"], "vectors": _Call(bytes, 1 << 36)}, protocol=3)
    with open(path, "wb") as f:
        f.write(_kv_pickle(state))
    return path, "glove"


def bomb_glove_list_range(tmp):
    path = os.path.join(tmp, "glove.kv")
    state = pickle.dumps({"index_to_key": _Call(list, range(1 << 33))}, protocol=3)
    with open(path, "wb") as f:
        f.write(_kv_pickle(state))
    return path, "glove"


def bomb_glove_side_npy(tmp):
    """Vectors stored beside the ``.kv`` as a 200-byte ``.npy`` whose header declares 2^34 floats."""
    import io

    path = os.path.join(tmp, "glove.kv")
    with open(path, "wb") as f:
        f.write(_kv_pickle(pickle.dumps({"index_to_key": ["a"]}, protocol=3)))
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (1 << 32, 4)})
    with open(path + ".vectors.npy", "wb") as f:
        f.write(buf.getvalue() + bytes(16))
    return path, "glove"


BOMBS = {name[5:]: fn for name, fn in globals().items() if name.startswith("bomb_")}

_CHILD = r"""
import json, os, resource, sys, tracemalloc
sys.path.insert(0, os.getcwd())
import numpy, torch, zipfile, pickletools  # noqa: F401 - imported before measuring
from utils.errors import EmoLabError
from trainers.engine.checkpoint import load_checkpoint
from datasets.conversation.format import load_pickle
from trainers.components.glove_init import load_word_vectors
try:
    import gensim.models  # noqa: F401
except ImportError:
    pass
loaders = {"checkpoint": load_checkpoint, "features": load_pickle, "glove": load_word_vectors}
tracemalloc.start()
for line in sys.stdin:
    name, kind, path = line.split()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    out = {"bomb": name, "error": None}
    try:
        obj = loaders[kind](path)
        out["loaded"] = type(obj).__name__
        del obj
    except BaseException as e:  # noqa: BLE001
        out["error"] = [type(e).__name__, str(e), isinstance(e, EmoLabError)]
    out["traced_peak"] = tracemalloc.get_traced_memory()[1] - base
    out["rss_growth"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    print(json.dumps(out), flush=True)
"""


def test_memory_bombs_are_refused_without_memory(tmp_path):
    """Each file (at most ~1 MB) may not raise the reader's peak memory by more than 100 MB; it ends in
    one EmoLabError line naming the file, never a MemoryError or a giant tensor handed on.

    All bombs are read, one after another, by one fresh process: its resident high-water mark may not
    grow by more than 100 MB over all of them, and each one's traced peak stays under 100 MB."""
    import importlib.util
    import json
    import subprocess
    import sys

    lines = []
    for name in sorted(BOMBS):
        if "glove" in name and importlib.util.find_spec("gensim") is None:
            continue
        folder = tmp_path / name
        folder.mkdir()
        path, kind = BOMBS[name](str(folder))
        assert os.path.getsize(path) <= 2 * MB
        lines.append(f"{name} {kind} {path}\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", _CHILD], input="".join(lines), cwd=root, capture_output=True, text=True)
    results = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert res.returncode == 0 and len(results) == len(lines), res.stderr[-2000:]
    problems, total_growth = [], 0
    for out, line in zip(results, lines):
        bomb, path = out["bomb"], line.split()[2]
        total_growth += out["rss_growth"]
        if out["error"] is None:
            problems.append(f"{bomb}: loaded without complaint")
        else:
            name, msg, is_user_error = out["error"]
            if not is_user_error:
                problems.append(f"{bomb}: {name}: {msg[:200]}")
            elif "\n" in msg or path not in msg:
                problems.append(f"{bomb}: not one line naming the file: {msg[:200]}")
        if out["traced_peak"] > BOMB_LIMIT:
            problems.append(f"{bomb}: allocated {out['traced_peak'] / MB:.0f} MB")
        if out["rss_growth"] > BOMB_LIMIT:
            problems.append(f"{bomb}: resident memory grew by {out['rss_growth'] / MB:.0f} MB")
    assert not problems, "\n".join(problems)
    assert total_growth <= BOMB_LIMIT, f"resident memory grew by {total_growth / MB:.0f} MB over all bombs"


def test_legitimate_files_fit_their_budget(tmp_path):
    """The budget does not refuse ordinary files: a checkpoint with an expanded (stride-0) bias of modest
    size, a features pickle of many small lists and a numpy array, a Dassl-style archive."""
    from datasets.conversation.format import load_pickle
    from trainers.engine.checkpoint import load_checkpoint, read_dassl_checkpoint

    w = torch.arange(12.0).reshape(3, 4)
    ckpt = {"state_dict": {"w": w, "b": torch.ones(1).expand(64)}, "epoch": 2}
    torch.save(ckpt, tmp_path / "ok.pth")
    got = load_checkpoint(str(tmp_path / "ok.pth"))
    assert torch.equal(got["state_dict"]["w"], w) and torch.equal(got["state_dict"]["b"], torch.ones(64))
    got = read_dassl_checkpoint(str(tmp_path / "ok.pth"))
    assert torch.equal(got["state_dict"]["w"], w) and got["epoch"] == 2
    data = ({f"d{i}": [[0.5] * 8 for _ in range(20)] for i in range(50)}, np.arange(1000.0), {"a", "b"}, b"xy" * 100,
            bytearray(b"z" * 50), list(range(300)))
    path = tmp_path / "f.pkl"
    for proto in (2, 4):
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=proto)
        back = load_pickle(str(path))
        assert back[0] == data[0] and np.array_equal(back[1], data[1]) and back[2:] == data[2:]
