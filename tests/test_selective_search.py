"""Selective Search wrapper, its per-image cache and the ``nocdet proposals compute`` command."""
from __future__ import annotations

import argparse
import logging
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nocdet.proposals.selective_search as ss
from nocdet.commands import proposals as command
from nocdet.data.sample import DetectionDataset, Sample
from nocdet.data.voc import write_voc_annotation, write_voc_split
from nocdet.errors import ConfigError, DataError
from nocdet.proposals.files import load_proposals
from nocdet.proposals.selective_search import (ProposalCache, compute_proposals, resolve_settings,
                                               selective_search)

RED = (10, 20, 70, 60)    # columns 10..69, rows 20..59 -> internal (x1, y1, x2, y2)
BLUE = (90, 50, 150, 110)


def two_rectangles(height: int = 120, width: int = 160, shift: int = 0) -> np.ndarray:
    """Flat grey background, a red and a blue rectangle (internal coordinates RED, BLUE)."""
    image = np.full((height, width, 3), 200, np.uint8)
    x1, y1, x2, y2 = RED
    image[y1:y2, x1 + shift:x2 + shift] = (220, 30, 30)
    x1, y1, x2, y2 = BLUE
    image[y1:y2, x1:x2] = (30, 30, 220)
    return image


def iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes, by hand."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ------------------------------------------------------------------------------ one image

def test_finds_both_rectangles_and_uses_exclusive_right_edge():
    boxes = selective_search(two_rectangles(), min_size=10)
    assert boxes.dtype == np.float32 and boxes.shape[1] == 4
    for target in (RED, BLUE):
        assert max(iou(b, target) for b in boxes) > 0.7
    # the red rectangle covers columns 10..69: x2 = x + w = 70, not 69
    assert any(np.array_equal(b, RED) for b in boxes)


def test_min_size_max_boxes_and_no_duplicates():
    image = two_rectangles()
    image[5:15, 130:140] = (0, 160, 0)  # a 10 x 10 green square: only kept with min_size <= 10
    small = selective_search(image, min_size=8, max_boxes=None)
    assert any(iou(b, (130, 5, 140, 15)) > 0.7 for b in small)
    for min_size in (8, 30):
        boxes = selective_search(image, min_size=min_size, max_boxes=None)
        assert ((boxes[:, 2] - boxes[:, 0]) >= min_size).all()
        assert ((boxes[:, 3] - boxes[:, 1]) >= min_size).all()
        assert len({tuple(b) for b in boxes.tolist()}) == len(boxes)
    large = selective_search(image, min_size=30, max_boxes=None)
    assert not any(iou(b, (130, 5, 140, 15)) > 0.7 for b in large)
    capped = selective_search(image, min_size=8, max_boxes=5)
    assert len(small) > 5
    np.testing.assert_array_equal(capped, small[:5])  # the cut keeps the ranking order


def test_ranking_is_reproducible_and_seeded():
    image = two_rectangles()
    first = selective_search(image, min_size=5, max_boxes=None)
    selective_search(np.ascontiguousarray(image[::-1]), min_size=5)  # other work in between
    np.testing.assert_array_equal(selective_search(image, min_size=5, max_boxes=None), first)
    other_seed = selective_search(image, min_size=5, max_boxes=None, seed=7)
    assert {tuple(b) for b in other_seed.tolist()} == {tuple(b) for b in first.tolist()}


def test_max_side_scales_boxes_back_to_the_original_image():
    image = np.repeat(np.repeat(two_rectangles(), 2, axis=0), 2, axis=1)  # 240 x 320
    boxes = selective_search(image, min_size=10, max_side=160)
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 320).all() and (boxes[:, [1, 3]] <= 240).all()
    for target in (RED, BLUE):
        doubled = tuple(2 * v for v in target)
        assert max(iou(b, doubled) for b in boxes) > 0.9


def test_rejects_images_that_are_not_rgb_uint8():
    with pytest.raises(ValueError, match="RGB"):
        selective_search(np.zeros((50, 50), np.uint8))
    with pytest.raises(ValueError, match="RGB"):
        selective_search(np.zeros((50, 50, 3), np.float32))


def test_settings_validation():
    assert resolve_settings(None)["ks"] == [50.0, 100.0]
    assert resolve_settings({"min_size": 8})["min_size"] == 8
    for bad in ({"min_sise": 8}, {"min_size": -1}, {"max_boxes": 0}, {"ks": []}, {"ks": 50},
                {"color_spaces": ["xyz"]}, {"color_spaces": "hsv"}, {"sigma": 0},
                {"max_side": 2.5}, {"min_size": True}):
        with pytest.raises(ConfigError):
            resolve_settings(bad)


# ------------------------------------------------------------------------------ cache

