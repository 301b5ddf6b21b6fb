"""RoI feature cache, RoI sampling and NoC training on the cache (frozen-feature setting)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import roi_pool

from nocdet.data.sample import DetectionDataset, Sample
from nocdet.errors import DataError, TrainingError
from nocdet.features.roi_cache import ExtractionSettings, build_cache, open_cache, region_slice
from nocdet.noc.head import NoCHead
from nocdet.training.noc_trainer import SolverConfig, learning_rate, train_noc
from nocdet.training.roi_sampler import RoISampler, SamplingConfig
from fakes import FixedTrunk


def make_dataset(tmp_path, n=4):
    rng = np.random.default_rng(0)
    samples, proposals = [], {}
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        boxes = np.array([[4, 4, 20, 24], [30, 10, 60, 40]], np.float32)
        samples.append(Sample(str(i), path, 64, 48, boxes, [1, 2], [False, i == 0]))
        proposals[str(i)] = np.array([[4, 4, 20, 22], [0, 0, 10, 10], [30, 12, 58, 40], [5, 5, 40, 40]],
                                     np.float32)
    return DetectionDataset(["a", "b"], samples, "toy"), proposals


def test_cache_content_matches_direct_pooling(tmp_path):
    dataset, proposals = make_dataset(tmp_path)
    backbone = FixedTrunk()
    settings = ExtractionSettings(scales=[48], include_gt=True)
    cache = open_cache(build_cache(tmp_path / "cache", dataset, proposals, backbone, "tiny", settings,
                                   progress=False))
    assert cache.num_pathways == 1 and cache.feature_shape == (4, 3, 3)
    shard = cache.shards[0]
    # image 0: GT "b" is difficult, so one GT region then 4 proposals
    r0 = region_slice(shard, 0)
    assert r0.stop - r0.start == 5 and shard.is_gt[r0].tolist() == [True, False, False, False, False]
    # image 1: both GT, proposals 2 and 0 overlap them
    r1 = region_slice(shard, 1)
    assert shard.is_gt[r1].sum() == 2
    # overlap of proposal [4,4,20,22] with GT [4,4,20,24] = (16*18)/(16*20) = 0.9
    assert shard.overlap[r1][2] == pytest.approx(0.9)
    assert shard.label[r1][2] == 1
    # features equal a direct roi_pool of the feature map (scale 48/48 = 1)
    from nocdet.features.roi_cache import image_tensor
    x = image_tensor(dataset.samples[1].path, backbone.mean, backbone.std)
    fmap = backbone(x[None])
    rois = torch.cat([torch.zeros(6, 1), torch.from_numpy(shard.boxes[r1])], 1)
    expect = roi_pool(fmap, rois, 3, 1 / 4).detach().numpy()
    np.testing.assert_allclose(shard.features[r1][:, 0].astype(np.float32), expect, rtol=2e-3, atol=2e-3)


def test_cache_reused_and_partial_shard_rebuilt(tmp_path):
    dataset, proposals = make_dataset(tmp_path)
    settings = ExtractionSettings(scales=[32, 48])
    folder = build_cache(tmp_path / "c", dataset, proposals, FixedTrunk(), "tiny", settings, progress=False)
    done = next(folder.glob("*.done.json"))
    stamp = done.stat().st_mtime_ns
    assert build_cache(tmp_path / "c", dataset, proposals, FixedTrunk(), "tiny", settings, progress=False) == folder
    assert done.stat().st_mtime_ns == stamp
    cache = open_cache(folder)
    assert cache.num_pathways == 2
    # other settings: another key
    other = build_cache(tmp_path / "c", dataset, proposals, FixedTrunk(), "tiny",
                        ExtractionSettings(scales=[48]), progress=False)
    assert other != folder
    # the same weights cut at another layer (another stride, other channels): another key
    deeper = FixedTrunk()
    deeper.stride, deeper.out_channels = 8, 8
    assert build_cache(tmp_path / "c", dataset, proposals, deeper, "tiny", settings, progress=False) != folder
    # a killed extraction (no done marker) is never opened
    done.unlink()
    with pytest.raises(DataError, match="incomplete|no finished shard"):
        open_cache(folder)
    build_cache(tmp_path / "c", dataset, proposals, FixedTrunk(), "tiny", settings, progress=False)
    assert open_cache(folder).num_regions == cache.num_regions


def test_two_rank_shards_cover_every_image(tmp_path):
    dataset, proposals = make_dataset(tmp_path)
    settings = ExtractionSettings(scales=[48])
    for rank in range(2):
        folder = build_cache(tmp_path / "c", dataset, proposals, FixedTrunk(), "tiny", settings,
                             rank=rank, world_size=2, progress=False)
    cache = open_cache(folder)
    assert sorted(i for s in cache.shards for i in s.image_ids) == ["0", "1", "2", "3"]


def test_sampler_respects_fg_fraction_and_bands(tmp_path):
    dataset, proposals = make_dataset(tmp_path)
    cache = open_cache(build_cache(tmp_path / "c", dataset, proposals, FixedTrunk(), "tiny",
                                   ExtractionSettings(scales=[48]), progress=False))
    cfg = SamplingConfig(images_per_batch=2, rois_per_image=4, fg_fraction=0.25, bg_iou_lo=0.0)
    batch = RoISampler(cache, cfg, seed=0, pathways="best").next()
    # per image at most round(0.25 * 4) = 1 foreground
    assert (batch.labels > 0).sum() <= 2
    assert batch.inputs[0].shape[1:] == (4, 3, 3)
    shard = cache.shards[0]
    assert set(np.unique(shard.overlap[shard.label > 0])) != set()


def _train(tmp_path, cache, iterations, resume=False, out="run"):
    torch.manual_seed(0)
    head = NoCHead("f16-f3", in_channels=4, roi_size=3)
    solver = SolverConfig(iterations=iterations, lr=0.01, lr_steps=[3], checkpoint_every=2, val_every=100,
                          log_every=1)
    result = train_noc(head, cache, tmp_path / out, sampling=SamplingConfig(rois_per_image=8, bg_iou_lo=0.0),
                       solver=solver, pathways="random", seed=1, resume=resume, progress=False)
    return head, result


def test_resume_continues_exactly(tmp_path):
    dataset, proposals = make_dataset(tmp_path)
    cache = open_cache(build_cache(tmp_path / "c", dataset, proposals, FixedTrunk(), "tiny",
                                   ExtractionSettings(scales=[32, 48]), progress=False))
    straight, _ = _train(tmp_path, cache, 6, out="straight")
    _train(tmp_path, cache, 4, out="split")  # checkpoint at iteration 4
    resumed, result = _train(tmp_path, cache, 6, resume=True, out="split")
    assert result.iterations == 6
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)
    lines = [json.loads(x) for x in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2, 3, 4, 5, 6]


def test_resume_after_a_kill_between_checkpoints_logs_each_iteration_once(tmp_path):
    """Killed after logging iteration 5 (checkpoint at 4, half a line written): the resumed run
    logs 5 and 6 again, so the log is cut back to 4 first, not appended to."""
    dataset, proposals = make_dataset(tmp_path)
    cache = open_cache(build_cache(tmp_path / "c", dataset, proposals, FixedTrunk(), "tiny",
                                   ExtractionSettings(scales=[32, 48]), progress=False))
    _train(tmp_path, cache, 4, out="run")
    with (tmp_path / "run" / "log.jsonl").open("a") as log:
        log.write('{"iteration": 5, "loss": 1.0, "lr": 0.01}\n{"iteration": 6, "lo')
    _train(tmp_path, cache, 6, resume=True, out="run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[4]["loss"] != 1.0  # the resumed run's own record
    _train(tmp_path, cache, 3, out="run")  # a new run in the same folder starts a new log
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 3


def test_lr_schedule():
    s = SolverConfig(lr=0.1, lr_steps=[10, 20], lr_gamma=0.1)
    assert [learning_rate(s, i) for i in (0, 9, 10, 19, 20)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_non_finite_loss_stops_with_iteration(tmp_path):
    dataset, proposals = make_dataset(tmp_path)
    cache = open_cache(build_cache(tmp_path / "c", dataset, proposals, FixedTrunk(), "tiny",
                                   ExtractionSettings(scales=[48]), progress=False))
    head = NoCHead("f16-f3", in_channels=4, roi_size=3)
    with torch.no_grad():
        head.parameters().__next__().fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"iteration 1: loss is nan"):
        train_noc(head, cache, tmp_path / "nan", sampling=SamplingConfig(bg_iou_lo=0.0),
                  solver=SolverConfig(iterations=3), pathways="best", seed=0, progress=False)
