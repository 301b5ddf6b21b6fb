"""A full disk while writing a checkpoint, the RoI feature cache or the proposal cache.

Each case must end in a clear error (a NocdetError naming the file and saying "No space left
on device"), leave the previous state usable (the old checkpoint loads, an earlier cache
opens, a shard without its done marker is never used) and leave no temporary files behind.

Two ways: a real 2 MB tmpfs (needs root; skipped with the reason otherwise) and an in-process
simulation (``write`` or ``fsync`` raising ``ENOSPC``) that runs everywhere. A delayed-allocation
file system (ext4, XFS, NFS) may report a full disk only at ``fsync``; tmpfs at ``write``.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nocdet.features.roi_cache as roi_cache
import nocdet.io
from nocdet.data.sample import DetectionDataset, Sample
from nocdet.errors import DataError, NocdetError
from nocdet.features.roi_cache import ExtractionSettings, build_cache, open_cache
from nocdet.noc.head import NoCHead
from nocdet.proposals.selective_search import ProposalCache, compute_proposals, image_fingerprint
from nocdet.training.checkpoint import load_checkpoint, save_checkpoint
from nocdet.training.noc_trainer import SolverConfig, train_noc
from nocdet.training.roi_sampler import SamplingConfig
from fakes import FixedTrunk

NO_SPACE = r"No space left on device"
SS_SETTINGS = {"min_size": 10, "max_boxes": None, "color_spaces": ["hsv"], "ks": [100]}


# ------------------------------------------------------------------------------ disks

@pytest.fixture
def small_fs(tmp_path):
    """A real 2 MB file system (tmpfs), or a skip saying why there is none."""
    mount = shutil.which("mount")
    if os.name != "posix" or mount is None or os.geteuid() != 0:
        pytest.skip("a real full disk needs root to mount a 2 MB tmpfs; the simulated cases still run")
    folder = tmp_path / "fs"
    folder.mkdir()
    proc = subprocess.run([mount, "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a 2 MB tmpfs is not permitted here: {proc.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    """Write a ballast file until the file system is full."""
    fd = os.open(folder / "ballast", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


class FullAfter:
    """A file whose writes fail with ENOSPC once ``quota`` bytes are written (a partial write
    first, as a real file system does)."""

    def __init__(self, f, quota: int):
        self._f, self._left = f, quota

    def write(self, data):
        if len(data) > self._left:
            self._f.write(data[: self._left])
            self._left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def simulate_full_disk(monkeypatch, where: str, quota: int = 1000) -> None:
    """``where='fsync'``: every fsync fails; ``'write'``: files nocdet writes fill up after ``quota`` bytes."""
    if where == "fsync":
        def no_space(_fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", no_space)
        return
    real_fdopen = os.fdopen
    monkeypatch.setattr(nocdet.io.os, "fdopen", lambda *a, **k: FullAfter(real_fdopen(*a, **k), quota))
    monkeypatch.setattr(roi_cache, "open", lambda *a, **k: FullAfter(open(*a, **k), quota), raising=False)


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------ checkpoints

def state(megabytes: float, value: float) -> dict:
    return {"iteration": int(value), "weights": torch.full((int(megabytes * 2 ** 18),), value)}


def test_checkpoint_on_a_real_full_disk(small_fs):
    path = small_fs / "run" / "checkpoint.pt"
    save_checkpoint(path, state(0.5, 1.0))
    with pytest.raises(NocdetError, match=rf"checkpoint\.pt: {NO_SPACE} \(previous version kept\)"):
        save_checkpoint(path, state(3.0, 2.0))
    assert load_checkpoint(path)["iteration"] == 1
    assert torch.equal(load_checkpoint(path)["weights"], state(0.5, 1.0)["weights"])
    assert temporaries(small_fs) == []
    save_checkpoint(path, state(0.25, 3.0))  # the half-written file was removed: there is room again
    assert load_checkpoint(path)["iteration"] == 3


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_checkpoint_on_a_simulated_full_disk(tmp_path, monkeypatch, where):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state(0.1, 1.0))
    simulate_full_disk(monkeypatch, where)
    with pytest.raises(NocdetError, match=rf"{path.name}: {NO_SPACE}"):
        save_checkpoint(path, state(0.1, 2.0))
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


# ------------------------------------------------------------------------------ RoI feature cache

def roi_data(folder: Path, images: int, per_image: int) -> tuple[DetectionDataset, dict[str, np.ndarray]]:
    rng = np.random.default_rng(images)
    folder.mkdir(parents=True, exist_ok=True)
    samples, proposals = [], {}
    for i in range(images):
        path = folder / f"{images}-{i}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(f"{images}-{i}", path, 64, 48, np.array([[4, 4, 20, 24]], np.float32), [1], [False]))
        corner = rng.uniform(0, 40, (per_image, 2))
        proposals[f"{images}-{i}"] = np.hstack([corner, corner + rng.uniform(6, 24, (per_image, 2))]).clip(
            max=[64, 48, 64, 48]).astype(np.float32)
    return DetectionDataset(["a"], samples, f"set{images}"), proposals


def build(root: Path, data) -> Path:
    # 64 channels, 4 x 4 RoIs: 4 KB of features per region (2 pathways of 64 x 4 x 4 fp16)
    return build_cache(root, *data, FixedTrunk(64, roi_size=4), "wide",
                       ExtractionSettings(scales=[32, 48], include_gt=True), progress=False)


def check_failed_build(root: Path, data, earlier: Path, expected_regions: int, match: str) -> None:
    with pytest.raises(NocdetError, match=match):
        build(root, data)
    again = open_cache(earlier)  # the earlier cache is untouched
    assert again.num_regions == expected_regions and np.isfinite(np.asarray(again.shards[0].features)).all()
    failed = [p for p in root.iterdir() if p != earlier]
    assert len(failed) == 1
    assert not list(failed[0].glob("*.done.json"))
    with pytest.raises(DataError, match="no finished shard"):  # the unfinished shard is never used
        open_cache(failed[0])
    assert temporaries(root) == []


def test_roi_cache_on_a_real_full_disk(small_fs, tmp_path):
    small = roi_data(tmp_path / "img", images=2, per_image=10)
    big = roi_data(tmp_path / "img", images=8, per_image=80)  # 8 x 81 regions x 4 KB = 2.6 MB > 2 MB
    earlier = build(small_fs, small)
    check_failed_build(small_fs, big, earlier, 22, rf"RoI feature cache shard .*shard-00000-of-00001: {NO_SPACE}")
    used = shutil.disk_usage(small_fs).used
    assert used < 512 * 1024, f"the failed shard's files were not removed: {used} bytes in use"


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_roi_cache_on_a_simulated_full_disk(tmp_path, monkeypatch, where):
    small = roi_data(tmp_path / "img", images=2, per_image=10)
    big = roi_data(tmp_path / "img", images=3, per_image=10)
    root = tmp_path / "cache"
    earlier = build(root, small)
    simulate_full_disk(monkeypatch, where, quota=20_000)
    check_failed_build(root, big, earlier, 22, NO_SPACE)
    monkeypatch.undo()
    assert open_cache(build(root, big)).num_regions == 33  # with space again it completes


def test_training_stops_with_the_last_checkpoint_on_a_full_disk(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    cache = open_cache(build(root, roi_data(tmp_path / "img", images=2, per_image=10)))
    head = NoCHead("f32-f2", in_channels=64, roi_size=4)
    sampling, out = SamplingConfig(rois_per_image=8, bg_iou_lo=0.0), tmp_path / "train"
    solver = SolverConfig(iterations=4, lr=0.01, checkpoint_every=2, val_every=100, log_every=1)
    real_save = save_checkpoint
    saves = []

    def fills_up(path, value):  # the disk is full from the second checkpoint on
        saves.append(value["iteration"])
        if len(saves) == 2:
            simulate_full_disk(monkeypatch, "fsync")
        real_save(path, value)

    monkeypatch.setattr("nocdet.training.noc_trainer.save_checkpoint", fills_up)
    with pytest.raises(NocdetError, match=rf"checkpoint\.pt: {NO_SPACE} \(previous version kept\)"):
        train_noc(head, cache, out, sampling=sampling, solver=solver, pathways="random", seed=0, progress=False)
    monkeypatch.undo()
    assert saves == [2, 4] and load_checkpoint(out / "checkpoint.pt")["iteration"] == 2
    resumed = train_noc(head, cache, out, sampling=sampling, solver=solver, pathways="random", seed=0,
                        resume=True, progress=False)
    assert resumed.iterations == 4 and load_checkpoint(out / "checkpoint.pt")["iteration"] == 4


# ------------------------------------------------------------------------------ proposal cache

def ss_data(folder: Path, names: list[str]) -> DetectionDataset:
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for k, name in enumerate(names):
        image = np.full((60, 80, 3), 200, np.uint8)
        image[10:40, 5 + 3 * k:35 + 3 * k] = (220, 30, 30)
        image[25:55, 45:75] = (30, 30, 220)
        path = folder / f"{name}.png"
        Image.fromarray(image).save(path)
        samples.append(Sample(name, path, 80, 60))
    return DetectionDataset(["thing"], samples, "ss")


def test_proposal_cache_on_a_real_full_disk(small_fs, tmp_path):
    first = ss_data(tmp_path / "img", ["a0", "a1"])
    both = ss_data(tmp_path / "img", ["a0", "a1", "b0"])
    expected = compute_proposals(first, small_fs / "proposals", SS_SETTINGS, workers=0, progress=False)
    fill(small_fs)
    b0_file = ProposalCache(small_fs / "proposals", SS_SETTINGS).file_for(image_fingerprint(both.samples[2].path))
    with pytest.raises(NocdetError, match=rf"{b0_file.name}: {NO_SPACE} \(previous version kept\)"):
        compute_proposals(both, small_fs / "proposals", SS_SETTINGS, workers=0, progress=False)
    assert_cached(small_fs / "proposals", first, expected)
    assert temporaries(small_fs) == []


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_proposal_cache_on_a_simulated_full_disk(tmp_path, monkeypatch, where):
    first = ss_data(tmp_path / "img", ["a0", "a1"])
    both = ss_data(tmp_path / "img", ["a0", "a1", "b0"])
    expected = compute_proposals(first, tmp_path / "proposals", SS_SETTINGS, workers=0, progress=False)
    simulate_full_disk(monkeypatch, where, quota=100)
    b0_file = ProposalCache(tmp_path / "proposals", SS_SETTINGS).file_for(image_fingerprint(both.samples[2].path))
    with pytest.raises(NocdetError, match=rf"{b0_file.name}: {NO_SPACE}"):
        compute_proposals(both, tmp_path / "proposals", SS_SETTINGS, workers=0, progress=False)
    monkeypatch.undo()
    assert_cached(tmp_path / "proposals", first, expected)
    assert temporaries(tmp_path / "proposals") == []
    assert not b0_file.exists()


def assert_cached(root: Path, dataset: DetectionDataset, expected: dict[str, np.ndarray]) -> None:
    """The images cached before the disk filled up still load from the cache, unchanged."""
    cache = ProposalCache(root, SS_SETTINGS)
    for sample in dataset.samples:
        np.testing.assert_array_equal(cache.load(image_fingerprint(sample.path)),
                                      expected[sample.image_id])
