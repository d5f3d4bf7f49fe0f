"""Fast paths that must not change results: class text features encoded once per evaluation,
per-sample seeding on the CPU generator only, JPEG decoding by torchvision, screening memo."""
from __future__ import annotations

import glob

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from datasets.loader import apply_transform
from datasets.transforms import TRANSFORM_NAMES, TransformSettings, compose
from trainers.components.context import CONTEXT_GENERATORS
from trainers.components.prompt_learner import PromptedCLIP, PromptLearner, context_from_words

CLASSES = ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"]


def _model(clip, gen="StaticContext"):
    init, n = context_from_words(clip, "a photo of a")
    g = CONTEXT_GENERATORS.get(gen)(n_ctx=n, ctx_dim=clip.text_width, vis_dim=clip.embed_dim,
                                    n_cls=len(CLASSES), init=init, hidden_ratio=4)
    return PromptedCLIP(clip, PromptLearner(clip, CLASSES, g, n))


class _CountCalls:
    def __init__(self, clip):
        self.clip, self.calls = clip, 0
        self.orig = clip.encode_text_embeddings

    def __enter__(self):
        def counted(*a, **k):
            self.calls += 1
            return self.orig(*a, **k)

        self.clip.encode_text_embeddings = counted
        return self

    def __exit__(self, *exc):
        del self.clip.encode_text_embeddings  # back to the class's method


def test_coop_evaluation_encodes_class_prompts_once_with_identical_logits(tiny_clip):
    torch.manual_seed(0)
    model = _model(tiny_clip).eval()
    batches = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    with torch.no_grad():
        model.reuse_text_features = False  # today's behaviour: one text pass per batch
        with _CountCalls(tiny_clip) as c:
            per_batch = [model(x) for x in batches]
        assert c.calls == 3
        model.reuse_text_features = True
        with _CountCalls(tiny_clip) as c:
            once = [model(x) for x in batches]
        assert c.calls == 1
    for a, b in zip(per_batch, once):
        assert torch.equal(a, b)


def test_reused_text_features_follow_the_weights(tiny_clip):
    """An optimizer step or a loaded state changes the logits at the next evaluation."""
    torch.manual_seed(0)
    model = _model(tiny_clip)
    x = torch.randn(4, 3, 32, 32)
    opt = torch.optim.SGD(model.prompt_learner.parameters(), lr=1.0)
    with torch.no_grad():
        before = model(x)
    model.train()
    model(x).logsumexp(1).sum().backward()  # gradients recorded: no reuse while training
    opt.step()
    with torch.no_grad():
        after = model(x)
        model.reuse_text_features = False
        fresh = model(x)
        model.reuse_text_features = True
    assert not torch.equal(before, after)
    assert torch.equal(after, fresh)
    state = {k: v.clone() for k, v in model.prompt_learner.state_dict().items()}
    with torch.no_grad():
        model.prompt_learner.context.ctx.add_(0.5)
        shifted = model(x)
        model.prompt_learner.load_state_dict(state)
        assert not torch.equal(shifted, after)
        assert torch.equal(model(x), after)


def test_image_conditioned_context_still_encodes_per_batch(tiny_clip):
    torch.manual_seed(0)
    model = _model(tiny_clip, gen="ConditionalContext").eval()
    with torch.no_grad(), _CountCalls(tiny_clip) as c:
        a, b = model(torch.randn(3, 3, 32, 32)), model(torch.randn(3, 3, 32, 32))
    assert c.calls == 2 and not torch.equal(a[0], b[0])


def _shipped_train_transforms():
    lists = {tuple(TRANSFORM_NAMES)}
    for path in glob.glob("configs/**/*.yaml", recursive=True):
        with open(path, encoding="utf-8") as f:
            names = ((yaml.safe_load(f) or {}).get("INPUT") or {}).get("TRANSFORMS")
        if names:
            lists.add(tuple(names))
    return sorted(lists)


