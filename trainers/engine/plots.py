"""Figures of a run, written to ``OUTPUT_DIR/plots/`` and to TensorBoard.

What is drawn depends on the task (all files are PNG, 130 dpi):

* ``training_curves.png`` (every training run): the loss terms by epoch, the learning rate each
  step actually used, and each validation metric by epoch (the best epoch of the main metric
  marked);
* ``confusion_matrix_<split>.png`` (single-label classification): rows = true class, columns =
  predicted class, colour = share of the true class, each cell annotated with its count; the
  counts also go to ``confusion_matrix_<split>.csv``; with ``TEST.COMPUTE_CMAT True`` the
  row-normalised matrix is saved as ``OUTPUT_DIR/cmat.pt`` (Dassl's file, rows = true classes);
* ``pr_curves_<split>.png`` (multi-label): a precision-recall curve per class, AP in the legend;
* ``va_scatter_<split>.png`` (valence-arousal regression): predicted vs true valence and arousal,
  with the identity line and Pearson's r;
* ``distributions_<split>.png`` (label distributions): the mean predicted vs mean true
  distribution over the split, and a few test images' distributions side by side;
* ``per_class_f1_<split>.png`` (conversation / VEGA): F1 of each class.

Plots are drawn with matplotlib's non-interactive ``Agg`` backend, only on rank 0, after the
final evaluation (training and ``--eval-only``). Drawing never breaks a run: a failing figure
is one warning line.

Who draws what: the training curves are drawn here from ``metrics.jsonl``; the figures of an
evaluation are drawn by the evaluator itself (``EvaluatorBase.plots``, overridden per task in
``trainers/evaluation/``) with the helpers of this module, so a new evaluator brings its own
figures and nothing here names an evaluator. The config is read once, by
:func:`figure_settings_from_cfg`; every drawing function takes plain values.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from utils.fileio import read_records

logger = logging.getLogger(__name__)
DPI = 130


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def safe_plot(fn: Callable) -> Callable:
    """Run a plotting function; any exception becomes one warning line (and None)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a figure must never break a run
            first = (str(e).strip().splitlines() or [""])[0][:200]
            logger.warning(f"plot {fn.__name__.replace('plot_', '')} skipped: {type(e).__name__}: {first}")
            return None

    return wrapper


def plot_dir(output_dir: str) -> str:
    path = os.path.join(output_dir, "plots")
    os.makedirs(path, exist_ok=True)
    return path


def _save(fig: Any, path: str, writer: Any = None, tag: str = "", step: int = 0) -> str:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    if writer is not None and tag:
        try:
            writer.figure(tag, fig, step)
        except Exception as e:  # noqa: BLE001
            logger.debug("TensorBoard figure %s failed: %s", tag, e)
    _plt().close(fig)
    return path


@dataclass(frozen=True)
class FigureSettings:
    """What the figures need from the config, read once (:func:`figure_settings_from_cfg`)."""

    title: str = ""  # run_title()
    final_model: str = "last_step"  # TEST.FINAL_MODEL: which model the final test used
    hparams: Dict[str, Any] = field(default_factory=dict)  # hparams_from_cfg(), for TensorBoard


@dataclass(frozen=True)
class FigureContext:
    """Where and how an evaluator draws the figures of one final evaluation (plain values only)."""

    output_dir: str  # the run folder (cmat.pt goes here)
    directory: str  # OUTPUT_DIR/plots
    split: str
    title: str  # the run title and the split, the first line of each figure's title
    writer: Any = None  # TensorBoard-style writer (``figure(tag, fig, step)``) or None


def run_title(trainer: str, dataset: str, shots: int, subsample: str = "all", seed: int = -1,
              zero_shot: bool = False) -> str:
    """``CoOp on SyntheticEmotion, 4 shots, seed 1``."""
    parts = [f"{trainer} on {dataset}",
             "zero-shot (no training images)" if zero_shot else f"{shots} shots" if shots > 0 else "all shots"]
    if subsample != "all":
        parts.append(f"{subsample} classes")
    if seed >= 0 and not zero_shot:  # nothing random in a zero-shot evaluation
        parts.append(f"seed {seed}")
    return ", ".join(parts)


