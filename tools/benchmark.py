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
from typing import Any, Callable, Dict, List, Optional

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


def time_loop(step: Callable[[Dict[str, Any]], Any], loader, device, steps: int, warmup: int) -> Dict[str, float]:
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
    return {"images_per_s": n_img / t_total, "ms_per_step": 1000 * t_total / steps, "data_wait_share": t_data / t_total,
            "syncs_per_step": count_syncs(step, batch, device)}


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
        r = time_loop(trainer.train_step, trainer.train_loader, dev, args.steps, args.warmup)
        rows.append({"what": f"{label} train", **r, "peak_mem_mb": peak_memory_mb(dev)})
        for kind in args.reference:
            pl = getattr(trainer.model_without_ddp, "prompt_learner", None)
            if pl is None or (kind == "coop-77" and type(pl.context).__name__ != "StaticContext"):
                continue  # the reference applies to prompt learners (coop-77: image-independent context)
            loader = getattr(trainer, "train_loader_images", trainer.train_loader)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            r = time_loop(reference_step(trainer, kind), loader, dev, args.ref_steps, min(args.warmup, 2))
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
    for seed in args.seeds:
        for label, opts in variants:  # interleaved: load changes hit every variant alike
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


def environment(device: torch.device) -> Dict[str, str]:
    import open_clip
    import torchvision

    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "open_clip": open_clip.__version__, "cpu_threads": str(torch.get_num_threads())}
    env["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    if device.type == "cuda":
        env["cuda"] = str(torch.version.cuda)
    return env


def main(argv: Optional[List[str]] = None) -> int:
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
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds of --cache-views")
    p.add_argument("--json", default="", help="write the results here")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    opts = [o for o in args.opts if o != "--"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        rows: List[Dict[str, Any]] = []
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
    print("\n| what | images/s | ms/step | data wait | peak memory (MB) | host syncs/step | speed vs first row |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        syncs = "n/a (CPU)" if r["syncs_per_step"] < 0 else str(r["syncs_per_step"])
        print(f"| {r['what']} | {r['images_per_s']:.1f} | {r['ms_per_step']:.2f} | {100 * r['data_wait_share']:.0f}% "
              f"| {r['peak_mem_mb']:.0f} | {syncs} | {r['images_per_s'] / base:.2f}x |")
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
