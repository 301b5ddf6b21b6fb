"""The frozen-feature experiment end to end on a tiny scene-digits set (slow: real SS, real nets)."""
import json
import subprocess
import sys

import pytest
import torch

from nocdet.data.scene_digits import generate_scene_digits
from nocdet.errors import ConfigError
from nocdet.evaluation.voc import evaluate_voc_results_dir
from nocdet.experiment import load_experiment
from nocdet.training.frozen_pipeline import run_frozen_experiment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_scene_digits(tmp_path_factory.mktemp("sd") / "data", num_train=40, num_test=6, seed=3,
                                 progress=False)


def tiny_config(data, cache, extra=()):
    return load_experiment(None, [
        f"data.root={data}", f"cache_dir={cache}", "backbone.name=small-zf", "backbone.options={width: 0.5}",
        "proposals.min_size=8", "proposals.max_boxes=60", "proposals.workers=0", "proposals.color_spaces=[hsv]",
        "pyramid.scales=[160, 240]", "pyramid.flip=false", "pyramid.target_area=2304",
        "noc.spec=c16-mo-c16-f32-f32-fn+1", "solver.iterations=12", "solver.lr_steps=[8]",
        "solver.checkpoint_every=6", "solver.val_every=6", "solver.val_batches=2", "solver.log_every=3",
        "svm.enabled=true", "bbox.enabled=true", "test.score=svm", "test.score_threshold=-1.5", *extra])


def test_run_folder_and_metrics_agree_with_the_evaluator(data, tmp_path):
    cfg = tiny_config(data, tmp_path / "cache")
    metrics = run_frozen_experiment(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.json", "run.json", "diagnosis.json", "model.pt", "train/log.jsonl",
                 "results/coco_results.json", "results/comp4_det_test_7.txt"):
        assert (run / name).is_file(), name
    # the written result files, read back by the devkit-exact evaluator, give the same mAP
    again = evaluate_voc_results_dir(data, "test", run / "results", metric="voc07")
    assert again.mAP == pytest.approx(metrics["voc07"]["mAP"], abs=1e-9)
    assert 0.0 <= metrics["coco"]["AP"] <= 1.0
    log = [json.loads(line) for line in (run / "train/log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if "loss" in r] == [3, 6, 9, 12]
    assert any("val_loss" in r for r in log)
    model = torch.load(run / "model.pt", weights_only=False)
    assert model["classes"] == [str(d) for d in range(10)] and model["svms"] is not None


def test_caches_are_shared_between_nocs(data, tmp_path):
    cfg = tiny_config(data, tmp_path / "cache", ["svm.enabled=false", "bbox.enabled=false", "test.score=softmax",
                                                 "test.score_threshold=0.05"])
    run_frozen_experiment(cfg, tmp_path / "a", progress=False)
    features = tmp_path / "cache" / "roi_features"
    before = sorted(p.name for p in features.iterdir())
    other = tiny_config(data, tmp_path / "cache", ["svm.enabled=false", "bbox.enabled=false", "test.score=softmax",
                                                   "noc.spec=f32-f32-f11"])
    run_frozen_experiment(other, tmp_path / "b", progress=False)
    assert sorted(p.name for p in features.iterdir()) == before  # no new extraction


def test_svm_scoring_needs_the_svm_stage():
    with pytest.raises(ConfigError, match="svm.enabled is false"):
        load_experiment(None, ["test.score=svm"])


def test_train_command_reports_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("solver:\n  iteratons: 5\n")
    proc = subprocess.run([sys.executable, "-m", "nocdet", "train", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown config key 'solver.iteratons'; did you mean 'solver.iterations'?" in proc.stderr


def test_sweep_compares_designs_on_one_cache(data, tmp_path):
    import argparse

    from nocdet.commands import sweep

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"""
data: {{root: "{data}"}}
cache_dir: "{tmp_path / 'cache'}"
backbone: {{name: small-zf, options: {{width: 0.5}}}}
proposals: {{min_size: 8, max_boxes: 60, workers: 0, color_spaces: [hsv]}}
pyramid: {{scales: [160, 240], flip: false, target_area: 2304}}
solver: {{iterations: 6, lr_steps: [4], checkpoint_every: 6, val_every: 6, val_batches: 2, log_every: 3}}
""")
    specs = ["f32-f32-fn+1", "c16-mo-c16-f32-f32-fn+1"]
    args = argparse.Namespace(config=cfg, noc=specs, overrides=[], seed=None, device=None,
                              output=tmp_path / "sweep", no_progress=True, threads=1)
    assert sweep.run(args) == 0
    rows = (tmp_path / "sweep" / "sweep.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == specs
    for spec in specs:
        metrics = json.loads((tmp_path / "sweep" / sweep.slug(spec) / "metrics.json").read_text())
        assert f"{100 * metrics['voc07']['mAP']:.1f}" in (tmp_path / "sweep" / "sweep.md").read_text()
    assert len(list((tmp_path / "cache" / "roi_features").iterdir())) == 3  # train, val, test: extracted once
    assert (tmp_path / "sweep" / "sweep_ap.png").stat().st_size > 1000


def test_loaded_detector_reproduces_the_cached_pipeline(data, tmp_path):
    import numpy as np

    import nocdet
    from nocdet.data.voc import read_voc, read_voc_results
    from nocdet.viz.report import detections_from_voc_results

    cfg = tiny_config(data, tmp_path / "cache", ["svm.enabled=false", "test.score=softmax",
                                                 "test.score_threshold=0.0", "solver.iterations=30"])
    run_frozen_experiment(cfg, tmp_path / "run", progress=False)
    test_set = read_voc(data, "test")
    cached = detections_from_voc_results(read_voc_results(tmp_path / "run" / "results", "test", test_set.classes),
                                         test_set.classes, [s.image_id for s in test_set.samples])
    detector = nocdet.load(tmp_path / "run" / "model.pt")
    sample = test_set.samples[0]
    fresh = detector.predict([sample.path])[0]
    # the cache holds float16 features: the two paths agree to that precision
    top = np.argsort(-cached[0].scores)[:5]
    assert len(fresh.scores) == len(cached[0].scores)
    np.testing.assert_allclose(np.sort(fresh.scores)[::-1][:5], cached[0].scores[top], atol=2e-3)
    assert fresh.names == [detector.classes[k - 1] for k in fresh.labels]
    # any image format a user has: a PIL image gives the same as its path
    from PIL import Image
    again = detector.predict(Image.open(sample.path))[0]
    np.testing.assert_allclose(again.scores, fresh.scores)


def test_detect_command_draws_and_lists_unreadable_files(data, tmp_path):
    cfg = tiny_config(data, tmp_path / "cache", ["svm.enabled=false", "bbox.enabled=false", "test.score=softmax",
                                                 "solver.iterations=6"])
    run_frozen_experiment(cfg, tmp_path / "run", progress=False)
    images = tmp_path / "images"
    images.mkdir()
    for name in sorted((data / "JPEGImages").iterdir())[:2]:
        (images / name.name).write_bytes(name.read_bytes())
    (images / "broken.jpg").write_bytes(b"not an image")
    proc = subprocess.run([sys.executable, "-m", "nocdet", "detect", "--checkpoint", str(tmp_path / "run/model.pt"),
                           str(images), "--out", str(tmp_path / "out"), "--no-progress"],
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "2 images" in proc.stdout and "broken.jpg" in proc.stdout
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert all(r["category"] in [str(d) for d in range(10)] and len(r["bbox"]) == 4 for r in records)
