"""Pictures of evaluation results: the error-diagnosis pies of the paper's Fig. 3, Hoiem's
false-positive trend, precision-recall curves and per-class AP bars.

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
        for wedge, share in zip(wedges, shares):
            if share >= 0.05:
                angle = np.deg2rad((wedge.theta1 + wedge.theta2) / 2)
                ax.text(0.65 * np.cos(angle), 0.65 * np.sin(angle), f"{100 * share:.1f}%",
                        ha="center", va="center", fontsize=9, color="white", fontweight="bold")
        ax.legend(wedges, [f"{c}: {100 * v:.1f}%" for c, v in zip(CATEGORIES, shares)],
                  loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=9,
                  frameon=False, handlelength=1.0, columnspacing=1.0)
    fig.suptitle(title or "Top-ranked detections by type", fontsize=12)
    fig.text(0.5, 0.005, "Cor correct · Loc poor localisation or duplicate · Sim similar class · "
             "Oth other class · BG background", ha="center", va="bottom", fontsize=8, color="#444444")
    return _save(fig, path)


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


def _palette(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_ap_bars(per_class: Mapping[str, float | None], path: str | Path,
                 title: str | None = None) -> Path:
    """Per-class AP (%) as bars, with the mean over classes that have an AP as a line."""
    return plot_ap_comparison({"AP": per_class}, path, title=title or "Per-class AP")


def plot_ap_comparison(named: Mapping[str, Mapping[str, float | None]], path: str | Path,
                       title: str | None = None) -> Path:
    """Grouped per-class AP (%) bars, one colour per experiment; the legend gives each mAP
    (mean over its classes with an AP). Classes are the union, in first-seen order."""
    if not named:
        raise ValueError("plot_ap_comparison needs at least one experiment")
    classes: list[str] = []
    for per_class in named.values():
        classes.extend(c for c in per_class if c not in classes)
    n = len(named)
    fig = Figure(figsize=(max(6.0, 0.45 * len(classes) * max(n, 2) / 2 + 2), 4.6))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / n
    x = np.arange(len(classes))
    colors = _palette(n)
    for k, ((name, per_class), color) in enumerate(zip(named.items(), colors)):
        values = [per_class.get(c) for c in classes]
        known = [v for v in values if v is not None]
        mean = sum(known) / len(known) if known else None
        offset = x - 0.4 + width * (k + 0.5)
        ax.bar(offset, [0 if v is None else 100 * v for v in values], width=width, color=color,
               label=f"{name} (mean {_percent(mean)})")
        for xi, v in zip(offset, values):
            if v is None:
                ax.text(xi, 1, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="#555555")
        if n == 1 and mean is not None:
            ax.axhline(100 * mean, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(x, classes, rotation=45 if len(classes) > 6 else 0,
                  ha="right" if len(classes) > 6 else "center")
    ax.set_xlim(-0.6, max(len(classes) - 0.4, 0.6))
    ax.set_ylim(0, 100)
    ax.set_ylabel("AP (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=min(n, 4), frameon=False)
    ax.set_title(title or "Per-class AP", loc="left")
    return _save(fig, path)