def _view_as_before(transform, img, seed):
    """The seeding of the base code: the global generators reseeded by torch.manual_seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = transform(img)
    return out.as_subclass(torch.Tensor)


@pytest.mark.parametrize("names", _shipped_train_transforms(), ids="+".join)
def test_seeded_views_bit_identical_to_torch_manual_seed(names):
    tfm = compose(names, TransformSettings(size=(24, 24), gb_k=5))
    g = torch.Generator().manual_seed(1)
    pil = Image.fromarray((torch.rand(40, 57, 3, generator=g) * 255).to(torch.uint8).numpy())
    tensor = torch.from_numpy(np.array(pil)).permute(2, 0, 1).contiguous()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for seed in (0, 1, 7, 10_000_019 * 3 + 5):
        for img in (pil, tensor):
            assert torch.equal(apply_transform(tfm, img, seed), _view_as_before(tfm, img, seed))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is left as it was


def test_torch_only_transforms_leave_python_rngs_alone_and_others_get_them_seeded():
    """Shipped (torchvision) pipelines skip seeding random / np.random (the costly part) with the same
    views; a pipeline with a Python-random op (v1 RandomChoice, a Lambda, timm) gets them seeded per sample."""
    import random

    from torchvision.transforms import v2

    from utils.rng import draws_on_torch_only

    shipped = [compose(n, TransformSettings(size=(24, 24), gb_k=5)) for n in _shipped_train_transforms()]
    assert shipped and all(draws_on_torch_only(t) for t in shipped)
    img = torch.randint(0, 256, (3, 40, 57), dtype=torch.uint8)
    random.seed(5)
    np.random.seed(5)
    py_next, np_next = random.random(), np.random.rand()
    random.seed(5)
    np.random.seed(5)
    apply_transform(shipped[0], img, 3)
    assert (random.random(), np.random.rand()) == (py_next, np_next)  # untouched
    pick = v2.Lambda(lambda t: t[:, : 10 + random.randrange(20)] * 0 + int(np.random.randint(0, 9)))
    assert not draws_on_torch_only(pick)
    views = [apply_transform(pick, img, seed) for seed in (1, 1, 2)]
    assert torch.equal(views[0], views[1]) and not torch.equal(views[0], views[2])  # seeded per sample
    random.seed(5)
    np.random.seed(5)
    apply_transform(pick, img, 4)
    assert (random.random(), np.random.rand()) == (py_next, np_next)  # restored afterwards


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """JPEGs in the variants photos come in, plus a PNG; (path, PIL mode it was saved from)."""
    root = tmp_path_factory.mktemp("jpegs")
    y, x = np.mgrid[0:61, 0:83]
    g = np.random.default_rng(0)
    arr = np.stack([(x * 3) % 256, (y * 4) % 256, (x + y) % 256], -1) + g.integers(-30, 30, (61, 83, 3))
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    paths = []
    for name, kw, mode in [("420.jpg", {"subsampling": 2}, "RGB"), ("422.jpg", {"subsampling": 1}, "RGB"),
                           ("444.jpg", {"subsampling": 0, "quality": 95}, "RGB"),
                           ("progressive.jpg", {"progressive": True}, "RGB"), ("grey.jpg", {}, "L"),
                           ("cmyk.jpg", {}, "CMYK"), ("plain.png", {}, "RGB")]:
        img.convert(mode).save(root / name, **kw)
        paths.append(str(root / name))
    return paths


def test_decoded_jpegs_have_the_pil_pixels(jpegs):
    from datasets.decode import read_image_tensor
    from datasets.loader import read_image

    for path in jpegs:
        ref = torch.from_numpy(np.array(read_image(path))).permute(2, 0, 1)
        assert torch.equal(read_image_tensor(path), ref), path


def test_loader_views_equal_the_pil_path_for_the_224px_training_transform(jpegs):
    from datasets.base import Datum
    from datasets.loader import DatasetWrapper, read_image, view_seed

    tfm = compose(["random_resized_crop", "random_flip", "normalize"],
                  TransformSettings(size=(48, 48), interpolation="bicubic"))
    ds = DatasetWrapper([Datum(impath=p, label=0) for p in jpegs], tfm, num_classes=1, seed=3)
    assert ds.tensor_input
    for i, path in enumerate(jpegs):
        for epoch in (0, 1):
            pil_view = _view_as_before(tfm, read_image(path), view_seed(3, epoch, i))
            assert torch.equal(ds[(i, epoch)]["img"], pil_view), path


def test_bad_jpeg_gives_the_same_one_line_error(jpegs, tmp_path):
    from datasets.decode import read_image_tensor
    from datasets.loader import read_image
    from utils.errors import DatasetError

    data = open(jpegs[0], "rb").read()
    for name, blob in [("truncated.jpg", data[: len(data) // 2]), ("empty.jpg", b""), ("text.jpg", b"\xff\xd8\xffnot")]:
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(DatasetError) as new:
            read_image_tensor(str(path))
        with pytest.raises(DatasetError) as old:
            read_image(str(path))
        assert str(new.value) == str(old.value) and str(path) in str(new.value) and "\n" not in str(new.value)
    with pytest.raises(DatasetError, match="missing.jpg"):
        read_image_tensor(str(tmp_path / "missing.jpg"))


def test_transforms_that_need_pil_images_get_pil_images(jpegs):
    from torchvision import transforms as v1

    from datasets.base import Datum
    from datasets.loader import DatasetWrapper

    seen = []
    tfm = v1.Compose([v1.Lambda(lambda im: seen.append(type(im)) or im), v1.Resize(16), v1.ToTensor()])
    ds = DatasetWrapper([Datum(impath=jpegs[0], label=0)], tfm, num_classes=1)
    assert not ds.tensor_input and ds[0]["img"].shape == (3, 16, 21) and seen == [Image.Image]


def test_screening_opens_only_new_or_changed_files_and_keeps_the_bad_image_error(tmp_path, monkeypatch):
    import os

    from datasets.base import DatasetBase, Datum
    from datasets.formats import image_check
    from utils.errors import DatasetError

    paths = []
    for i in range(6):
        p = tmp_path / f"img{i}.jpg"
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(p)
        paths.append(str(p))
    ds = DatasetBase(train_x=[Datum(impath=p, label=0) for p in paths[:4]], val=[],
                     test=[Datum(impath=p, label=0) for p in paths[4:]], classnames=["a"], targets=["label"], name="Folder",
                     root=str(tmp_path))
    opened = []
    probe = image_check.probe_image
    monkeypatch.setattr(image_check, "probe_image", lambda p, mode: opened.append(p) or probe(p, mode))
    screened = image_check.screen_images(ds, "header", skip=False)
    assert (screened.train_x, screened.test) == (ds.train_x, ds.test) and set(screened.existing_files) == set(paths)
    assert sorted(opened) == sorted(paths) and os.path.isfile(tmp_path / ".screening_header.json")
    opened.clear()
    image_check.screen_images(ds, "header", skip=False)
    assert opened == []  # warm start: no image opened
    image_check.screen_images(ds, "decode", skip=False)
    assert sorted(opened) == sorted(paths)  # each check remembers its own passes
    opened.clear()
    (tmp_path / "img2.jpg").write_bytes(b"not an image at all")  # new size and time
    with pytest.raises(DatasetError) as err:
        image_check.screen_images(ds, "header", skip=False)
    assert opened == [paths[2]]
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("dataset Folder: 1 unreadable image(s) (of 6), e.g. " + paths[2] + " (cannot identify")
    opened.clear()
    with pytest.raises(DatasetError) as again:  # a bad file is never remembered
        image_check.screen_images(ds, "header", skip=False)
    assert opened == [paths[2]] and str(again.value) == msg


def test_warm_screening_reads_only_the_memo_header_and_old_memos_screen_once(tmp_path, monkeypatch):
    """Version 2 memo: a start whose files all match the header's digest reads one line; a touched
    file sends it to the per-file table (only that file is opened); a version-1 memo is no memo."""
    import json
    import os

    from datasets import screening
    from datasets.formats import image_check

    paths = []
    for i in range(5):
        p = tmp_path / f"img{i}.png"
        Image.new("RGB", (4, 4), (i * 50, 0, 0)).save(p)
        paths.append(str(p))
    memo = str(tmp_path / ".screening_header.json")
    opened = []
    probe = image_check.probe_image
    monkeypatch.setattr(image_check, "probe_image", lambda p, mode: opened.append(p) or probe(p, mode))
    assert image_check.find_bad_images(paths, "header", memo=memo) == [] and sorted(opened) == sorted(paths)
    with open(memo, encoding="utf-8") as f:
        head, table = json.loads(f.readline()), json.loads(f.readline())
    now = screening.stamps(paths)
    assert head == {"version": 2, "digest": screening.digest(now), "count": 5}
    assert table == {p: list(now[p]) for p in paths}
    loads = []
    real_load = screening.load
    monkeypatch.setattr(screening, "load", lambda path: loads.append(path) or real_load(path))
    opened.clear()
    assert image_check.find_bad_images(paths, "header", memo=memo) == []
    assert opened == [] and loads == []  # the header alone: no per-file table parsed
    st = os.stat(paths[3])
    os.utime(paths[3], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new time, same content
    assert image_check.find_bad_images(paths, "header", memo=memo) == []
    assert opened == [paths[3]] and loads == [memo]
    with open(memo, "w", encoding="utf-8") as f:  # a memo of version 1 (one JSON object)
        json.dump({"version": 1, "passed": {p: list(s) for p, s in screening.stamps(paths).items()}}, f)
    opened.clear()
    assert image_check.find_bad_images(paths, "header", memo=memo) == [] and sorted(opened) == sorted(paths)


def test_screened_files_are_not_checked_for_existence_again(tmp_path, monkeypatch):
    """One stat per file per start: the existence check after screening skips the screened paths,
    and still names a path it was not told about."""
    import os

    from datasets.base import check_images, Datum
    from utils.errors import DatasetError

    p = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(p)
    calls = []
    real = os.path.isfile
    monkeypatch.setattr(os.path, "isfile", lambda q: calls.append(q) or real(q))
    check_images([Datum(impath=str(p))], known={str(p)})
    assert calls == []
    with pytest.raises(DatasetError, match=r"^1 image file\(s\) missing \(of 2\), e.g. .*gone.png$"):
        check_images([Datum(impath=str(p)), Datum(impath=str(tmp_path / "gone.png"))], known={str(p)})


def test_unwritable_dataset_folder_screens_every_start(tmp_path, monkeypatch):
    from datasets.formats import image_check

    p = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(p)
    memo = str(p / "memo.json")  # under a file: cannot be created
    for _ in range(2):
        assert image_check.find_bad_images([str(p)], "header", memo=memo) == []


def test_fused_quick_gelu_same_forward_bits_and_gradient():
    from open_clip.transformer import QuickGELU

    from clip.activations import FusedQuickGELU, fuse_quick_gelu, unfuse_quick_gelu

    torch.manual_seed(0)
    x = (torch.randn(4, 7, 33) * 4).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(4, 7, 33)
    ref, fused = QuickGELU()(x), FusedQuickGELU()(x2)
    assert torch.equal(ref, fused)
    ref.backward(g)
    fused.backward(g)
    assert torch.allclose(x.grad, x2.grad, rtol=1e-5, atol=1e-6)
    assert torch.autograd.gradcheck(FusedQuickGELU(), (torch.randn(3, 5, dtype=torch.float64, requires_grad=True),))
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), QuickGELU(), torch.nn.Sequential(QuickGELU()))
    assert fuse_quick_gelu(net) == 2 and isinstance(net[2][0], FusedQuickGELU)
    assert unfuse_quick_gelu(net) == 2 and type(net[1]) is QuickGELU


def test_a_run_that_does_not_test_encodes_no_test_image(tmp_path, data_root):
    import os

    from conftest import COOP_CFG, SMALL_DATA, SYN_CFG, run_cli

    common = ["--root", data_root, "--seed", "1", "--config-file", COOP_CFG, "--dataset-config-file", SYN_CFG,
              *SMALL_DATA, "OPTIM.MAX_EPOCH", "1", "CACHE.DIR", str(tmp_path / "cache")]
    assert run_cli(["--output-dir", str(tmp_path / "a"), *common, "TEST.NO_TEST", "True"]) == 0
    log = (tmp_path / "a" / "log.txt").read_text()
    assert "test images" not in log and "val images x 1 view(s)" in log  # val: built at the first validation
    assert not [f for f in os.listdir(tmp_path / "cache") if "_test_" in f]
    assert run_cli(["--output-dir", str(tmp_path / "b"), *common]) == 0  # a run that tests builds them then
    assert [f for f in os.listdir(tmp_path / "cache") if "_test_" in f]
