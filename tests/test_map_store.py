"""The "maps" store of the RoI feature cache: pyramid conv maps on disk, regions pooled when read."""
import numpy as np
import pytest
import torch
from PIL import Image

import nocdet.training.frozen_pipeline as frozen_pipeline
from nocdet.config import load_config
from nocdet.data.sample import DetectionDataset, Sample
from nocdet.errors import ConfigError, DataError
from nocdet.experiment import ExperimentConfig
from nocdet.features.map_store import INDEX_FILE, MAPS_FILE
from nocdet.features.pyramid import resize_to_scales
from nocdet.features.roi_cache import ExtractionSettings, build_cache, image_tensor, open_cache
from nocdet.noc.head import NoCHead
from nocdet.training.noc_trainer import SolverConfig, train_noc
from nocdet.training.roi_sampler import SamplingConfig
from fakes import FixedTrunk

SCALES = [32, 48, 64]  # factors 2/3, 1, 4/3 of the 48-px shorter side


def random_boxes(rng: np.random.Generator, n: int, width: int = 64, height: int = 48) -> np.ndarray:
    x1, y1 = rng.uniform(0, width - 2, n), rng.uniform(0, height - 2, n)
    w, h = rng.uniform(1, width, n), rng.uniform(1, height, n)
    return np.stack([x1, y1, np.minimum(x1 + w, width), np.minimum(y1 + h, height)], 1).astype(np.float32)


def make_dataset(tmp_path, n=3, boxes_per_image=40):
    rng = np.random.default_rng(0)
    samples, proposals = [], {}
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        gt = np.array([[4, 4, 20, 24], [30, 10, 60, 40]], np.float32)
        samples.append(Sample(str(i), path, 64, 48, gt, [1, 2], [False, False]))
        proposals[str(i)] = np.concatenate([gt + 1, random_boxes(rng, boxes_per_image - 2)])
    return DetectionDataset(["a", "b"], samples, "toy"), proposals


def extract(tmp_path, dataset, proposals, store, pool="max", backbone=None, scales=SCALES):
    # a small target area spreads these small boxes over all levels and pairs
    settings = ExtractionSettings(scales=scales, pool_mode=pool, flip=True, target_area=12.0 * 12.0, store=store)
    return build_cache(tmp_path / "cache", dataset, proposals, backbone or FixedTrunk(), "tiny", settings,
                       progress=False)