def hparams_from_cfg(cfg: Any) -> Dict[str, Any]:
    return {
        "trainer": cfg.TRAINER.NAME, "dataset": cfg.DATASET.NAME, "shots": int(cfg.DATASET.NUM_SHOTS),
        "classes": cfg.DATASET.SUBSAMPLE_CLASSES, "backbone": cfg.MODEL.BACKBONE.NAME, "seed": int(cfg.SEED),
        "optim": cfg.OPTIM.NAME, "lr": float(cfg.OPTIM.LR), "epochs": int(cfg.OPTIM.MAX_EPOCH),
        "batch_size": int(cfg.DATALOADER.TRAIN_X.BATCH_SIZE),
    }


def learns_nothing(trainer_name: str) -> bool:
    """True for a trainer that trains nothing and draws nothing at random (zero-shot CLIP): it declares
    ``SEED_INDEPENDENT = True``; its figures say zero-shot instead of a number of shots and a seed."""
    from trainers.registry import TRAINER_REGISTRY

    return trainer_name in TRAINER_REGISTRY and bool(getattr(TRAINER_REGISTRY.get(trainer_name), "SEED_INDEPENDENT", False))


def figure_settings_from_cfg(cfg: Any) -> FigureSettings:
    hp = hparams_from_cfg(cfg)
    title = run_title(hp["trainer"], hp["dataset"], hp["shots"], hp["classes"], hp["seed"],
                      zero_shot=learns_nothing(hp["trainer"]))
    return FigureSettings(title=title, final_model=str(cfg.TEST.FINAL_MODEL), hparams=hp)


#: metrics reported in percent (0-100); chance level = 100 / classes for the first two
PERCENT_CHANCE = ("accuracy", "balanced_accuracy")


# ---------------------------------------------------------------------------------------- training
def _by_epoch(records: List[Dict[str, Any]], split: str) -> Dict[int, Dict[str, Any]]:
    """The last non-final record of ``split`` per epoch (a resumed run may repeat epochs)."""
    out: Dict[int, Dict[str, Any]] = {}
    for r in records:
        if r.get("split") == split and not r.get("final") and isinstance(r.get("epoch"), int):
            out[r["epoch"]] = r
    return dict(sorted(out.items()))


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


@safe_plot
def plot_training_curves(trainer: Any) -> Optional[str]:
    """``plots/training_curves.png`` of a trainer's run (its output folder, evaluator's main metric, config)."""
    settings = figure_settings_from_cfg(trainer.cfg)
    main = getattr(getattr(trainer, "evaluator", None), "main_metric", "")
    n_classes = len(getattr(trainer, "classnames", []) or [])
    return draw_training_curves(trainer.output_dir, main, settings, getattr(trainer, "writer", None), n_classes)


