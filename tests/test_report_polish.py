"""Issue 19's report changes: the runs table, the score-threshold analysis (pooled precision,
recall and F1; confusion matrix), the mean PR curve, pie labels, tag layout, the run's PNG
plots, ``nocdet diagnose`` naming runs after their folders, and the page in a narrow window.

The run is test_report's fixture (four images, three classes); the numbers are worked out by
hand from its ``DETECTIONS`` and ``OBJECTS``."""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from nocdet.commands.diagnose import _experiment_names
from nocdet.viz.draw import place_labels
from nocdet.viz.plots import mean_pr_curve, outside_label_positions, validation_metrics
from nocdet.viz.report import read_run, readable_time, threshold_analysis, write_report, write_run_plots
from test_report import headless, make_run, make_voc, section


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("polish")
    return make_run(root / "runs" / "run_a", make_voc(root / "VOC"), "maxout 2conv3fc")


@pytest.fixture(scope="module")
def page(run_dir, tmp_path_factory) -> str:
    return write_report([run_dir], tmp_path_factory.mktemp("page") / "report.html").read_text()


def test_runs_table_text_left_noc_unbroken_time_readable_and_columns_explained(page):
    runs = section(page, "Runs")
    assert '<td class="noc">c64-c64-f512-f512-f11</td>' in runs
    assert '<td class="text">maxout 2conv3fc</td>' in runs
    assert '<td class="text nowrap">2024-05-01 12:00</td>' in runs  # from 2024-05-01T12:00:00
    assert "NoC parameters" in runs and "1.23 M" in runs
    assert "proposals and feature extraction are not included" in runs
    assert '<div class="scroll"><table>' in runs
    assert "td.noc{white-space:nowrap" in page


def test_readable_time():
    assert readable_time("2024-05-01T12:00:00+00:00") == "2024-05-01 12:00 UTC"
    assert readable_time("2024-05-01T12:00:00+02:00") == "2024-05-01 12:00 +0200"
    assert readable_time("yesterday") == "yesterday"


def test_threshold_curve_and_confusion_by_hand(run_dir):
    # pooled in score order: .95 (on a difficult plum: neither), .9 TP, .8 TP, .7 FP, .6 TP, .55 FP
    # (duplicate), .3 FP, .2 FP; 6 objects. At .6: P = 3/4, R = 3/6, F1 = .6 (the best).
    analysis = threshold_analysis(read_run(run_dir))
    curve = analysis.curve
    assert curve.thresholds.tolist() == [0.95, 0.9, 0.8, 0.7, 0.6, 0.55, 0.3, 0.2]
    assert curve.precision.tolist() == pytest.approx([0, 1, 1, 2 / 3, 3 / 4, 3 / 5, 3 / 6, 3 / 7])
    assert curve.recall.tolist() == pytest.approx([0, 1 / 6, 2 / 6, 2 / 6, 3 / 6, 3 / 6, 3 / 6, 3 / 6])
    assert analysis.threshold == 0.6 and curve.f1[curve.best] == pytest.approx(0.6)
    # at .6: apples of img1, img2 found, img4's missed; pear of img2 missed, img3's found; the pear
    # detection .7 (on nothing) is background (the .55 duplicate is below); the plum of img4 missed
    assert analysis.confusion.tolist() == [[2, 0, 0, 1], [0, 1, 0, 1], [0, 0, 0, 1], [0, 1, 0, 0]]


def test_report_has_the_threshold_section_with_the_suggested_threshold(page):
    part = section(page, "Score threshold")
    assert "Best F1 60.0% at score 0.60" in part and "nocdet detect --threshold 0.60" in part
    assert len(re.findall(r"<img ", part)) == 2


def test_sample_pictures_have_a_colour_legend(page):
    legend = section(page, "Sample detections")
    assert re.findall(r'class="swatch" style="background:rgb\((\d+), (\d+), (\d+)\)"></span>(\w+)', legend)[:3] == [
        ("31", "119", "180", "apple"), ("255", "127", "14", "pear"), ("44", "160", "44", "plum")]


