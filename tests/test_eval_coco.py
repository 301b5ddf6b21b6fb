"""COCO metrics: our wrappers against pycocotools run directly on JSON files."""
from __future__ import annotations

import contextlib
import io
import json
import random

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from nocdet.data.coco import read_coco
from nocdet.data.sample import DetectionDataset, Detections, Sample
from nocdet.errors import DataError
from nocdet.evaluation.coco import STAT_NAMES, evaluate_coco, evaluate_coco_files

CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 12, "name": "owl"}]


def pycocotools_stats(gt_path, res_path, cat_ids=None) -> list[float]:
    """The reference: pycocotools on the files, nothing in between."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(str(res_path)), "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats.tolist()


def _as_ours(stats: list[float]) -> dict:
    return {name: (None if s == -1 else s) for name, s in zip(STAT_NAMES, stats)}


def _random_case(rng: random.Random):
    """GT with crowd objects and small/medium/large boxes; detections near and away from them.
    Coordinates are multiples of 0.5 and scores multiples of 1/1024, exact in float32."""
    images, annotations, results = [], [], []
    for image_id in range(1, rng.randint(3, 6)):
        width, height = 400, 300
        images.append({"id": image_id * 10, "file_name": f"{image_id}.jpg", "width": width, "height": height})
        for _ in range(rng.randint(0, 6)):
            side = rng.choice([rng.randint(4, 28), rng.randint(40, 90), rng.randint(110, 200)])
            w, h = side + rng.randint(0, 8) / 2, side + rng.randint(0, 8) / 2
            x, y = rng.randint(0, width - 210) + 0.5 * rng.randint(0, 1), rng.randint(0, height - 210)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id * 10,
                                "category_id": rng.choice([3, 7, 12]), "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": int(rng.random() < 0.15)})
        own = [a for a in annotations if a["image_id"] == image_id * 10]
        for _ in range(rng.randint(0, 10)):
            if own and rng.random() < 0.7:
                a = rng.choice(own)
                x, y, w, h = (v + rng.randint(-6, 6) / 2 for v in a["bbox"])
                cat = a["category_id"] if rng.random() < 0.8 else rng.choice([3, 7, 12])
            else:
                x, y = rng.randint(0, 300), rng.randint(0, 200)
                w, h, cat = rng.randint(5, 100), rng.randint(5, 100), rng.choice([3, 7, 12])
            results.append({"image_id": image_id * 10, "category_id": cat, "bbox": [x, y, max(w, 1), max(h, 1)],
                            "score": rng.randint(0, 1023) / 1024})
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}, results


def _detections(dataset: DetectionDataset, results: list[dict]) -> list[Detections]:
    """Results as in-memory detections, in file order within each image."""
    label = {c: i + 1 for i, c in enumerate(dataset.category_ids)}
    per_image: dict[str, list[dict]] = {}
    for r in results:
        per_image.setdefault(str(r["image_id"]), []).append(r)
    return [Detections(image_id,
                       [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rs)],
                       [r["score"] for r in rs], [label[r["category_id"]] for r in rs])
            for image_id, rs in per_image.items()]


@pytest.mark.parametrize("seed", range(6))
def test_random_cases_match_pycocotools(tmp_path, seed):
    gt, results = _random_case(random.Random(seed))
    if not results:
        results = [{"image_id": gt["images"][0]["id"], "category_id": 3, "bbox": [1, 1, 20, 20], "score": 0.5}]
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(gt))
    res_path.write_text(json.dumps(results))
    truth = _as_ours(pycocotools_stats(gt_path, res_path))

    from_files = evaluate_coco_files(gt_path, res_path)
    assert {k: from_files[k] for k in STAT_NAMES} == truth

    dataset = read_coco(gt_path, tmp_path)
    in_memory = evaluate_coco(dataset, _detections(dataset, results))
    assert {k: in_memory[k] for k in STAT_NAMES} == truth
    assert in_memory["per_class"] == from_files["per_class"]

    # per-class AP = pycocotools' AP restricted to that one category
    for cat in CATEGORIES:
        ap = pycocotools_stats(gt_path, res_path, [cat["id"]])[0]
        assert from_files["per_class"][cat["name"]] == (None if ap == -1 else pytest.approx(ap, abs=1e-12))


def _hand_dataset() -> tuple[dict, DetectionDataset]:
    gt = {"images": [{"id": 1, "file_name": "1.jpg", "width": 300, "height": 300},
                     {"id": 2, "file_name": "2.jpg", "width": 300, "height": 300}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 150, 150], "area": 22500, "iscrowd": 0},
              {"id": 2, "image_id": 2, "category_id": 7, "bbox": [20, 30, 100, 120], "area": 12000, "iscrowd": 0},
          ],
          "categories": CATEGORIES}
    samples = [Sample("1", "1.jpg", 300, 300, [[10, 10, 160, 160]], [1], [False]),
               Sample("2", "2.jpg", 300, 300, [[20, 30, 120, 150]], [2], [False])]
    return gt, DetectionDataset(["cat", "dog", "owl"], samples, "hand", [], [3, 7, 12])


def test_perfect_detector_and_empty_results(tmp_path):
    gt, dataset = _hand_dataset()
    perfect = [Detections("1", [[10, 10, 160, 160]], [0.9], [1]), Detections("2", [[20, 30, 120, 150]], [0.8], [2])]
    m = evaluate_coco(dataset, perfect)
    # every object found exactly: AP = AR = 1 where objects exist; both objects are large
    # (area > 96^2), so the small and medium numbers are undefined (None, pycocotools' -1).
    one = pytest.approx(1.0, abs=1e-12)
    assert (m["AP"], m["AP50"], m["APl"], m["AR100"]) == (one, one, one, one)
    assert m["APs"] is None and m["APm"] is None and m["ARs"] is None
    assert m["per_class"] == {"cat": one, "dog": one, "owl": None}

    # no detections at all (pycocotools' loadRes cannot take an empty list): zeros
    m = evaluate_coco(dataset, [])
    assert m["AP"] == 0.0 and m["AR100"] == 0.0 and m["APl"] == 0.0 and m["APs"] is None
    assert m["per_class"] == {"cat": 0.0, "dog": 0.0, "owl": None}
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(gt))
    res_path.write_text("[]")
    assert evaluate_coco_files(gt_path, res_path) == m


def test_difficult_is_crowd_only_for_coco_data():
    _, dataset = _hand_dataset()
    dataset.samples[0] = Sample("1", "1.jpg", 300, 300, [[10, 10, 160, 160]], [1], [True])
    dets = [Detections("2", [[20, 30, 120, 150]], [0.8], [2])]
    # from COCO (category ids known): the difficult cat is a crowd region, not a missed object
    assert evaluate_coco(dataset, dets)["per_class"]["cat"] is None
    # as ordinary objects (VOC-origin data), the cat is a miss
    assert evaluate_coco(dataset, dets, difficult_as_crowd=False)["per_class"]["cat"] == 0.0


def test_bad_input_names_file_and_record(tmp_path):
    gt, _ = _hand_dataset()
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(gt))
    res_path.write_text(json.dumps([{"image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "score": 0.5},
                                    {"image_id": 99, "category_id": 3, "bbox": [1, 1, 5, 5], "score": 0.5}]))
    with pytest.raises(DataError, match=r"res\.json.*result 1.*image_id 99"):
        evaluate_coco_files(gt_path, res_path)
    res_path.write_text(json.dumps([{"image_id": 1, "category_id": 4, "bbox": [1, 1, 5, 5], "score": 0.5}]))
    with pytest.raises(DataError, match="category_id 4"):
        evaluate_coco_files(gt_path, res_path)
    del gt["annotations"][1]["area"]
    gt_path.write_text(json.dumps(gt))
    with pytest.raises(DataError, match=r"gt\.json.*annotations\[1\].*area"):
        evaluate_coco_files(gt_path, res_path)


def test_pycocotools_prints_are_silenced(tmp_path, capsys):
    _, dataset = _hand_dataset()
    evaluate_coco(dataset, [Detections("1", [[10, 10, 160, 160]], [0.9], [1])])
    assert capsys.readouterr().out == ""
    evaluate_coco(dataset, [Detections("1", [[10, 10, 160, 160]], [0.9], [1])], verbose=True)
    assert "Average Precision" in capsys.readouterr().out


@pytest.mark.parametrize("case,message", [
    ("negative width", r"annotations\[0\] \(id 1\).*negative width"),
    ("undeclared category", r"annotations\[0\] \(id 1\).*category_id 7 is not in 'categories'"),
    ("missing image", r"annotations\[1\] \(id 2\).*image_id 9 is not in 'images'"),
    ("duplicate image id", r"images\[1\] \(id 1\).*duplicate image id 1"),
])
def test_results_are_never_scored_against_a_broken_ground_truth(tmp_path, case, message):
    """The reader's checks run before pycocotools, which would drop or merge these records and
    report a wrong AP (0.97-1.0 for these files) with exit 0."""
    import copy

    from nocdet.errors import DataError
    from nocdet.evaluation.coco import evaluate_coco_files

    gt = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
          "categories": [{"id": 1, "name": "x"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
                           "iscrowd": 0}]}
    bad = copy.deepcopy(gt)
    if case == "negative width":
        bad["annotations"][0]["bbox"] = [10, 10, -5, 20]
    elif case == "undeclared category":
        bad["annotations"][0]["category_id"] = 7
    elif case == "missing image":
        bad["annotations"].append({"id": 2, "image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25,
                                   "iscrowd": 0})
    else:
        bad["images"].append(dict(bad["images"][0]))
    (tmp_path / "gt.json").write_text(json.dumps(bad))
    (tmp_path / "res.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20],
                                                    "score": 0.9}]))
    with pytest.raises(DataError, match=message):
        evaluate_coco_files(tmp_path / "gt.json", tmp_path / "res.json")
