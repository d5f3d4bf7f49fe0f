"""Summarise finished runs as a Markdown table (mean ± std and 95% CI over seeds).

Usage::

    python tools/parse_results.py output/SyntheticEmotion/CoOp [--metric accuracy] [--csv out.csv]

A run directory holds ``metrics.jsonl``: its result is the last record with ``"final": true``
for ``--split`` (default ``test``); when the run has a final record but none for that split (e.g.
``--split val``), the last record of the split is used. Directories without ``metrics.jsonl``
(CoOp / Dassl runs) fall back to ``log.txt``: the ``* name: X%`` lines after its last
``=> result`` line (``--split`` is then ignored). Runs are grouped by setting = the path with a
trailing ``seed<k>`` component removed (``--pool fold`` also removes the ``fold-<k>`` parts of
sweep tags, so k-fold cross-validation runs form one setting over folds x seeds).

A setting is shown as columns, not as a path: ``method``, ``config``, ``shots`` and ``tag`` are read
from the sweep layout ``<root>/<dataset>/<method>/<config>_<shots>shots/<tag>/seed<k>``
(``tools/sweep.py``); for other folders from the run's ``config.yaml`` (``TRAINER.NAME``,
``DATASET.NUM_SHOTS``) with the folder as the tag. A ``dataset`` column appears when the runs
span several datasets. Each metric cell is mean ± sample std (ddof=1, as the header says; 0 for
one run) and the next column the half-width of the 95% confidence interval of the mean,
t(0.975, n-1) * std / sqrt(n) (Student t, scipy when installed, else a built-in table). With fewer
than 3 runs that interval is not meaningful: the cell says ``n<3`` and a warning is printed.

``--pivot`` prints one metric as a methods x shots table instead (mean ± std per cell).

The runs of one setting must share their config (each run's ``config.yaml``): a setting whose runs
differ in a key that changes results (anything but the seed, the folders, and the keys ``train.py``
lets a resumed run change) stops with one line per setting naming the keys, exit 2, rather than
averaging results of different configs.
"""
from __future__ import annotations

import argparse
import csv
import difflib
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.fileio import read_records  # noqa: E402

SEED_DIR = re.compile(r"^seed(-?\d+)$")
RESULT_LINE = re.compile(r"\* ([A-Za-z0-9_@.\-]+): ([-+]?[\d.]+(?:[eE][-+]?\d+)?)%\s*$")

# two-sided 95% Student t quantiles t(0.975, df), df = 1..30
_T975 = [12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
         2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688,
         2.131449546, 2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845,
         2.073873068, 2.068657610, 2.063898562, 2.059538553, 2.055529439, 2.051830516, 2.048407142,
         2.045229642, 2.042272456]