def draw_training_curves(output_dir: str, main: str, settings: FigureSettings, writer: Any = None,
                         n_classes: int = 0) -> Optional[str]:
    """``plots/training_curves.png`` from ``output_dir/metrics.jsonl`` (see the module docstring); ``main`` is
    the main validation metric (its best epoch is marked). None when no epoch was trained."""
    records = read_records(output_dir)
    train = _by_epoch(records, "train")
    if not train:
        return None
    val = _by_epoch(records, "val")
    val_keys: List[str] = []
    for r in val.values():
        val_keys += [k for k in r["metrics"] if k not in val_keys]
    suffix = main.split("_", 1)[1] if main.startswith(("valence_", "arousal_")) else None
    val_keys = ([main] if main in val_keys else []) + [k for k in val_keys if k != main and suffix and k.endswith(suffix)] \
        + [k for k in val_keys if k != main and not (suffix and k.endswith(suffix))]
    val_keys = [k for k in val_keys if not k.startswith(("f1_", "ap_")) and k != "error"
                and not k.endswith("_p")][:4]  # p-values and error (= 100 - accuracy) say nothing new
    loss_keys: List[str] = []
    for r in train.values():
        loss_keys += [k for k in r["metrics"] if k not in loss_keys]

    final = next((r for r in reversed(records) if r.get("final") and isinstance(r.get("metrics"), dict)), None)
    if 2 + len(val_keys) == 5:
        val_keys = val_keys[:2]  # five panels would leave one of six cells empty: keep the main metric first
    percent = _percent_keys(val_keys, val)
    plt = _plt()
    n_panels = 2 + len(val_keys)
    cols = min(3, n_panels) if n_panels != 4 else 2
    rows = math.ceil(n_panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    axes = axes.ravel()
    epochs = list(train)
    ax = axes[0]
    for k in loss_keys:
        ys = [train[e]["metrics"].get(k, float("nan")) for e in epochs]
        ax.plot(epochs, ys, marker="o", ms=3, label=k, lw=2 if k == "loss" else 1)
    ax.set_title("training loss (mean over the epoch)")
    ax.set_ylabel("loss, epoch mean")  # the log line's value in brackets; before them: the last batch's
    ax.set_xlabel("epoch")
    if len(loss_keys) > 1:
        ax.legend(fontsize=7)
    _integer_epochs(ax)

    ax = axes[1]
    xs, lrs = [], []
    for e in epochs:  # epoch e spans [e - 0.5, e + 0.5]; per-step values are spread over it
        per_step = train[e].get("lr_per_step")
        if per_step:
            n = len(per_step)
            xs += [e - 0.5 + (i + 0.5) / n for i in range(n)]
            lrs += per_step
        elif "lr" in train[e]:
            xs += [e - 0.5, e + 0.5]
            lrs += [train[e]["lr"], train[e]["lr"]]
    ax.plot(xs, lrs, color="tab:green")
    ax.set_title("learning rate used by each step", pad=14)  # room for the axis' x1e-3 multiplier
    ax.set_ylabel("learning rate")
    ax.set_xlabel("epoch")
    positive = [v for v in lrs if v > 0]
    if positive and max(positive) / min(positive) > 50:
        ax.set_yscale("log")
    elif lrs:
        ax.set_ylim(0, 1.15 * max(lrs) if max(lrs) > 0 else 1)  # a constant LR reads as constant
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3)) if ax.get_yscale() == "linear" else None
    _integer_epochs(ax)

    for i, k in enumerate(val_keys):
        ax = axes[2 + i]
        ve = [e for e in val if k in val[e]["metrics"]]
        ys = [val[e]["metrics"][k] for e in ve]
        ax.plot(ve, ys, marker="o", ms=3, color="tab:orange")
        if k == main and ys:
            b = int(np.argmax(ys))
            tested = "best-validation model" if settings.final_model == "best_val" else "last epoch"
            ax.plot([ve[b]], [ys[b]], marker="*", ms=12, color="tab:red",
                    label=f"best {ys[b]:.2f} (epoch {ve[b]})\nfinal test used the {tested}")
            ax.legend(fontsize=7, loc="best")
        if final is not None and isinstance(final["metrics"].get(k), (int, float)):
            ck = final.get("checkpoint") or {}
            at = ck.get("epoch") if isinstance(ck.get("epoch"), int) else (max(ve) if ve else final.get("epoch"))
            ax.plot([at], [final["metrics"][k]], marker="s", ms=8, ls="none", color="tab:green",
                    label=f"final test {final['metrics'][k]:.2f} (epoch {at} model)")
            ax.legend(fontsize=7, loc="best")
        if k in PERCENT_CHANCE and k in percent and n_classes > 1:
            ax.axhline(100.0 / n_classes, color="grey", ls="--", lw=1)
            ax.annotate(f"chance {100.0 / n_classes:.1f}%", (0.01, 100.0 / n_classes), xycoords=("axes fraction", "data"),
                        fontsize=7, color="grey", va="bottom")
        ax.set_title(f"validation {k}" + (" (main)" if k == main else ""))
        ax.set_ylabel(f"{k} (%)" if k in percent else k)
        ax.set_xlabel("epoch")
        _integer_epochs(ax)
    lo, hi = min(epochs) - 0.5, max(epochs) + 0.5
    for ax in axes[:n_panels]:
        ax.set_xlim(lo, hi)  # one x-axis for every panel: epoch e spans [e - 0.5, e + 0.5]
    for ax in axes[n_panels:]:
        ax.axis("off")
    fig.suptitle(settings.title, fontsize=10)
    fig.tight_layout()
    return _save(fig, os.path.join(plot_dir(output_dir), "training_curves.png"), writer, "plots/training_curves")


def _percent_keys(keys: List[str], val: Dict[int, Dict[str, Any]]) -> List[str]:
    """The metrics among ``keys`` on a 0-100 scale (a value above 1 was seen; losses and
    correlations never are)."""
    out = []
    for k in keys:
        ys = [r["metrics"][k] for r in val.values() if isinstance(r["metrics"].get(k), (int, float))]
        if ys and max(ys) > 1.0 and "loss" not in k and not k.endswith(("mse", "mae", "rmse")):
            out.append(k)
    return out


