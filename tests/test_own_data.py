"""A user's own COCO data set (issue 16): categories matched across splits, the classifier size
checked before any work, supercategories as similarity groups, one-line warnings."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from nocdet.cli import main
from nocdet.data.coco import check_categories, read_coco, write_coco_instances
from nocdet.data.sample import DetectionDataset, Sample
from nocdet.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = [{"id": 10, "name": "circle", "supercategory": "round"},
              {"id": 20, "name": "face", "supercategory": "round"},
              {"id": 30, "name": "star", "supercategory": "pointy"}]


def write_instances(path: Path, categories: list[dict], first_id: int = 1000) -> Path:
    """Two 64 x 48 images numbered from ``first_id``, one object of each category on the first."""
    images = [{"id": first_id + k, "file_name": f"{k}.png", "width": 64, "height": 48} for k in range(2)]
    annotations = [{"id": k + 1, "image_id": first_id, "category_id": c["id"], "bbox": [4 + 10 * k, 4, 8, 8],
                    "iscrowd": 0, "area": 64} for k, c in enumerate(categories)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def train_args(tmp_path: Path, test_categories: list[dict], *extra: str, config: str = "configs/demo.yaml") -> list[str]:
    train = write_instances(tmp_path / "instances_train.json", CATEGORIES)
    test = write_instances(tmp_path / "instances_test.json", test_categories)
    return ["train", str(ROOT / config), "--output", str(tmp_path / "run"), "--threads", "1",
            "--set", "data.format=coco", "--set", f"data.train=[{train}:{tmp_path}]",
            "--set", f"data.test={test}:{tmp_path}", "--set", "data.val=null", *extra]


# ------------------------------------------------------------------ categories across splits

def swapped(categories: list[dict]) -> list[dict]:
    ids = {"face": 30, "star": 20}
    return [{**c, "id": ids.get(c["name"], c["id"])} for c in categories]


@pytest.mark.parametrize("test_categories, message", [
    (swapped(CATEGORIES), r"'face' has id 30 here but 20 in training"),
    (CATEGORIES[:2], r"missing \['star'\]"),
    ([*CATEGORIES, {"id": 40, "name": "triangle"}], r"not in training \['triangle'\]"),
])
def test_train_refuses_a_test_split_with_other_categories(tmp_path, capsys, test_categories, message):
    code = main(train_args(tmp_path, test_categories, "--set", "noc.spec=c64-mo-c64-f512-f512-fn+1"))
    err = capsys.readouterr().err
    assert code == 2
    assert "instances_test.json" in err
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()  # refused before any work, no run folder


def test_check_categories_accepts_the_same_categories_in_another_order(tmp_path):
    dataset = read_coco(write_instances(tmp_path / "a.json", CATEGORIES[::-1]), tmp_path)
    check_categories(dataset, ["circle", "face", "star"], [10, 20, 30], tmp_path / "a.json")
    with pytest.raises(DataError, match="a.json"):
        check_categories(dataset, ["circle", "face", "star"], [1, 2, 3], tmp_path / "a.json")


# ------------------------------------------------------------------ classifier size

@pytest.mark.parametrize("config, spec_key, spec", [
    ("configs/demo.yaml", "noc.spec", "c64-mo-c64-f512-f512-f11"),
    ("configs/e2e/scene_digits/table8_atrous_1fc.yaml", "noc.spec", "fc11"),
])
def test_train_refuses_a_classifier_of_another_size_before_any_work(tmp_path, capsys, config, spec_key, spec):
    code = main(train_args(tmp_path, CATEGORIES, "--set", f"{spec_key}={spec}", config=config))
    err = capsys.readouterr().err
    assert code == 2
    assert "11 outputs" in err and "3 classes + background = 4" in err, err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ similarity groups

def test_supercategories_are_the_similarity_groups(tmp_path):
    dataset = read_coco(write_instances(tmp_path / "i.json", CATEGORIES), tmp_path)
    assert dataset.similarity_groups == [["circle", "face"]]  # "pointy" has one class only: no group


def test_similarity_groups_json_overrides_supercategories(tmp_path):
    (tmp_path / "similarity_groups.json").write_text(json.dumps([["face", "star"]]))
    dataset = read_coco(write_instances(tmp_path / "i.json", CATEGORIES), tmp_path)
    assert dataset.similarity_groups == [["face", "star"]]


def test_none_supercategory_is_no_group(tmp_path):
    categories = [{**c, "supercategory": "none"} for c in CATEGORIES]
    assert read_coco(write_instances(tmp_path / "i.json", categories), tmp_path).similarity_groups == []


def test_written_instances_keep_the_similarity_groups(tmp_path):
    samples = [Sample("1", tmp_path / "1.png", 10, 10)]
    dataset = DetectionDataset(["a", "b", "c"], samples, "x", [["a", "c"]])
    write_coco_instances(tmp_path / "out.json", dataset)
    assert read_coco(tmp_path / "out.json", tmp_path).similarity_groups == [["a", "c"]]


# ------------------------------------------------------------------ warnings

def test_train_prints_warnings_as_one_line(tmp_path, capsys, monkeypatch):
    from nocdet.commands import train

    def warn_and_stop(args):
        warnings.warn("zero-area box dropped", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(train, "_train", warn_and_stop)
    assert main(["train", "configs/demo.yaml", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert err == "nocdet: warning: zero-area box dropped\n"


# ------------------------------------------------------------------ evaluate without images

# Two 60 x 60 images with one apple each (internal boxes); the detections find the first apple
# exactly (0.9), put an apple on image 1001 where its pear is (0.8: FP) and miss the second apple.
# VOC07 11-point AP of apple: recall 1/2 at precision 1, then 1/2 at 1/2 -> thresholds 0 .. 0.5
# (6 of 11) have precision 1 -> 6/11. Pear: one object, no detection -> AP 0.
APPLE_AP07 = 6 / 11


def test_voc_metric_needs_the_annotations_only(tmp_path, capsys):
    from fakes import write_voc

    objects = {"1000": [((0, 0, 20, 20), 1, False)], "1001": [((30, 30, 50, 50), 1, False), ((0, 0, 9, 9), 2, False)]}
    root = write_voc(tmp_path / "voc", objects, ["apple", "pear"], size=(60, 60))
    for image in (root / "JPEGImages").iterdir():
        image.unlink()
    (root / "JPEGImages").rmdir()
    results = tmp_path / "results"
    results.mkdir()
    (results / "comp4_det_test_apple.txt").write_text("1000 0.9 1 1 20 20\n1001 0.8 1 1 9 9\n")
    (results / "comp4_det_test_pear.txt").write_text("")
    out = tmp_path / "m.json"
    assert main(["evaluate", "--metric", "voc07", "--voc-root", str(root), "--results", str(results),
                 "--out", str(out), "--threads", "1"]) == 0, capsys.readouterr().err
    per_class = json.loads(out.read_text())["per_class"]
    assert per_class["apple"] == pytest.approx(APPLE_AP07, abs=1e-12) and per_class["pear"] == 0


def test_voc_metric_of_a_coco_results_file(tmp_path, capsys):
    gt = {"images": [{"id": 1000, "file_name": "a.jpg", "width": 60, "height": 60},
                     {"id": 1001, "file_name": "b.jpg", "width": 60, "height": 60}],
          "annotations": [{"id": 1, "image_id": 1000, "category_id": 20, "bbox": [0, 0, 20, 20]},
                          {"id": 2, "image_id": 1001, "category_id": 20, "bbox": [30, 30, 20, 20]},
                          {"id": 3, "image_id": 1001, "category_id": 40, "bbox": [0, 0, 9, 9]}],
          "categories": [{"id": 40, "name": "pear"}, {"id": 20, "name": "apple"}]}
    res = [{"image_id": 1000, "category_id": 20, "bbox": [0, 0, 20, 20], "score": 0.9},
           {"image_id": 1001, "category_id": 20, "bbox": [0, 0, 9, 9], "score": 0.8}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    out = tmp_path / "m.json"
    assert main(["evaluate", "--metric", "voc07", "--gt", str(tmp_path / "gt.json"), "--results",
                 str(tmp_path / "res.json"), "--out", str(out)]) == 0, capsys.readouterr().err
    per_class = json.loads(out.read_text())["per_class"]
    assert per_class["apple"] == pytest.approx(APPLE_AP07, abs=1e-12) and per_class["pear"] == 0
    res.append({"image_id": 1001, "category_id": 30, "bbox": [0, 0, 9, 9], "score": 0.1})
    (tmp_path / "res.json").write_text(json.dumps(res))
    assert main(["evaluate", "--metric", "voc", "--gt", str(tmp_path / "gt.json"), "--results",
                 str(tmp_path / "res.json")]) == 2
    assert "category_id 30" in capsys.readouterr().err


# ------------------------------------------------------------------ proposals of a COCO split

def test_proposals_compute_and_recall_take_a_coco_split(tmp_path, capsys):
    images = coco_images(tmp_path)
    split = f"{write_instances(tmp_path / 'instances_train.json', CATEGORIES)}:{images}"
    out = tmp_path / "p.npz"
    assert main(["proposals", "compute", "--coco", split, "--cache", str(tmp_path / "cache"), "--workers", "0",
                 "--min-size", "4", "--out", str(out), "--threads", "1"]) == 0
    assert "2 images" in capsys.readouterr().out
    assert main(["proposals", "recall", str(out), "--coco", split]) == 0
    printed = capsys.readouterr().out
    assert "recall over 3 objects" in printed
    assert main(["proposals", "recall", str(out), "--coco", split, "--split", "test"]) == 2


# ------------------------------------------------------------------ report of a COCO run

def test_report_of_a_coco_run_has_curves_pictures_and_diagnosis(tmp_path):
    from test_report import CLASSES, DETECTIONS, cells, images_of, make_run, make_voc, section

    from nocdet.data.coco import coco_image_ids
    from nocdet.data.sample import Detections
    from nocdet.data.voc import read_voc, write_voc_results
    from nocdet.viz.report import read_run, write_report

    voc = make_voc(tmp_path / "VOC")
    gt = tmp_path / "instances_test.json"
    write_coco_instances(gt, read_voc(voc, "test"), category_ids=[10, 20, 30])
    run_dir = make_run(tmp_path / "run", voc, "coco run")
    info = json.loads((run_dir / "run.json").read_text())
    info["data"] = {"format": "coco", "root": str(gt), "images": str(voc / "JPEGImages"), "test_split": "test"}
    (run_dir / "run.json").write_text(json.dumps(info))
    ids = coco_image_ids(read_voc(voc, "test"))  # img1 -> 1, ...: the COCO run's image ids
    detections = [Detections(str(ids[i]), [d[0] for d in dets], [d[1] for d in dets], [d[2] for d in dets])
                  for i, dets in DETECTIONS.items()]
    write_voc_results(run_dir / "results", "test", detections, CLASSES)

    run = read_run(run_dir)
    assert run.dataset is not None and run.dataset.category_ids == [10, 20, 30]
    page = write_report([run_dir], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "only VOC" not in page
    assert images_of(section(page, "Precision-recall curves"))
    assert images_of(section(page, "Sample detections"))
    # the same detections as the VOC run of test_report: the same diagnosis
    assert cells(section(page, "Error diagnosis")) == ["coco run", "66.7", "0.0", "0.0", "16.7", "16.7"]

    (run_dir / "diagnosis.json").write_text(json.dumps({"top_factor": 1.0, "similarity_groups": [],
                                                        "overall": {}, "per_class": {}}))
    info["data"]["root"] = str(tmp_path / "gone.json")
    (run_dir / "run.json").write_text(json.dumps(info))
    gone = read_run(run_dir)
    assert gone.dataset is None and gone.diagnosis is not None  # diagnosis.json read all the same


# ------------------------------------------------------------------ category ids in outputs, drawn size

def test_detect_and_predict_give_the_data_sets_category_ids(tmp_path, capsys):
    import numpy as np
    from PIL import Image
    from test_detect_folder import CLASSES, tiny_model

    import nocdet
    from nocdet.training.checkpoint import load_checkpoint, save_checkpoint

    model = tiny_model(tmp_path / "model.pt")
    state = load_checkpoint(model)
    save_checkpoint(model, {**state, "category_ids": [10, 20]})
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / "small.png")
    id_of = dict(zip(CLASSES, [10, 20]))

    assert main(["detect", "--checkpoint", str(model), str(folder), "--out", str(tmp_path / "a"),
                 "--no-progress", "--threshold", "0", "--threads", "1"]) == 0
    assert "1 image(s) under 480 px were drawn enlarged" in capsys.readouterr().out
    records = json.loads((tmp_path / "a" / "detections.json").read_text())
    assert records and all(r["category_id"] == id_of[r["category"]] for r in records)
    assert Image.open(next((tmp_path / "a").glob("*.png"))).size == (500, 400)  # x10

    assert main(["detect", "--checkpoint", str(model), str(folder), "--out", str(tmp_path / "b"),
                 "--no-progress", "--keep-size"]) == 0
    assert "enlarged" not in capsys.readouterr().out
    assert Image.open(next((tmp_path / "b").glob("*.png"))).size == (50, 40)

    prediction = nocdet.load(model).predict(folder / "small.png")[0]
    assert len(prediction.category_ids) == len(prediction.labels) > 0
    assert [id_of[n] for n in prediction.names] == prediction.category_ids.tolist()


# ------------------------------------------------------------------ pretrain on COCO data

def coco_images(tmp_path: Path) -> Path:
    """The two images of :func:`write_instances`, each object painted in its own colour."""
    import cv2
    import numpy as np

    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    canvas = np.full((48, 64, 3), 230, np.uint8)
    for k, colour in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200)]):
        cv2.rectangle(canvas, (4 + 10 * k, 4), (11 + 10 * k, 11), colour, -1)
    for k in range(2):
        cv2.imwrite(str(images / f"{k}.png"), canvas)
    return images


def test_pretrain_takes_a_coco_split_or_a_configs_data(tmp_path, capsys):
    images = coco_images(tmp_path)
    split = f"{write_instances(tmp_path / 'instances_train.json', CATEGORIES)}:{images}"
    small = ["--backbone", "small-zf", "--option", "width=0.25", "--epochs", "1", "--crop-size", "32",
             "--threads", "1", "--no-progress"]
    assert main(["pretrain", "--coco", split, "--out", str(tmp_path / "a.pt"), *small]) == 0, capsys.readouterr().err
    assert (tmp_path / "a.pt").is_file()
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  format: coco\n  train: ['{split}']\n  test: '{split}'\n")
    assert main(["pretrain", "--config", str(config), "--out", str(tmp_path / "b.pt"), *small]) == 0
    assert (tmp_path / "b.pt").is_file()
    test_split = f"{write_instances(tmp_path / 'instances_test.json', CATEGORIES)}:{images}"
    capsys.readouterr()
    assert main(["pretrain", "--coco", test_split, "--out", str(tmp_path / "c.pt"), *small]) == 2
    assert "pre-training on test images" in capsys.readouterr().err