@pytest.fixture(scope="module")
def both_max(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("max")
    dataset, proposals = make_dataset(tmp)
    return open_cache(extract(tmp, dataset, proposals, "pooled")), open_cache(extract(tmp, dataset, proposals, "maps"))


def index_cases(n):
    rng = np.random.default_rng(1)
    unsorted = rng.permutation(n)[:37]
    return {"int": 5, "negative int": -2, "slice": slice(3, 50), "step slice": slice(n - 1, 0, -7),
            "full slice": slice(None), "sorted": np.sort(unsorted), "unsorted": unsorted,
            "repeats and negatives": np.array([4, -1, 4, 0, n - 1, -n]), "list": [9, 2], "empty": np.zeros(0, np.int64)}


def test_maps_store_reads_exactly_like_pooled_store_for_max_pooling(both_max):
    pooled, maps = both_max
    assert maps.num_pathways == pooled.num_pathways == 2 and maps.feature_shape == pooled.feature_shape == (4, 3, 3)
    assert maps.num_regions == pooled.num_regions
    a, b = pooled.shards[0], maps.shards[0]
    assert b.features.shape == a.features.shape and len(b.features) == len(a.features)
    assert b.features.dtype == np.float16
    assert sum(b.flipped) == 3 and set(b.levels.ravel().tolist()) == {0, 1, 2}  # flips; all levels used
    for name in ("levels", "best", "boxes", "image", "overlap", "label", "offsets"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)
    for name, key in index_cases(len(a.features)).items():
        got, want = np.asarray(b.features[key]), np.asarray(a.features[key])
        assert got.dtype == np.float16 and got.shape == want.shape, name
        assert np.array_equal(got, want), name
    assert np.any(np.asarray(a.features[:]) != 0)


def test_maps_file_holds_the_backbone_maps_of_every_level(both_max):
    _, maps = both_max
    shard = maps.shards[0]
    folder = maps.path / "shard-00000-of-00001"
    flat = np.load(folder / MAPS_FILE)
    backbone = FixedTrunk()
    image = 1  # the second image of the shard: sample "0" flipped
    assert shard.image_ids[image] == "0" and shard.flipped[image]
    x = image_tensor(maps.path.parent.parent / "0.png", backbone.mean, backbone.std, flip=True)
    levels = resize_to_scales(x, [32 / 48, 1.0, 64 / 48])
    with np.load(folder / INDEX_FILE) as index:
        offset, shape, factor = index["offset"][image], index["shape"][image], index["factor"][image]
    np.testing.assert_allclose(factor, [32 / 48, 1.0, 64 / 48])
    # 32x43 -> 8x10, 48x64 -> 12x16, 64x85 -> 16x21 maps (kernel 4, stride 4)
    assert shape.tolist() == [[4, 8, 10], [4, 12, 16], [4, 16, 21]]
    for level, (start, (c, h, w)) in enumerate(zip(offset, shape)):
        want = backbone(levels[level][None])[0].detach().numpy().astype(np.float16)
        np.testing.assert_array_equal(flat[start:start + c * h * w].reshape(c, h, w), want)


def test_maps_store_agrees_with_pooled_store_for_roi_align(tmp_path):
    dataset, proposals = make_dataset(tmp_path, n=2)
    backbone = FixedTrunk(relu=False)  # signed features: interpolation rounding of both signs
    pooled = open_cache(extract(tmp_path, dataset, proposals, "pooled", "align", backbone)).shards[0].features
    maps = open_cache(extract(tmp_path, dataset, proposals, "maps", "align", backbone)).shards[0].features
    for name, key in index_cases(len(pooled)).items():
        got, want = np.asarray(maps[key]).astype(np.float32), np.asarray(pooled[key]).astype(np.float32)
        assert got.shape == want.shape, name
        # maps rounded to float16 before the bilinear interpolation: a few float16 ulps
        np.testing.assert_allclose(got, want, rtol=4e-3, atol=4e-3, err_msg=name)


def test_single_level_pyramid(tmp_path):
    dataset, proposals = make_dataset(tmp_path, n=2)
    pooled = open_cache(extract(tmp_path, dataset, proposals, "pooled", scales=[48]))
    maps = open_cache(extract(tmp_path, dataset, proposals, "maps", scales=[48]))
    assert maps.num_pathways == 1 and maps.shards[0].features.shape == pooled.shards[0].features.shape
    np.testing.assert_array_equal(maps.shards[0].features[::-1], pooled.shards[0].features[::-1])


def test_maps_store_is_smaller_at_a_realistic_region_count(tmp_path):
    dataset, proposals = make_dataset(tmp_path, n=2, boxes_per_image=300)
    pooled = open_cache(extract(tmp_path, dataset, proposals, "pooled"))
    maps = open_cache(extract(tmp_path, dataset, proposals, "maps"))
    regions = pooled.num_regions
    assert regions == 2 * 2 * (2 + 300)  # images x flips x (ground truth + proposals)
    # pooled: regions x P x C x m x m float16; maps: per image 4 x (8x10 + 12x16 + 16x21) float16
    pooled_data = regions * 2 * 4 * 3 * 3 * 2
    maps_data = 4 * 4 * (80 + 192 + 336) * 2
    pooled_file = (pooled.path / "shard-00000-of-00001" / "features.npy").stat().st_size
    maps_file = (maps.path / "shard-00000-of-00001" / MAPS_FILE).stat().st_size
    assert pooled_file - pooled_data == maps_file - maps_data == 128  # the .npy header
    assert maps_data * 8 < pooled_data and maps.size_bytes() < pooled.size_bytes() / 2  # regions.npz is shared


def test_store_enters_the_cache_key(tmp_path):
    dataset, proposals = make_dataset(tmp_path, n=1)
    pooled, maps = (extract(tmp_path, dataset, proposals, s) for s in ("pooled", "maps"))
    assert pooled != maps and pooled.parent == maps.parent
    assert (pooled / "shard-00000-of-00001" / "features.npy").exists()
    assert not (pooled / "shard-00000-of-00001" / MAPS_FILE).exists()
    assert not (maps / "shard-00000-of-00001" / "features.npy").exists()


def test_truncated_or_overlong_maps_file_is_a_data_error(tmp_path):
    dataset, proposals = make_dataset(tmp_path, n=1)
    folder = extract(tmp_path, dataset, proposals, "maps")
    path = folder / "shard-00000-of-00001" / MAPS_FILE
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 2)
    with pytest.raises(DataError, match=r"shard-00000-of-00001.*truncated"):
        open_cache(folder)
    with open(path, "r+b") as f:
        f.truncate(size + 2)
    with pytest.raises(DataError, match=r"shard-00000-of-00001.*truncated"):
        open_cache(folder)
    with open(path, "r+b") as f:
        f.truncate(size)
    open_cache(folder)
    (path.parent / INDEX_FILE).unlink()
    with pytest.raises(DataError, match=r"shard-00000-of-00001.*index"):
        open_cache(folder)