# ---------------------------------------------------------------------------------------- evaluation
def plot_evaluation(trainer: Any, split: str, results: Dict[str, float]) -> List[str]:
    """The figures of the final evaluation on ``split`` (paths written).

    The trainer's evaluator draws them from the samples it has just evaluated (its ``plots`` method,
    see :class:`~trainers.evaluation.base.EvaluatorBase`); this module only holds the drawing helpers.
    """
    return plot_evaluation_figures(trainer, split, results) or []


@safe_plot
def plot_evaluation_figures(trainer: Any, split: str, results: Dict[str, float]) -> List[str]:
    ev = getattr(trainer, "evaluator", None)
    settings = figure_settings_from_cfg(trainer.cfg)
    writer = getattr(trainer, "writer", None)
    ctx = FigureContext(output_dir=trainer.output_dir, directory=plot_dir(trainer.output_dir), split=split,
                        title=f"{settings.title}, {split} split", writer=writer)
    draw = getattr(ev, "plots", None)
    written = [p for p in (draw(ctx, results) if draw is not None else []) if p]
    try:
        main = getattr(ev, "main_metric", "")
        writer.hparams(settings.hparams, {k: v for k, v in results.items() if k == main or k in ("accuracy", "macro_f1")})
    except Exception as e:  # noqa: BLE001
        logger.debug("hparams not written: %s", e)
    if written:
        logger.info(f"plots: {', '.join(os.path.relpath(p, trainer.output_dir) for p in written)}")
    return written


def confusion(pred: torch.Tensor, true: torch.Tensor, n: int) -> np.ndarray:
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (true.long().numpy(), pred.long().numpy()), 1)
    return cm


@safe_plot
def save_cmat(pred: torch.Tensor, true: torch.Tensor, n: int, output_dir: str) -> str:
    """``OUTPUT_DIR/cmat.pt``: the row-normalised confusion matrix (rows = true class), as Dassl."""
    from utils.fileio import atomic_torch_save

    cm = confusion(pred, true, n).astype(np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    path = os.path.join(output_dir, "cmat.pt")
    atomic_torch_save(torch.from_numpy(norm), path)
    logger.info(f"confusion matrix saved to {path}")
    return path


@safe_plot
def plot_confusion(pred: torch.Tensor, true: torch.Tensor, names: List[str], d: str, split: str, title: str,
                   writer: Any = None) -> str:
    n = len(names)
    cm = confusion(pred, true, n)
    with open(os.path.join(d, f"confusion_matrix_{split}.csv"), "w", encoding="utf-8") as f:
        f.write("true\\predicted," + ",".join(names) + "\n")
        for i, row in enumerate(cm):
            f.write(names[i] + "," + ",".join(str(int(v)) for v in row) + "\n")
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    plt = _plt()
    side = max(4.5, 0.55 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j] or i == j:  # a zero on the diagonal (a class never right) is shown, in red
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                            fontweight="bold" if i == j else "normal",
                            color="tab:red" if i == j and not cm[i, j] else "white" if share[i, j] > 0.6 else "black")
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    acc = 100.0 * np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title}\naccuracy {acc:.1f}% ({np.trace(cm)}/{cm.sum()}); numbers = counts", fontsize=9)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label("share of the true class (row)")
    fig.tight_layout()
    return _save(fig, os.path.join(d, f"confusion_matrix_{split}.png"), writer, f"plots/confusion_matrix_{split}")


def pr_curve(scores: np.ndarray, positive: np.ndarray):
    """Precision, recall (at every threshold, descending score) and average precision."""
    order = np.argsort(-scores, kind="stable")
    pos = positive[order].astype(np.float64)
    tp = np.cumsum(pos)
    precision = tp / np.arange(1, len(pos) + 1)
    n_pos = max(pos.sum(), 1.0)
    recall = tp / n_pos
    ap = float((precision * pos).sum() / n_pos)
    return np.concatenate([[1.0], precision]), np.concatenate([[0.0], recall]), ap


