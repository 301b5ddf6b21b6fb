"""The RoI feature cache's size, said before it is built, and ``nocdet cache ls`` / ``clean`` on a tiny cache."""
import logging
import os
import time

import numpy as np
import pytest
from PIL import Image

from nocdet.caches import format_bytes, list_entries
from nocdet.cli import main
from nocdet.data.sample import DetectionDataset, Sample
from nocdet.features.map_store import map_bytes
from nocdet.features.roi_cache import ExtractionSettings, build_cache, estimate_bytes, open_cache
from nocdet.proposals.selective_search import ProposalCache
from fakes import FixedTrunk

# 48 x 64 images; shorter sides 24, 48, 72 make every level a multiple of the trunk's stride 4
# (the fake trunk floors where EfficientNet's SAME padding rounds up: here both give the same map)
SCALES = [24, 48, 72]
PROPOSALS_PER_IMAGE = 10
DAY = 86400


def make_dataset(folder, n=2):
    rng = np.random.default_rng(0)
    samples, proposals = [], {}
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        gt = np.array([[4, 4, 20, 24], [30, 10, 60, 40], [2, 2, 9, 9]], np.float32)
        samples.append(Sample(str(i), path, 64, 48, gt, [1, 2, 1], [False, False, True]))  # one difficult
        x1 = rng.uniform(0, 40, PROPOSALS_PER_IMAGE)
        y1 = rng.uniform(0, 30, PROPOSALS_PER_IMAGE)
        proposals[str(i)] = np.stack([x1, y1, x1 + 20, y1 + 15], 1).astype(np.float32)
    return DetectionDataset(["a", "b"], samples, "toy/train"), proposals


def settings_for(store):
    return ExtractionSettings(scales=SCALES, flip=True, target_area=12.0 * 12.0, store=store)


def build(root, dataset, proposals, store):
    return build_cache(root / "roi_features", dataset, proposals, FixedTrunk(), "tiny", settings_for(store),
                       progress=False)


def regions_payload(shard_dir):
    with np.load(shard_dir / "regions.npz") as z:
        return sum(z[k].nbytes for k in z.files if k != "offsets"), len(z["boxes"])


def test_format_bytes():
    assert [format_bytes(v) for v in (0, 999, 1000, 1_450_000, 2_600_000_000, 5e15)] == \
        ["0 B", "999 B", "1.0 kB", "1.4 MB", "2.6 GB", "5000.0 TB"]


def test_map_bytes_by_hand():
    # levels 24x32, 48x64, 72x96 at stride 4: 6x8 + 12x16 + 18x24 = 672 cells x 4 channels x 2 bytes
    assert map_bytes(64, 48, [0.5, 1.0, 1.5], 4, 4) == 672 * 4 * 2
    # 50 / 16 and 70 / 16 round up to 4 and 5 cells
    assert map_bytes(70, 50, [1.0], 16, 112) == 4 * 5 * 112 * 2


@pytest.mark.parametrize("store", ["pooled", "maps"])
def test_estimate_equals_what_the_build_writes(tmp_path, store):
    dataset, proposals = make_dataset(tmp_path)
    images, size = estimate_bytes(dataset, proposals, settings_for(store), channels=4, stride=4, roi_size=3)
    shard = build(tmp_path / "cache", dataset, proposals, store) / "shard-00000-of-00001"
    assert images == 4  # 2 images, flipped too
    region_bytes, regions = regions_payload(shard)
    assert regions == 4 * (PROPOSALS_PER_IMAGE + 2)  # proposals + the non-difficult GT, twice
    if store == "pooled":
        features = regions * 2 * 4 * 3 * 3 * 2  # two pathways of 4 x 3 x 3 float16
        assert (shard / "features.npy").stat().st_size - 128 == features  # the .npy header is 128 bytes
    else:
        features = 4 * 672 * 4 * 2  # test_map_bytes_by_hand, for 4 images
        assert (shard / "maps.npy").stat().st_size - 128 == features
    assert size == features + region_bytes


