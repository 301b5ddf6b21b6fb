"""``nocdet evaluate --checkpoint model.pt``: detect over a split and evaluate, in one command.

What it prints must be what the existing evaluators compute from the result files it wrote
(devkit files for VOC07 / VOC area, COCO JSON for pycocotools), and what it stores in metrics.json.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import nocdet as nocdet_api
from nocdet.data.voc import read_voc
from nocdet.evaluation.coco import evaluate_coco_files
from nocdet.evaluation.voc import evaluate_voc_results_dir
from tiny_model import make_data, train_tiny

pytestmark = pytest.mark.slow

DRIVER = "import sys, nocdet.cli as cli; cli.COMMANDS = ['evaluate']; sys.exit(cli.main(sys.argv[1:]))"


def nocdet(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, "evaluate", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    make_data(root)
    return root, train_tiny(root, "run", ["bbox.enabled=true", "solver.iterations=60", "solver.lr_steps=[50]",
                                          "solver.checkpoint_every=60", "solver.log_every=20"])


def section(stdout: str, name: str) -> str:
    return stdout.split(f"== {name} ==")[1].split("==")[0]


def printed(text: str, row: str) -> str:
    return re.search(rf"^{row}\s+(\S+)", text, re.MULTILINE).group(1)


def test_voc_data_all_metrics_match_the_written_result_files(model, tmp_path):
    root, checkpoint = model
    out = tmp_path / "eval"
    p = nocdet("--checkpoint", checkpoint, "--voc-root", root / "data", "--split", "test", "--out", out,
               "--no-progress")
    assert p.returncode == 0, p.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"voc07", "voc", "coco"}
    for name in ("voc07", "voc"):
        again = evaluate_voc_results_dir(root / "data", "test", out / "results", metric=name)
        assert printed(section(p.stdout, name), "mAP") == f"{again.mAP:.4f}"
        assert metrics[name]["mAP"] == pytest.approx(again.mAP, abs=1e-9)
    # the result files hold the detector's own detections (the library path, image by image)
    detector = nocdet_api.load(checkpoint)
    written = sum(len(f.read_text().splitlines()) for f in (out / "results").glob("comp4_det_test_*.txt"))
    expected = sum(len(detector.detect(s.path, s.image_id).scores) for s in read_voc(root / "data", "test").samples)
    assert written == expected > 0
    assert len(json.loads((out / "results" / "coco_results.json").read_text())) == expected
    coco = evaluate_coco_files(root / "data" / "annotations" / "instances_test.json",
                               out / "results" / "coco_results.json")
    assert printed(section(p.stdout, "coco"), "AP") == f"{coco['AP']:.4f}"
    assert metrics["coco"]["AP"] == pytest.approx(coco["AP"], abs=1e-9)


def test_coco_data_one_metric(model, tmp_path):
    root, checkpoint = model
    gt = root / "data" / "annotations" / "instances_test.json"
    out = tmp_path / "eval"
    p = nocdet("--checkpoint", checkpoint, "--gt", gt, "--images", root / "data" / "JPEGImages", "--metric", "coco",
               "--out", out, "--no-progress")
    assert p.returncode == 0, p.stderr
    assert "== voc07 ==" not in p.stdout
    coco = evaluate_coco_files(gt, out / "results" / "coco_results.json")
    assert printed(section(p.stdout, "coco"), "AP50") == f"{coco['AP50']:.4f}"
    assert json.loads((out / "metrics.json").read_text())["coco"]["AP50"] == pytest.approx(coco["AP50"], abs=1e-9)


def test_bad_combinations_exit_2(model, tmp_path):
    root, checkpoint = model
    p = nocdet("--checkpoint", checkpoint)
    assert p.returncode == 2 and "--voc-root" in p.stderr
    p = nocdet("--checkpoint", checkpoint, "--gt", root / "data" / "annotations" / "instances_test.json")
    assert p.returncode == 2 and "--images" in p.stderr
    p = nocdet("--metric", "all", "--voc-root", root / "data", "--results", tmp_path)
    assert p.returncode == 2 and "all is for --checkpoint" in p.stderr
    p = nocdet("--checkpoint", checkpoint, "--results", tmp_path, "--voc-root", root / "data")
    assert p.returncode == 2 and "not allowed with argument" in p.stderr