def make_dataset(folder: Path, count: int = 3) -> DetectionDataset:
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for k in range(count):
        path = folder / f"im{k}.png"
        Image.fromarray(two_rectangles(shift=5 * k)).save(path)
        samples.append(Sample(f"im{k}", path, 160, 120))
    return DetectionDataset(["thing"], samples, "tiny")


@pytest.fixture
def counted(monkeypatch):
    """Count the Selective Search runs of the in-process (workers=0) path."""
    calls = []
    real = ss.selective_search

    def counting(image, **kwargs):
        calls.append(image.shape)
        return real(image, **kwargs)

    monkeypatch.setattr(ss, "selective_search", counting)
    return calls


SETTINGS = {"min_size": 10, "max_boxes": None}


def test_second_call_reads_the_cache(tmp_path, counted):
    data = make_dataset(tmp_path / "img")
    first = compute_proposals(data, tmp_path / "cache", SETTINGS, workers=0, progress=False)
    assert len(counted) == 3 and list(first) == ["im0", "im1", "im2"]
    again = compute_proposals(data, tmp_path / "cache", SETTINGS, workers=0, progress=False)
    assert len(counted) == 3
    for image_id in first:
        np.testing.assert_array_equal(again[image_id], first[image_id])
    capped = compute_proposals(data, tmp_path / "cache", {**SETTINGS, "max_boxes": 4}, workers=0,
                               progress=False)
    assert len(counted) == 3  # the cut is applied on read: same cache folder
    for image_id in first:
        np.testing.assert_array_equal(capped[image_id], first[image_id][:4])


def test_changed_settings_use_another_folder(tmp_path, counted):
    data = make_dataset(tmp_path / "img", count=1)
    compute_proposals(data, tmp_path / "cache", SETTINGS, workers=0, progress=False)
    compute_proposals(data, tmp_path / "cache", {**SETTINGS, "min_size": 12}, workers=0, progress=False)
    assert len(counted) == 2
    folder = ProposalCache(tmp_path, SETTINGS).folder
    assert folder != ProposalCache(tmp_path, {**SETTINGS, "min_size": 12}).folder
    assert folder != ProposalCache(tmp_path, {**SETTINGS, "ks": [50]}).folder
    assert folder == ProposalCache(tmp_path, {**SETTINGS, "max_boxes": 9}).folder
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_changed_image_is_recomputed(tmp_path, counted):
    data = make_dataset(tmp_path / "img")
    before = compute_proposals(data, tmp_path / "cache", SETTINGS, workers=0, progress=False)
    image = two_rectangles()
    image[:, :, 1] = 0  # different bytes, different picture
    image[80:115, 10:50] = (0, 250, 0)
    Image.fromarray(image).save(data.samples[1].path)
    after = compute_proposals(data, tmp_path / "cache", SETTINGS, workers=0, progress=False)
    assert len(counted) == 4  # only im1 again
    assert max(iou(b, (10, 80, 50, 115)) for b in after["im1"]) > 0.7
    assert not any(iou(b, (10, 80, 50, 115)) > 0.7 for b in before["im1"])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_shape", "other_image"])
def test_corrupt_cache_file_is_recomputed(tmp_path, counted, damage):
    data = make_dataset(tmp_path / "img", count=2)
    first = compute_proposals(data, tmp_path / "cache", SETTINGS, workers=0, progress=False)
    cache = ProposalCache(tmp_path / "cache", SETTINGS)
    fingerprint = ss.image_fingerprint(data.samples[0].path)
    target = cache.file_for(fingerprint)
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "garbage":
        target.write_bytes(b"not a cache file")
    elif damage == "wrong_shape":
        np.savez(target, boxes=np.zeros((3, 5), np.float32), fingerprint=np.array(fingerprint))
    else:
        target.write_bytes(cache.file_for(ss.image_fingerprint(data.samples[1].path)).read_bytes())
    again = compute_proposals(data, tmp_path / "cache", SETTINGS, workers=0, progress=False)
    assert len(counted) == 3
    np.testing.assert_array_equal(again["im0"], first["im0"])
    np.testing.assert_array_equal(cache.load(fingerprint), first["im0"])  # repaired


def test_splits_sharing_image_ids_do_not_evict_each_other(tmp_path, counted, caplog):
    """Two COCO files numbering their images alike: the cache is keyed by content, not id."""
    train = make_dataset(tmp_path / "train", count=2)
    test = make_dataset(tmp_path / "test", count=2)
    for sample in test.samples:  # same ids im0, im1; other pictures
        image = two_rectangles()
        image[:, :, 2] = 255 - image[:, :, 2]
        Image.fromarray(image[:, ::-1].copy()).save(sample.path)
    caplog.set_level(logging.INFO, logger=ss.__name__)
    runs = [compute_proposals(data, tmp_path / "cache", SETTINGS, workers=0, progress=False)
            for data in (train, test, train, test)]
    assert len(counted) == 4  # each image once: the second round reads the cache
    assert caplog.records == []  # no "changed since cached" or "recomputing" message
    for first, again in ((runs[0], runs[2]), (runs[1], runs[3])):
        for image_id in first:
            np.testing.assert_array_equal(again[image_id], first[image_id])