@safe_plot
def plot_pr_curves(scores: torch.Tensor, labels: torch.Tensor, names: List[str], d: str, split: str, title: str,
                   writer: Any = None) -> str:
    plt = _plt()
    s, y = scores.float().numpy(), (labels.float().numpy() > 0.5)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    aps = []
    for c, name in enumerate(names):
        if not y[:, c].any():
            continue
        p, r, ap = pr_curve(s[:, c], y[:, c])
        aps.append(ap)
        ax.step(r, p, where="post", color=cmap(c % cmap.N), lw=1.4,
                label=f"{name} (AP {100 * ap:.1f}, {int(y[:, c].sum())} positives)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{title}\nper-class precision-recall; mAP {100 * float(np.mean(aps)) if aps else 0:.1f} "
                 f"(a random ranking sits at the class's share of positives, ~{100 * float(y.mean()):.0f}%)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", ncol=1 if len(names) <= 10 else 2)
    fig.tight_layout()
    return _save(fig, os.path.join(d, f"pr_curves_{split}.png"), writer, f"plots/pr_curves_{split}")


@safe_plot
def plot_va_scatter(pred: torch.Tensor, true: torch.Tensor, d: str, split: str, title: str, writer: Any = None) -> str:
    plt = _plt()
    p, t = pred.float().numpy(), true.float().numpy()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    for j, (ax, dim) in enumerate(zip(axes, ("valence", "arousal"))):
        x, y = t[:, j], p[:, j]
        r = float(np.corrcoef(x, y)[0, 1]) if len(x) > 1 and x.std() > 0 and y.std() > 0 else 0.0
        ax.scatter(x, y, s=10, alpha=0.6, edgecolors="none")
        lo = float(min(x.min(), y.min())) if len(x) else 1.0
        hi = float(max(x.max(), y.max())) if len(x) else 9.0
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="predicted = true")
        ax.set_xlabel(f"true {dim}")
        ax.set_ylabel(f"predicted {dim}")
        ax.set_title(f"{dim}: Pearson r = {r:.3f} (n={len(x)})", fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, os.path.join(d, f"va_scatter_{split}.png"), writer, f"plots/va_scatter_{split}")


@safe_plot
def plot_distributions(pred: torch.Tensor, true: torch.Tensor, names: List[str], d: str, split: str, title: str,
                       writer: Any = None, n_examples: int = 5) -> str:
    plt = _plt()
    p, t = pred.float().numpy(), true.float().numpy()
    n_examples = min(n_examples, len(p))
    cols = min(3, 1 + n_examples)
    rows = -(-(1 + n_examples) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False, sharey=True)
    axes = axes.ravel()
    for ax in axes[1 + n_examples:]:
        ax.axis("off")
    x = np.arange(len(names))
    picks = np.linspace(0, len(p) - 1, n_examples).round().astype(int) if n_examples else []
    panels = [("mean over the split", t.mean(0), p.mean(0))] + [
        (f"{split} image #{i}", t[i], p[i]) for i in picks]
    for ax, (name, tt, pp) in zip(axes, panels):
        ax.bar(x - 0.2, tt, 0.4, label="true", color="tab:gray")
        ax.bar(x + 0.2, pp, 0.4, label="predicted", color="tab:blue")
        ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1)
    for ax in axes[::cols]:
        ax.set_ylabel("probability")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: predicted vs true emotion distributions", fontsize=9)
    fig.tight_layout()
    return _save(fig, os.path.join(d, f"distributions_{split}.png"), writer, f"plots/distributions_{split}")


@safe_plot
def plot_per_class_f1(results: Dict[str, float], d: str, split: str, title: str, writer: Any = None) -> str:
    plt = _plt()
    items = [(k[3:], v) for k, v in results.items() if k.startswith("f1_")]
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(items) + 2), 3.8))
    names = [n for n, _ in items]
    vals = [v for _, v in items]
    bars = ax.bar(range(len(items)), vals, color="tab:blue")
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, v + 1, f"{v:.1f}", ha="center", fontsize=7)
    for key, style in (("macro_f1", "--"), ("weighted_f1", ":")):
        if key in results:
            ax.axhline(results[key], color="k", ls=style, lw=1, label=f"{key} {results[key]:.1f}")
    ax.set_xticks(range(len(items)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("F1 (%)")
    ax.set_title(f"{title}\nper-class F1", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, os.path.join(d, f"per_class_f1_{split}.png"), writer, f"plots/per_class_f1_{split}")
