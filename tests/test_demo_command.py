"""``nocdet demo`` end to end at a tiny size: data, ImageNet Lite0 features (no pre-training stage),
NoC, evaluation, diagnosis and report (slow)."""
import json
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_on_imagenet_features_without_pretraining(tmp_path):
    out = tmp_path / "demo"
    sets = ["solver.iterations=6", "solver.lr_steps=[5]", "solver.checkpoint_every=6", "solver.val_every=6",
            "solver.val_batches=2", "solver.log_every=2", "proposals.max_boxes=40", "pyramid.scales=[160, 240]"]
    args = [sys.executable, "-m", "nocdet", "demo", "--out", str(out), "--train", "16", "--test", "4",
            "--no-progress"] + [a for s in sets for a in ("--set", s)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "efficientnet-lite0 features (imagenet)" in done.stdout and "[4/4] report" in done.stdout
    # the training step said up front, then stage by stage as each finishes, between [2/4] and [3/4]
    step = done.stdout.split("[2/4]")[1].split("[3/4]")[0]
    assert "estimate: about" in step and "(the stage times of the default demo" in step
    assert "these 14/2/4 train/val/test images, scales 160,240 and 6 iterations" in step
    stages = re.findall(r"^ {6}(\S.*?\S) +(\d+\.\d s|\d+:\d\d:\d\d)$", step, re.M)
    assert [name for name, _ in stages] == [
        "proposals (train)", "RoI features (train)", "proposals (val)", "RoI features (val)", "proposals (test)",
        "RoI features (test)", "NoC training", "box regression", "test"]
    assert re.search(r"training step: \S+ s \(estimated \S+ s\)", step)
    assert not (out / "pretrain").exists()
    config = (out / "run" / "config.yaml").read_text()
    assert "efficientnet-lite0" in config and "cache: maps" in config
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["voc07"]["mAP"] <= 1.0
    assert (out / "report.html").stat().st_size > 10_000
