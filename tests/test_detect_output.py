"""``nocdet detect``'s outputs: ``--threshold`` cuts the pictures and ``detections.json`` alike,
and ``coco_results.json`` (every detection, image ids of the ground truth) is what ``nocdet
evaluate --metric coco`` scores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import nocdet.cli as cli
from nocdet.commands.detect import coco_image_ids_of
from nocdet.data.coco import write_coco_instances
from nocdet.data.voc import read_voc
from nocdet.errors import DataError
from test_detect_folder import tiny_model
from fakes import write_voc

OBJECTS = {"000005": (96, 72, [((10, 10, 40, 40), 1, False)]),
           "000012": (80, 80, [((30, 20, 70, 60), 2, False)])}


@pytest.fixture()
def data(tmp_path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    root = write_voc(tmp_path / "VOC", OBJECTS, ["one", "two"],
                     image=lambda _id, w, h, _objects: rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    gt = tmp_path / "instances.json"
    write_coco_instances(gt, read_voc(root, "test"))
    return root, gt


def test_threshold_cuts_json_and_coco_results_evaluate(tmp_path, data, capsys):
    root, gt = data
    model = tiny_model(tmp_path / "model.pt")  # random weights, every region scored (threshold 0)
    out = tmp_path / "out"
    assert cli.main(["detect", str(root / "JPEGImages"), "--checkpoint", str(model), "--out", str(out),
                     "--threshold", "0.5", "--coco-gt", str(gt), "--no-progress"]) == 0
    kept = json.loads((out / "detections.json").read_text())
    every = json.loads((out / "coco_results.json").read_text())
    assert every and all(d["score"] >= 0.5 for d in kept)
    assert len(kept) == sum(d["score"] >= 0.5 for d in every)
    ids = {img["file_name"]: img["id"] for img in json.loads(gt.read_text())["images"]}
    assert {d["image_id"] for d in every} <= set(ids.values())
    assert {(Path(d["file"]).name, d["image_id"]) for d in kept} <= set(ids.items())
    assert {d["category_id"] for d in every} <= {1, 2}
    capsys.readouterr()

    assert cli.main(["evaluate", "--metric", "coco", "--gt", str(gt), "--results", str(out / "coco_results.json"),
                     "--out", str(tmp_path / "eval")]) == 0
    assert "AP" in capsys.readouterr().out


def test_image_ids_from_numbered_names_positions_or_the_ground_truth(tmp_path, data):
    root, gt = data
    numbered = [Path("a/000005.jpg"), Path("b/000012.png")]
    assert coco_image_ids_of(numbered, None) == {numbered[0]: 5, numbered[1]: 12}
    named = [Path("cat.jpg"), Path("dog.jpg")]
    assert coco_image_ids_of(named, None) == {named[0]: 1, named[1]: 2}
    files = sorted((root / "JPEGImages").iterdir())
    ids = {img["file_name"]: img["id"] for img in json.loads(gt.read_text())["images"]}
    assert coco_image_ids_of(files, gt) == {f: ids[f.name] for f in files}
    with pytest.raises(DataError, match="no image named 'cat.jpg'"):
        coco_image_ids_of(named, gt)
