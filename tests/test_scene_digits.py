"""scene-digits: determinism, disjoint train/test content, statistics, VOC/COCO round trip, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from nocdet.data.coco import read_coco
from nocdet.data.scene_digits import (
    CLASSES, SIMILARITY_GROUPS, SceneDigitsConfig, generate_scene_digits, read_records, render_scene,
    visible_masks,
)
from nocdet.data.scene_digits_sources import (
    TEST_PHOTOS, TRAIN_PHOTOS, digit_alpha, digit_instance_split, load_photo, mnist_digits,
)
from nocdet.data.voc import read_voc
from nocdet.errors import ConfigError, DataError

SPLITS = ("train", "val", "trainval", "test")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """12 train-side images (one of them, 000008, in val) and 6 test images, seed 0."""
    return generate_scene_digits(tmp_path_factory.mktemp("sd") / "a", num_train=12, num_test=6, seed=0,
                                 progress=False)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------- determinism

def test_same_seed_gives_the_same_bytes_in_any_number_of_processes(small, tmp_path):
    again = generate_scene_digits(tmp_path / "b", num_train=12, num_test=6, seed=0, progress=False, workers=2)
    first, second = tree(small), tree(again)
    assert sorted(first) == sorted(second)
    assert len([name for name in first if name.startswith("JPEGImages/")]) == 18
    for name in first:
        assert first[name] == second[name], name


def test_another_seed_gives_other_images(small, tmp_path):
    other = generate_scene_digits(tmp_path / "c", num_train=12, num_test=6, seed=1, progress=False)
    for path in sorted((small / "JPEGImages").glob("*.jpg")):
        assert path.read_bytes() != (other / "JPEGImages" / path.name).read_bytes(), path.name


# ------------------------------------------------------------------------- disjointness

def test_digit_instances_are_partitioned_per_class():
    split = digit_instance_split()
    _, labels = mnist_digits()
    assert [len(split[s]) for s in ("train", "val", "test")] == [3400, 600, 1000]
    assert not set(split["train"]) & set(split["test"])
    assert not set(split["val"]) & set(split["test"])
    assert not set(split["train"]) & set(split["val"])
    for name, per_class in (("train", 340), ("val", 60), ("test", 100)):
        assert np.bincount(labels[split[name]], minlength=10).tolist() == [per_class] * 10


def test_test_images_use_only_test_digits_and_test_photos(small):
    _, labels = mnist_digits()
    pools = {name: set(ids.tolist()) for name, ids in digit_instance_split().items()}
    records = read_records(small)
    used = {"train": set(), "val": set(), "test": set()}
    for record in records:
        assert record.photo in (TEST_PHOTOS if record.split == "test" else TRAIN_PHOTOS)
        for obj in record.objects:
            assert obj.mnist_index in pools[record.split]
            assert CLASSES[obj.label - 1] == str(labels[obj.mnist_index])  # the label is MNIST's
            used[record.split].add(obj.mnist_index)
    assert used["test"] and used["train"] and used["val"]
    assert not used["test"] & (used["train"] | used["val"])


def test_train_and_test_photos_are_different_pictures():
    assert not set(TRAIN_PHOTOS) & set(TEST_PHOTOS)
    for a in TRAIN_PHOTOS:
        for b in TEST_PHOTOS:
            pa, pb = load_photo(a)[0], load_photo(b)[0]
            assert pa.shape != pb.shape or not np.array_equal(pa, pb), (a, b)


# ------------------------------------------------------------------------- statistics

@pytest.fixture(scope="module")
def rendered() -> list:
    config = SceneDigitsConfig()
    return [render_scene(config, "trainval", i) for i in range(1, 121)] + \
           [render_scene(config, "test", i) for i in range(1, 41)]


def test_objects_per_image_scale_span_and_classes(rendered):
    counts = [len(record.objects) for _, record in rendered]
    assert min(counts) >= 1 and max(counts) <= 6 and len(set(counts)) >= 5
    heights = [o.box[3] - o.box[1] for _, r in rendered for o in r.objects if o.visible_fraction == 1.0]
    assert max(heights) / min(heights) >= 8
    assert min(heights) < 20 and max(heights) > 130
    for split in ("train", "test"):
        labels = {o.label for _, r in rendered for o in r.objects if r.split == split}
        assert labels == set(range(1, 11)), split


def test_images_boxes_and_difficult_flags_follow_the_rules(rendered):
    config = SceneDigitsConfig()
    occluded = difficult = total = 0
    for image, record in rendered:
        assert image.shape == (record.height, record.width, 3) and image.dtype == np.uint8
        assert max(record.width, record.height) == 320
        assert 0.6 - 0.01 <= record.width / record.height <= 1.6 + 0.01
        for obj in record.objects:
            x1, y1, x2, y2 = obj.box
            assert all(isinstance(v, int) for v in obj.box)
            assert 0 <= x1 < x2 <= record.width and 0 <= y1 < y2 <= record.height
            assert 0.25 <= obj.visible_fraction <= 1.0
            if obj.visible_fraction == 1.0:  # nothing hides it: its box is its whole ink
                assert y2 - y1 == obj.ink_height
                assert obj.difficult == (y2 - y1 < 20)
            else:
                assert y2 - y1 <= obj.ink_height
                assert obj.difficult == (obj.ink_height < 20 or obj.visible_fraction < 0.5)
                occluded += 1
            difficult += obj.difficult
            total += 1
    assert occluded >= 0.05 * total  # overlaps and occluders happen
    assert 0.03 * total <= difficult <= 0.3 * total
    assert config.tiny_height == 20 and config.min_visible == 0.5


def test_visible_masks_by_hand():
    a = np.array([[1, 1, 1, 1]], bool)
    b = np.array([[0, 1, 1, 0]], bool)
    c = np.array([[0, 0, 1, 1]], bool)
    va, vb, vc = visible_masks([a, b, c])  # painted a, then b, then c on top
    assert va.tolist() == [[True, False, False, False]]
    assert vb.tolist() == [[False, True, False, False]]
    assert vc.tolist() == c.tolist()


@pytest.mark.parametrize("height", [16.0, 40.0, 160.0])
def test_digit_alpha_ink_is_as_tall_as_asked(height):
    digits, _ = mnist_digits()
    for index in (0, 1234, 4999):
        ink = digit_alpha(digits[index], height, aspect=1.0, angle=0.0, weight=0.2) >= 0.5
        rows = np.flatnonzero(ink.any(axis=1))
        assert abs((rows[-1] - rows[0] + 1) - height) <= max(2.0, 0.06 * height)


# ------------------------------------------------------------------------- files and readers

def test_voc_and_coco_read_back_equal_the_records(small):
    records = read_records(small)
    by_split = {split: [r for r in records if r.split == split] for split in ("train", "val", "test")}
    by_split["trainval"] = [r for r in records if r.split != "test"]
    assert [r.image_id for r in by_split["val"]] == ["000008"]
    assert [r.image_id for r in by_split["test"]] == [f"{500000 + i:06d}" for i in range(1, 7)]
    for split in SPLITS:
        voc = read_voc(small, split, classes=CLASSES)
        coco = read_coco(small / "annotations" / f"instances_{split}.json", small / "JPEGImages")
        assert voc.similarity_groups == SIMILARITY_GROUPS
        assert coco.classes == CLASSES
        assert [s.image_id for s in voc.samples] == [r.image_id for r in by_split[split]]
        assert [s.image_id for s in coco.samples] == [str(int(r.image_id)) for r in by_split[split]]
        for record, from_voc, from_coco in zip(by_split[split], voc.samples, coco.samples):
            boxes = np.array([o.box for o in record.objects], np.float32).reshape(-1, 4)
            labels = [o.label for o in record.objects]
            difficult = [o.difficult for o in record.objects]
            with Image.open(from_voc.path) as image:
                assert image.size == (record.width, record.height)
            for sample in (from_voc, from_coco):
                assert (sample.width, sample.height) == (record.width, record.height)
                np.testing.assert_array_equal(sample.boxes, boxes)
                assert sample.labels.tolist() == labels
                assert sample.difficult.tolist() == difficult
                assert sample.path == small / "JPEGImages" / f"{record.image_id}.jpg"


def test_coco_files_load_in_pycocotools(small):
    records = read_records(small)
    api = COCO(str(small / "annotations" / "instances_test.json"))
    test = [r for r in records if r.split == "test"]
    assert sorted(api.getImgIds()) == [int(r.image_id) for r in test]
    assert len(api.getAnnIds()) == sum(len(r.objects) for r in test)
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == CLASSES


def test_similarity_groups_and_description(small):
    assert json.loads((small / "similarity_groups.json").read_text()) == SIMILARITY_GROUPS
    assert all(len(group) >= 2 and set(group) <= set(CLASSES) for group in SIMILARITY_GROUPS)
    description = json.loads((small / "dataset.json").read_text())
    assert description["complete"] and description["config"]["seed"] == 0
    records = read_records(small)
    assert description["counts"]["trainval"]["images"] == 12
    test_objects = sum(len(r.objects) for r in records if r.split == "test")
    assert description["counts"]["test"]["objects"] == test_objects
    assert (small / "README.md").read_text().startswith("# scene-digits")


def test_refuses_a_foreign_folder_and_replaces_its_own_output(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a scene-digits output"):
        generate_scene_digits(foreign, num_train=2, num_test=1, progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]

    own = generate_scene_digits(tmp_path / "own", num_train=9, num_test=2, progress=False)
    generate_scene_digits(own, num_train=3, num_test=1, progress=False)
    images = sorted(p.name for p in (own / "JPEGImages").iterdir())
    assert images == ["000001.jpg", "000002.jpg", "000003.jpg", "500001.jpg"]
    assert (own / "ImageSets" / "Main" / "val.txt").read_text() == ""


def test_bad_sizes_are_config_errors(tmp_path):
    with pytest.raises(ConfigError):
        generate_scene_digits(tmp_path / "x", num_train=0, num_test=5, progress=False)
    with pytest.raises(ConfigError):
        generate_scene_digits(tmp_path / "x", num_train=5, num_test=5, workers=0, progress=False)


def test_cli_makes_and_summarises(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    command = [sys.executable, "-m", "nocdet", "data", "make", "scene-digits", "--out", str(tmp_path / "d"),
               "--train", "4", "--test", "2", "--seed", "3", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    description = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert description["config"]["seed"] == 3
    test_line = next(line for line in done.stdout.splitlines() if line.startswith("test"))
    assert test_line.split()[1:3] == ["2", str(description["counts"]["test"]["objects"])]

    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "x.txt").write_text("")
    command[command.index(str(tmp_path / "d"))] = str(tmp_path / "e")
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and "not a scene-digits output" in refused.stderr