def test_build_says_the_size_before_building_and_not_when_reusing(tmp_path, caplog):
    dataset, proposals = make_dataset(tmp_path)
    _, size = estimate_bytes(dataset, proposals, settings_for("maps"), channels=4, stride=4, roi_size=3)
    with caplog.at_level(logging.INFO, logger="nocdet.features.roi_cache"):
        folder = build(tmp_path / "cache", dataset, proposals, "maps")
    said = [r.getMessage() for r in caplog.records if "RoI feature cache" in r.getMessage()]
    assert said == [f"building the RoI feature cache of toy/train: 4 images x {format_bytes(size / 4)} (maps store) "
                    f"= about {format_bytes(size)} in {folder}"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nocdet.features.roi_cache"):
        build(tmp_path / "cache", dataset, proposals, "maps")
    assert not [r for r in caplog.records if "RoI feature cache" in r.getMessage()]


@pytest.fixture
def root(tmp_path):
    """A cache root with a maps and a pooled RoI feature cache and a proposal cache of 2 images."""
    dataset, proposals = make_dataset(tmp_path)
    root = tmp_path / "cache"
    build(root, dataset, proposals, "maps")
    build(root, dataset, proposals, "pooled")
    proposal_cache = ProposalCache(root / "proposals", {"color_spaces": ["hsv"], "min_size": 8})
    for i, boxes in enumerate(proposals.values()):
        proposal_cache.store(f"blake2b:{i:064x}", boxes)
    (root / "notes").mkdir()  # not a cache: never listed nor removed
    (root / "notes" / "keep.txt").write_text("mine")
    return root


def age(entry_path, days):
    then = time.time() - days * DAY
    for path in [entry_path, *entry_path.rglob("*")]:
        os.utime(path, (then, then))


def folder_size(path):
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_ls_lists_each_entry_with_what_it_is_its_size_and_last_use(root, capsys):
    entries = list_entries(root)
    assert [e.kind for e in entries] == ["roi-features", "roi-features", "proposals"]
    by_store = {("maps" if "maps store" in e.description else "pooled"): e for e in entries[:2]}
    assert by_store["maps"].description == "tiny scales 24,48,72 maps store toy/train"
    assert by_store["pooled"].description == "tiny scales 24,48,72 pooled store toy/train"
    assert entries[2].description == "selective search color_spaces hsv ks 50,100 min_size 8 max_side none, 2 images"
    for entry in entries:
        assert entry.complete and entry.size == folder_size(entry.path)
    assert main(["cache", "ls", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"{root}: 3 entries, {format_bytes(sum(folder_size(e.path) for e in entries))}" in out
    for entry in entries:
        assert entry.key in out and entry.description in out and format_bytes(entry.size) in out
    assert "notes" not in out


def test_opening_a_cache_marks_it_used(root):
    entry = list_entries(root)[0]
    age(entry.path, 30)
    assert list_entries(root)[0].last_used < time.time() - 29 * DAY
    open_cache(entry.path)
    assert list_entries(root)[0].last_used > time.time() - 60


def test_an_unfinished_cache_is_listed_as_incomplete(root):
    entry = list_entries(root)[0]
    for done in entry.path.glob("*.done.json"):
        done.unlink()
    assert not list_entries(root)[0].complete


def test_clean_dry_run_removes_nothing(root, capsys):
    before = list_entries(root)
    assert main(["cache", "clean", "--root", str(root), "--all", "--dry-run"]) == 0
    assert list_entries(root) == before
    out = capsys.readouterr().out
    assert f"would remove 3 of 3 entries, {format_bytes(sum(e.size for e in before))}" in out


def test_clean_by_key_and_by_prefix(root):
    first, second, proposals = list_entries(root)
    assert main(["cache", "clean", "--root", str(root), first.key]) == 0
    assert not first.path.exists() and second.path.exists() and proposals.path.exists()
    assert main(["cache", "clean", "--root", str(root), "selective_search-"]) == 0
    assert [e.key for e in list_entries(root)] == [second.key]


def test_clean_older_than_keeps_recent_entries(root):
    first, second, proposals = list_entries(root)
    age(first.path, 20)
    age(proposals.path, 5)
    assert main(["cache", "clean", "--root", str(root), "--older-than", "10"]) == 0
    assert [e.key for e in list_entries(root)] == [second.key, proposals.key]
    assert main(["cache", "clean", "--root", str(root), "--older-than", "1", second.key]) == 0  # recent: kept
    assert [e.key for e in list_entries(root)] == [second.key, proposals.key]


def test_clean_all_removes_only_caches(root):
    assert main(["cache", "clean", "--root", str(root), "--all"]) == 0
    assert list_entries(root) == []
    assert (root / "notes" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("args, message", [
    ([], "say what to remove"),
    (["--all", "abc"], "not both"),
    (["0123456789abcdefffff"], "no cache entry '0123456789abcdefffff'"),
    (["--older-than", "-1"], "--older-than must be >= 0"),
])
def test_clean_refuses_unclear_requests(root, capsys, args, message):
    before = list_entries(root)
    assert main(["cache", "clean", "--root", str(root), *args]) == 2
    assert message in capsys.readouterr().err
    assert list_entries(root) == before


def test_clean_refuses_an_ambiguous_prefix(root, capsys):
    keys = [e.key for e in list_entries(root)[:2]]
    common = os.path.commonprefix(keys)  # "" when they differ at once: then every entry matches
    assert main(["cache", "clean", "--root", str(root), common]) == 2
    assert "starts several keys" in capsys.readouterr().err
