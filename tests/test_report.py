"""The HTML report: reading run folders, choosing sample images, the page, the command, and the
page rendered in headless Chromium.

The fixture run has four test images and three classes; every expected number below is worked
out by hand from the boxes listed in ``OBJECTS`` and ``DETECTIONS``.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nocdet.data.sample import Detections, Sample
from nocdet.data.voc import VOCClassResults, write_voc_results
from nocdet.errors import DataError, NocdetError
from nocdet.viz.report import (ImageScore, detections_from_voc_results, pick_examples, read_log, read_run,
                               score_image, write_report)
from fakes import write_voc

CLASSES = ["apple", "pear", "plum"]
APPLE, PEAR, PLUM = 1, 2, 3

# image id -> (width, height, [(internal box, label, difficult)])
OBJECTS = {
    "img1": (96, 72, [((10, 10, 40, 40), APPLE, False)]),
    "img2": (96, 72, [((5, 5, 30, 30), APPLE, False), ((40, 20, 80, 60), PEAR, False)]),
    "img3": (120, 64, [((20, 20, 50, 50), PLUM, True), ((60, 10, 90, 40), PEAR, False)]),
    "img4": (80, 80, [((10, 10, 30, 30), APPLE, False), ((50, 30, 80, 60), PLUM, False)]),
}
# image id -> [(internal box, score, label)]
DETECTIONS = {
    "img1": [((10, 10, 40, 40), 0.9, APPLE)],                      # TP
    "img2": [((5, 5, 30, 30), 0.8, APPLE),                         # TP
             ((0, 40, 20, 70), 0.7, PEAR)],                        # FP (background); the pear is missed
    "img3": [((20, 20, 50, 50), 0.95, PLUM),                       # on a difficult plum: ignored
             ((60, 10, 90, 40), 0.6, PEAR),                        # TP
             ((61, 10, 90, 40), 0.55, PEAR),                       # duplicate: FP
             ((0, 0, 15, 15), 0.2, PEAR)],                         # FP, below the 0.5 picture cut
    "img4": [((50, 50, 70, 70), 0.3, APPLE)],                      # FP (on the plum), below the cut
}
# Hand-computed VOC07 11-point AP. apple: npos 3, ranked TP TP FP -> recall 1/3 2/3 2/3, precision
# 1 1 2/3: thresholds 0..0.6 reach precision 1 -> 7/11. pear: npos 2, ranked FP TP FP FP -> recall
# 0 .5 .5 .5, precision 0 .5 .33 .25: thresholds 0..0.5 give 0.5 -> 3/11. plum: npos 1, its only
# detection is on a difficult object -> 0. mAP = 10/33 = 30.3 %.
VOC07 = {"apple": 7 / 11, "pear": 3 / 11, "plum": 0.0}
# Area AP: apple 2/3, pear 1/2 * 1/2 = 1/4, plum 0 -> mAP 11/36 = 30.6 %.
VOC = {"apple": 2 / 3, "pear": 0.25, "plum": 0.0}
COCO = {"AP": 0.123, "AP50": 0.456, "AP75": 0.0789, "APs": None, "APm": 0.2, "APl": 0.3,
        "per_class": {"apple": 0.2, "pear": 0.1, "plum": 0.0}}
LOG = [{"iteration": 0, "loss_cls": 1.4, "lr": 0.01, "seconds": 0.1},
       {"iteration": 10, "loss_cls": 0.9, "lr": 0.01, "seconds": 1.0},
       {"iteration": 10, "val_loss_cls": 1.0},
       {"iteration": 20, "loss_cls": 0.6, "lr": 0.001, "seconds": 2.0},
       {"iteration": 20, "val_loss_cls": 0.8, "loss_cls": 0.6}]
CONFIG = "model:\n  noc: c64-c64-f512-f512-f11\n  note: <b>not html</b>\n"


def make_voc(root: Path) -> Path:
    """The four test images (noise with the objects painted in) as a VOC folder."""
    rng = np.random.default_rng(0)
    paint = {APPLE: (220, 40, 40), PEAR: (90, 200, 60), PLUM: (120, 50, 160)}

    def pixels(image_id: str, w: int, h: int, objects) -> np.ndarray:
        image = rng.integers(60, 120, (h, w, 3), dtype=np.uint8)
        for (x1, y1, x2, y2), label, _ in objects:
            image[y1:y2, x1:x2] = paint[label]
        return image
    return write_voc(root, OBJECTS, CLASSES, image=pixels)


def make_run(run_dir: Path, voc_root: Path, name: str, voc07: dict | None = None) -> Path:
    """A run folder in the training pipeline's format."""
    voc07 = VOC07 if voc07 is None else voc07
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({
        "name": name, "noc": "c64-c64-f512-f512-f11",
        "data": {"format": "voc", "root": str(voc_root), "test_split": "test"},
        "params": 1_234_567, "train_seconds": 3600.0, "created": "2024-05-01T12:00:00"}))
    (run_dir / "config.yaml").write_text(CONFIG)
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LOG))
    metrics = {"voc07": {"mAP": sum(voc07.values()) / 3, "per_class": voc07},
               "voc": {"mAP": sum(VOC.values()) / 3, "per_class": VOC}, "coco": COCO}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    detections = [Detections(i, [d[0] for d in dets], [d[1] for d in dets], [d[2] for d in dets])
                  for i, dets in DETECTIONS.items()]
    write_voc_results(run_dir / "results", "test", detections, CLASSES)
    (run_dir / "results" / "coco_results.json").write_text("[]")
    return run_dir


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return make_voc(tmp_path_factory.mktemp("data") / "VOC")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, voc_root) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "run_a", voc_root, "maxout 2conv3fc")


