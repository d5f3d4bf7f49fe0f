"""Scale modes of ``tools/benchmark.py`` (one per command; variants timed interleaved in one process,
best of ``--repeats`` rounds): evaluation at several class counts, the training loader against
``decode_jpeg``, ``build_trainer`` start-up on large folders, fused QuickGELU, CLIP's attention layout,
and the ``CACHE.VIEWS`` sweep of full runs. Each takes the parsed arguments and returns table rows."""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Dict, List, Tuple

import torch

from tools.benchmark import _sync, build, saved_for_backward_mb
from utils.errors import EmoLabError


def cache_views_sweep(args, extra_opts: List[str]) -> List[Dict[str, Any]]:
    """Full ``train.py`` runs (train + final test) of ``args.config_file`` per seed: with the
    default cache semantics (``CACHE.FEATURES auto``: training on images unless the cache is exact)
    and with ``CACHE.FEATURES on`` at each K of ``args.cache_views``. Test accuracy and wall time
    per run; every run builds its own cache in a fresh folder (the time includes encoding)."""
    import contextlib
    import io

    import train
    from tools.parse_results import read_metrics_jsonl

    rows = []
    variants = [("default (CACHE.FEATURES auto)", ["CACHE.FEATURES", "auto"])]
    variants += [(f"CACHE.FEATURES on, VIEWS {k}", ["CACHE.FEATURES", "on", "CACHE.VIEWS", str(k)]) for k in args.cache_views]
    plan = [(args.seeds[0], variants[0], True)]  # a warm-up run (imports, first-call costs), not counted
    plan += [(seed, variant, False) for seed in args.seeds for variant in variants]  # interleaved per seed
    for seed, (label, opts), warmup in plan:
        out = tempfile.mkdtemp(prefix="emolab_views_")
        argv = ["--trainer", args.trainer, "--config-file", args.config_file, "--dataset-config-file",
                args.dataset_config_file, "--root", args.root, "--output-dir", out, "--seed", str(seed),
                *extra_opts, *opts, "CACHE.DIR", os.path.join(out, "cache")]
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = train.main(argv)
        wall = time.perf_counter() - t0
        if code != 0:
            raise EmoLabError(f"run {label}, seed {seed} exited with {code} (log: {out}/log.txt)")
        if warmup:
            continue
        res = read_metrics_jsonl(os.path.join(out, "metrics.jsonl"), "test") or {}
        rows.append({"what": label, "seed": seed, "accuracy": res.get("accuracy", float("nan")), "seconds": wall})
        print(f"{label} seed {seed}: accuracy {rows[-1]['accuracy']:.2f}, {wall:.1f} s", flush=True)
    return rows


def print_sweep(rows: List[Dict[str, Any]]) -> None:
    import statistics

    print("\n| variant | test accuracy (mean ± std over seeds) | seconds per run (mean) | time vs default |")
    print("|---|--:|--:|--:|")
    labels = list(dict.fromkeys(r["what"] for r in rows))
    base = statistics.mean(r["seconds"] for r in rows if r["what"] == labels[0])
    for label in labels:
        acc = [r["accuracy"] for r in rows if r["what"] == label]
        sec = [r["seconds"] for r in rows if r["what"] == label]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        print(f"| {label} | {statistics.mean(acc):.1f} ± {sd:.1f} | {statistics.mean(sec):.1f} | {statistics.mean(sec) / base:.2f}x |")


def _best(times: List[float]) -> float:
    return min(times)  # least disturbed by the other jobs of a shared machine


