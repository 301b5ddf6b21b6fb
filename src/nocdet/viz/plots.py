"""Pictures of evaluation results and training: the error-diagnosis pies of the paper's Fig. 3,
Hoiem's false-positive trend, precision-recall curves (with their mean), per-class AP bars, the
confusion matrix, precision/recall/F1 against the score threshold, and the training curves.

Each function draws one PNG with matplotlib's Agg renderer (a bare :class:`Figure`, no pyplot
state, so it is safe in scripts, tests and worker threads), writes it atomically and returns
its path. The five diagnosis categories have the same colour everywhere (:data:`CATEGORY_COLORS`:
Cor green, Loc blue, Sim red, Oth orange, BG purple; Loc, Sim and BG as in Hoiem's figures).
An AP of None (a class without objects) is drawn as "n/a", never as 0.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from nocdet.evaluation.diagnosis import CATEGORIES, FP_TYPES, Diagnosis
from nocdet.evaluation.thresholds import ThresholdCurve
from nocdet.evaluation.voc import VOCEval
from nocdet.io import atomic_open

CATEGORY_COLORS: dict[str, str] = {
    "Cor": "#2ca02c", "Loc": "#4f81bd", "Sim": "#c0504d", "Oth": "#f28e2b", "BG": "#8064a2",
}
_DPI = 100


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=_DPI, bbox_inches="tight")
    return path


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


# ---------------------------------------------------------------------------------- diagnosis

def plot_diagnosis_pies(diagnoses: Mapping[str, Diagnosis], path: str | Path,
                        title: str | None = None) -> Path:
    """One pie per experiment, side by side (paper Fig. 3): the share of Cor/Loc/Sim/Oth/BG
    among the top-ranked detections. Slices of 5% or more carry their percentage; a legend
    under each pie lists all five."""
    if not diagnoses:
        raise ValueError("plot_diagnosis_pies needs at least one diagnosis")
    n = len(diagnoses)
    fig = Figure(figsize=(3.6 * n + 0.4, 4.6))
    for k, (name, diagnosis) in enumerate(diagnoses.items()):
        ax = fig.add_subplot(1, n, k + 1)
        counts = diagnosis.counts
        total = sum(counts.values())
        ax.set_title(f"{name}\n{total} detections, {diagnosis.num_objects} objects", fontsize=10)
        ax.set_aspect("equal")
        if total == 0:
            ax.pie([1], colors=["#dddddd"], startangle=90)
            ax.text(0, 0, "no detections", ha="center", va="center")
            continue
        shares = [counts[c] / total for c in CATEGORIES]
        wedges, _ = ax.pie(shares, colors=[CATEGORY_COLORS[c] for c in CATEGORIES], startangle=90,
                           counterclock=False, wedgeprops={"linewidth": 1, "edgecolor": "white"})
        small = []
        for wedge, share in zip(wedges, shares):
            angle = np.deg2rad((wedge.theta1 + wedge.theta2) / 2)
            if share >= 0.05:
                ax.text(0.65 * np.cos(angle), 0.65 * np.sin(angle), f"{100 * share:.1f}%",
                        ha="center", va="center", fontsize=9, color="white", fontweight="bold")
            elif share > 0:
                small.append((angle, f"{100 * share:.1f}%"))
        for (angle, text), (x, y) in zip(small, outside_label_positions([a for a, _ in small])):
            ax.annotate(text, (np.cos(angle), np.sin(angle)), xytext=(x, y), fontsize=8,
                        ha="left" if x > 0 else "right", va="center",
                        arrowprops={"arrowstyle": "-", "color": "#666666", "linewidth": 0.8})
        ax.legend(wedges, [f"{c}: {100 * v:.1f}%" for c, v in zip(CATEGORIES, shares)],
                  loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=9,
                  frameon=False, handlelength=1.0, columnspacing=1.0)
    fig.suptitle(title or "Top-ranked detections by type", fontsize=12)
    fig.text(0.5, 0.005, "Cor correct · Loc poor localisation or duplicate · Sim similar class · "
             "Oth other class · BG background", ha="center", va="bottom", fontsize=8, color="#444444")
    return _save(fig, path)


def outside_label_positions(angles: Sequence[float], radius: float = 1.3, gap: float = 0.16
                            ) -> list[tuple[float, float]]:
    """Text positions outside a unit pie for slices at ``angles`` (radians): each at ``radius`` on
    its own side (right or left), moved apart vertically so that labels on one side are at least
    ``gap`` apart (in the order of their angles' heights)."""
    positions = [(radius * np.cos(a), radius * np.sin(a)) for a in angles]
    placed: list[tuple[float, float]] = list(positions)
    for side in (1, -1):
        members = sorted((i for i, (x, _) in enumerate(positions) if (x >= 0) == (side > 0)),
                         key=lambda i: positions[i][1])
        previous = -np.inf
        for i in members:
            x, y = positions[i]
            y = max(y, previous + gap)
            placed[i] = (side * max(abs(x), 0.35), y)
            previous = y
    return placed


def plot_fp_curve(curve: Mapping, path: str | Path, title: str | None = None) -> Path:
    """Hoiem's false-positive trend as stacked bars: the share (%) of Loc/Sim/Oth/BG among the
    false positives of the top ``f * N`` detections, for each factor ``f`` of
    :func:`nocdet.evaluation.diagnosis.false_positive_curve` ("no FP" where there is none)."""
    factors = list(curve["factors"])
    fig = Figure(figsize=(max(6.4, 0.8 * len(factors) + 1.5), 4.4))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(factors))
    bottom = np.zeros(len(factors))
    for c in FP_TYPES:
        values = np.array([0.0 if v is None else 100 * v for v in curve[c]])
        ax.bar(x, values, bottom=bottom, width=0.8, color=CATEGORY_COLORS[c], label=c)
        bottom += values
    for i in np.flatnonzero(bottom == 0):
        ax.text(x[i], 50, "no FP", ha="center", va="center", fontsize=9, color="#555555", rotation=90)
    ax.set_xticks(x, [f"{f:g}" for f in factors])
    ax.set_xlim(-0.6, len(factors) - 0.4)
    ax.set_ylim(0, 100)
    ax.set_xlabel(f"total detections (x N, N = {curve.get('num_objects', '?')} objects)")
    ax.set_ylabel("share of false positives (%)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=len(FP_TYPES), fontsize=9, frameon=False)
    ax.set_title(title or "False-positive types of the top-ranked detections")
    return _save(fig, path)


# ------------------------------------------------------------------------------ PR and AP

def plot_pr_curves(voc_eval: VOCEval, path: str | Path, classes: Sequence[str] | None = None,
                   title: str | None = None) -> Path:
    """Precision against recall of each class (default: every class with objects), AP in the
    legend."""
    names = [n for n, e in voc_eval.class_evals.items() if e.ap is not None] if classes is None else list(classes)
    unknown = [n for n in names if n not in voc_eval.class_evals]
    if unknown:
        raise ValueError(f"no evaluation of class(es) {', '.join(unknown)}")
    fig = Figure(figsize=(7.5, 5.5))
    ax = fig.add_subplot(1, 1, 1)
    colors = _palette(len(names))
    for name, color in zip(names, colors):
        e = voc_eval.class_evals[name]
        ax.plot(e.recall, e.precision, color=color, linewidth=1.5,
                label=f"{name} ({_percent(e.ap)})")
    recall, precision = mean_pr_curve([voc_eval.class_evals[n] for n in names])
    if len(recall):
        ax.plot(recall, precision, color="black", linewidth=2.5, label="mean of the classes")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    mean = voc_eval.mAP
    ax.set_title(title or f"Precision-recall ({voc_eval.metric}, mAP {_percent(mean)})")
    if names:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title="class (AP %)")
    return _save(fig, path)