def test_view_rejects_bad_keys(both_max):
    features = both_max[1].shards[0].features
    with pytest.raises(IndexError, match="out of bounds"):
        features[len(features)]
    with pytest.raises(IndexError, match="out of bounds"):
        features[np.array([0, -len(features) - 1])]
    with pytest.raises(TypeError):
        features[0, 1]
    with pytest.raises(TypeError):
        features[np.array([0.5])]


def _train(cache, tmp_path, out, spec, pathways):
    torch.manual_seed(0)
    head = NoCHead(spec, in_channels=4, roi_size=3)
    initial = {k: v.clone() for k, v in head.state_dict().items()}
    solver = SolverConfig(iterations=4, lr=0.01, lr_steps=[3], checkpoint_every=100, val_every=100, log_every=1)
    train_noc(head, cache, tmp_path / out, sampling=SamplingConfig(rois_per_image=16, bg_iou_lo=0.0),
              solver=solver, pathways=pathways, seed=1, progress=False)
    return initial, head.state_dict()


@pytest.mark.parametrize("spec,pathways", [("f16-f3", "random"), ("mo-f16-f3", "pair")])
def test_noc_trained_on_either_store_is_identical(both_max, tmp_path, spec, pathways):
    pooled, maps = both_max
    initial, a = _train(pooled, tmp_path, "pooled", spec, pathways)
    _, b = _train(maps, tmp_path, "maps", spec, pathways)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert all(not torch.equal(initial[name], a[name]) for name in a)  # every layer was trained


def test_config_cache_option(monkeypatch, tmp_path):
    assert load_config(ExperimentConfig).pyramid.cache == "pooled"
    with pytest.raises(ConfigError, match=r"pyramid.cache: 'disk' is not one of 'pooled', 'maps'"):
        load_config(ExperimentConfig, None, ["pyramid.cache=disk"])
    with pytest.raises(ConfigError, match="store"):
        ExtractionSettings(scales=[48], store="disk")
    seen = {}
    monkeypatch.setattr(frozen_pipeline, "proposals_for", lambda *args: {})
    monkeypatch.setattr(frozen_pipeline, "build_cache", lambda *args, **kw: seen.setdefault("settings", args[5]))
    monkeypatch.setattr(frozen_pipeline, "open_cache", lambda folder, *rest: folder)
    cfg = load_config(ExperimentConfig, None, ["pyramid.cache=maps", f"cache_dir={tmp_path}"])
    frozen_pipeline.extract(cfg, FixedTrunk(), None, "train", True, False)
    assert seen["settings"].store == "maps"
