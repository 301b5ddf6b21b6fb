"""``nocdet evaluate`` end to end, in a subprocess, on tiny VOC and COCO fixtures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fakes import write_voc

# The real entry point, with only this command registered (so the test does not depend on the
# other sub-commands).
DRIVER = ("import sys, nocdet.cli as cli; cli.COMMANDS = ['evaluate']; "
          "sys.exit(cli.main(sys.argv[1:]))")

CLASSES = ["apple", "pear", "plum"]


def nocdet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, "evaluate", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    """Three images; internal boxes are devkit boxes with x1, y1 one less.

    000001: apple (1,1,10,10); pear (21,21,40,40) difficult
    000002: apple (5,5,20,20), apple (30,30,50,50); pear (1,1,30,30)
    000003: plum (2,2,8,8) difficult
    """
    objects = {
        "000001": [((0, 0, 10, 10), 1, False), ((20, 20, 40, 40), 2, True)],
        "000002": [((4, 4, 20, 20), 1, False), ((29, 29, 50, 50), 1, False), ((0, 0, 30, 30), 2, False)],
        "000003": [((1, 1, 8, 8), 3, True)],
    }
    return write_voc(tmp_path_factory.mktemp("voc") / "VOC2007", objects, CLASSES, size=(60, 60))


def write_results(folder: Path, lines: dict[str, list[str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in lines.items():
        (folder / f"comp4_det_test_{name}.txt").write_text("".join(r + "\n" for r in rows))
    return folder


# apple: (1,1,10,5) has IoU exactly 0.5 with (1,1,10,10) in devkit arithmetic -> TP; then a TP,
# an FP on an image without apples and a duplicate FP. npos 3:
#   recall 1/3, 2/3, 2/3, 2/3; precision 1, 1, 2/3, 1/2
#   11-point: t = 0 .. 0.6 -> 1 (7 points)  => 7/11 = 0.6364;   area: 2/3 = 0.6667
#   strict (IoU > 0.5): the first is an FP -> recall 0, 1/3, ...; precision 0, 1/2, 1/3, 1/4
#   11-point: t = 0 .. 0.3 -> 1/2 (4 points) => 2/11
# pear: a TP, then a detection on the difficult pear (ignored) -> AP 1.
# plum: only a difficult object and no result file -> reported, left out of the mean.
RESULTS = {
    "apple": ["000001 0.9 1 1 10 5", "000002 0.8 5 5 20 20", "000003 0.7 1 1 10 10",
              "000002 0.6 5 5 20 20"],
    "pear": ["000002 0.5 1 1 30 30", "000001 0.4 21 21 40 40"],
}


def test_voc07_table_json_and_missing_class_file(voc, tmp_path):
    results = write_results(tmp_path / "results", RESULTS)
    out = tmp_path / "metrics.json"
    p = nocdet("--metric", "voc07", "--voc-root", voc, "--split", "test", "--results", results,
               "--out", out)
    assert p.returncode == 0, p.stderr
    rows = {line.split()[0]: line.split()[1:] for line in p.stdout.splitlines() if line.strip()}
    assert rows["apple"][0] == "0.6364" and rows["pear"][0] == "1.0000" and rows["plum"][0] == "-"
    assert rows["mAP"][0] == "0.8182"
    assert "comp4_det_test_plum.txt" in p.stderr and "warning" in p.stderr
    metrics = json.loads(out.read_text())
    assert metrics["mAP"] == pytest.approx((7 / 11 + 1) / 2, abs=1e-12)
    # (pear: 11 * (1/11) summed as the devkit does is 1.0000000000000002)
    assert metrics["per_class"] == {"apple": pytest.approx(7 / 11, abs=1e-12),
                                    "pear": pytest.approx(1.0, abs=1e-12), "plum": None}


def test_voc_area_metric_strict_threshold_and_class_subset(voc, tmp_path):
    results = write_results(tmp_path / "results", RESULTS)
    out = tmp_path / "m.json"
    assert nocdet("--metric", "voc", "--voc-root", voc, "--results", results, "--out", out).returncode == 0
    assert json.loads(out.read_text())["per_class"]["apple"] == pytest.approx(2 / 3, abs=1e-12)
    p = nocdet("--metric", "voc07", "--voc-root", voc, "--results", results, "--classes", "apple",
               "--strict-threshold", "--out", out)
    assert p.returncode == 0, p.stderr
    metrics = json.loads(out.read_text())
    assert metrics["per_class"] == {"apple": pytest.approx(2 / 11, abs=1e-12)}
    assert metrics["mAP"] == pytest.approx(2 / 11, abs=1e-12)


@pytest.mark.parametrize("bad_line, message", [
    ("000001 0.9 1 1 10", "fields"),
    ("000001 high 1 1 10 10", "non-numeric"),
    ("999999 0.9 1 1 10 10", "999999"),
])
def test_bad_result_line_exit_2_with_file_and_line(voc, tmp_path, bad_line, message):
    results = write_results(tmp_path / "results",
                            {"apple": ["000001 0.9 1 1 10 5", bad_line], "pear": []})
    p = nocdet("--metric", "voc07", "--voc-root", voc, "--results", results)
    assert p.returncode == 2
    assert "comp4_det_test_apple.txt" in p.stderr and "line 2" in p.stderr and message in p.stderr


def test_missing_flags_exit_2(voc, tmp_path):
    p = nocdet("--metric", "voc07", "--results", tmp_path)
    assert p.returncode == 2 and "--voc-root" in p.stderr
    p = nocdet("--metric", "coco", "--results", tmp_path / "r.json")
    assert p.returncode == 2 and "--gt" in p.stderr
    p = nocdet("--metric", "voc07", "--voc-root", voc, "--results", tmp_path / "nowhere")
    assert p.returncode == 2 and "nowhere" in p.stderr


def test_coco_table_and_json(tmp_path):
    gt = {"images": [{"id": 1, "file_name": "1.jpg", "width": 300, "height": 300},
                     {"id": 2, "file_name": "2.jpg", "width": 300, "height": 300}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 150, 150], "area": 22500, "iscrowd": 0},
              {"id": 2, "image_id": 2, "category_id": 2, "bbox": [20, 30, 100, 120], "area": 12000, "iscrowd": 0},
          ],
          "categories": [{"id": 1, "name": "apple"}, {"id": 2, "name": "pear"}]}
    # apple found exactly; pear missed, a detection on image 2 lies elsewhere.
    # Per-class AP: apple 1 (IoU 1 at every threshold), pear 0 -> AP 0.5. Both objects are
    # large (> 96^2), so APs and APm are undefined (null).
    res = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 150, 150], "score": 0.9},
           {"image_id": 2, "category_id": 2, "bbox": [200, 200, 50, 50], "score": 0.8}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    out = tmp_path / "metrics.json"
    p = nocdet("--metric", "coco", "--gt", tmp_path / "gt.json", "--results", tmp_path / "res.json",
               "--out", out)
    assert p.returncode == 0, p.stderr
    assert "Average Precision" not in p.stdout  # pycocotools' own printing is silenced
    rows = {line.split()[0]: line.split()[1:] for line in p.stdout.splitlines() if line.strip()}
    assert rows["AP"] == ["0.5000"] and rows["APs"] == ["-"] and rows["apple"] == ["1.0000"]
    m = json.loads(out.read_text())
    assert m["AP"] == pytest.approx(0.5, abs=1e-12) and m["AP50"] == pytest.approx(0.5, abs=1e-12)
    assert m["APs"] is None and m["APm"] is None and m["APl"] == pytest.approx(0.5, abs=1e-12)
    assert m["AR100"] == pytest.approx(0.5, abs=1e-12)
    assert set(m) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}
    assert m["per_class"] == {"apple": pytest.approx(1.0, abs=1e-12), "pear": 0.0}
