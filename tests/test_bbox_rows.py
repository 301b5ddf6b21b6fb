"""Box regression reads only the rows it uses: the examples and the norm sample of each image."""
import numpy as np
import pytest
import torch

import nocdet.training.post_hoc as post_hoc
from nocdet.errors import DataError
from nocdet.features.roi_cache import open_cache
from nocdet.training.bbox_regression import BoxRegressionConfig, RegionsOnDemand, train_box_regressor
from nocdet.training.roi_sampler import gather_inputs
from nocdet.training.svm import RegionFeatures
from test_map_store import extract, make_dataset

# IoU 0.5 keeps some random boxes besides the shifted ground truth; 10 of 42 rows for the norm
CONFIG = BoxRegressionConfig(min_iou=0.5, norm_boxes_per_image=10)


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bbox-rows")
    dataset, proposals = make_dataset(tmp)
    return {store: open_cache(extract(tmp / store, dataset, proposals, store)) for store in ("pooled", "maps")}


@pytest.mark.parametrize("store", ["pooled", "maps"])
def test_regressor_on_demand_equals_the_one_fitted_on_every_row(caches, monkeypatch, store):
    cache = caches[store]
    # the features as read before: every row, both levels of a pair pooled, the best one kept
    every_row = post_hoc._records(cache, lambda shard, rows: gather_inputs(shard, rows, "best", None)[0].flatten(1),
                                  CONFIG.use_flipped)
    want = train_box_regressor(every_row, 2, CONFIG, progress=False)
    read, pool = [], post_hoc.pooled_features

    def counting(shard, rows):
        read.append(len(rows))
        return pool(shard, rows)

    monkeypatch.setattr(post_hoc, "pooled_features", counting)
    got = post_hoc.fit_box_regressor(cache, 2, CONFIG, progress=False)
    assert want.weight.abs().sum() > 0  # both classes have examples: a real fit
    for (name, a), (_, b) in zip(want.state_dict().items(), got.state_dict().items()):
        assert torch.equal(a, b), name
    # six images (three and their flips), each read once, fewer rows than its 42 regions
    assert len(read) == 6 and all(10 <= n < 42 for n in read)
    assert sum(read) < cache.num_regions


def test_maps_view_pools_one_chosen_level_like_the_full_pair(caches):
    shard = caches["maps"].shards[0]
    rows = np.array([7, 3, 3, -1, 40, 12, 90])
    slots = np.array([1, 0, 1, 0, 1, 1, 0])
    got = shard.features.at_slots(rows, slots)
    want = np.asarray(shard.features[rows])[np.arange(len(rows)), slots]
    assert got.dtype == np.float16 and got.shape == want.shape and np.array_equal(got, want)
    assert not np.array_equal(got[1], got[2])  # row 3's two levels differ: the slot is honoured
    with pytest.raises(IndexError):
        shard.features.at_slots(np.array([len(shard.boxes)]), np.array([0]))


def test_eager_and_on_demand_records_give_the_same_regressor():
    rng = np.random.default_rng(3)
    eager, lazy, asked = [], [], []
    for i in range(4):
        gt = torch.tensor([[10.0, 10.0, 40.0, 50.0]])
        boxes = torch.cat([gt + torch.tensor([2.0, -1.0, 3.0, 1.0]), torch.from_numpy(
            np.tile(rng.uniform(0, 60, (30, 2)), (1, 2)).astype(np.float32)) + torch.tensor([0.0, 0.0, 20.0, 30.0])])
        features = torch.from_numpy(rng.normal(size=(len(boxes), 3, 2, 2)).astype(np.float32))
        record = RegionFeatures(str(i), features, boxes, gt, [1], [False])
        eager.append(record)

        def features_of(rows, features=features):
            asked.append(rows.tolist())
            return features[rows]

        lazy.append(RegionsOnDemand(RegionFeatures(str(i), torch.zeros(len(boxes), 0), boxes, gt, [1], [False]),
                                    features_of))
    config = BoxRegressionConfig(min_iou=0.5, norm_boxes_per_image=5)
    want = train_box_regressor(eager, 1, config, progress=False)
    got = train_box_regressor(lazy, 1, config, progress=False)
    for (name, a), (_, b) in zip(want.state_dict().items(), got.state_dict().items()):
        assert torch.equal(a, b), name
    assert all(rows == sorted(set(rows)) and 5 <= len(rows) < 31 for rows in asked)


@pytest.mark.parametrize("bad,message", [
    (lambda rows: torch.full((len(rows), 4), float("nan")), "NaN"),
    (lambda rows: torch.zeros(len(rows) + 1, 4), "must be"),
    (lambda rows: torch.zeros(len(rows)), "must be"),
])
def test_bad_features_on_demand_name_the_record(bad, message):
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    regions = RegionFeatures("img7", torch.zeros(3, 0), gt.repeat(3, 1), gt, [1], [False])
    with pytest.raises(DataError, match=message) as error:
        train_box_regressor([RegionsOnDemand(regions, bad)], 1, progress=False)
    assert "img7" in str(error.value)
