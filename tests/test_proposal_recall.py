"""Proposal recall on hand-computed cases, and ``nocdet proposals recall``."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from nocdet.commands import proposals as command
from nocdet.data.sample import DetectionDataset, Sample
from nocdet.data.voc import write_voc_annotation, write_voc_split
from nocdet.errors import DataError
from nocdet.proposals.files import save_proposals
from nocdet.proposals.recall import best_overlaps, proposal_recall

CAT, DOG = 1, 2


def toy() -> tuple[DetectionDataset, dict[str, np.ndarray]]:
    """Image a: cat [0,0,10,10] and dog [20,20,40,40]; image b: a difficult cat and a dog.

    Proposals of a: [0,0,10,8] (IoU 80/100 = 0.8 with the cat), [20,20,40,30] (IoU 200/400 = 0.5
    with the dog). Image b has no proposals.
    """
    a = Sample("a", "a.jpg", 50, 50, [[0, 0, 10, 10], [20, 20, 40, 40]], [CAT, DOG], [False, False])
    b = Sample("b", "b.jpg", 50, 50, [[0, 0, 10, 10], [5, 5, 15, 15]], [CAT, DOG], [True, False])
    proposals = {"a": np.array([[0, 0, 10, 8], [20, 20, 40, 30]], np.float32), "b": np.zeros((0, 4))}
    return DetectionDataset(["cat", "dog", "bird"], [a, b], "toy"), proposals


def test_best_overlaps_by_hand():
    gt = np.array([[0, 0, 10, 10], [20, 20, 40, 40], [100, 100, 110, 110]], np.float32)
    props = np.array([[0, 0, 10, 8], [20, 20, 40, 30], [5, 0, 15, 10]], np.float32)
    # [5,0,15,10] with [0,0,10,10]: 50 / 150 = 1/3 < 0.8
    np.testing.assert_allclose(best_overlaps(gt, props), [0.8, 0.5, 0.0])
    assert best_overlaps(gt, np.zeros((0, 4))).tolist() == [0, 0, 0]
    assert best_overlaps(np.zeros((0, 4)), props).shape == (0,)


def test_recall_hand_case():
    data, proposals = toy()
    result = proposal_recall(data, proposals, (0.5, 0.7))
    # counted: cat a (0.8), dog a (0.5), dog b (0); the difficult cat of b is ignored
    assert result["num_gt"] == 3
    assert result["recall"] == {0.5: pytest.approx(2 / 3), 0.7: pytest.approx(1 / 3)}
    assert result["per_class"]["cat"] == {0.5: 1.0, 0.7: 1.0}
    assert result["per_class"]["dog"] == {0.5: 0.5, 0.7: 0.0}
    assert result["per_class"]["bird"] == {0.5: None, 0.7: None}
    assert result["num_gt_per_class"] == {"cat": 1, "dog": 2, "bird": 0}
    assert result["mean_best_iou"] == pytest.approx((0.8 + 0.5 + 0.0) / 3)
    assert result["boxes_per_image"] == {"mean": 1.0, "median": 1.0, "min": 0, "max": 2}
    assert result["num_images"] == 2


def test_recall_two_objects_one_image():
    data, proposals = toy()
    only_a = DetectionDataset(data.classes, data.samples[:1])
    result = proposal_recall(only_a, proposals)
    assert result["recall"] == {0.5: 1.0, 0.7: 0.5}


def test_difficult_objects_counted_when_asked():
    data, proposals = toy()
    result = proposal_recall(data, proposals, (0.5,), ignore_difficult=False)
    assert result["num_gt"] == 4
    assert result["recall"][0.5] == pytest.approx(2 / 4)
    assert result["per_class"]["cat"][0.5] == pytest.approx(1 / 2)


def test_missing_images_are_an_error():
    data, proposals = toy()
    del proposals["b"]
    with pytest.raises(DataError, match="no proposals for 1 of 2 images: b"):
        proposal_recall(data, proposals)


def test_recall_command(tmp_path, capsys):
    root = tmp_path / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    data, proposals = toy()
    for sample in data.samples:
        path = root / "JPEGImages" / f"{sample.image_id}.png"
        Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(path)
        write_voc_annotation(root / "Annotations" / f"{sample.image_id}.xml", sample, data.classes)
    write_voc_split(root, "test", ["a", "b"])
    save_proposals(tmp_path / "p.npz", proposals)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["recall", str(tmp_path / "p.npz"), "--voc-root", str(root), "--split", "test"])
    with pytest.warns(UserWarning, match="1 of 2 images have no proposals"):
        assert command.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line.split()[0]: line.split()[1:] for line in lines
             if line.split()[:1] in (["cat"], ["dog"], ["all"])}
    assert table["cat"] == ["1", "1.000", "1.000"]
    assert table["dog"] == ["2", "0.500", "0.000"]
    assert table["all"] == ["3", "0.667", "0.333"]