def mean_pr_curve(class_evals: Sequence, points: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """The classes' interpolated precision (the highest at a recall at least r, 0 beyond the
    last recall reached) averaged at ``points`` recalls 0..1; classes without objects left out."""
    evals = [e for e in class_evals if e.ap is not None]
    if not evals:
        return np.zeros(0), np.zeros(0)
    grid = np.linspace(0, 1, points)
    curves = []
    for e in evals:
        recall, precision = np.asarray(e.recall, float), np.asarray(e.precision, float)
        # running maximum from the right: precision at recall >= r
        envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        index = np.searchsorted(recall, grid, side="left")
        curves.append(np.where(index < len(recall), envelope[np.minimum(index, len(recall) - 1)]
                               if len(recall) else 0.0, 0.0))
    return grid, np.mean(curves, axis=0)


def _palette(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_ap_bars(per_class: Mapping[str, float | None], path: str | Path,
                 title: str | None = None) -> Path:
    """Per-class AP (%) as bars, with the mean over classes that have an AP as a line."""
    return plot_ap_comparison({"AP": per_class}, path, title=title or "Per-class AP")


def plot_ap_comparison(named: Mapping[str, Mapping[str, float | None]], path: str | Path,
                       title: str | None = None) -> Path:
    """Grouped per-class AP (%) as horizontal bars (class names unrotated, first class on top),
    one colour per experiment; the legend gives each mean (over its classes with an AP) and a
    single experiment's mean is a dashed line. Classes are the union, in first-seen order."""
    if not named:
        raise ValueError("plot_ap_comparison needs at least one experiment")
    classes: list[str] = []
    for per_class in named.values():
        classes.extend(c for c in per_class if c not in classes)
    n = len(named)
    fig = Figure(figsize=(7.5, max(2.5, 0.28 * len(classes) * max(n, 1.5) + 1.5)))
    ax = fig.add_subplot(1, 1, 1)
    height = 0.8 / n
    y = np.arange(len(classes))
    for k, ((name, per_class), color) in enumerate(zip(named.items(), _palette(n))):
        values = [per_class.get(c) for c in classes]
        known = [v for v in values if v is not None]
        mean = sum(known) / len(known) if known else None
        offset = y - 0.4 + height * (k + 0.5)
        ax.barh(offset, [0 if v is None else 100 * v for v in values], height=height, color=color,
                label=f"{name} (mean {_percent(mean)})")
        for yi, v in zip(offset, values):
            if v is None:
                ax.text(1, yi, "n/a", ha="left", va="center", fontsize=7, color="#555555")
        if n == 1 and mean is not None:
            ax.axvline(100 * mean, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(y, classes)
    ax.set_ylim(len(classes) - 0.4, -0.6)
    ax.set_xlim(0, 100)
    ax.set_xlabel("AP (%)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=min(n, 3), frameon=False)
    ax.set_title(title or "Per-class AP", loc="left")
    return _save(fig, path)


# ------------------------------------------------------------------------------- training

def loss_points(log: Sequence[Mapping], key: str) -> list[tuple[int, float]]:
    """``(iteration, value)`` of ``key`` (e.g. ``loss``, ``val_loss``) in a training log; logs
    written before both settings used these keys carry ``loss_cls`` / ``val_loss_cls``."""
    values = ((r.get("iteration"), r.get(key, r.get(key + "_cls"))) for r in log)
    return [(i, v) for i, v in values if isinstance(i, int) and isinstance(v, (int, float))]


def validation_metrics(log: Sequence[Mapping]) -> list[str]:
    """The validation mean-AP keys a log holds (``val_voc07_mAP``, ``val_coco_AP``, ...)."""
    keys = dict.fromkeys(k for r in log for k in r if k.startswith("val_") and (k.endswith("mAP") or k.endswith("_AP")))
    return list(keys)


def plot_training_curves(logs: Mapping[str, Sequence[Mapping]], path: str | Path) -> Path:
    """One colour per run: training loss (solid) and validation loss (dashed) against iteration,
    validation mean AP where the log has it, and the learning rate on a log axis."""
    metric_keys = list(dict.fromkeys(k for log in logs.values() for k in validation_metrics(log)))
    panels = 2 + bool(metric_keys)
    fig = Figure(figsize=(5.2 * panels, 3.8))
    axes = fig.subplots(1, panels)
    loss_ax, lr_ax = axes[0], axes[-1]
    styles = ("-", "--", ":", "-.")
    for k, (name, log) in enumerate(logs.items()):
        colour = f"C{k % 10}"
        for key, style, label in (("loss", "-", "train"), ("val_loss", "--", "validation")):
            points = loss_points(log, key)
            if points:
                loss_ax.plot(*zip(*points), style, color=colour, marker="o" if len(points) < 20 else None,
                             markersize=3, label=f"{name} {label}")
        for m, key in enumerate(metric_keys):
            points = [(i, 100 * v) for i, v in loss_points(log, key)]
            if points:
                axes[1].plot(*zip(*points), styles[m % len(styles)], color=colour, marker="o", markersize=3,
                             label=f"{name} {key[4:]}")
        lr = [(r["iteration"], r["lr"]) for r in log if isinstance(r.get("lr"), (int, float)) and r["lr"] > 0]
        if lr:
            lr_ax.plot(*zip(*lr), color=colour, label=name)
    loss_ax.set(xlabel="iteration", ylabel="training objective", title="loss")
    if metric_keys:
        axes[1].set(xlabel="iteration", ylabel="%", title="validation mean AP")
    lr_ax.set(xlabel="iteration", ylabel="learning rate", title="learning rate (log scale)")
    if lr_ax.lines:
        lr_ax.set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, path)


# ---------------------------------------------------------------------- score thresholds

def plot_threshold_curve(curve: ThresholdCurve, path: str | Path, title: str | None = None) -> Path:
    """Precision, recall and F1 of all classes pooled against the score threshold
    (:class:`~nocdet.evaluation.thresholds.ThresholdCurve`), the best F1 marked."""
    fig = Figure(figsize=(7.0, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for values, label, colour in ((curve.precision, "precision", "C0"), (curve.recall, "recall", "C1"),
                                  (curve.f1, "F1", "C2")):
        ax.plot(curve.thresholds, 100 * values, color=colour, label=label, linewidth=1.8)
    if len(curve.thresholds):
        b = curve.best
        ax.axvline(curve.thresholds[b], color="#555555", linestyle="--", linewidth=1)
        ax.annotate(f"best F1 {100 * curve.f1[b]:.1f}% at {curve.thresholds[b]:.2f}",
                    (curve.thresholds[b], 100 * curve.f1[b]), xytext=(8, 8), textcoords="offset points",
                    fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 102)
    ax.set_xlabel("score threshold (detections scoring at least this are kept)")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower left")
    ax.set_title(title or "Precision, recall and F1 against the score threshold")
    return _save(fig, path)


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: str | Path, threshold: float,
                   title: str | None = None) -> Path:
    """The confusion matrix of :func:`~nocdet.evaluation.thresholds.confusion_matrix`: rows the
    true class (last: background), columns the detected class (last: missed), counts written
    in the cells and shaded by their share of the row."""
    names = list(classes)
    k = len(names)
    matrix = np.asarray(matrix)
    if matrix.shape != (k + 1, k + 1):
        raise ValueError(f"confusion matrix of shape {matrix.shape} for {k} classes")
    side = max(4.5, 0.45 * (k + 1) + 2.5)
    fig = Figure(figsize=(side + 0.8, side))
    ax = fig.add_subplot(1, 1, 1)
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fontsize = 9 if k <= 12 else 7
    for i in range(k + 1):
        for j in range(k + 1):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=fontsize,
                        color="white" if shares[i, j] > 0.55 else "black")
    ax.set_xticks(range(k + 1), [*names, "missed"], rotation=90)
    ax.set_yticks(range(k + 1), [*names, "background"])
    ax.set_xlabel("detected as")
    ax.set_ylabel("true class")
    ax.set_title(title or f"Confusion at score >= {threshold:.2f} (IoU 0.5)", fontsize=11)
    return _save(fig, path)