def test_cache_files_are_named_by_content(tmp_path):
    cache = ProposalCache(tmp_path, SETTINGS)
    digest = "0123456789abcdef0123456789abcdef"
    assert cache.file_for(f"blake2b:{digest}") == cache.folder / f"{digest}.npz"
    with pytest.raises(ValueError):
        cache.file_for("blake2b:../x")


def test_workers_give_the_same_boxes_as_inline(tmp_path):
    data = make_dataset(tmp_path / "img", count=3)
    inline = compute_proposals(data, None, SETTINGS, workers=0, progress=False)
    pooled = compute_proposals(data, tmp_path / "cache", SETTINGS, workers=2, progress=False)
    assert list(pooled) == list(inline)
    for image_id in inline:
        np.testing.assert_array_equal(pooled[image_id], inline[image_id])


def _fill_cache(images: str, cache: str) -> None:
    data = DetectionDataset(["thing"], [Sample(f"im{k}", Path(images) / f"im{k}.png", 160, 120)
                                        for k in range(3)])
    compute_proposals(data, cache, SETTINGS, workers=0, progress=False)


def test_two_processes_filling_one_cache_agree(tmp_path):
    data = make_dataset(tmp_path / "img", count=3)
    context = multiprocessing.get_context("spawn")
    args = (str(tmp_path / "img"), str(tmp_path / "cache"))
    procs = [context.Process(target=_fill_cache, args=args) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = ProposalCache(tmp_path / "cache", SETTINGS)
    expected = compute_proposals(data, None, SETTINGS, workers=0, progress=False)
    for sample in data.samples:
        cached = cache.load(ss.image_fingerprint(sample.path))
        np.testing.assert_array_equal(cached, expected[sample.image_id])
    assert not [p for p in cache.folder.iterdir() if p.name.endswith(".tmp")]


def test_failures_are_collected_and_the_rest_is_cached(tmp_path, counted):
    data = make_dataset(tmp_path / "img", count=2)
    broken = tmp_path / "img" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    data.samples += [Sample("gone", tmp_path / "img" / "gone.png", 10, 10), Sample("broken", broken, 10, 10)]
    with pytest.raises(DataError) as info:
        compute_proposals(data, tmp_path / "cache", SETTINGS, workers=0, progress=False)
    message = str(info.value)
    assert "2 of 4 images" in message and "gone.png" in message and "broken.png" in message
    assert len(counted) == 2
    good = DetectionDataset(["thing"], data.samples[:2])
    compute_proposals(good, tmp_path / "cache", SETTINGS, workers=0, progress=False)
    assert len(counted) == 2


def test_one_id_for_two_files_is_an_error(tmp_path):
    data = make_dataset(tmp_path / "img", count=2)
    data.samples[1].image_id = "im0"
    with pytest.raises(DataError, match="two files"):
        compute_proposals(data, None, SETTINGS, workers=0, progress=False)


# ------------------------------------------------------------------------------ command

def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def test_compute_command_writes_proposals_and_reports_recall(tmp_path, capsys):
    root = tmp_path / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    ids = ["000001", "000002"]
    for image_id in ids:
        path = root / "JPEGImages" / f"{image_id}.png"
        Image.fromarray(two_rectangles()).save(path)
        sample = Sample(image_id, path, 160, 120, np.array([RED, BLUE], np.float32), [1, 2], [False, False])
        write_voc_annotation(root / "Annotations" / f"{image_id}.xml", sample, ["cat", "dog"])
    write_voc_split(root, "trainval", ids)
    out = tmp_path / "props.npz"
    args = parse([
        "compute", "--voc-root", str(root), "--split", "trainval", "--cache",
        str(tmp_path / "cache"), "--workers", "0", "--min-size", "10", "--out", str(out), "--recall"])
    assert command.run(args) == 0
    printed = capsys.readouterr().out
    assert "2 images" in printed and "recall over 4 objects" in printed
    overall = [line.split()[-2:] for line in printed.splitlines() if line.startswith("all")]
    assert overall == [["1.000", "1.000"]]
    loaded = load_proposals(out)
    assert sorted(loaded) == ids and all(len(b) > 0 for b in loaded.values())

    with pytest.raises(ConfigError, match="contradict"):
        command.run(parse([
            "compute", "--voc-root", str(root), "--split", "trainval", "--no-cache",
            "--cache", str(tmp_path)]))