def images_of(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]*)"', page)


def section(page: str, title: str) -> str:
    start = page.index(f"<h2>{title}</h2>")
    end = page.find("<section>", start)
    return page[start:end if end >= 0 else len(page)]


def cells(fragment: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", fragment)]


# ------------------------------------------------------------------------- reading a run

def test_detections_from_voc_results_convert_devkit_coordinates():
    results = {"apple": VOCClassResults(["b", "a"], np.array([0.5, 0.9]),
                                        np.array([[1.0, 1.0, 10.0, 20.0], [11.0, 21.0, 40.0, 60.5]])),
               "pear": VOCClassResults(["a"], np.array([0.25]), np.array([[5.0, 6.0, 7.0, 8.0]]))}
    dets = detections_from_voc_results(results, ["apple", "pear"], ["a", "b", "c"])
    assert [d.image_id for d in dets] == ["a", "b", "c"]
    a, b, c = dets
    # x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax
    np.testing.assert_allclose(a.boxes, [[10, 20, 40, 60.5], [4, 5, 7, 8]])
    np.testing.assert_allclose(a.scores, [0.9, 0.25])
    assert a.labels.tolist() == [1, 2]
    np.testing.assert_allclose(b.boxes, [[0, 0, 10, 20]])
    assert len(c.scores) == 0
    with pytest.raises(DataError, match="unknown image 'b'"):
        detections_from_voc_results(results, ["apple"], ["a"])


def test_read_run_reads_results_and_ground_truth(run_dir):
    run = read_run(run_dir)
    assert run.name == "maxout 2conv3fc"
    assert run.config == CONFIG and len(run.log) == len(LOG)
    assert run.dataset is not None and run.dataset.classes == CLASSES
    assert [s.image_id for s in run.dataset.samples] == list(OBJECTS)
    # the devkit file stores xmin = x1 + 1
    np.testing.assert_allclose(run.results["apple"].boxes[0], [11, 11, 40, 40])


def test_read_run_errors_name_the_file(tmp_path, voc_root):
    with pytest.raises(DataError, match="no run.json"):
        read_run(tmp_path)
    bad = make_run(tmp_path / "bad", voc_root, "bad")
    (bad / "log.jsonl").write_text('{"iteration": 1, "loss_cls": 1}\n{"iteration": 2, "loss_cls"\n')
    with pytest.raises(DataError, match=r"log.jsonl \[line 2\]"):
        read_log(bad / "log.jsonl")
    (bad / "log.jsonl").rename(bad / "train.log")
    (bad / "train").mkdir()
    (bad / "train" / "log.jsonl").write_text('{"iteration": 5, "loss_cls": 0.5}\n')
    assert read_run(bad).log == [{"iteration": 5, "loss_cls": 0.5}]  # the trainer's own folder
    (bad / "metrics.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="metrics.json: expected a JSON object"):
        read_run(bad)
    (bad / "metrics.json").unlink()
    with pytest.raises(DataError, match="no metrics.json"):
        read_run(bad)


# ----------------------------------------------------------------------- choosing images

def test_score_image_counts_by_the_devkit_rule(run_dir):
    run = read_run(run_dir)
    samples = run.dataset.by_id()
    dets = {d.image_id: d for d in detections_from_voc_results(run.results, CLASSES, list(OBJECTS))}
    got = {i: score_image(samples[i], dets[i]) for i in OBJECTS}
    assert {i: (s.tp, s.fp, s.fn) for i, s in got.items()} == {
        "img1": (1, 0, 0), "img2": (1, 1, 1), "img3": (1, 1, 0), "img4": (0, 0, 2)}
    assert got["img3"].f_score == pytest.approx(2 / 3)
    assert got["img4"].f_score == 0.0


def test_score_image_iou_boundary_and_empty_image():
    sample = Sample("x", Path("x.jpg"), 20, 20, [[0, 0, 10, 10]], [1], [False])
    half = Detections("x", [[0, 0, 10, 5]], [0.9], [1])  # IoU 50/100 = 0.5 exactly: a match
    less = Detections("x", [[0, 0, 10, 4.9]], [0.9], [1])
    assert (score_image(sample, half).tp, score_image(sample, half).fp) == (1, 0)
    missed = score_image(sample, less)
    assert (missed.tp, missed.fp, missed.fn) == (0, 1, 1)
    empty = Sample("e", Path("e.jpg"), 20, 20)
    nothing = score_image(empty, Detections("e", np.zeros((0, 4)), [], []))
    assert (nothing.tp, nothing.fp, nothing.fn, nothing.f_score) == (0, 0, 0, 1.0)


def test_pick_examples_best_and_worst_do_not_overlap():
    scores = [ImageScore("img1", 1, 0, 0), ImageScore("img2", 1, 1, 1), ImageScore("img3", 1, 1, 0),
              ImageScore("img4", 0, 0, 2)]
    best, worst = pick_examples(scores, 6)
    # F: img1 1, img3 2/3, img2 1/2, img4 0; worst: both have 2 errors, lower F first
    assert [s.image_id for s in best] == ["img1", "img3"]
    assert [s.image_id for s in worst] == ["img4", "img2"]
    many = [ImageScore(f"i{k}", k, 10 - k, 0) for k in range(11)]
    best, worst = pick_examples(many, 3)
    assert [s.image_id for s in best] == ["i10", "i9", "i8"]
    assert [s.image_id for s in worst] == ["i0", "i1", "i2"]


# -------------------------------------------------------------------------------- the page

@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory) -> Path:
    return write_report([run_dir], tmp_path_factory.mktemp("report") / "report.html")


def test_report_is_self_contained(report):
    page = report.read_text(encoding="utf-8")
    sources = images_of(page)
    # per-class AP bars, PR curves, threshold curves, confusion matrix, diagnosis pies, training
    # curves, 2 best + 2 worst pictures
    assert len(sources) == 10
    assert all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in sources)
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<link" not in page and "http://" not in page and "https://" not in page


