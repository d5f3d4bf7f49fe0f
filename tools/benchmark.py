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
``--threads N`` sets torch's intra-op threads. The scale modes live in ``tools/benchmark_scale.py``.
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
    from tools import benchmark_scale as modes  # the scale modes (imports this module)

    try:
        rows: List[Dict[str, Any]] = []
        scale = None
        if args.eval_classes:
            scale = modes.eval_classes(args, opts)
        elif args.loader_vs_decode:
            scale = modes.loader_vs_decode(args)
        elif args.startup:
            scale = modes.startup(args, opts)
        elif args.quickgelu:
            scale = modes.quickgelu(args, opts)
        elif args.layout:
            scale = modes.attention_layout(args)
        if scale is not None:
            print(f"\nload average {os.getloadavg()}; " + ", ".join(f"{k} {v}" for k, v in environment(device).items()))
            print_rows(scale)
            write_json(args, device, scale)
            return 0
        if args.cache_views is not None:
            rows = modes.cache_views_sweep(args, opts)
            modes.print_sweep(rows)
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