def eval_classes(args, extra_opts: List[str]) -> List[Dict[str, Any]]:
    """CoOp evaluation throughput at each class count of ``args.eval_classes``: a full evaluation of
    ``args.eval_images`` cached test features (the test split's features tiled), or with
    ``--eval-source images`` of as many test images through the image loader (``--workers``), batch
    ``--test-batch-size``, with the class prompts encoded on every batch (before) and once per
    evaluation (now: the memo is cleared before every evaluation, as a weight update would)."""
    from datasets.loader import ShardSampler
    from trainers.clip_prompting.base import LazyLoader
    from trainers.components.prompt_learner import PromptLearner
    from trainers.clip_prompting import feature_cache as fc
    from trainers.engine.utils import to_device

    source_opts = {"images": ["CACHE.FEATURES", "off"],
                   "decoded": ["CACHE.FEATURES", "off", "DATALOADER.DECODED_CACHE", "memory"]}.get(args.eval_source, [])
    trainer = build(args, extra_opts + source_opts)
    model = trainer.model_without_ddp
    pl0 = model.prompt_learner
    passes = 1
    if args.eval_source == "decoded":  # the trainer's own test loader over the decoded-image cache, repeated
        loader = trainer.test_loader
        passes = -(-args.eval_images // len(trainer.dataset.test))
        n_images = passes * len(trainer.dataset.test)
    elif args.eval_source == "images":  # the image loader (decode + evaluation transform + image encoder)
        from datasets import build_data_loader

        test_data = list(trainer.dataset.test)
        data = (test_data * -(-args.eval_images // len(test_data)))[: args.eval_images]
        loader = build_data_loader(data, trainer.tfm_test, args.test_batch_size, is_train=False,
                                   num_classes=trainer.num_classes, num_workers=args.workers[0])
        n_images = len(data)
    else:
        test = trainer.test_loader.loader() if isinstance(trainer.test_loader, LazyLoader) else trainer.test_loader
        reps = -(-args.eval_images // test.feats.shape[0])
        feats = test.feats.repeat(reps, 1, 1)[: args.eval_images]
        targets = {k: v.repeat(reps, *[1] * (v.dim() - 1))[: args.eval_images] for k, v in test.targets.items()}
        loader = fc.FeatureLoader(feats, targets, args.test_batch_size, ShardSampler(len(feats)), False, trainer.device)
        n_images = len(feats)
    names = list(trainer.dataset.classnames)
    learners = {c: PromptLearner(model.clip, [f"{names[i % len(names)]} {i}" if c > len(names) else names[i]
                                              for i in range(c)], pl0.context, pl0.n_ctx).to(trainer.device)
                for c in args.eval_classes}
    model.eval()
    times: Dict[Any, List[float]] = {}
    parts: Dict[Any, List[float]] = {}
    with torch.no_grad():
        for r in range(args.repeats + 1):  # interleaved; the first round warms up
            for c in args.eval_classes:
                model.prompt_learner = learners[c]
                for reuse in (False, True):
                    model.reuse_text_features, model._text_memo = reuse, None
                    t0 = time.perf_counter()
                    for _ in range(passes):
                        for batch in loader:
                            trainer.inference(to_device(batch, trainer.device))
                    _sync(trainer.device)
                    if r:
                        times.setdefault((c, reuse), []).append(time.perf_counter() - t0)
                if args.eval_source == "features":  # where the time of a cached evaluation goes
                    for part, seconds in _cached_eval_parts(trainer, model, loader).items():
                        if r:
                            parts.setdefault((c, part), []).append(seconds)
    model.prompt_learner, model.reuse_text_features = pl0, True
    trainer.close()
    rows = []
    for (c, reuse), ts in times.items():
        t = _best(ts)
        rows.append({"what": f"eval from {args.eval_source}, {c} classes, class prompts encoded "
                     + ("once per evaluation" if reuse else "per batch (before)"),
                     "classes": c, "reuse": reuse, "images_per_s": n_images / t, "seconds": t, "images": n_images})
    for (c, part), ts in parts.items():
        whole = _best(times[(c, True)])
        rows.append({"what": f"eval from features, {c} classes, {PART_NAMES[part]}", "classes": c, "part": part,
                     "seconds": _best(ts), "share_of_evaluation": _best(ts) / whole, "images": n_images})
    return rows


PART_NAMES = {
    "text": "one text-encoder pass over the class prompts (once per evaluation)",
    "batches": "all batches, class text features already computed (loader + logits + per-batch checks)",
    "loader": "the feature loader alone (one gather per batch)",
    "logits": "the logits product alone (scale * features @ text^T per batch)",
}


def _cached_eval_parts(trainer, model, loader) -> Dict[str, float]:
    """Seconds of each part of one cached-feature evaluation (``PART_NAMES``), measured separately."""
    from trainers.engine.utils import to_device

    out: Dict[str, float] = {}
    model.reuse_text_features, model._text_memo = True, None
    t0 = time.perf_counter()
    txt = model.eval_text_features(None)  # fills the memo, as the first batch of an evaluation does
    _sync(trainer.device)
    out["text"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for batch in loader:
        trainer.inference(to_device(batch, trainer.device))
    _sync(trainer.device)
    out["batches"] = time.perf_counter() - t0
    feats = []
    t0 = time.perf_counter()
    for batch in loader:
        feats.append(to_device(batch, trainer.device)["feat"])
    _sync(trainer.device)
    out["loader"] = time.perf_counter() - t0
    scale, weights = model.clip.logit_scale.exp(), txt[0].t()
    t0 = time.perf_counter()
    for f in feats:
        scale * f @ weights
    _sync(trainer.device)
    out["logits"] = time.perf_counter() - t0
    return out


def _jpeg_folder(n: int, size: Tuple[int, int], root: str, classes: int = 1, quality: int = 90) -> List[str]:
    """``n`` JPEGs of ``size`` (w, h) in ``classes`` class folders under ``root`` (smooth colour + noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    paths = []
    for i in range(n):
        c = i % classes
        folder = os.path.join(root, f"class{c}")
        os.makedirs(folder, exist_ok=True)
        base = np.stack([(x * (1 + i % 3) + i) % 256, (y * 2 + 7 * i) % 256, (x + y + c * 40) % 256], -1)
        arr = (base + rng.integers(-12, 12, base.shape)).clip(0, 255).astype(np.uint8)
        path = os.path.join(folder, f"{i:06d}.jpg")
        Image.fromarray(arr).save(path, quality=quality)
        paths.append(path)
    return paths


def loader_vs_decode(args) -> List[Dict[str, Any]]:
    """The training loader (shipped 224-px ViT-B/16 transform) against ``decode_jpeg`` + the same v2
    ops in a bare DataLoader, and PIL decode + the same ops (the path before), per worker count (the
    bare loaders draw the same crops: same order and per-sample seeds, so the resize work is equal); plus
    the cost of per-sample seeding (before: torch.manual_seed in fork_rng; now: the CPU generator)."""
    from torch.utils.data import DataLoader, Dataset

    from configs.config import merge_from_file
    from datasets import build_data_loader, build_transform
    from datasets.base import Datum
    from datasets.decode import read_image_tensor
    from datasets.loader import EpochSampler, read_image, view_seed
    from trainers import get_cfg

    cfg = get_cfg()
    merge_from_file(cfg, args.loader_config)
    tfm = build_transform(cfg, is_train=True)
    root = tempfile.mkdtemp(prefix="emolab_jpegs_")
    paths = _jpeg_folder(args.loader_images, (500, 375), root)
    data = [Datum(impath=p, label=0) for p in paths]

    class Bare(Dataset):
        def __init__(self, read):
            self.read = read

        def __len__(self):
            return len(paths)

        def __getitem__(self, key):  # the loader's crops: the same per-sample seeds and order
            i, epoch = key
            torch.default_generator.manual_seed(view_seed(1, epoch, i))
            return self.read(paths[i])

    def decode_jpeg_read(p):
        from torchvision.io import ImageReadMode, decode_jpeg, read_file

        return tfm(decode_jpeg(read_file(p), mode=ImageReadMode.RGB)).as_subclass(torch.Tensor)

    def pil_read(p):
        return tfm(read_image(p)).as_subclass(torch.Tensor)

    bs = args.batch_size
    times: Dict[Any, List[float]] = {}
    loaders = {}
    for w in args.workers:
        kw = dict(batch_size=bs, num_workers=w, persistent_workers=w > 0, drop_last=True,
                  sampler=EpochSampler(len(paths), seed=1))
        loaders[("decode_jpeg + v2 ops (bare DataLoader)", w)] = DataLoader(Bare(decode_jpeg_read), **kw)
        loaders[("PIL decode + v2 ops (bare DataLoader)", w)] = DataLoader(Bare(pil_read), **kw)
        loaders[("EmoLab training loader", w)] = build_data_loader(
            data, tfm, bs, is_train=True, num_classes=1, num_workers=w, seed=1, drop_last=True)
    for r in range(args.repeats + 1):
        for key, loader in loaders.items():
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(r)
            t0 = time.perf_counter()
            n = sum(len(b["index"]) if isinstance(b, dict) else len(b) for b in loader)
            if r:
                times.setdefault(key, []).append((time.perf_counter() - t0) / n)
    rows = []
    for w in args.workers:
        ref = _best(times[("decode_jpeg + v2 ops (bare DataLoader)", w)])
        for (what, ww), ts in times.items():
            if ww == w:
                rows.append({"what": f"{what}, {w} workers", "workers": w, "images_per_s": 1 / _best(ts),
                             "ms_per_image": 1000 * _best(ts), "vs_decode_jpeg": ref / _best(ts)})
    # seeding: microseconds per call, and its share of a sample of the 0-worker loader
    img = read_image_tensor(paths[0])
    from utils.rng import draws_on_torch_only, seeded_draws

    ident = lambda x: x  # noqa: E731
    torch_only = draws_on_torch_only(tfm)  # the shipped transform: torchvision ops only
    now = f"CPU generator (now; {'torch only' if torch_only else 'with random, np.random'} for this transform)"
    seed_times: Dict[str, List[float]] = {"torch.manual_seed in fork_rng (before)": [], now: [],
                                          "CPU generator + random + np.random (transforms with Python-random ops)": []}

    def before(seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ident(img)

    def seeded(seed, python_rngs):
        with seeded_draws(seed, python_rngs=python_rngs):
            return ident(img)

    for r in range(args.repeats + 1):
        for name, fn in (("torch.manual_seed in fork_rng (before)", before),
                         (now, lambda s: seeded(s, not torch_only)),
                         ("CPU generator + random + np.random (transforms with Python-random ops)",
                          lambda s: seeded(s, True))):
            t0 = time.perf_counter()
            for s in range(2000):
                fn(s)
            if r:
                seed_times[name].append((time.perf_counter() - t0) / 2000)
    sample = _best(times[("EmoLab training loader", args.workers[0])])
    for name, ts in seed_times.items():
        rows.append({"what": f"per-sample seeding, {name}", "us_per_call": 1e6 * _best(ts),
                     "share_of_a_sample": _best(ts) / sample})
    return rows


def startup(args, extra_opts: List[str]) -> List[Dict[str, Any]]:
    """``build_trainer`` on image folders of each size in ``args.startup`` (tiny JPEGs), cold (first
    start: split, screening) and warm (best of ``--repeats`` later starts), interleaved."""
    import train
    from trainers import build_trainer
    from trainers.clip_prompting.base import LazyLoader

    roots = {}
    for n in args.startup:
        roots[n] = tempfile.mkdtemp(prefix=f"emolab_startup_{n}_")
        _jpeg_folder(n, (8, 8), os.path.join(roots[n], "folder"), classes=8)

    def one(n: int) -> Tuple[float, bool]:
        out = tempfile.mkdtemp(prefix="emolab_bench_")
        argv = ["--trainer", args.trainer, "--config-file", args.config_file, "--dataset-config-file",
                "configs/datasets/imagefolder.yaml", "--root", roots[n], "--output-dir", out, "--seed", "1",
                "DATASET.IMAGE_FOLDER.DIR", "folder", "CACHE.DIR", os.path.join(roots[n], "cache"), "VERBOSE", "False",
                *extra_opts]
        cfg = train.setup_cfg(train.build_parser().parse_args(argv))
        t0 = time.perf_counter()
        trainer = build_trainer(cfg)
        t = time.perf_counter() - t0
        test_built = not isinstance(trainer.test_loader, LazyLoader) or trainer.test_loader.built
        trainer.close()
        return t, test_built

    cold, warm, built = {}, {}, {}
    for n in args.startup:
        cold[n], built[n] = one(n)
    for _ in range(args.repeats):
        for n in args.startup:
            warm.setdefault(n, []).append(one(n)[0])
    base = _best(warm[args.startup[0]])
    rows = [{"what": f"build_trainer, {n} images", "images": n, "cold_s": cold[n], "warm_s": _best(warm[n]),
             "warm_vs_smallest": _best(warm[n]) / base, "test_features_built_at_start": built[n]} for n in args.startup]
    import contextlib

    import datasets.build as dataset_build

    n, paused = args.startup[-1], dataset_build.gc_paused
    dataset_build.gc_paused = contextlib.nullcontext  # what the garbage-collector pause saves (utils/gcpause.py)
    try:
        t = _best([one(n)[0] for _ in range(args.repeats)])
    finally:
        dataset_build.gc_paused = paused
    rows.append({"what": f"build_trainer, {n} images, garbage collector not paused", "images": n, "warm_s": t,
                 "warm_vs_smallest": t / base})
    return rows


def quickgelu(args, extra_opts: List[str]) -> List[Dict[str, Any]]:
    """A training step with the CLIP's MLP activations as open_clip's three-op ``QuickGELU`` and as
    :class:`clip.activations.FusedQuickGELU`, interleaved on the same batches (the tiny CLIP's own
    activation is replaced by each: only the speed of the activation is compared)."""
    from open_clip.transformer import QuickGELU

    from clip.activations import fuse_quick_gelu, swap_modules, unfuse_quick_gelu
    from trainers.engine.utils import to_device

    trainer = build(args, extra_opts)
    clip = trainer.model_without_ddp.clip
    swap_modules(clip, torch.nn.GELU, QuickGELU)  # the tiny CLIP's own activation: only the variants compared
    batches = []
    for batch in trainer.train_loader:
        batches.append(to_device(batch, trainer.device))
        if len(batches) == 4:
            break
    trainer.set_model_mode("train")
    times: Dict[str, List[float]] = {"QuickGELU, three ops (open_clip)": [], "FusedQuickGELU": []}
    for r in range(args.repeats + 1):
        for name in times:
            (unfuse_quick_gelu if name.startswith("QuickGELU") else fuse_quick_gelu)(clip)
            t0 = time.perf_counter()
            for _ in range(args.steps // len(batches) or 1):
                for b in batches:
                    trainer.train_step(b)
            _sync(trainer.device)
            if r:
                times[name].append((time.perf_counter() - t0) / ((args.steps // len(batches) or 1) * len(batches)))
    saved = {}
    for name in times:  # what autograd keeps for the backward pass of one step
        (unfuse_quick_gelu if name.startswith("QuickGELU") else fuse_quick_gelu)(clip)
        saved[name] = saved_for_backward_mb(trainer.train_step, batches[0], trainer.model_without_ddp)
    trainer.close()
    base = _best(times["QuickGELU, three ops (open_clip)"])
    return [{"what": f"{args.trainer} train step, {name}", "ms_per_step": 1000 * _best(ts),
             "images_per_s": args.batch_size / _best(ts), "speed_vs_three_ops": base / _best(ts),
             "saved_for_backward_mb": saved[name]} for name, ts in times.items()]


def attention_layout(args) -> List[Dict[str, Any]]:
    """Image encoding of a CLIP (``--layout-arch``, random weights, QuickGELU as OpenAI's) with both
    transformers batch-first (open_clip) and sequence-first (OpenAI's layout, ``clip.loading.sequence_first``),
    interleaved on the same batch of ``--batch-size`` images; the largest feature difference between them."""
    import open_clip

    from clip.loading import sequence_first
    from clip.names import resolve_model_name

    arch = resolve_model_name(args.layout_arch)  # OpenAI and project names too; unknown: one line
    model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=True).eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    x = torch.randn(args.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    names = {"batch-first (open_clip)": True, "sequence-first (OpenAI's layout)": False}
    times: Dict[str, List[float]] = {n: [] for n in names}
    feats = {}
    with torch.no_grad():
        for r in range(args.repeats + 1):
            for name, bf in names.items():
                sequence_first(model, enable=not bf)
                t0 = time.perf_counter()
                feats[name] = model.encode_image(x)
                if r:
                    times[name].append(time.perf_counter() - t0)
    base = _best(times["batch-first (open_clip)"])
    diff = (feats["batch-first (open_clip)"] - feats["sequence-first (OpenAI's layout)"]).abs().max().item()
    return [{"what": f"{args.layout_arch} encode_image, batch {args.batch_size}, {name}", "ms": 1000 * _best(ts),
             "time_vs_batch_first": _best(ts) / base, "max_abs_feature_diff": diff} for name, ts in times.items()]
