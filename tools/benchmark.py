"""Time training steps and evaluation of any trainer config; optionally against reference algorithms.

    python tools/benchmark.py --trainer CoCoOp --config-file configs/trainers/CoCoOp/tiny_synthetic.yaml \
        --dataset-config-file configs/datasets/synthetic_emotion.yaml --batch-size 32 \
        --reference cocoop-loop --json benchmarks/cocoop_cpu.json [KEY VALUE ...]

Reports images/s and ms/step for training (after ``--warmup`` steps, CUDA-synchronised) and for
evaluation, the share of time spent waiting for data, peak memory (CUDA allocator, else process
RSS), and device / library versions, as a Markdown table and as JSON. ``--reference`` also times,
on the same batches and model: ``cocoop-loop`` (CoCoOp's reference algorithm: one text-encoder
pass per image on full 77-token prompts) and ``coop-77`` (CoOp's full 77-token prompts, no
truncation). ``--compare-cache`` times the same config with the frozen-feature cache off and on.
``--data-path`` also times the training loader alone (reading, decoding, augmenting; no step).
Trainers without an evaluator (``UniEmoXPretrain``) get no evaluation row.

Scale modes (one per command; variants interleaved in one process, best of ``--repeats`` rounds):
``--eval-classes 8 512`` CoOp evaluation throughput per class count, class prompts encoded per batch
vs once per evaluation (``--eval-source features|images|decoded``, ``--eval-images N``);
``--loader-vs-decode`` the training loader against ``decode_jpeg`` / PIL + the same v2 ops, with
``--workers 0 2``, and the cost of per-sample seeding; ``--startup 1000 60000`` ``build_trainer``
on image folders of N tiny JPEGs, first and warm start; ``--quickgelu`` a training step with
open_clip's QuickGELU vs ``clip.activations.FusedQuickGELU``; ``--cache-views 1 2 4 8 16`` full
runs per ``--seeds`` with the default cache semantics and with K cached views (accuracy, time).
``--layout`` CLIP image encoding batch-first vs in OpenAI's sequence-first layout.
``--threads N`` sets torch's intra-op threads.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.errors import EmoLabError  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def count_syncs(step: Callable[[Dict[str, Any]], Any], batch: Dict[str, Any], device: torch.device) -> int:
    """Host-device synchronisations inside one ``step`` (CUDA sync debug mode; -1 on CPU)."""
    if device.type != "cuda":
        return -1
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def saved_for_backward_mb(step: Callable[[Dict[str, Any]], Any], batch: Dict[str, Any],
                          exclude: Optional[torch.nn.Module] = None) -> float:
    """MB autograd keeps for the backward pass of one ``step``: the distinct storages of the saved
    tensors, without ``exclude``'s parameters and buffers (weights exist anyway: activations count)."""
    skip = {t.untyped_storage().data_ptr() for t in (*exclude.parameters(), *exclude.buffers())} if exclude else set()
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(batch)
    return sum(seen.values()) / 2**20


def time_loop(step: Callable[[Dict[str, Any]], Any], loader, device, steps: int, warmup: int,
              model: Optional[torch.nn.Module] = None) -> Dict[str, float]:
    """Run ``step`` on ``warmup + steps`` batches (cycling the loader); time the last ``steps``."""
    from trainers.engine.utils import to_device

    it, epoch = iter(loader), 0
    n_img, t_data, t_total = 0, 0.0, 0.0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            epoch += 1
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            it = iter(loader)
            batch = next(it)
        batch = to_device(batch, device)
        t1 = time.perf_counter()
        step(batch)
        _sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            bs = len(batch["index"])
            n_img, t_data, t_total = n_img + bs, t_data + (t1 - t0), t_total + (t2 - t0)
    out = {"images_per_s": n_img / t_total, "ms_per_step": 1000 * t_total / steps, "data_wait_share": t_data / t_total,
           "syncs_per_step": count_syncs(step, batch, device)}
    if model is not None:  # a training step: what it keeps for backward
        out["saved_for_backward_mb"] = saved_for_backward_mb(step, batch, model)
    return out


