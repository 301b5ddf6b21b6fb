"""Two processes extracting the same RoI feature cache at once leave one complete, correct cache.

Both processes build the same shard at the same time (a barrier starts them together); each
writes into its own temporary folder and renames it into place, so neither sees the other's
half-written files. The result must open, equal a single-process extraction bit for bit, and
leave no temporary folders. (Two processes filling one proposal cache are covered by
tests/test_selective_search.py::test_two_processes_filling_one_cache_agree.)
"""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nocdet.data.sample import DetectionDataset, Sample
from nocdet.features.roi_cache import ExtractionSettings, build_cache, open_cache
from fakes import FixedTrunk

SETTINGS = ExtractionSettings(scales=[32, 48], include_gt=True, flip=True)


def dataset(folder: Path) -> tuple[DetectionDataset, dict[str, np.ndarray]]:
    """Images written once by the test; every process reads the same files."""
    rng = np.random.default_rng(1)
    samples, proposals = [], {}
    for i in range(16):
        path = folder / f"{i}.png"
        if not path.exists():
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        corner = np.random.default_rng(i).uniform(0, 40, (30, 2))
        samples.append(Sample(str(i), path, 64, 48, np.array([[4, 4, 20, 24], [30, 10, 60, 40]], np.float32),
                              [1, 2], [False, False]))
        proposals[str(i)] = np.hstack([corner, corner + 8]).clip(max=[64, 48, 64, 48]).astype(np.float32)
    return DetectionDataset(["a", "b"], samples, "toy"), proposals


def _extract(images: str, root: str, barrier) -> None:
    torch.set_num_threads(1)
    data, proposals = dataset(Path(images))
    backbone = FixedTrunk(16)
    barrier.wait(120)
    build_cache(root, data, proposals, backbone, "trunk", SETTINGS, progress=False)


@pytest.mark.slow  # two spawned interpreters importing torch: ~30-50 s on a shared 2-core machine
def test_two_processes_extracting_one_cache_agree(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    dataset(images)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    procs = [context.Process(target=_extract, args=(str(images), str(tmp_path / "shared"), barrier))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
        assert p.exitcode == 0
    torch.set_num_threads(1)
    data, proposals = dataset(images)
    alone = open_cache(build_cache(tmp_path / "alone", data, proposals, FixedTrunk(16), "trunk", SETTINGS,
                                   progress=False))
    [folder] = list((tmp_path / "shared").iterdir())
    assert folder.name == alone.path.name  # same key
    shared = open_cache(folder)
    assert shared.num_regions == alone.num_regions == 16 * 2 * (2 + 30)  # flips double the images
    a, b = shared.shards[0], alone.shards[0]
    assert a.image_ids == b.image_ids and a.flipped == b.flipped
    np.testing.assert_array_equal(np.asarray(a.features), np.asarray(b.features))
    for name in ("boxes", "levels", "best", "is_gt", "overlap", "label", "target", "offsets", "image"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert sorted(p.name for p in folder.iterdir()) == ["last-used", "settings.json", "shard-00000-of-00001",
                                                       "shard-00000-of-00001.done.json"]