def test_report_shows_config_and_metrics(report):
    page = report.read_text(encoding="utf-8")
    assert "maxout 2conv3fc" in page and "c64-c64-f512-f512-f11" in page
    # config verbatim (escaped) inside a collapsible block
    assert re.search(r"<details><summary>config of maxout 2conv3fc</summary><pre>[^<]*&lt;b&gt;not html",
                     page)
    accuracy = cells(section(page, "Accuracy"))
    assert accuracy == ["maxout 2conv3fc", "30.3", "30.6", "12.3", "45.6", "7.9", "–", "20.0", "30.0"]
    per_class = cells(section(page, "Per-class AP"))
    assert per_class[:4] == ["apple", "63.6", "66.7", "20.0"]
    assert per_class[4:8] == ["pear", "27.3", "25.0", "10.0"]
    # the result files agree with metrics.json: no warning
    assert "may be newer" not in page


def test_report_diagnosis_computed_when_absent(report):
    # Top N_c detections: apple (N=3) 0.9 Cor, 0.8 Cor, 0.3 on the plum -> Oth (no similarity
    # groups); pear (N=2) 0.7 BG, 0.6 Cor; plum (N=1) 0.95 on a difficult plum -> Cor.
    diagnosis = section(report.read_text(encoding="utf-8"), "Error diagnosis")
    assert cells(diagnosis) == ["maxout 2conv3fc", "66.7", "0.0", "0.0", "16.7", "16.7"]
    assert "defines no similar classes" in diagnosis