def t975_builtin(df: int) -> float:
    """t(0.975, df) without scipy: exact table to df 30, Cornish-Fisher beyond (error < 2e-6)."""
    if df < 1:
        raise ValueError("df must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2) + (
        3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (scipy when installed)."""
    try:
        from scipy.stats import t
    except ImportError:
        return t975_builtin(df)
    return float(t.ppf(0.975, df))


def summarize(values: Sequence[float]) -> Tuple[float, float, float]:
    """``(mean, sample std, 95% CI half-width)``; std and CI are 0 for a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0, 0.0
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, std, t975(n - 1) * std / math.sqrt(n)


@dataclass
class RunResult:
    path: str
    metrics: Dict[str, float]


def read_metrics_jsonl(path: str, split: str) -> Optional[Dict[str, float]]:
    """The result of a run from its ``metrics.jsonl`` (None when it has no final record)."""
    records = read_records(path)
    if not any(r.get("final") is True for r in records):
        return None
    chosen = [r for r in records if r.get("split") == split and r.get("final") is True]
    chosen = chosen or [r for r in records if r.get("split") == split]
    if not chosen:
        return None
    metrics = chosen[-1]["metrics"]
    out = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    TEXT_METRICS.update((k, path) for k, v in metrics.items() if k not in out)
    return out


#: metrics recorded as something other than a number (name -> a file holding one): reported, not averaged
TEXT_METRICS: Dict[str, str] = {}


def read_log_txt(path: str) -> Optional[Dict[str, float]]:
    """``* name: X%`` lines after the last ``=> result`` of a Dassl / CoOp ``log.txt``."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    starts = [i for i, line in enumerate(lines) if line.rstrip().endswith("=> result")]
    if not starts:
        return None
    metrics: Dict[str, float] = {}
    for line in lines[starts[-1] + 1:]:
        if "=>" in line:
            break
        m = RESULT_LINE.search(line)
        if m:
            metrics[m.group(1)] = float(m.group(2))
    return metrics or None


def find_runs(dirs: Sequence[str], split: str) -> List[RunResult]:
    runs: List[RunResult] = []
    for top in dirs:
        for cur, subdirs, files in os.walk(top):
            subdirs.sort()
            metrics = None
            if "metrics.jsonl" in files:
                metrics = read_metrics_jsonl(os.path.join(cur, "metrics.jsonl"), split)
            elif "log.txt" in files:
                metrics = read_log_txt(os.path.join(cur, "log.txt"))
            if metrics:
                runs.append(RunResult(os.path.normpath(cur), metrics))
    return runs


def setting_of(path: str, pool: Sequence[str] = ()) -> str:
    """The setting of a run folder: its path without a trailing ``seed<k>``, and without the
    ``<key>-<value>`` parts of sweep tags for every key in ``pool`` (e.g. ``fold``)."""
    head, last = os.path.split(path)
    setting = head if SEED_DIR.match(last) and head else path
    if pool:
        parts = []
        for comp in setting.split(os.sep):
            kept = [p for p in comp.split("_") if not any(p.startswith(k + "-") for k in pool)]
            if kept or not comp:
                parts.append("_".join(kept))
        setting = os.sep.join(parts)
    return setting


def _flat(d, prefix: str = "") -> Dict[str, object]:
    out: Dict[str, object] = {}
    for k, v in (d.items() if isinstance(d, dict) else ()):
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + str(k)] = v
    return out


def mixed_configs(groups: Dict[str, List[RunResult]], pool: Sequence[str] = ()) -> List[str]:
    """One line per setting whose runs were trained with different configs (a mean over them would
    mix results): the keys that differ, besides the seed, the folders and the keys that cannot change
    results (``NON_RESULT_KEYS`` of ``trainers/engine/runstate.py``) or that ``pool`` pools over."""
    import yaml

    problems = []
    loaded: Dict[str, Optional[dict]] = {}
    for setting, group in groups.items():
        configs = {}
        for run in group:
            path = os.path.join(run.path, "config.yaml")
            if path not in loaded:
                try:
                    with open(path, encoding="utf-8") as f:
                        loaded[path] = yaml.safe_load(f) or {}
                except (OSError, ValueError, yaml.YAMLError):
                    loaded[path] = None
            if loaded[path] is not None:
                configs[os.path.basename(run.path)] = loaded[path]
        if len(configs) < 2:
            continue
        from trainers.engine.runstate import NON_RESULT_KEYS  # imports torch: only when there is something to compare

        ignore = set(NON_RESULT_KEYS) | {"SEED"}
        flat = {name: _flat(c) for name, c in configs.items()}
        keys = sorted(set.intersection(*(set(f) for f in flat.values())))  # a key only one version has: no matter
        diffs = []
        for k in keys:
            if k in ignore or any(k.split(".")[-1].lower() == p.lower() for p in pool):
                continue
            values: Dict[str, List[str]] = {}
            for name, f in flat.items():
                v = f.get(k)
                values.setdefault(repr(list(v) if isinstance(v, (list, tuple)) else v), []).append(name)
            if len(values) > 1:
                diffs.append(f"{k} " + " vs ".join(f"{v} in {', '.join(n)}" for v, n in values.items()))
        if diffs:
            problems.append(f"{setting}: its runs have different configs ({'; '.join(diffs[:4])}"
                            + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "") + ")")
    return problems


def natural_key(text: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def group_runs(runs: Sequence[RunResult], pool: Sequence[str] = ()) -> Dict[str, List[RunResult]]:
    groups: Dict[str, List[RunResult]] = {}
    for run in runs:
        groups.setdefault(setting_of(run.path, pool), []).append(run)
    return {k: sorted(groups[k], key=lambda r: natural_key(r.path)) for k in sorted(groups, key=natural_key)}


SHOTS_DIR = re.compile(r"^(?P<config>.+)_(?P<shots>all|\d+)shots$")


#: methods that train on nothing: their shots column is 0, never "all"
ZERO_SHOT_METHODS = ("ZeroshotCLIP",)


def describe(setting: str, sample_run: str = "") -> Dict[str, str]:
    """``{"dataset", "method", "config", "shots", "tag"}`` of a setting folder (see the module docstring);
    a zero-shot method's shots are ``0``."""
    info = _describe(setting, sample_run)
    if info.get("method") in ZERO_SHOT_METHODS:
        info["shots"] = "0"
    return info


def _describe(setting: str, sample_run: str = "") -> Dict[str, str]:
    parts = [p for p in os.path.normpath(setting).split(os.sep) if p]
    if len(parts) >= 3:
        m = SHOTS_DIR.match(parts[-2])
        if m:
            return {"dataset": parts[-4] if len(parts) >= 4 else "", "method": parts[-3],
                    "config": m.group("config"), "shots": m.group("shots"), "tag": parts[-1]}
    info = {"dataset": "", "method": "", "config": "", "shots": "", "tag": setting}
    cfg_path = os.path.join(sample_run or setting, "config.yaml")
    if os.path.isfile(cfg_path):
        try:
            import yaml

            with open(cfg_path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
            info["method"] = str((data.get("TRAINER") or {}).get("NAME", ""))
            ds = data.get("DATASET") or {}
            info["dataset"] = str(ds.get("NAME", ""))
            shots = int(ds.get("NUM_SHOTS", -1))
            info["shots"] = "all" if shots < 0 else str(shots)
        except Exception:  # noqa: BLE001 - a setting without a readable config keeps its path as the tag
            pass
    return info


def common_metrics(group: Sequence[RunResult]) -> List[str]:
    """Metrics present in every run of the group, in first-seen order."""
    return [k for k in group[0].metrics if all(k in r.metrics for r in group)]


def build_rows(groups: Dict[str, List[RunResult]], metrics: Optional[List[str]]) -> Tuple[List[str], List[dict]]:
    """Metric columns and one row per setting: ``{"setting", "n", metric: (mean, std, ci) | None}``."""
    if metrics is None:
        cols: List[str] = []
        for group in groups.values():
            cols += [m for m in common_metrics(group) if m not in cols]
    else:
        cols = list(metrics)
    rows = []
    for setting, group in groups.items():
        row: dict = {"setting": setting, "n": len(group), **describe(setting, group[0].path)}
        have = common_metrics(group)
        for m in cols:
            row[m] = summarize([r.metrics[m] for r in group]) if m in have else None
        rows.append(row)
    return cols, rows


SETTING_COLS = ("method", "config", "shots", "tag")


def setting_columns(rows: List[dict]) -> List[str]:
    cols = list(SETTING_COLS)
    if len({r.get("dataset", "") for r in rows}) > 1:
        cols.insert(0, "dataset")
    return cols


def markdown(cols: List[str], rows: List[dict]) -> str:
    scols = setting_columns(rows)
    header = scols + ["n"] + [h for m in cols for h in (f"{m} (mean ± std, ddof=1)", f"{m} ci95")]
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] * len(scols) + ["--:"] * (len(header) - len(scols))) + "|"]
    for row in rows:
        cells = [row.get(c, "") or "-" for c in scols] + [str(row["n"])]
        for m in cols:
            s = row[m]
            ci = f"{s[2]:.2f}" if s and row["n"] >= 3 else "n<3"
            cells += [f"{s[0]:.2f} ± {s[1]:.2f}", ci] if s else ["-", "-"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def shots_key(shots: str) -> tuple:
    return (1, 0) if shots in ("all", "") else (0, int(shots))


def pivot(metric: str, rows: List[dict]) -> str:
    """``metric`` as a methods x shots Markdown table (mean ± std, ddof=1)."""
    shots = sorted({r.get("shots", "") for r in rows}, key=shots_key)
    labels: Dict[str, Dict[str, str]] = {}
    by_method: Dict[str, set] = {}
    for r in rows:
        by_method.setdefault(r.get("method", ""), set()).add((r.get("config", ""), r.get("tag", "")))
    for r in rows:
        variants = by_method[r.get("method", "")]
        name = r.get("method", "") or r["setting"]
        if len(variants) > 1:
            name += f" ({r.get('config', '')}, {r.get('tag', '')})"
        s = r.get(metric)
        labels.setdefault(name, {})[r.get("shots", "")] = f"{s[0]:.2f} ± {s[1]:.2f} (n={r['n']})" if s else "-"
    head = [f"{metric} (mean ± std, ddof=1)"] + [f"{s} shots" if s not in ("all", "") else "all shots" for s in shots]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["--:"] * len(shots)) + "|"]
    for name, cells in labels.items():
        out.append("| " + " | ".join([name] + [cells.get(s, "-") for s in shots]) + " |")
    return "\n".join(out)


