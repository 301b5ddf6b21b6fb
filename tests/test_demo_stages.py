"""The demo's training step, said up front (an estimate and what it rests on) and stage by stage as
each stage finishes (the frozen pipeline's own stage times, told through ``on_stage``)."""
import pytest

from nocdet.commands.demo import CONFIGS, REFERENCE_SCALES, estimate_lines, estimate_seconds
from nocdet.data.sample import DetectionDataset, Sample
from nocdet.experiment import ExperimentData, load_experiment
from nocdet.training.frozen_pipeline import stage_line


def images(n: int) -> DetectionDataset:
    return DetectionDataset(["0"], [Sample(str(i), f"{i}.png", 320, 240) for i in range(n)], "toy")


def test_the_estimate_of_the_reference_demo_is_the_measured_run():
    cfg = load_experiment(CONFIGS / "demo.yaml")
    assert tuple(cfg.pyramid.scales) == REFERENCE_SCALES and cfg.solver.iterations == 2000
    estimate = estimate_seconds(cfg, ExperimentData(images(700), images(100), images(200)))
    # benchmarks/RESULTS.md, "make demo, from scratch": 44 s, 193 s, 113 s, 15 s, 18 s
    assert estimate == pytest.approx({"proposals": 44, "features": 193, "train_noc": 113, "train_bbox": 15,
                                      "test": 18})


def test_the_estimate_scales_with_images_pyramid_flips_and_iterations():
    cfg = load_experiment(CONFIGS / "demo.yaml", ["pyramid.scales=[160, 240]", "pyramid.flip=true",
                                                  "solver.iterations=500", "bbox.enabled=false"])
    estimate = estimate_seconds(cfg, ExperimentData(images(70), None, images(20)))
    pixels = (160 ** 2 + 240 ** 2) / (240 ** 2 + 320 ** 2 + 480 ** 2)
    assert estimate == pytest.approx({"proposals": 90 * 0.044, "features": (2 * 70 + 20) * 0.193 * pixels,
                                      "train_noc": 500 * 113 / 2000, "test": 20 * 0.09})
    said, basis = estimate_lines(cfg, ExperimentData(images(70), None, images(20)), estimate)
    assert said.startswith(f"estimate: about {sum(estimate.values()):.1f} s (proposals 4.0 s, RoI features")
    assert "these 70/20 train/val/test images, scales 160,240 and 500 iterations" in basis and "2-core VM" in basis


def test_stage_lines_name_the_stage_and_split():
    assert stage_line("features", 193.2, "train") == "  RoI features (train)     0:03:13"
    assert stage_line("train_noc", 12.34) == "  NoC training              12.3 s"


@pytest.mark.slow
def test_the_frozen_pipeline_tells_each_stage_as_it_finishes(tmp_path):
    from nocdet.data.scene_digits import generate_scene_digits
    from nocdet.training.frozen_pipeline import run_frozen_experiment
    from test_frozen_pipeline import tiny_config

    data = generate_scene_digits(tmp_path / "sd", num_train=12, num_test=3, seed=3, progress=False)
    told = []
    cfg = tiny_config(data, tmp_path / "cache", ["svm.enabled=false", "test.score=softmax",
                                                 "test.score_threshold=0.05"])
    metrics = run_frozen_experiment(cfg, tmp_path / "run", progress=False,
                                    on_stage=lambda stage, seconds, split: told.append((stage, split, seconds)))
    assert [(stage, split) for stage, split, _ in told] == [
        ("proposals", "train"), ("features", "train"), ("proposals", "val"), ("features", "val"),
        ("proposals", "test"), ("features", "test"), ("train_noc", None), ("train_bbox", None),
        ("test", None)]
    # the times told are those metrics.json records: one clock
    summed = {}
    for stage, _, seconds in told:
        summed[stage] = summed.get(stage, 0.0) + seconds
    assert metrics["timing_seconds"] == {k: round(v, 2) for k, v in summed.items()}
