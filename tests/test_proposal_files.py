"""Proposal files (NPZ / JSON), their validation, and R-CNN .mat conversion."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import scipy.io

from nocdet.commands import proposals as command
from nocdet.data.sample import DetectionDataset, Sample
from nocdet.errors import DataError
from nocdet.proposals.files import convert_rcnn_mat, load_proposals, save_proposals

PROPOSALS = {
    "000005": np.array([[0, 0, 10, 10], [2.5, 3.25, 40, 30]], np.float32),
    "file": np.array([[1, 1, 2, 2]], np.float32),  # a name np.savez(**kw) would refuse
    "2008_000001": np.zeros((0, 4), np.float32),
}


def dataset(*ids: str, width: int = 50, height: int = 40) -> DetectionDataset:
    return DetectionDataset(["cat"], [Sample(i, f"{i}.jpg", width, height) for i in ids], "toy")


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_round_trip(tmp_path, suffix):
    path = tmp_path / f"props{suffix}"
    save_proposals(path, PROPOSALS)
    with pytest.warns(UserWarning, match="1 of 3 images have no proposals"):
        loaded = load_proposals(path)
    assert list(loaded) == list(PROPOSALS)
    for image_id, boxes in PROPOSALS.items():
        assert loaded[image_id].dtype == np.float32 and loaded[image_id].shape == boxes.shape
        np.testing.assert_array_equal(loaded[image_id], boxes)


def test_json_layout(tmp_path):
    path = tmp_path / "props.json"
    save_proposals(path, {"a": np.array([[1, 2, 3, 4]], np.float32)})
    assert json.loads(path.read_text()) == {"format": "nocdet-proposals", "version": 1,
                                            "coords": "x1y1x2y2", "proposals": {"a": [[1, 2, 3, 4]]}}


def test_dataset_selects_orders_and_requires_images(tmp_path):
    path = tmp_path / "props.npz"
    save_proposals(path, PROPOSALS)
    loaded = load_proposals(path, dataset("file", "000005"))
    assert list(loaded) == ["file", "000005"]
    with pytest.raises(DataError, match=r"2 of 3 images of toy have no entry: x1, x2") as info:
        load_proposals(path, dataset("x1", "000005", "x2"))
    assert str(path) in str(info.value)


def test_boxes_outside_the_image_are_an_error(tmp_path):
    path = tmp_path / "props.json"
    save_proposals(path, {"a": np.array([[0, 0, 50, 40], [0, 0, 40.5, 51]], np.float32)})
    load_proposals(path, dataset("a", width=50, height=50))
    with pytest.raises(DataError, match=r"\[image a, box 1\].*outside the 50 x 40 image"):
        load_proposals(path, dataset("a", width=50, height=40))


def write_json(path, proposals, **header):
    document = {"format": "nocdet-proposals", "version": 1, "coords": "x1y1x2y2", **header,
                "proposals": proposals}
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("boxes, match", [
    ([[0, 0, 1]], r"\[image a\]: boxes must have shape \[N, 4\], got \[1, 3\]"),
    ([[0, 0, 1, 1], [0, 0, 1]], r"\[image a\]: boxes must be numbers"),
    ([[0, 0, 1, "x"]], r"\[image a\]: boxes must be numbers"),
    ([[0, 0, 5, 5], [4, 0, 3, 5]], r"\[image a, box 1\]: box .* has x2 < x1"),
    ([[0, 3, 5, 2]], r"\[image a, box 0\]: box .* y2 < y1"),
    ([[0, 0, 5, 5], [0, 0, 5, 1e999]], r"\[image a, box 1\]: non-finite"),
    ([0, 0, 5, 5], r"shape \[N, 4\], got \[4\]"),
])
def test_bad_json_boxes(tmp_path, boxes, match):
    path = write_json(tmp_path / "p.json", {"a": boxes})
    with pytest.raises(DataError, match=match) as info:
        load_proposals(path)
    assert str(path) in str(info.value)


def test_bad_npz_boxes(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, a=np.zeros((2, 4)), b=np.array([[0, 0, np.nan, 1]]))
    with pytest.raises(DataError, match=r"p.npz \[image b, box 0\]: non-finite"):
        load_proposals(path)
    np.savez(path, a=np.zeros((2, 5)))
    with pytest.raises(DataError, match=r"\[image a\]: boxes must have shape"):
        load_proposals(path)


@pytest.mark.parametrize("content, match", [
    ("{not json", "invalid JSON"),
    (json.dumps([1, 2]), "not a proposal file"),
    (json.dumps({"format": "other", "proposals": {}}), "not a proposal file"),
    (json.dumps({"format": "nocdet-proposals", "version": 2, "coords": "x1y1x2y2", "proposals": {}}),
     "unsupported version 2"),
    (json.dumps({"format": "nocdet-proposals", "version": 1, "coords": "xywh", "proposals": {}}),
     "unsupported coords 'xywh'"),
    (json.dumps({"format": "nocdet-proposals", "version": 1, "coords": "x1y1x2y2", "proposals": []}),
     "must be an object"),
])
def test_bad_json_documents(tmp_path, content, match):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        load_proposals(path)


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_proposals(tmp_path / "none.npz")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(DataError, match="unknown proposal file type '.txt'"):
        load_proposals(tmp_path / "p.txt")
    with pytest.raises(DataError, match="unknown proposal file type"):
        save_proposals(tmp_path / "p.pkl", PROPOSALS)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="unreadable .npz"):
        load_proposals(tmp_path / "broken.npz")
    with open(tmp_path / "single.npz", "wb") as f:
        np.save(f, np.zeros((2, 4)))
    with pytest.raises(DataError, match="not an .npz archive"):
        load_proposals(tmp_path / "single.npz")


def test_save_validates(tmp_path):
    with pytest.raises(DataError, match=r"\[image a, box 0\].*x2 < x1"):
        save_proposals(tmp_path / "p.npz", {"a": np.array([[5, 0, 1, 1]])})
    assert not (tmp_path / "p.npz").exists()


# ------------------------------------------------------------------------------ R-CNN .mat

def write_mat(path, cells: list, ids: list[str]) -> None:
    """R-CNN's layout: 'boxes' a 1 x N cell of [N, 4] doubles, 'images' an N x 1 cell of strings."""
    boxes = np.empty((1, len(cells)), dtype=object)
    for k, cell in enumerate(cells):
        boxes[0, k] = np.asarray(cell, np.float64).reshape(-1, 4)
    images = np.empty((len(ids), 1), dtype=object)
    images[:, 0] = ids
    scipy.io.savemat(path, {"boxes": boxes, "images": images})


