"""COCO instances and result JSON: conventions, round trips, pycocotools compatibility, bad input."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from nocdet.data.coco import (
    coco_image_ids,
    read_coco,
    read_coco_results,
    write_coco_instances,
    write_coco_results,
)
from nocdet.data.sample import DetectionDataset, Detections, Sample
from nocdet.errors import DataError


def _instances() -> dict:
    """A small instances file with non-contiguous category ids listed out of order."""
    return {
        "images": [
            {"id": 42, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 7, "file_name": "b.jpg", "width": 50, "height": 50},
            {"id": 9, "file_name": "empty.jpg", "width": 10, "height": 10},
        ],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 90, "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 3, "bbox": [0.5, 1.25, 2.5, 3], "area": 7.5, "iscrowd": 1},
            {"id": 5, "image_id": 7, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100},
        ],
        "categories": [
            {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 3, "name": "car", "supercategory": "vehicle"},
        ],
    }


def _write(tmp_path, obj, name="instances.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_read_coco_conventions(tmp_path):
    ds = read_coco(_write(tmp_path, _instances()), tmp_path / "images")
    assert ds.classes == ["person", "car", "toothbrush"]  # increasing category id: 1, 3, 90
    assert ds.category_ids == [1, 3, 90]
    assert ds.name == "instances"
    by_id = ds.by_id()
    assert set(by_id) == {"42", "7", "9"}
    a = by_id["42"]
    assert a.path == tmp_path / "images" / "a.jpg" and (a.width, a.height) == (100, 80)
    # [x, y, w, h] -> x1 = x, y1 = y, x2 = x + w, y2 = y + h
    np.testing.assert_array_equal(a.boxes, [[10, 20, 40, 60], [0.5, 1.25, 3, 4.25]])
    np.testing.assert_array_equal(a.labels, [3, 2])  # toothbrush -> 3, car -> 2
    np.testing.assert_array_equal(a.difficult, [False, True])  # iscrowd carried as difficult
    np.testing.assert_array_equal(by_id["7"].labels, [1])  # missing iscrowd = 0
    assert not by_id["7"].difficult.any()
    assert by_id["9"].boxes.shape == (0, 4)  # images without annotations are valid


def test_image_info_file_without_annotations(tmp_path):
    data = _instances()
    del data["annotations"]
    ds = read_coco(_write(tmp_path, data), tmp_path)
    assert len(ds) == 3 and all(len(s.boxes) == 0 for s in ds.samples)


def test_zero_area_dropped_and_partly_outside_clipped_with_warning(tmp_path):
    data = _instances()
    data["annotations"] += [
        {"id": 6, "image_id": 7, "category_id": 1, "bbox": [1, 1, 0, 5]},
        {"id": 7, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 0.0]},
        {"id": 8, "image_id": 7, "category_id": 1, "bbox": [-2, 40, 10, 20]},
    ]
    with pytest.warns(UserWarning, match="dropped 2 zero-area box.*clipped 1 box"):
        ds = read_coco(_write(tmp_path, data), tmp_path)
    np.testing.assert_array_equal(ds.by_id()["7"].boxes, [[5, 5, 15, 15], [0, 40, 8, 50]])


@pytest.mark.parametrize("mutate, record, reason", [
    (lambda d: d.pop("images"), None, "missing top-level key 'images'"),
    (lambda d: d.pop("categories"), None, "missing top-level key 'categories'"),
    (lambda d: d.update(annotations={}), None, "'annotations' must be a list"),
    (lambda d: d["images"][1].pop("file_name"), "images[1] (id 7)", "missing key.*'file_name'"),
    (lambda d: d["images"][2].update(id=42), "images[2] (id 42)", "duplicate image id 42"),
    (lambda d: d["images"][0].update(id="42"), "images[0] (id 42)", "not an integer"),
    (lambda d: d["images"][0].update(width=0), "images[0] (id 42)", "not two positive integers"),
    (lambda d: d["categories"][2].update(id=1), "categories[2] (id 1)", "duplicate category id 1"),
    (lambda d: d["categories"][2].update(name="person"), "categories[2] (id 3)", "duplicate category name"),
    (lambda d: d["annotations"][2].update(id=1), "annotations[2] (id 1)", "duplicate annotation id 1"),
    (lambda d: d["annotations"][1].pop("bbox"), "annotations[1] (id 2)", "missing key.*'bbox'"),
    (lambda d: d["annotations"][1].update(image_id=8), "annotations[1] (id 2)", "image_id 8 is not in"),
    (lambda d: d["annotations"][2].update(category_id=2), "annotations[2] (id 5)", "category_id 2 is not in"),
    (lambda d: d["annotations"][0].update(bbox=[1, "2", 3, 4]), "annotations[0] (id 1)", "not four finite"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotations[0] (id 1)", "not four finite"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, float("nan"), 4]), "annotations[0] (id 1)", "not four finite"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), "annotations[0] (id 1)", "negative width"),
    (lambda d: d["annotations"][0].update(bbox=[200, 2, 3, 4]), "annotations[0] (id 1)", "wholly outside"),
    (lambda d: d["annotations"][0].update(iscrowd=2), "annotations[0] (id 1)", "iscrowd must be 0 or 1"),
    (lambda d: d["annotations"].append(5), "annotations[3]", "expected a JSON object"),
])
def test_bad_instances_name_file_and_record(tmp_path, mutate, record, reason):
    data = _instances()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(DataError, match=reason) as err:
        read_coco(path, tmp_path)
    assert err.value.path == str(path)
    assert err.value.record == record


def test_malformed_json_names_line_and_column(tmp_path):
    path = _write(tmp_path, '{"images": [],\n  "categories": [}\n')
    with pytest.raises(DataError, match="malformed JSON") as err:
        read_coco(path, tmp_path)
    assert err.value.record == "line 2, column 18"
    with pytest.raises(DataError, match="expected an object"):
        read_coco(_write(tmp_path, "[]", "list.json"), tmp_path)
    (tmp_path / "latin.json").write_bytes(b'{"images": "\xe9"}')
    with pytest.raises(DataError, match="not UTF-8"):
        read_coco(tmp_path / "latin.json", tmp_path)


def _voc_like_dataset(tmp_path) -> DetectionDataset:
    samples = [
        Sample("000005", tmp_path / "000005.jpg", 500, 375, [[47, 239, 195, 371], [0.5, 1.25, 3, 4.75]],
               [2, 1], [False, True]),
        Sample("000007", tmp_path / "000007.jpg", 100, 80, [[10, 20, 40, 60]], [2], [False]),
        Sample("000009", tmp_path / "000009.jpg", 10, 10),
    ]
    return DetectionDataset(["cat", "dog"], samples, "toy")


def test_write_coco_instances_by_hand_and_through_pycocotools(tmp_path):
    ds = _voc_like_dataset(tmp_path)
    write_coco_instances(tmp_path / "gt.json", ds)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))
    assert sorted(coco.getImgIds()) == [5, 7, 9]  # "000005" -> 5
    assert coco.loadImgs(5)[0]["file_name"] == "000005.jpg"
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == [(1, "cat"), (2, "dog")]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[5]))
    assert [a["bbox"] for a in anns] == [[47, 239, 148, 132], [0.5, 1.25, 2.5, 3.5]]
    assert [a["area"] for a in anns] == [148 * 132, 2.5 * 3.5]
    assert [a["category_id"] for a in anns] == [2, 1]
    assert [(a["iscrowd"], a["difficult"]) for a in anns] == [(0, 0), (0, 1)]
    assert coco_image_ids(ds) == {"000005": 5, "000007": 7, "000009": 9}


def test_instances_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    samples = []
    for k in range(5):
        xy = rng.random((6, 2)).astype(np.float32) * 50
        wh = rng.random((6, 2)).astype(np.float32) * 40 + 1
        samples.append(Sample(f"{k + 1}", tmp_path / f"{k + 1}.png", 100, 100, np.hstack([xy, xy + wh]),
                              rng.integers(1, 4, 6), rng.random(6) < 0.3))
    ds = DetectionDataset(["a", "b", "c"], samples, "r")
    write_coco_instances(tmp_path / "gt.json", ds, category_ids=[10, 20, 5])
    back = read_coco(tmp_path / "gt.json", tmp_path)
    assert back.category_ids == [5, 10, 20] and back.classes == ["c", "a", "b"]
    relabel = np.array([0, 2, 3, 1])  # a (id 10) -> 2, b (id 20) -> 3, c (id 5) -> 1
    for original, read in zip(ds.samples, back.samples):
        assert read.image_id == original.image_id and read.path == original.path
        np.testing.assert_array_equal(read.boxes, original.boxes)  # exact, float32 for float32
        np.testing.assert_array_equal(read.labels, relabel[original.labels])
        np.testing.assert_array_equal(read.difficult, original.difficult)
    write_coco_instances(tmp_path / "again.json", back)  # keeps its own category ids
    assert read_coco(tmp_path / "again.json", tmp_path).category_ids == [5, 10, 20]


def test_non_numeric_image_ids_get_positions(tmp_path):
    ds = DetectionDataset(["a"], [Sample("2008_000001", tmp_path / "x.jpg", 5, 5),
                                  Sample("12", tmp_path / "y.jpg", 5, 5)])
    assert coco_image_ids(ds) == {"2008_000001": 1, "12": 2}
    clash = DetectionDataset(["a"], [Sample("7", tmp_path / "x.jpg", 5, 5), Sample("007", tmp_path / "y.jpg", 5, 5)])
    assert coco_image_ids(clash) == {"7": 1, "007": 2}  # int ids would collide
    write_coco_instances(tmp_path / "gt.json", ds)
    images = json.loads((tmp_path / "gt.json").read_text())["images"]
    assert [(i["id"], i["file_name"]) for i in images] == [(1, "x.jpg"), (2, "y.jpg")]


def test_difficult_as_crowd(tmp_path):
    ds = read_coco(_write(tmp_path, _instances()), tmp_path)
    write_coco_instances(tmp_path / "gt.json", ds, difficult_as_crowd=True)
    anns = json.loads((tmp_path / "gt.json").read_text())["annotations"]
    assert [(a["iscrowd"], a["difficult"]) for a in anns] == [(0, 0), (1, 0), (0, 0)]
    back = read_coco(tmp_path / "gt.json", tmp_path)
    np.testing.assert_array_equal(back.by_id()["42"].difficult, [False, True])


def test_writer_rejects_bad_input(tmp_path):
    ds = _voc_like_dataset(tmp_path)
    with pytest.raises(DataError, match="3 category ids for 2 classes"):
        write_coco_instances(tmp_path / "gt.json", ds, category_ids=[1, 2, 3])
    with pytest.raises(DataError, match="distinct"):
        write_coco_instances(tmp_path / "gt.json", ds, category_ids=[4, 4])
    ds.samples[1].labels[0] = 3
    with pytest.raises(DataError, match="outside 1..2") as err:
        write_coco_instances(tmp_path / "gt.json", ds)
    assert err.value.record == "image 000007, object 0"
    assert not (tmp_path / "gt.json").exists()


def test_results_round_trip_and_pycocotools_scores_perfect_detections(tmp_path):
    ds = _voc_like_dataset(tmp_path)
    ds.samples[0].difficult[:] = False
    write_coco_instances(tmp_path / "gt.json", ds)
    dets = [Detections(s.image_id, s.boxes, np.linspace(0.9, 0.5, len(s.boxes)), s.labels) for s in ds.samples]
    write_coco_results(tmp_path / "dt.json", dets, [1, 2], coco_image_ids(ds))
    results = read_coco_results(tmp_path / "dt.json")
    assert [(r["image_id"], r["category_id"]) for r in results] == [(5, 2), (5, 1), (7, 2)]
    assert results[0]["bbox"] == [47, 239, 148, 132] and results[0]["score"] == pytest.approx(0.9)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "gt.json"))
        evaluation = COCOeval(gt, gt.loadRes(str(tmp_path / "dt.json")), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # every GT found exactly: AP 1


def test_results_writer_rejects_unknown_images(tmp_path):
    with pytest.raises(DataError, match="no COCO image id"):
        write_coco_results(tmp_path / "dt.json", [Detections("zz", [[0, 0, 1, 1]], [1], [1])], [1], {"a": 1})


@pytest.mark.parametrize("bad, reason", [
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}, "missing key.*'score'"),
    ({"image_id": "1", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, "must be integers"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}, "not four finite"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": float("inf")}, "not a finite number"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, None, 1, 1], "score": 0.5}, "not four finite"),
    (3, "expected a JSON object"),
])
def test_bad_results_name_file_and_index(tmp_path, bad, reason):
    good = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}
    path = _write(tmp_path, [good, good, bad], "dt.json")
    with pytest.raises(DataError, match=reason) as err:
        read_coco_results(path)
    assert err.value.path == str(path) and err.value.record == "[2]"
    with pytest.raises(DataError, match="expected a list"):
        read_coco_results(_write(tmp_path, {"a": 1}, "obj.json"))


# -------------------------------------------------------------------------------- fuzzing

_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-5, 100), st.floats(allow_nan=True),
                    st.text(max_size=3), st.just([1, 2, 3, 4]), st.just({}))


@st.composite
def _mutated_instances(draw):
    data = copy.deepcopy(_instances())
    for _ in range(draw(st.integers(1, 3))):
        table = draw(st.sampled_from(["images", "annotations", "categories"]))
        record = draw(st.sampled_from(data[table])) if data[table] else None
        if record is None or not isinstance(record, dict) or not record:
            continue
        key = draw(st.sampled_from(sorted(record)))
        if draw(st.booleans()):
            record[key] = draw(_LEAVES)
        else:
            del record[key]
    return json.dumps(data)


@st.composite
def _mangled_text(draw):
    text = json.dumps(_instances())
    pos = draw(st.integers(0, len(text)))
    return text[:pos] + draw(st.text(max_size=3)) + text[pos + draw(st.integers(0, 5)):]


@settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(_mutated_instances(), _mangled_text(), st.binary(max_size=100).map(lambda b: b.decode("latin-1"))))
def test_fuzz_read_coco_gives_dataset_or_data_error(tmp_path, text):
    path = tmp_path / "fuzz.json"
    path.write_text(text, encoding="utf-8")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_coco(path, tmp_path)
    except DataError as err:
        assert err.path == str(path)
        return
    for s in ds.samples:
        assert np.isfinite(s.boxes).all() and np.all(s.boxes[:, 2:] > s.boxes[:, :2])
        assert s.labels.min(initial=1) >= 1 and s.labels.max(initial=1) <= ds.num_classes