def test_run_plots_are_written_into_the_run_folder(run_dir, tmp_path):
    written = write_run_plots(run_dir, tmp_path / "plots")
    names = sorted(p.name for p in written)
    # no diagnosis.json in the fixture, so no false-positive trend; pies computed from the results
    assert names == ["ap.png", "confusion.png", "error_pies.png", "pr_curves.png", "threshold.png", "training.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mean_pr_curve_averages_interpolated_precision():
    a = SimpleNamespace(ap=0.75, recall=np.array([0.5, 1.0]), precision=np.array([1.0, 0.5]))
    b = SimpleNamespace(ap=0.5, recall=np.array([0.5]), precision=np.array([1.0]))
    none = SimpleNamespace(ap=None, recall=np.zeros(0), precision=np.zeros(0))
    recall, precision = mean_pr_curve([a, b, none], points=5)  # recalls 0, .25, .5, .75, 1
    assert recall.tolist() == [0, 0.25, 0.5, 0.75, 1]
    # a: 1 1 1 .5 .5; b: 1 1 1 0 0 (nothing beyond recall .5)
    assert precision.tolist() == pytest.approx([1, 1, 1, 0.25, 0.25])


def test_small_pie_labels_do_not_collide():
    angles = np.deg2rad([88, 90, 92, 95, 270, 272])
    placed = outside_label_positions(angles, gap=0.16)
    for side in (1, -1):
        ys = sorted(y for x, y in placed if np.sign(x) == side)
        assert all(b - a >= 0.16 - 1e-9 for a, b in zip(ys, ys[1:]))
    assert all(np.hypot(x, y) >= 0.35 for x, y in placed)


def test_tags_stay_inside_and_apart():
    boxes = np.array([[10, 0, 60, 40], [12, 2, 62, 42], [14, 4, 64, 44], [150, 80, 200, 100]], float)
    sizes = [(40, 14)] * 4
    rects = place_labels(boxes, sizes, (200, 100))
    for k, (x1, y1, x2, y2) in enumerate(rects):
        assert 0 <= x1 and x2 <= 200 and 0 <= y1 and y2 <= 100
        for o in rects[:k]:
            assert x2 <= o[0] or o[2] <= x1 or y2 <= o[1] or o[3] <= y1
    assert rects[0] == (10, 0, 50, 14)  # no room above: inside the box's top
    assert rects[3] == (150, 66, 190, 80)  # above its box


def test_validation_metrics_found_in_the_log():
    log = [{"iteration": 4, "loss": 1.0}, {"iteration": 4, "val_loss": 0.9, "val_voc07_mAP": 0.3},
           {"iteration": 8, "val_coco_AP": 0.1}]
    assert validation_metrics(log) == ["val_voc07_mAP", "val_coco_AP"]


def test_diagnose_names_runs_after_their_folders(tmp_path):
    for name in ("frozen", "e2e"):
        (tmp_path / name / "results").mkdir(parents=True)
        (tmp_path / name / "run.json").write_text("{}")
        (tmp_path / name / "results" / "coco_results.json").write_text("[]")
    (tmp_path / "loose").mkdir()
    paths = [str(tmp_path / "frozen" / "results"), str(tmp_path / "e2e" / "results" / "coco_results.json"),
             str(tmp_path / "loose")]
    assert _experiment_names(paths, []) == ["frozen", "e2e", "loose"]


@pytest.mark.slow  # starts Chromium: 5-15 s
def test_report_fits_a_narrow_window(chromium, page, tmp_path):
    html = tmp_path / "report.html"
    html.write_text(page)
    done = headless(chromium, tmp_path / "profile", "--virtual-time-budget=5000", "--window-size=420,900",
                    "--dump-dom", html.as_uri())
    match = re.search(r'<body[^>]*data-page-width="(\d+)" data-view-width="(\d+)"', done.stdout)
    assert match, done.stderr[-3000:]
    page_width, view_width = map(int, match.groups())
    assert view_width < 600 and page_width <= view_width  # (headless Chromium's narrowest window is ~500)