def reference_step(trainer, kind: str) -> Callable[[Dict[str, Any]], Any]:
    """A training step of the reference algorithm on ``trainer``'s model (prompt learners only)."""
    model = trainer.model_without_ddp
    clip, pl = model.clip, model.prompt_learner
    opt = trainer.optimizers()[0]
    full = clip.context_length

    def pad77(prompts: torch.Tensor) -> torch.Tensor:  # [N, L, D] -> [N, 77, D] with the padding token
        n, length, _ = prompts.shape
        pad = clip.embed_tokens(torch.zeros(1, full - length, dtype=torch.long, device=prompts.device))
        return torch.cat([prompts, pad.expand(n, -1, -1).to(prompts.dtype)], dim=1)

    def loss_of(logits: torch.Tensor, batch) -> torch.Tensor:
        return trainer.classification_loss(logits, batch)

    def step(batch: Dict[str, Any]) -> None:
        from trainers.engine.utils import autocast

        with autocast(trainer.precision, trainer.device):
            img = model.image_features(batch["img"])
            scale = clip.logit_scale.exp()
            if kind == "cocoop-loop":
                rows = []
                for i in range(img.shape[0]):  # one text-encoder pass per image
                    prompts, eot = pl(img[i : i + 1])
                    txt = F.normalize(clip.encode_text_embeddings(pad77(prompts[0]), eot, truncate=False), dim=-1)
                    rows.append(scale * img[i] @ txt.t())
                logits = torch.stack(rows)
            else:  # coop-77
                prompts, eot = pl(None)
                txt = F.normalize(clip.encode_text_embeddings(pad77(prompts[0]), eot, truncate=False), dim=-1)
                logits = scale * img @ txt.t()
            loss = loss_of(logits, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def build(args, extra_opts: List[str]):
    import train
    from trainers import build_trainer
    from trainers.engine.logger import setup_logging

    out = tempfile.mkdtemp(prefix="emolab_bench_")
    argv = ["--trainer", args.trainer, "--config-file", args.config_file, "--dataset-config-file",
            args.dataset_config_file, "--root", args.root, "--output-dir", out, "--seed", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", str(args.batch_size), "DATALOADER.TEST.BATCH_SIZE",
            str(args.test_batch_size), "VERBOSE", "False", *extra_opts]
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    setup_logging(out, is_main=True)
    return build_trainer(cfg)


def measure(args, extra_opts: List[str], label: str) -> List[Dict[str, Any]]:
    trainer = build(args, extra_opts)
    dev = trainer.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rows = []
    if getattr(args, "data_path", False):
        r = time_loop(lambda batch: None, trainer.train_loader, dev, args.steps, args.warmup)
        rows.append({"what": f"{label} data path", **r, "peak_mem_mb": peak_memory_mb(dev)})
    if trainer.optimizers():
        trainer.set_model_mode("train")
        r = time_loop(trainer.train_step, trainer.train_loader, dev, args.steps, args.warmup, trainer.model_without_ddp)
        rows.append({"what": f"{label} train", **r, "peak_mem_mb": peak_memory_mb(dev)})
        for kind in args.reference:
            pl = getattr(trainer.model_without_ddp, "prompt_learner", None)
            if pl is None or (kind == "coop-77" and type(pl.context).__name__ != "StaticContext"):
                continue  # the reference applies to prompt learners (coop-77: image-independent context)
            loader = getattr(trainer, "train_loader_images", trainer.train_loader)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            r = time_loop(reference_step(trainer, kind), loader, dev, args.ref_steps, min(args.warmup, 2),
                          trainer.model_without_ddp)
            rows.append({"what": f"{label} train, reference {kind}", **r, "peak_mem_mb": peak_memory_mb(dev)})
    if getattr(trainer, "evaluator", None) is None:  # e.g. a pre-training trainer: nothing to classify
        trainer.close()
        return rows
    trainer.set_model_mode("eval")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with torch.no_grad():
        from trainers.engine.utils import autocast

        def infer(batch):
            with autocast(trainer.precision, dev):
                trainer.inference(batch)

        r = time_loop(infer, trainer.test_loader, dev, args.steps, args.warmup)
    rows.append({"what": f"{label} eval", **r, "peak_mem_mb": peak_memory_mb(dev)})
    trainer.close()
    return rows


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


# ---------------------------------------------------------------------------------- scale modes
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

    from clip.activations import fuse_quick_gelu, unfuse_quick_gelu
    from trainers.engine.utils import to_device

    trainer = build(args, extra_opts)
    clip = trainer.model_without_ddp.clip
    for parent in clip.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, (torch.nn.GELU, QuickGELU)):
                setattr(parent, name, QuickGELU())
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

    model = open_clip.create_model(args.layout_arch, pretrained=None, force_quick_gelu=True).eval()
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


def print_rows(rows: List[Dict[str, Any]]) -> None:
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "what"]
    print("\n| what | " + " | ".join(keys) + " |")
    print("|---|" + "--:|" * len(keys))
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        print(f"| {r['what']} | " + " | ".join(cells) + " |")