def small_n_warning(rows: List[dict]) -> str:
    few = [r for r in rows if r["n"] < 3]
    if not few:
        return ""
    return (f"warning: {len(few)} of {len(rows)} settings have fewer than 3 runs (n = "
            f"{', '.join(sorted({str(r['n']) for r in few}))}): a 95% confidence interval from so few runs is not "
            "meaningful (shown as n<3); run more seeds")


def write_csv(path: str, cols: List[str], rows: List[dict]) -> None:
    """One row per setting: its path, dataset, method, config, shots, tag, n, then per metric mean,
    std (ddof=1) and ci95."""
    header = ["setting", "dataset", *SETTING_COLS, "n"] + [f"{m}_{s}" for m in cols for s in ("mean", "std", "ci95")]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            vals = [row["setting"], row.get("dataset", ""), *[row.get(c, "") for c in SETTING_COLS], row["n"]]
            for m in cols:
                vals += list(row[m]) if row[m] else ["", "", ""]
            w.writerow(vals)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from utils.cli import run_tool

    return run_tool(_main, argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    from utils.cli import ToolError, check_overwrite, starts_with

    p = argparse.ArgumentParser(description="Mean ± std and 95% CI over seeds of finished runs.")
    p.add_argument("dirs", nargs="+", help="folders searched recursively for run directories")
    p.add_argument("--metric", action="append", default=None,
                   help="metric to report (repeatable; default: all metrics every run of a setting has)")
    p.add_argument("--csv", default="", help="also write the table as CSV to this file")
    p.add_argument("--force", action="store_true", help="replace a --csv file this tool did not write")
    p.add_argument("--split", default="test", help="split of the records to read (default: test)")
    p.add_argument("--pool", action="append", default=[], metavar="KEY",
                   help="also pool the runs that differ only in this sweep-tag key (repeatable; e.g. fold for "
                        "k-fold cross-validation: statistics over folds x seeds)")
    p.add_argument("--pivot", action="store_true",
                   help="print the first --metric (default: the first metric) as a methods x shots table")
    args = p.parse_args(argv)
    for d in args.dirs:
        if not os.path.isdir(d):
            print(f"error: not a directory: {d}", file=sys.stderr)
            return 2
    if args.csv:
        check_overwrite(args.csv, args.force, starts_with(b"setting,dataset,"))
    TEXT_METRICS.clear()
    runs = find_runs(args.dirs, args.split)
    if not runs:
        print(f"error: no finished runs (metrics.jsonl with a final record, or log.txt with "
              f"'=> result') under {', '.join(args.dirs)}", file=sys.stderr)
        return 2
    known = list(dict.fromkeys(k for r in runs for k in r.metrics))
    for m in args.metric or []:
        if m not in known and m in TEXT_METRICS:
            raise ToolError(f"metric {m!r} is not a number in {TEXT_METRICS[m]}: it cannot be averaged")
        if m not in known:
            hint = difflib.get_close_matches(m, known, n=1)
            extra = f"did you mean {hint[0]!r}?" if hint else f"available: {', '.join(known)}"
            print(f"error: metric {m!r} is in no run ({extra})", file=sys.stderr)
            return 2
    for r in runs:
        for m, v in r.metrics.items():
            if (args.metric is None or m in args.metric) and not math.isfinite(v):
                raise ToolError(f"metric {m!r} is {v} in {r.path}: a mean over seeds would be {v} too "
                                "(leave the run out, or choose other metrics with --metric)")
    skipped = sorted(set(TEXT_METRICS) - set(known))
    if skipped and args.metric is None:
        print(f"note: not summarised (not numbers): {', '.join(skipped)}", file=sys.stderr)
    pool = [k.lower() for k in args.pool]
    groups = group_runs(runs, pool)
    problems = mixed_configs(groups, pool)
    if problems:
        for line in problems:
            print(f"error: {line}: rerun them with one config (tools/sweep.py refuses or, with "
                  "--rerun-changed, restarts the runs whose folder holds another config)", file=sys.stderr)
        return 2
    cols, rows = build_rows(groups, args.metric)
    if args.pivot:
        print(pivot(cols[0], rows))
    else:
        print(markdown(cols, rows))
    warning = small_n_warning(rows)
    if warning:
        print(warning, file=sys.stderr)
    if args.csv:
        write_csv(args.csv, cols, rows)
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