def test_convert_rcnn_mat_by_hand(tmp_path):
    mat = tmp_path / "voc_2007_test.mat"
    # [y1 x1 y2 x2], 1-based inclusive
    write_mat(mat, [[[5, 10, 50, 100], [1, 1, 375, 500]], [], [[2, 3, 2, 3]]], ["000001", "000004", "000006"])
    out = tmp_path / "ss.npz"
    converted = convert_rcnn_mat(mat, out)
    expected = {
        "000001": [[9, 4, 100, 50], [0, 0, 500, 375]],  # x1 = col1 - 1, y1 = row1 - 1, x2 = col2, y2 = row2
        "000004": np.zeros((0, 4)),
        "000006": [[2, 1, 3, 2]],  # the single pixel at row 2, column 3
    }
    with pytest.warns(UserWarning, match="no proposals"):
        loaded = load_proposals(out)
    for result in (converted, loaded):
        assert list(result) == list(expected)
        for image_id, boxes in expected.items():
            np.testing.assert_array_equal(result[image_id], np.asarray(boxes, np.float32).reshape(-1, 4))


def test_convert_rcnn_mat_selects_ids(tmp_path):
    mat = tmp_path / "ss.mat"
    write_mat(mat, [[[1, 1, 2, 2]], [[3, 3, 4, 4]]], ["a", "b"])
    assert list(convert_rcnn_mat(mat, tmp_path / "o.json", ["b"])) == ["b"]
    assert list(load_proposals(tmp_path / "o.json")) == ["b"]
    with pytest.raises(DataError, match="1 requested images are not in the file: c"):
        convert_rcnn_mat(mat, tmp_path / "o.json", ["b", "c"])


def test_convert_rcnn_mat_errors(tmp_path):
    mat = tmp_path / "zero_based.mat"
    write_mat(mat, [[[0, 0, 5, 5]]], ["a"])
    with pytest.raises(DataError, match=r"\[image a \(cell 1\)\]: .*1-based"):
        convert_rcnn_mat(mat, tmp_path / "o.npz")
    write_mat(mat, [[[1, 1, 5, 5, ]], [[6, 1, 5, 5]]], ["a", "b"])
    with pytest.raises(DataError, match=r"\[image b \(cell 2\)\].*row2 < row1"):
        convert_rcnn_mat(mat, tmp_path / "o.npz")
    scipy.io.savemat(mat, {"all_boxes": np.zeros((1, 4))})
    with pytest.raises(DataError, match="no 'boxes' variable"):
        convert_rcnn_mat(mat, tmp_path / "o.npz")
    write_mat(mat, [[[1, 1, 2, 2]]], ["a", "b"])
    with pytest.raises(DataError, match="1 box arrays but 2 image ids"):
        convert_rcnn_mat(mat, tmp_path / "o.npz")
    with pytest.raises(DataError, match="MATLAB file does not exist"):
        convert_rcnn_mat(tmp_path / "none.mat", tmp_path / "o.npz")
    (tmp_path / "junk.mat").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.mat"):
        convert_rcnn_mat(tmp_path / "junk.mat", tmp_path / "o.npz")
    assert not (tmp_path / "o.npz").exists()


def test_convert_mat_command(tmp_path, capsys):
    mat = tmp_path / "ss.mat"
    write_mat(mat, [[[5, 10, 50, 100]]], ["000001"])
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["convert-mat", str(mat), "--out", str(tmp_path / "o.npz")])
    assert command.run(args) == 0
    assert "wrote proposals of 1 images" in capsys.readouterr().out
    np.testing.assert_array_equal(load_proposals(tmp_path / "o.npz")["000001"], [[9, 4, 100, 50]])
