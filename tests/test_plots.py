"""The pictures: valid PNGs of a sensible size, consistent category colours, and no failure on
empty input or undefined (None) APs."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nocdet.data.sample import DetectionDataset, Detections, Sample
from nocdet.evaluation.diagnosis import CATEGORIES, ClassDiagnosis, Diagnosis, false_positive_curve
from nocdet.evaluation.voc import evaluate_voc
from nocdet.viz.plots import (
    CATEGORY_COLORS, plot_ap_bars, plot_ap_comparison, plot_diagnosis_pies, plot_fp_curve, plot_pr_curves,
)


def diagnosis(**given: int) -> Diagnosis:
    counts = {c: given.get(c, 0) for c in CATEGORIES}
    return Diagnosis({"all": ClassDiagnosis(counts, sum(counts.values()))}, 1.0, [])


def open_png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert 300 <= im.width <= 4000 and 200 <= im.height <= 3000, im.size
        return np.asarray(im.convert("RGB"))


def pixels_of(rgb: np.ndarray, color: str) -> int:
    target = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb.astype(int) - target).sum(axis=2) <= 6).sum())


def test_pies_are_pngs_with_one_colour_per_category(tmp_path):
    path = plot_diagnosis_pies({"3fc": diagnosis(Cor=59, Loc=28, Sim=3, Oth=2, BG=8),
                                "maxout": diagnosis(Cor=63, Loc=23, Sim=4, Oth=2, BG=8)},
                               tmp_path / "pies.png", title="ZF")
    assert path == tmp_path / "pies.png"
    rgb = open_png(path)
    # Two pies side by side: wider than high.
    assert rgb.shape[1] > rgb.shape[0]
    # All-Cor and all-Loc pies: the big slice is drawn in the category's colour.
    cor = open_png(plot_diagnosis_pies({"x": diagnosis(Cor=10)}, tmp_path / "cor.png"))
    loc = open_png(plot_diagnosis_pies({"x": diagnosis(Loc=10)}, tmp_path / "loc.png"))
    green, blue = CATEGORY_COLORS["Cor"], CATEGORY_COLORS["Loc"]
    assert pixels_of(cor, green) > 20 * pixels_of(loc, green) > 0  # legend patches only in loc.png
    assert pixels_of(loc, blue) > 20 * pixels_of(cor, blue) > 0
    assert len(set(CATEGORY_COLORS.values())) == len(CATEGORIES)


def test_pie_without_detections(tmp_path):
    open_png(plot_diagnosis_pies({"empty": Diagnosis({}, 1.0, []), "x": diagnosis(BG=1)}, tmp_path / "p.png"))
    with pytest.raises(ValueError):
        plot_diagnosis_pies({}, tmp_path / "none.png")


def tiny_case():
    sample = Sample("1", "1.jpg", 100, 100, [(0, 0, 20, 20), (40, 40, 60, 60)], [1, 2], [False, False])
    ds = DetectionDataset(["a", "b", "c"], [sample], "tiny", [["a", "b"]])
    dets = [Detections("1", [(0, 0, 20, 20), (0, 0, 20, 8), (40, 40, 60, 60)], [0.9, 0.8, 0.7], [1, 1, 1])]
    return ds, dets


def test_fp_curve_including_factors_without_false_positives(tmp_path):
    ds, dets = tiny_case()
    curve = false_positive_curve(ds, dets)
    assert curve["Loc"][0] is None and curve["Loc"][-1] == 0.5  # 1/8 x N: only the correct detection
    open_png(plot_fp_curve(curve, tmp_path / "fp.png", title="tiny"))
    single = false_positive_curve(ds, dets, factors=(4,))
    open_png(plot_fp_curve(single, tmp_path / "fp1.png"))


def test_pr_curves_and_ap_bars_with_undefined_aps(tmp_path):
    ds, dets = tiny_case()
    evaluation = evaluate_voc(ds, dets)  # c has no objects: AP None
    assert evaluation.per_class["c"] is None
    open_png(plot_pr_curves(evaluation, tmp_path / "pr.png"))
    open_png(plot_pr_curves(evaluation, tmp_path / "pr_c.png", classes=["c"]))
    with pytest.raises(ValueError, match="zebra"):
        plot_pr_curves(evaluation, tmp_path / "bad.png", classes=["zebra"])
    open_png(plot_ap_bars(evaluation.per_class, tmp_path / "ap.png"))
    open_png(plot_ap_bars({"a": None, "b": None}, tmp_path / "ap_none.png"))
    open_png(plot_ap_bars({}, tmp_path / "ap_empty.png"))
    open_png(plot_ap_comparison({"3fc": {"a": 0.5, "b": None}, "maxout": {"a": 0.6, "c": 0.1}},
                                tmp_path / "cmp.png"))
    with pytest.raises(ValueError):
        plot_ap_comparison({}, tmp_path / "cmp_none.png")
