"""Figures of a sweep: metric vs shots per method, and base / new / HM bars for base-to-new runs.

    python tools/plot_results.py output/demo [--metric accuracy] [--out figures/]

Runs are found and grouped as ``tools/parse_results.py`` does (a setting = a run folder without its
``seed<k>`` part; method, config, shots and tag from the sweep layout or the run's ``config.yaml``).
Two figures are written to ``--out`` (default: the first folder):

* ``fewshot.png``: for each metric, the mean over seeds against the number of training images per
  class (log2 axis as in the CoOp paper's few-shot figures; ``all`` at the right end), one line per
  method (and config / tag when a method has several), with a band of ± 1 sample std (ddof=1) over
  seeds; methods that do not train (zero-shot CLIP) are a dashed horizontal line. Only runs on all
  classes are drawn.
* ``base_to_new.png``: for runs with ``DATASET.SUBSAMPLE_CLASSES`` base and new (CoCoOp's protocol),
  bars of the base accuracy, the new accuracy and their harmonic mean per method, with ± 1 std
  error bars over seeds on base and new.

Exit status 0 when at least one figure was written, 2 otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.parse_results import describe, find_runs, group_runs, summarize  # noqa: E402
from utils.fileio import atomic_write  # noqa: E402
from utils.cli import PNG_SOFTWARE, ToolError, check_output_folder, check_overwrite, png_is_ours, run_tool  # noqa: E402

ZERO_SHOT = ("ZeroshotCLIP",)
#: display names of the project's trainers
NICE = {"ZeroshotCLIP": "Zero-shot CLIP", "LinearProbeCLIP": "Linear probe", "CoOp": "CoOp", "CoCoOp": "CoCoOp"}


def classes_of(run_dir: str) -> str:
    """``DATASET.SUBSAMPLE_CLASSES`` of a run (``all`` when unknown)."""
    path = os.path.join(run_dir, "config.yaml")
    if os.path.isfile(path):
        try:
            import yaml

            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
            return str((data.get("DATASET") or {}).get("SUBSAMPLE_CLASSES", "all"))
        except Exception:  # noqa: BLE001
            pass
    return "all"


def collect(dirs: Sequence[str], metric_names: Optional[List[str]]) -> List[dict]:
    """One entry per setting: describe() fields, classes, n and the per-seed values of each metric."""
    runs = find_runs(dirs, "test")
    out = []
    for setting, group in group_runs(runs).items():
        info = describe(setting, group[0].path)
        info["classes"] = classes_of(group[0].path)
        names = metric_names or [k for k in group[0].metrics if all(k in r.metrics for r in group)]
        info["values"] = {m: [r.metrics[m] for r in group if m in r.metrics] for m in names}
        info["n"] = len(group)
        out.append(info)
    return out


def _name(entry: dict, many: bool) -> str:
    name = NICE.get(entry["method"], entry["method"] or entry["tag"])
    tag = entry["tag"] if entry["tag"] not in ("default",) and not entry["tag"].startswith("subsample_classes") else ""
    if many:
        name += f" ({', '.join(x for x in (entry['config'], tag) if x)})"
    return name


def plot_fewshot(entries: List[dict], metrics: List[str], path: str) -> Optional[str]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    entries = [e for e in entries if e["classes"] == "all" and e["shots"]]
    if not entries:
        return None
    trained = [e for e in entries if e["method"] not in ZERO_SHOT]
    numeric = sorted({int(e["shots"]) for e in trained if e["shots"] != "all"})
    top = max(numeric) if numeric else 1
    all_x = 2 * top  # "all" sits one octave right of the largest shot count
    variants: Dict[str, set] = {}
    for e in entries:
        variants.setdefault(e["method"], set()).add((e["config"], e["tag"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.8 * len(metrics), 4.2), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, metric in zip(axes[0], metrics):
        lines: Dict[str, List[tuple]] = {}
        for e in entries:
            vals = e["values"].get(metric)
            if not vals:
                continue
            x = all_x if e["shots"] == "all" else int(e["shots"])
            m, s, _ = summarize(vals)
            lines.setdefault(_name(e, len(variants[e["method"]]) > 1), []).append((x, m, s, len(vals), e["method"]))
        order = list(NICE.values())
        ranked = sorted(lines.items(), key=lambda kv: (order.index(kv[0].split(" (")[0]) if kv[0].split(" (")[0] in order else 99, kv[0]))
        for i, (name, pts) in enumerate(ranked):
            pts.sort()
            color = cmap(i % 10)
            if pts[0][4] in ZERO_SHOT:
                m = sum(p[1] for p in pts) / len(pts)
                ax.axhline(m, color=color, ls="--", lw=1.5, label=f"{name} ({m:.1f})")
                continue
            xs, ms, ss = [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]
            ax.plot(xs, ms, marker="o", color=color, lw=2, label=name)
            if any(p[3] > 1 for p in pts):
                ax.fill_between(xs, [m - s for m, s in zip(ms, ss)], [m + s for m, s in zip(ms, ss)],
                                color=color, alpha=0.18, lw=0)
        ticks = numeric + ([all_x] if any(e["shots"] == "all" for e in trained) else [])
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) if t != all_x or t in numeric else "all" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("training images per class (shots)")
        ax.set_ylabel(f"test {metric} (%)")
        ns = sorted({len(v) for e in entries for v in [e['values'].get(metric, [])] if v})
        ax.set_title(f"test {metric} vs training images per class\nmean over seeds, band = ± 1 std "
                     f"(ddof=1, n = {'/'.join(map(str, ns))} seeds)", fontsize=9)
        ax.grid(alpha=0.3)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo - 0.04 * (hi - lo), hi)  # keep a zero-shot line at the bottom visible
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    try:  # through a temporary file: a full disk never leaves half a figure under the final name
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight",
                                                   metadata={"Software": f"{PNG_SOFTWARE} plot_results"}))
    finally:
        plt.close(fig)
    return path


def plot_base_to_new(entries: List[dict], metric: str, path: str) -> Optional[str]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    pairs: Dict[str, Dict[str, List[float]]] = {}
    for e in entries:
        if e["classes"] in ("base", "new") and e["values"].get(metric):
            shots = "" if e["method"] in ZERO_SHOT else f", {e['shots']} shots per base class"
            pairs.setdefault(NICE.get(e["method"], e["method"]) + shots, {})[e["classes"]] = e["values"][metric]
    order = list(NICE.values())
    pairs = dict(sorted(((k, v) for k, v in pairs.items() if "base" in v and "new" in v),
                        key=lambda kv: (order.index(kv[0].split(",")[0]) if kv[0].split(",")[0] in order else 99, kv[0])))
    if not pairs:
        return None
    fig, ax = plt.subplots(figsize=(1.9 * len(pairs) + 2.5, 4.2))
    width = 0.26
    colors = {"base": "tab:blue", "new": "tab:orange", "HM": "tab:green"}
    for i, (name, v) in enumerate(pairs.items()):
        b, sb, _ = summarize(v["base"])
        n, sn, _ = summarize(v["new"])
        hm = 2 * b * n / (b + n) if b + n > 0 else 0.0
        for j, (key, val, err) in enumerate((("base", b, sb), ("new", n, sn), ("HM", hm, None))):
            x = i + (j - 1) * width
            show_err = bool(err) and len(v.get(key, [])) > 1
            ax.bar(x, val, width, color=colors[key], label=key if i == 0 else None,
                   yerr=err if show_err else None, capsize=3)
            ax.text(x, val + (err if show_err else 0) + 1.5, f"{val:.1f}", ha="center", fontsize=7)
    ax.set_xticks(range(len(pairs)), list(pairs), fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel(f"test {metric} (%)")
    n_seeds = sorted({len(x) for v in pairs.values() for x in v.values()})
    ax.set_title(f"base-to-new: trained on base classes, tested on base and new\nmean over seeds (n = "
                 f"{'/'.join(map(str, n_seeds))}), error bar ± 1 std; HM = harmonic mean of base and new", fontsize=9)
    ax.legend(fontsize=8, ncol=3, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    try:  # through a temporary file: a full disk never leaves half a figure under the final name
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight",
                                                   metadata={"Software": f"{PNG_SOFTWARE} plot_results"}))
    finally:
        plt.close(fig)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_tool(_main, argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    import difflib

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dirs", nargs="+", help="folders searched recursively for finished runs")
    p.add_argument("--metric", action="append", default=None, help="metric(s) to plot (default: accuracy)")
    p.add_argument("--out", default="", help="folder for the figures (default: the first folder)")
    p.add_argument("--force", action="store_true", help="replace figure files this tool did not write")
    args = p.parse_args(argv)
    metrics = args.metric or ["accuracy"]
    for d in args.dirs:
        if not os.path.isdir(d):
            raise ToolError(f"not a folder: {d}")
    entries = collect(args.dirs, metrics)
    if not entries:
        print(f"error: no finished runs under {', '.join(args.dirs)}", file=sys.stderr)
        return 2
    known = list(dict.fromkeys(k for r in find_runs(args.dirs, "test") for k in r.metrics))
    for m in metrics:  # a metric no run recorded would be an empty figure
        if not any(e["values"].get(m) for e in entries):
            hint = difflib.get_close_matches(m, known, n=1)
            raise ToolError(f"metric {m!r} is in no run's test records ("
                            + (f"did you mean {hint[0]!r}?" if hint else f"recorded: {', '.join(known)}") + ")")
    out = check_output_folder(args.out or args.dirs[0])
    targets = (os.path.join(out, "fewshot.png"), os.path.join(out, "base_to_new.png"))
    for t in targets:
        check_overwrite(t, args.force, png_is_ours)
    written = [f for f in (plot_fewshot(entries, metrics, targets[0]),
                           plot_base_to_new(entries, metrics[0], targets[1])) if f]
    for f in written:
        print(f"wrote {f}")
    if not written:
        print("error: nothing to plot (no runs with shots, no base/new pairs)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