def test_report_diagnosis_with_similarity_groups(tmp_path):
    voc = make_voc(tmp_path / "VOC")
    (voc / "similarity_groups.json").write_text('[["apple", "plum"]]')
    page = write_report([make_run(tmp_path / "run", voc, "s")], tmp_path / "s.html").read_text()
    # the apple at 0.3 on the plum is now a confusion with a similar class
    diagnosis = section(page, "Error diagnosis")
    assert cells(diagnosis) == ["s", "66.7", "0.0", "16.7", "0.0", "16.7"]
    assert "defines no similar classes" not in diagnosis


def test_report_uses_diagnosis_json_and_warns_on_stale_metrics(tmp_path, voc_root):
    run_dir = make_run(tmp_path / "run", voc_root, "r", voc07={"apple": 1.0, "pear": 1.0, "plum": 1.0})
    counts = {"Cor": 1, "Loc": 3, "Sim": 0, "Oth": 0, "BG": 0}
    diagnosis = {"top_factor": 1.0, "similarity_groups": [["apple", "pear"]],
                 "per_class": {"apple": {"counts": counts, "num_objects": 4, "difficult": 0}}}
    (run_dir / "diagnosis.json").write_text(json.dumps(diagnosis))
    page = write_report([run_dir], tmp_path / "r.html").read_text(encoding="utf-8")
    assert cells(section(page, "Error diagnosis")) == ["r", "25.0", "75.0", "0.0", "0.0", "0.0"]
    assert "the result files give VOC07 mAP 30.30, metrics.json says 100.00" in page
    # the file of `nocdet diagnose` holding this one experiment is read too
    (run_dir / "diagnosis.json").write_text(json.dumps({"dataset": "VOC/test",
                                                        "experiments": {"r": diagnosis}}))
    assert read_run(run_dir).diagnosis.counts == counts
    (run_dir / "diagnosis.json").write_text(json.dumps({"experiments": {"a": diagnosis, "b": diagnosis}}))
    with pytest.raises(DataError, match=r"diagnosis.json: holds 2 experiments"):
        read_run(run_dir)
    (run_dir / "diagnosis.json").write_text(json.dumps({"per_class": {"apple": {"num_objects": 1}}}))
    with pytest.raises(DataError, match=r"diagnosis.json: not a diagnosis"):
        read_run(run_dir)


