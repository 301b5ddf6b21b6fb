"""``nocdet train`` on an end-to-end config: the run folder, the metrics and the saved detector (slow)."""
import json
import subprocess
import sys

import pytest
import torch

from nocdet.data.scene_digits import generate_scene_digits
from nocdet.experiment import load_experiment
from nocdet.detector import load
from nocdet.evaluation.voc import evaluate_voc_results_dir
from nocdet.experiment import load_split

pytestmark = pytest.mark.slow

CONFIG = "configs/e2e/scene_digits/table8_conv_noc.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_scene_digits(tmp_path_factory.mktemp("sd") / "data", num_train=16, num_test=4, seed=5,
                                 progress=False)


def overrides(data):
    return [f"data.root={data}", "backbone.weights=null", "backbone.options={width: 0.5}",
            "transform.min_size=[160]", "transform.max_size=256", "sampling.rois_per_image=32",
            "rpn.post_nms_top_n_train=64", "rpn.post_nms_top_n_test=32",
            "solver.iterations=4", "solver.lr_steps=[3]", "solver.warmup_iterations=1",
            "solver.checkpoint_every=2", "solver.log_every=1", "solver.val_every=2", "solver.val_images=2",
            "solver.workers=0"]


def test_train_command_runs_an_e2e_config_end_to_end(data, tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "nocdet", "train", CONFIG, "--output", str(run), "--no-progress"]
    for item in overrides(data):
        args += ["--set", item]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "VOC07 mAP" in done.stdout
    for name in ("config.yaml", "metrics.json", "run.json", "diagnosis.json", "model.pt", "train/log.jsonl",
                 "results/coco_results.json", "results/comp4_det_test_7.txt"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    # the result files, read back by the devkit-exact evaluator, give the metrics the run reported
    again = evaluate_voc_results_dir(data, "test", run / "results", metric="voc07")
    assert again.mAP == pytest.approx(metrics["voc07"]["mAP"], abs=1e-9)
    log = [json.loads(line) for line in (run / "train/log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if "loss_classifier" in r] == [1, 2, 3, 4]
    assert any("val_loss" in r for r in log)

    # the saved detector is rebuilt without the weights file and detects exactly as the run did
    detector = load(run / "model.pt")
    cfg = load_experiment(CONFIG, overrides(data))
    test_set = load_split(cfg.data, cfg.data.test, detector.classes)
    detections = detector.detect_dataset(test_set, progress=False)
    written = json.loads((run / "results/coco_results.json").read_text())
    assert sum(len(d.scores) for d in detections) == len(written)
    if written:
        best = max(written, key=lambda r: r["score"])
        assert max(float(d.scores.max()) for d in detections if len(d.scores)) == pytest.approx(best["score"],
                                                                                               rel=1e-4)


    # the commands a user runs on a frozen model work on this one too
    one = detector.predict([test_set.samples[0].path])[0]
    assert set(one.names) <= set(detector.classes) and len(one.names) == len(one.scores)
    for command in (["detect", str(data / "JPEGImages" / f"{test_set.samples[0].image_id}.jpg"),
                     "--out", str(tmp_path / "drawn")],
                    ["evaluate", "--voc-root", str(data), "--split", "test", "--out", str(tmp_path / "eval")]):
        done = subprocess.run([sys.executable, "-m", "nocdet", command[0], "--checkpoint", str(run / "model.pt"),
                               *command[1:], "--no-progress"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["voc07"]["mAP"] == pytest.approx(metrics["voc07"]["mAP"], abs=1e-9)
    assert json.loads((tmp_path / "drawn" / "failed.json").read_text()) == []
    # the report reads the end-to-end run as it reads a frozen one: losses, PR curves, diagnosis
    from nocdet.viz.report import loss_points, read_run

    report_run = read_run(run)
    assert loss_points(report_run, "loss") and loss_points(report_run, "val_loss")
    assert report_run.diagnosis is not None and report_run.dataset is not None and report_run.results
    done = subprocess.run([sys.executable, "-m", "nocdet", "report", str(run), "--out", str(tmp_path / "r.html")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    export = subprocess.run([sys.executable, "-m", "nocdet", "export", "--checkpoint", str(run / "model.pt"),
                             "--out", str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=300)
    assert export.returncode == 2 and "is an end-to-end detector" in export.stderr


def test_load_refuses_other_files(tmp_path):
    from nocdet.errors import NocdetError

    path = tmp_path / "x.pt"
    torch.save({"format": "something"}, path)
    with pytest.raises(NocdetError, match="format 'something', not a detector saved by nocdet train"):
        load(path)


def test_sweep_runs_end_to_end_designs(data, tmp_path):
    from argparse import Namespace
    from pathlib import Path

    from nocdet.commands import sweep

    designs = ["res5a,5b, fcn+1", "fc32, fcn+1"]
    args = Namespace(config=Path(CONFIG), noc=designs, overrides=overrides(data), output=tmp_path / "sweep",
                     seed=None, device=None, no_progress=True, threads=1)
    assert sweep.run(args) == 0
    for spec in designs:
        config = (tmp_path / "sweep" / sweep.slug(spec) / "config.yaml").read_text()
        assert spec in config and json.loads((tmp_path / "sweep" / sweep.slug(spec) / "run.json").read_text())["noc"] == spec
    assert len((tmp_path / "sweep" / "sweep.csv").read_text().splitlines()) == 3
