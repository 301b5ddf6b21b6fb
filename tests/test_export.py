"""``nocdet export``: the ONNX graph reproduces the PyTorch detector on images of any size.

The truth is :meth:`FrozenNoCDetector.score_regions`, the path ``detect`` takes (tested against
the cached training pipeline in test_frozen_pipeline.py). Two tiny trained models (a maxout NoC
and a single-scale one, both with SVMs and a box regressor) serve every case by editing their
checkpoint: softmax or SVM scores, with or without the regressor, 1-3 pyramid levels that
shrink and enlarge the image, the ``max_size`` cap, RoI max pooling or RoIAlign.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from nocdet.data.images import load_image
from nocdet.detector import load
from nocdet.errors import ConfigError, NocdetError
from nocdet.export import DetectorGraph, export_onnx, onnx_metadata, onnx_session, run_onnx
from nocdet.features.pyramid import MAX_ASPECT, pyramid_scale_factors
from nocdet.postprocess import detect_from_scores
from nocdet.proposals.files import load_proposals
from nocdet.boxes import box_iou
from tiny_model import make_data, train_tiny

DRIVER = "import sys, nocdet.cli as cli; cli.COMMANDS = ['export']; sys.exit(cli.main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    make_data(root)
    post_hoc = ["svm.enabled=true", "bbox.enabled=true", "test.score=svm", "test.score_threshold=-1.5"]
    lite0 = ["backbone.name=efficientnet-lite0", "backbone.options={upto: eff6}", "backbone.weights=imagenet",
             "pyramid.target_area=12544", "noc.spec=c16-mo-c16-f32-f32-fn+1"]
    return root, {"maxout": train_tiny(root, "maxout", post_hoc),
                  "single": train_tiny(root, "single", ["noc.spec=f32-f32-fn+1", *post_hoc]),
                  "lite0": train_tiny(root, "lite0", [*lite0, *post_hoc])}


def variant(models, tmp_path, name: str, score: str, bbox: bool, **pyramid) -> str:
    """A copy of a trained checkpoint with another scoring, without the regressor, other pyramid.

    After 8 iterations the softmax is nearly uniform (scores within 1e-6 of each other), where
    float noise legitimately reorders near-equal scores in NMS; the classifier's logits are
    sharpened x50 so that the final detections are well separated.
    """
    state = torch.load(models[1][name], weights_only=False)
    for key in ("cls_score.weight", "cls_score.bias"):
        state["head"][key] = state["head"][key] * 50
    state["config"]["test"].update(score=score, score_threshold=-1.5 if score == "svm" else 0.0)
    state["config"]["pyramid"].update(pyramid)
    if not bbox:
        state["bbox"] = None
    path = tmp_path / f"{name}-{score}-{bbox}.pt"
    torch.save(state, path)
    return str(path)


def two_images(models):
    """A test image as it is, and another one cropped to a different size, with proposals."""
    root = models[0]
    proposals = load_proposals(root / "proposals_test.npz")
    first, second = sorted(proposals)[:2]
    a = load_image(root / "data" / "JPEGImages" / f"{first}.jpg")
    b = load_image(root / "data" / "JPEGImages" / f"{second}.jpg")[:-37, 5:]
    boxes_b = proposals[second] - np.array([5, 0, 5, 0], np.float32)
    boxes_b = boxes_b[(boxes_b[:, 0] >= 0) & (boxes_b[:, 3] <= b.shape[0])]
    assert a.shape != b.shape
    return [(a, proposals[first]), (b, boxes_b)]


def assert_same_detections(expected, actual):
    assert len(actual.scores) == len(expected.scores)
    for box, score, label in zip(expected.boxes, expected.scores, expected.labels):
        same_class = actual.labels == label
        iou = box_iou(box[None], actual.boxes[same_class])[0]
        j = int(np.argmax(iou))
        assert iou[j] > 0.9999 and abs(actual.scores[same_class][j] - score) < 1e-4


CASES = [  # model, score, box regressor, pyramid
    ("maxout", "svm", True, {}),
    ("maxout", "softmax", False, {"scales": [120, 200, 360]}),
    ("single", "softmax", True, {"scales": [160, 360], "max_size": 400}),
    ("single", "svm", False, {"scales": [240], "pool": "align"}),
    # EfficientNet-Lite pads each level to a multiple of 32: the padding must follow the image size
    ("lite0", "softmax", True, {"scales": [150, 230]}),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,score,bbox,pyramid", CASES)
def test_onnx_matches_pytorch_on_two_image_sizes(models, tmp_path, name, score, bbox, pyramid):
    checkpoint = variant(models, tmp_path, name, score, bbox, **pyramid)
    detector = load(checkpoint)
    session = onnx_session(export_onnx(checkpoint, tmp_path / "model.onnx"))
    meta = onnx_metadata(session)
    assert meta["classes"] == detector.classes and meta["score"] == score
    for image, proposals in two_images(models):
        expected_scores, expected_boxes = detector.score_regions(image, proposals)
        scores, boxes = run_onnx(session, image, proposals)
        num_classes = len(detector.classes)
        assert scores.shape == (len(proposals), num_classes) and boxes.shape == (len(proposals), num_classes, 4)
        np.testing.assert_allclose(scores, expected_scores.numpy(), atol=1e-4, rtol=0)
        if bbox:
            np.testing.assert_allclose(boxes, expected_boxes.numpy(), atol=1e-3, rtol=0)
            assert not np.allclose(boxes, proposals[:, None, :])  # the regressor moved them
        else:
            np.testing.assert_array_equal(boxes, np.repeat(proposals[:, None, :], num_classes, axis=1))
        if score == "softmax":
            assert np.all(scores.sum(1) < 1.0)  # background took the rest
        height, width = image.shape[:2]
        expected = detect_from_scores("x", expected_boxes, expected_scores, width, height, detector.config.test)
        actual = detect_from_scores("x", torch.from_numpy(boxes), torch.from_numpy(scores), width, height,
                                    detector.config.test)
        assert len(expected.scores) > 0
        assert_same_detections(expected, actual)


@pytest.mark.slow
def test_cli_exports_a_model_onnxruntime_runs(models, tmp_path):
    out = tmp_path / "exported" / "model.onnx"
    proc = subprocess.run([sys.executable, "-c", DRIVER, "export", "--checkpoint", str(models[1]["maxout"]),
                           "--format", "onnx", "--out", str(out), "--opset", "19"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout and "scores [R, 10]" in proc.stdout
    image, proposals = two_images(models)[0]
    scores, boxes = run_onnx(out, image, proposals)
    assert scores.shape == (len(proposals), 10) and np.isfinite(boxes).all()


def test_a_file_that_is_not_a_model_is_a_clear_error(tmp_path):
    other = tmp_path / "weights.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(NocdetError, match="not a detector saved by nocdet train"):
        export_onnx(other, tmp_path / "m.onnx")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(NocdetError, match="notes.txt"):
        export_onnx(text, tmp_path / "m.onnx")
    with pytest.raises(NocdetError, match="not an ONNX model"):
        onnx_session(text)
    assert not (tmp_path / "m.onnx").exists()


def test_unsupported_format_and_opset_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unsupported export format 'tflite'; supported: onnx"):
        export_onnx(tmp_path / "model.pt", tmp_path / "m.tflite", format="tflite")
    with pytest.raises(ConfigError, match="opset >= 18"):
        export_onnx(tmp_path / "model.pt", tmp_path / "m.onnx", opset=11)
    with pytest.raises(ConfigError, match="<= 20"):
        export_onnx(tmp_path / "model.pt", tmp_path / "m.onnx", opset=25)
    proc = subprocess.run([sys.executable, "-c", DRIVER, "export", "--checkpoint", str(tmp_path / "model.pt"),
                           "--format", "tflite", "--out", str(tmp_path / "m")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "unsupported export format 'tflite'" in proc.stderr


@pytest.mark.parametrize("height, width, max_size", [(100, 2000, None), (60, 3000, 900), (200, 260, None)])
def test_graph_pyramid_factors_are_the_detectors_with_the_aspect_cap(models, height, width, max_size):
    """The exported graph sizes its pyramid levels as pyramid_scale_factors does (which training,
    caching and detect use), including the whole-pyramid shrink of images beyond MAX_ASPECT:1."""
    detector = load(models[1]["maxout"])
    graph = DetectorGraph(detector)
    graph.max_size = max_size
    expected = pyramid_scale_factors(width, height, detector.config.pyramid.scales, max_size)
    assert graph.factors(torch.zeros(3, height, width)).tolist() == pytest.approx(expected, rel=1e-12)
    longest = max(expected) * width
    assert longest <= MAX_ASPECT * max(detector.config.pyramid.scales) + 1e-9