def test_report_without_ground_truth_still_written(tmp_path, voc_root):
    run_dir = make_run(tmp_path / "run", voc_root, "moved")
    info = json.loads((run_dir / "run.json").read_text())
    info["data"]["root"] = str(tmp_path / "gone")
    (run_dir / "run.json").write_text(json.dumps(info))
    page = write_report([run_dir], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "cannot be read" in section(page, "Sample detections")
    assert cells(section(page, "Accuracy"))[1] == "30.3"
    assert len(images_of(page)) == 2  # AP bars and training curves need no ground truth


def test_comparison_report_side_by_side(tmp_path, voc_root, run_dir):
    better = make_run(tmp_path / "b", voc_root, "b", voc07={"apple": 0.9, "pear": 0.1, "plum": 0.5})
    page = write_report([run_dir, better], tmp_path / "cmp.html", names=["3fc", "2conv3fc"]).read_text()
    assert "<title>nocdet report: 3fc vs 2conv3fc</title>" in page
    accuracy = section(page, "Accuracy")
    assert cells(accuracy)[:2] == ["3fc", "30.3"] and cells(accuracy)[9:11] == ["2conv3fc", "50.0"]
    assert '<td class="best">50.0</td>' in accuracy
    per_class = section(page, "Per-class AP")
    # per class, the best VOC07 AP of the two runs is bold: apple 90.0 (b), pear 27.3 (a)
    assert '<td class="best">90.0</td>' in per_class and '<td class="best">27.3</td>' in per_class
    assert cells(per_class)[:3] == ["apple", "63.6", "90.0"]
    # pictures: AP comparison, 2 PR plots, 2 threshold curves and 2 confusion matrices, one pies
    # figure, training, 4 + 4 samples
    assert len(images_of(page)) == 17
    with pytest.raises(NocdetError, match="1 names for 2 runs"):
        write_report([run_dir, better], tmp_path / "x.html", names=["one"])
    same = write_report([run_dir, run_dir], tmp_path / "same.html").read_text()
    assert "maxout 2conv3fc vs maxout 2conv3fc (2)" in same


# ------------------------------------------------------------------------------ the command

@pytest.fixture
def nocdet(monkeypatch, capsys):
    """Run ``nocdet report ...`` through the real entry point, with only this command registered
    (so the test does not depend on the other sub-commands); returns (exit code, out, err)."""
    import nocdet.cli as cli

    monkeypatch.setattr(cli, "COMMANDS", ["report"])

    def call(*args) -> tuple[int, str, str]:
        code = cli.main(["report", *map(str, args)])
        out, err = capsys.readouterr()
        return code, out, err
    return call


def test_command_writes_report_and_reports_errors(tmp_path, run_dir, nocdet):
    out = tmp_path / "page.html"
    code, stdout, stderr = nocdet(run_dir, "--out", out, "--name", "mine")
    assert code == 0, stderr
    assert f"report written to {out}" in stdout
    assert "<title>nocdet report: mine</title>" in out.read_text()
    code, _, stderr = nocdet(run_dir, run_dir, "--name", "one", "--out", out)
    assert code == 2 and "--name given 1 times for 2 run directories" in stderr
    code, _, stderr = nocdet(tmp_path / "nowhere", "--out", out)
    assert code == 2 and "nowhere" in stderr and "no run.json" in stderr


# ------------------------------------------------------------------------------ the browser

def headless(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


@pytest.mark.slow  # starts Chromium twice: 10-30 s
def test_report_renders_in_chromium(chromium, report, tmp_path):
    done = headless(chromium, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom",
                    report.as_uri())
    match = re.search(r'<body[^>]*data-images-loaded="(\d+)/(\d+)"', done.stdout)
    assert match, f"no image count in the rendered page; chromium said:\n{done.stderr[-3000:]}"
    loaded, total = map(int, match.groups())
    assert total == 10 and loaded == total

    shot = tmp_path / "shot.png"
    done = headless(chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2400",
                    "--hide-scrollbars", report.as_uri())
    assert shot.is_file(), done.stderr[-3000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1280)
    # a rendered page, not a blank one: many colours (plots and photos), and dark text
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500
    assert (pixels.sum(axis=2) < 150).mean() > 0.002