def environment(device: torch.device) -> Dict[str, str]:
    import open_clip
    import torchvision

    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "open_clip": open_clip.__version__, "cpu_threads": str(torch.get_num_threads())}
    env["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    if device.type == "cuda":
        env["cuda"] = str(torch.version.cuda)
    return env


def _is_results_file(path: str) -> bool:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    return isinstance(doc, dict) and set(doc) in ({"args", "environment", "results"},
                                                  {"args", "environment", "load", "results"})


def main(argv: Optional[List[str]] = None) -> int:
    from utils.cli import run_tool

    return run_tool(_main, argv)


def _main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trainer", required=True)
    p.add_argument("--config-file", required=True)
    p.add_argument("--dataset-config-file", default="configs/datasets/synthetic_emotion.yaml")
    p.add_argument("--root", default="data")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--test-batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--ref-steps", type=int, default=5, help="timed steps of the reference algorithms")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reference", nargs="*", default=[], choices=["cocoop-loop", "coop-77"])
    p.add_argument("--compare-cache", action="store_true", help="time with CACHE.FEATURES off and on")
    p.add_argument("--data-path", action="store_true", help="also time the training loader alone")
    p.add_argument("--cache-views", type=int, nargs="*", default=None, metavar="K",
                   help="full runs per seed: default cache semantics, then CACHE.FEATURES on with each K views")
    p.add_argument("--eval-classes", type=int, nargs="*", default=None, metavar="C",
                   help="CoOp evaluation throughput at these class counts (cached features, text per batch vs once)")
    p.add_argument("--eval-source", choices=["features", "images", "decoded"], default="features",
                   help="--eval-classes on cached features, through the image loader (CACHE.FEATURES off) or "
                        "through the decoded-image cache (DECODED_CACHE memory)")
    p.add_argument("--eval-images", type=int, default=10000, help="images per evaluation of --eval-classes")
    p.add_argument("--loader-vs-decode", action="store_true",
                   help="training loader vs decode_jpeg + the same v2 ops (and seeding cost)")
    p.add_argument("--loader-config", default="configs/trainers/CoOp/vit_b16.yaml", help="transform of --loader-vs-decode")
    p.add_argument("--loader-images", type=int, default=96, help="JPEGs (500x375) of --loader-vs-decode")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker counts of --loader-vs-decode")
    p.add_argument("--startup", type=int, nargs="*", default=None, metavar="N",
                   help="build_trainer time on image folders of N tiny JPEGs (cold and warm)")
    p.add_argument("--quickgelu", action="store_true", help="train step with three-op vs fused QuickGELU")
    p.add_argument("--layout", action="store_true",
                   help="CLIP image encoding with batch-first vs OpenAI's sequence-first attention layout")
    p.add_argument("--layout-arch", default="ViT-B-16", help="open_clip architecture of --layout (random weights)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the scale modes (best kept)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds of --cache-views")
    p.add_argument("--json", default="", help="write the results here")
    p.add_argument("--force", action="store_true", help="replace an existing --json file this tool did not write")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    opts = [o for o in args.opts if o != "--"]
    if args.json:
        from utils.cli import check_overwrite

        check_overwrite(args.json, args.force, _is_results_file)  # before minutes of measuring
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        rows: List[Dict[str, Any]] = []
        scale = None
        if args.eval_classes:
            scale = eval_classes(args, opts)
        elif args.loader_vs_decode:
            scale = loader_vs_decode(args)
        elif args.startup:
            scale = startup(args, opts)
        elif args.quickgelu:
            scale = quickgelu(args, opts)
        elif args.layout:
            scale = attention_layout(args)
        if scale is not None:
            print(f"\nload average {os.getloadavg()}; " + ", ".join(f"{k} {v}" for k, v in environment(device).items()))
            print_rows(scale)
            write_json(args, device, scale)
            return 0
        if args.cache_views is not None:
            rows = cache_views_sweep(args, opts)
            print_sweep(rows)
            write_json(args, device, rows)
            return 0
        if args.compare_cache:
            rows += measure(args, opts + ["CACHE.FEATURES", "off"], "uncached")
            args.reference = []
            rows += measure(args, opts + ["CACHE.FEATURES", "on"], "feature cache")
        else:
            rows += measure(args, opts, args.trainer)
    except EmoLabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    base = rows[0]["images_per_s"]
    print(f"\n{args.trainer} | {args.config_file} | batch {args.batch_size} | " + ", ".join(f"{k} {v}" for k, v in environment(device).items()))
    print("\n| what | images/s | ms/step | data wait | peak memory (MB) | saved for backward (MB/step) "
          "| host syncs/step | speed vs first row |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        syncs = "n/a (CPU)" if r["syncs_per_step"] < 0 else str(r["syncs_per_step"])
        saved = f"{r['saved_for_backward_mb']:.2f}" if "saved_for_backward_mb" in r else "–"
        print(f"| {r['what']} | {r['images_per_s']:.1f} | {r['ms_per_step']:.2f} | {100 * r['data_wait_share']:.0f}% "
              f"| {r['peak_mem_mb']:.0f} | {saved} | {syncs} | {r['images_per_s'] / base:.2f}x |")
    write_json(args, device, rows)
    return 0


def write_json(args, device: torch.device, rows: List[Dict[str, Any]]) -> None:
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "environment": environment(device), "load": os.getloadavg(),
                       "results": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
