"""The "maps" store computes an image's conv maps once, whatever the proposals."""
import shutil

import numpy as np
import pytest

from nocdet.features.map_store import MAPS_FILE
from nocdet.features.roi_cache import ExtractionSettings, build_cache, open_cache
from fakes import FixedTrunk
from test_map_store import SCALES, make_dataset, random_boxes

SHARD = "shard-00000-of-00001"


class CountingTrunk(FixedTrunk):
    """:class:`FixedTrunk` that counts its forward calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


def build(root, dataset, proposals, store, scales=SCALES):
    trunk = CountingTrunk()
    settings = ExtractionSettings(scales=scales, flip=True, target_area=12.0 * 12.0, store=store)
    folder = build_cache(root, dataset, proposals, trunk, "tiny", settings, progress=False)
    return folder, trunk.calls


def other_proposals(proposals):
    rng = np.random.default_rng(5)
    return {k: np.concatenate([v[:2] + 2, random_boxes(rng, 25)]) for k, v in proposals.items()}


def regions_and_features(folder):
    shard = open_cache(folder).shards[0]
    names = ("boxes", "image", "levels", "best", "is_gt", "overlap", "label", "target", "offsets")
    return {n: getattr(shard, n) for n in names}, np.asarray(shard.features[:])


def test_new_proposals_reuse_the_maps_and_match_a_fresh_build(tmp_path):
    dataset, proposals = make_dataset(tmp_path)
    second = other_proposals(proposals)
    first_folder, first_calls = build(tmp_path / "cache", dataset, proposals, "maps")
    assert first_calls == 3 * 2 * len(SCALES)  # three images and their flips, every level
    folder, calls = build(tmp_path / "cache", dataset, second, "maps")
    assert folder != first_folder and calls == 0  # region tables only
    fresh, fresh_calls = build(tmp_path / "fresh", dataset, second, "maps")
    assert fresh_calls == first_calls and fresh.name == folder.name
    (got_regions, got), (want_regions, want) = regions_and_features(folder), regions_and_features(fresh)
    for name, value in want_regions.items():
        np.testing.assert_array_equal(got_regions[name], value, err_msg=name)
    assert np.array_equal(got, want) and np.any(want != 0)
    first_regions, _ = regions_and_features(first_folder)
    assert len(first_regions["boxes"]) != len(got_regions["boxes"])  # the regions did change
    assert (folder / SHARD / MAPS_FILE).samefile(first_folder / SHARD / MAPS_FILE)  # one copy on disk
    shutil.rmtree(first_folder)  # removing the first cache leaves the second whole
    assert np.array_equal(regions_and_features(folder)[1], want)


@pytest.mark.parametrize("change", ["pooled store", "other scales"])
def test_the_maps_are_recomputed_when_they_differ(tmp_path, change):
    dataset, proposals = make_dataset(tmp_path)
    store, scales = ("pooled", SCALES) if change == "pooled store" else ("maps", SCALES[:2])
    build(tmp_path / "cache", dataset, proposals, store)
    _, calls = build(tmp_path / "cache", dataset, other_proposals(proposals), store, scales)
    assert calls == 3 * 2 * len(scales)
