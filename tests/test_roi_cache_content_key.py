"""The RoI feature cache is keyed by image content: a VOC folder and its COCO JSON (ids "000001" and 1)
share one cache, opened by either reading without running the backbone."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from nocdet.caches import list_entries
from nocdet.data.coco import coco_image_ids, read_coco, write_coco_instances
from nocdet.data.sample import DetectionDataset
from nocdet.data.voc import read_voc
from nocdet.errors import DataError
from nocdet.features.roi_cache import ExtractionSettings, build_cache, cache_key, open_cache, region_slice
from fakes import write_voc
from test_map_cache_key import CountingTrunk

CLASSES = ["a", "b"]
SHARD = "shard-00000-of-00001"
OBJECTS = {"000001": [((4, 4, 20, 24), 1, False), ((30, 10, 60, 40), 2, False)],
           "000002": [((10, 8, 50, 44), 2, False), ((2, 2, 9, 9), 1, True)],
           "000003": [((20, 4, 44, 30), 1, False)]}


def pixels(image_id, width, height, objects):
    return np.random.default_rng(int(image_id)).integers(0, 255, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def readings(tmp_path):
    """The same three images read as VOC and as COCO, each with its proposals (the same boxes)."""
    root = write_voc(tmp_path / "voc", OBJECTS, CLASSES, size=(64, 48), split="train", image=pixels, ext="png")
    voc = read_voc(root, "train")
    write_coco_instances(tmp_path / "instances_train.json", voc)
    coco = read_coco(tmp_path / "instances_train.json", root / "JPEGImages")
    rng = np.random.default_rng(7)
    boxes = {}
    for image_id in OBJECTS:
        x1, y1 = rng.uniform(0, 40, 12), rng.uniform(0, 30, 12)
        boxes[image_id] = np.stack([x1, y1, x1 + rng.uniform(4, 24, 12), y1 + rng.uniform(4, 18, 12)], 1)
    as_coco = coco_image_ids(voc)
    return (voc, {i: b.astype(np.float32) for i, b in boxes.items()},
            coco, {str(as_coco[i]): b.astype(np.float32) for i, b in boxes.items()})


def settings(store):
    return ExtractionSettings(scales=[32, 48, 64], flip=True, target_area=12.0 * 12.0, store=store)


def build(root, dataset, proposals, store):
    trunk = CountingTrunk()
    folder = build_cache(root, dataset, proposals, trunk, "tiny", settings(store), progress=False)
    return folder, trunk.calls


def per_image(cache):
    """``{(image id, flipped): (boxes, labels, best-level features)}`` of an opened cache."""
    out = {}
    for shard, index in cache.images():
        rows = region_slice(shard, index)
        features = np.asarray(shard.features[np.arange(rows.start, rows.stop)])
        out[shard.image_ids[index], shard.flipped[index]] = (shard.boxes[rows], shard.label[rows], features)
    return out


@pytest.mark.parametrize("store", ["pooled", "maps"])
def test_a_coco_reading_opens_the_cache_built_from_voc(tmp_path, readings, store):
    voc, voc_proposals, coco, coco_proposals = readings
    assert [s.image_id for s in coco.samples] == ["1", "2", "3"]
    folder, calls = build(tmp_path / "cache", voc, voc_proposals, store)
    assert calls == 3 * 2 * 3  # three images and their flips, three levels each
    again, calls = build(tmp_path / "cache", coco, coco_proposals, store)
    assert again == folder and calls == 0  # no feature recomputed
    shared = per_image(open_cache(folder, coco, coco_proposals))
    assert sorted(shared) == [(i, f) for i in ("1", "2", "3") for f in (False, True)]  # named by COCO ids
    fresh_folder, fresh_calls = build(tmp_path / "fresh", coco, coco_proposals, store)
    assert fresh_calls == 18 and fresh_folder.name == folder.name
    fresh = per_image(open_cache(fresh_folder))
    as_voc = {str(v): k for k, v in coco_image_ids(voc).items()}
    from_voc = per_image(open_cache(folder, voc, voc_proposals))
    for (image_id, flipped), (boxes, labels, features) in fresh.items():
        got_boxes, got_labels, got = shared[image_id, flipped]
        np.testing.assert_array_equal(got_boxes, boxes)
        np.testing.assert_array_equal(got_labels, labels)
        assert np.array_equal(got, features) and np.any(features != 0)
        assert np.array_equal(from_voc[as_voc[image_id], flipped][2], features)


def test_another_image_order_ids_and_paths_find_the_same_cache(tmp_path, readings):
    voc, voc_proposals, _, _ = readings
    folder, _ = build(tmp_path / "cache", voc, voc_proposals, "maps")
    # the images copied under other names, listed in reverse order, with other ids
    images = tmp_path / "copies"
    images.mkdir()
    document = json.loads((tmp_path / "instances_train.json").read_text())
    for image in document["images"]:
        shutil.copyfile(voc.samples[image["id"] - 1].path, images / f"img-{image['id']}.png")
        image["file_name"] = f"img-{image['id']}.png"
        image["id"] += 100
    for annotation in document["annotations"]:
        annotation["image_id"] += 100
    document["images"].reverse()
    (tmp_path / "other.json").write_text(json.dumps(document))
    other = read_coco(tmp_path / "other.json", images)
    assert [s.image_id for s in other.samples] == ["103", "102", "101"]
    proposals = {str(int(i) + 100): b for i, b in voc_proposals.items()}
    again, calls = build(tmp_path / "cache", other, proposals, "maps")
    assert again == folder and calls == 0
    named = per_image(open_cache(folder, other, proposals))
    original = per_image(open_cache(folder, voc, voc_proposals))
    for (image_id, flipped), (_, _, features) in original.items():
        assert np.array_equal(named[str(int(image_id) + 100), flipped][2], features)


def test_changing_one_image_changes_the_key(tmp_path, readings):
    voc, proposals, _, _ = readings
    trunk_id, extraction = "tiny:w:4:4", settings("pooled")
    before = cache_key(voc, proposals, trunk_id, 3, extraction)
    path = voc.samples[1].path
    image = np.asarray(Image.open(path)).copy()
    image[0, 0, 0] ^= 1  # one bit of one pixel
    Image.fromarray(image).save(path)
    assert cache_key(voc, proposals, trunk_id, 3, extraction) != before
    # annotations and proposals are in the key as well
    voc.samples[0].labels[0] = 2
    changed_label = cache_key(voc, proposals, trunk_id, 3, extraction)
    proposals["000003"] = proposals["000003"][:-1]
    assert len({before, changed_label, cache_key(voc, proposals, trunk_id, 3, extraction)}) == 3


def test_a_cache_for_other_images_is_not_matched(tmp_path, readings):
    voc, proposals, coco, coco_proposals = readings
    folder, _ = build(tmp_path / "cache", voc, proposals, "pooled")
    coco.samples[2].boxes[0, 0] += 1  # the reading differs from what the cache holds
    with pytest.raises(DataError, match="holds an image that instances_train has not"):
        open_cache(folder, coco, coco_proposals)


def test_a_format_1_cache_is_refused_and_listed_as_such(tmp_path, readings):
    voc, proposals, _, _ = readings
    folder, _ = build(tmp_path / "roi_features", voc, proposals, "pooled")
    # what nocdet wrote before the content key: no records, no format in settings.json
    meta = json.loads((folder / SHARD / "images.json").read_text())
    del meta["records"]
    (folder / SHARD / "images.json").write_text(json.dumps(meta))
    described = json.loads((folder / "settings.json").read_text())
    del described["format"]
    (folder / "settings.json").write_text(json.dumps(described))
    assert open_cache(folder).shards[0].image_ids[0] == "000001"  # still readable as it was written
    with pytest.raises(DataError, match=r"older nocdet \(format 1.*nocdet cache clean"):
        open_cache(folder, voc, proposals)
    [entry] = list_entries(tmp_path)
    assert "format 1" in entry.description and "no longer read" in entry.description


def test_identical_images_under_two_ids_each_get_an_entry(tmp_path, readings):
    voc, proposals, coco, coco_proposals = readings
    twin = tmp_path / "twin.png"
    shutil.copyfile(voc.samples[0].path, twin)
    first = voc.samples[0]
    duplicate = type(first)("000009", twin, first.width, first.height, first.boxes, first.labels, first.difficult)
    voc = DetectionDataset(CLASSES, [*voc.samples, duplicate], "voc+twin")
    proposals = {**proposals, "000009": proposals["000001"]}
    folder, calls = build(tmp_path / "cache", voc, proposals, "pooled")
    assert calls == 4 * 2 * 3
    coco = DetectionDataset(CLASSES, [coco.samples[0], duplicate, *coco.samples[1:]], "coco+twin")
    coco_proposals = {**coco_proposals, "000009": proposals["000009"]}
    assert build(tmp_path / "cache", coco, coco_proposals, "pooled") == (folder, 0)
    named = per_image(open_cache(folder, coco, coco_proposals))
    assert sorted({i for i, _ in named}) == ["000009", "1", "2", "3"]
    assert np.array_equal(named["1", True][2], named["000009", True][2])


@pytest.mark.slow
def test_the_frozen_pipeline_on_the_coco_reading_reuses_the_voc_runs_caches(tmp_path):
    from nocdet.data.scene_digits import generate_scene_digits
    from nocdet.training.frozen_pipeline import run_frozen_experiment
    from test_frozen_pipeline import tiny_config

    data = generate_scene_digits(tmp_path / "sd", num_train=12, num_test=3, seed=3, progress=False)
    quick = ["svm.enabled=false", "test.score=softmax", "test.score_threshold=0.05"]
    voc_metrics = run_frozen_experiment(tiny_config(data, tmp_path / "cache", quick), tmp_path / "voc", progress=False)
    features = tmp_path / "cache" / "roi_features"
    built = {p: p.stat().st_mtime_ns for p in features.rglob("*.done.json")}
    assert len(built) == 3  # train, val, test
    split = {name: f"{data}/annotations/instances_{name}.json:{data}/JPEGImages" for name in ("train", "val", "test")}
    coco = tiny_config(data, tmp_path / "cache", [*quick, "data.format=coco", f"data.train=[{split['train']}]",
                                                  f"data.val={split['val']}", f"data.test={split['test']}"])
    coco_metrics = run_frozen_experiment(coco, tmp_path / "coco", progress=False)
    assert {p: p.stat().st_mtime_ns for p in features.rglob("*.done.json")} == built  # nothing rebuilt
    assert coco_metrics["voc07"]["mAP"] == voc_metrics["voc07"]["mAP"]  # the same features, the same NoC
