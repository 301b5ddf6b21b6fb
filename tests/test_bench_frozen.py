"""benchmarks/bench_frozen.py: its timed stages compute what the detector and the cache compute."""
import importlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nocdet.data.sample import DetectionDataset, Sample
from nocdet.features.registry import build_backbone
from nocdet.features.roi_cache import ExtractionSettings, build_cache, open_cache
from nocdet.training.roi_sampler import SamplingConfig

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("bench_frozen")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone("small-zf", None, width=0.5).freeze().eval()


def proposals_around(gt: np.ndarray, width: int, height: int) -> np.ndarray:
    """Shifted copies of each ground-truth box (foreground) and doubled ones (background)."""
    boxes = []
    for x1, y1, x2, y2 in gt:
        w, h = x2 - x1, y2 - y1
        boxes += [[x1 + 1, y1, x2 + 1, y2], [x1, y1 + 2, x2, y2 + 2],
                  [max(0, x1 - w / 2), max(0, y1 - h / 2), min(width, x2 + w / 2), min(height, y2 + h / 2)]]
    return np.asarray(boxes, np.float32)


@pytest.mark.parametrize("mode", ["pair", "best", "random"])
def test_recomputed_epoch_inputs_equal_the_cached_features(bench, backbone, tmp_path, mode):
    rng = np.random.default_rng(0)
    samples, proposals = [], {}
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(path)
        gt = np.array([[6, 8, 30, 40], [40, 10, 76, 50]], np.float32)
        samples.append(Sample(str(i), path, 80, 60, gt, [1, 2], [False, False]))
        proposals[str(i)] = proposals_around(gt, 80, 60)
    dataset = DetectionDataset(["a", "b"], samples, "tiny")
    settings = ExtractionSettings(scales=[64, 96], flip=True, target_area=32 * 32)
    cache = open_cache(build_cache(tmp_path / "cache", dataset, proposals, backbone, "small-zf", settings,
                                   progress=False))
    sampling = SamplingConfig(images_per_batch=2, rois_per_image=4)
    plan = bench.plan_epoch(cache, sampling, seed=0)

    visited = [(item.shard.image_ids[item.index], item.shard.flipped[item.index]) for batch in plan for item in batch]
    assert sorted(visited) == sorted((str(i), f) for i in range(5) for f in (False, True))  # every image once
    assert [len(batch) for batch in plan] == [2, 2, 2, 2, 2]
    paths = {s.image_id: s.path for s in samples}
    for batch in plan:
        cached = bench.cached_inputs(batch, mode, np.random.default_rng(3))
        fresh = bench.recomputed_inputs(batch, mode, np.random.default_rng(3), backbone, paths, settings)
        assert len(cached) == len(fresh) == (2 if mode == "pair" else 1)
        for a, b in zip(cached, fresh):
            assert a.shape == b.shape and a.shape[0] == sum(len(item.chosen) for item in batch)
            torch.testing.assert_close(b, a, atol=2e-2, rtol=1e-2)  # the cache stores float16


@pytest.mark.slow
def test_quick_run_prints_every_part(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_frozen.py"), "--quick", "--images", "1",
                           "--train-images", "4", "--batch-images", "3", "--threads", "1"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for block in ("--- 1. test time per image", "--- 2. one NoC training epoch", "--- 3. peak memory",
                  "--- 4. pipelined detection", "--- summary"):
        assert block in out
    assert re.search(r"pipelined, --threads 1 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+x   identical", out)
    assert re.search(r"pipelined / one-image detection: [\d.]+x  (PASS|MISS) \(>= 1.4x; bound [\d.]+x", out)
    for stage in ("proposals", "pyramid features", "pooling", "NoC forward", "post-processing"):
        assert out.count(f"  {stage} ") == 2  # one row per config
    assert "recomputed features match the cache" in out
    assert out.count("  extract ") == 2 and out.count("  train ") == 2
