"""Large images: ``nocdet detect`` decodes an image no larger than the model's largest resize of it,
a pyramid of extreme aspect ratio is bounded, and nocdet's own decompression-bomb limit counts
decoded pixels (before: a 20000 x 200 image took 7 min and 4.3 GB; a 20000 x 20000 JPEG was
refused by PIL's limit on its stored size)."""
import json
import sys

import numpy as np
import pytest
from PIL import Image

import nocdet.cli as cli
import nocdet.data.images as images
from nocdet.commands.detect import largest_side, load_for
from nocdet.detector import load
from nocdet.errors import DataError
from nocdet.features.pyramid import pyramid_scale_factors


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A model.pt with random weights: one scale of 160 (no max_size: MAX_ASPECT x 160 = 640)."""
    from dataclasses import asdict

    from nocdet.experiment import load_experiment
    from nocdet.frozen_detector import build_frozen_backbone, build_head
    from nocdet.training.checkpoint import save_checkpoint

    cfg = load_experiment(None, [
        "backbone.name=small-zf", "backbone.options={width: 0.25, fc_dim: 32}", "proposals.min_size=6",
        "proposals.max_boxes=20", "proposals.color_spaces=[hsv]", "proposals.ks=[100]", "pyramid.scales=[160]",
        "noc.spec=f32-fn+1", "svm.enabled=false", "bbox.enabled=false", "test.score=softmax",
        "test.score_threshold=0.0"])
    backbone = build_frozen_backbone(cfg)
    path = tmp_path_factory.mktemp("large") / "model.pt"
    save_checkpoint(path, {"format": "nocdet-frozen-detector", "version": 1, "config": asdict(cfg),
                           "classes": ["a", "b"], "head": build_head(cfg, backbone, 2).state_dict(),
                           "backbone_state": backbone.state_dict(), "svms": None, "bbox": None})
    return path


def test_the_decoded_size_follows_the_models_largest_resize(model, tmp_path):
    detector = load(model)
    # shorter side to 160: a 2000 x 1000 image is seen at 320 x 160, a 100 x 50 one at 320 x 160 too
    assert largest_side(detector, 2000, 1000) == 320
    assert largest_side(detector, 100, 50) == 320
    # a 20000 x 200 strip would be 16000 x 160; its pyramid is shrunk to a longer side of 4 x 160
    assert largest_side(detector, 20000, 200) == 640
    assert pyramid_scale_factors(20000, 200, [160]) == [pytest.approx(640 / 20000)]
    assert pyramid_scale_factors(400, 100, [160]) == [160 / 100]  # 4:1: untouched

    Image.new("RGB", (2000, 1000), (90, 120, 30)).save(tmp_path / "big.jpg")
    image, to_file = load_for(detector, tmp_path / "big.jpg")
    assert image.shape == (160, 320, 3)
    assert to_file.tolist() == [2000 / 320, 1000 / 160] * 2


def test_detect_on_a_strip_reports_boxes_in_its_own_pixels(model, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (200, 20000, 3), dtype=np.uint8)).save(tmp_path / "strip.png")
    assert cli.main(["detect", str(tmp_path / "strip.png"), "--checkpoint", str(model), "--out",
                     str(tmp_path / "out"), "--no-progress", "--threshold", "0"]) == 0
    boxes = np.array([d["bbox"] for d in json.loads((tmp_path / "out" / "detections.json").read_text())])
    assert len(boxes) > 0
    x2, y2 = boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]
    assert x2.max() <= 20000 + 1e-6 and y2.max() <= 200 + 1e-6 and x2.max() > 640  # not the decoded 640 x 6
    assert Image.open(tmp_path / "out" / "00000_strip.png").size[0] < 20000  # drawn at the decoded size


def test_the_pixel_limit_counts_decoded_pixels(tmp_path, monkeypatch):
    Image.new("RGB", (800, 800), (10, 200, 30)).save(tmp_path / "big.jpg")
    Image.new("RGB", (800, 800), (10, 200, 30)).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 100_000)
    with pytest.raises(DataError, match=r"big.jpg: image of 800 x 800 = 640,000 pixels \(as decoded\) is over "
                                        r"nocdet's limit of 100,000"):
        images.load_image(tmp_path / "big.jpg")
    out, _ = images.load_image_bounded(tmp_path / "big.jpg", 100)  # libjpeg decodes 100 x 100: allowed
    assert out.shape == (100, 100, 3)
    with pytest.raises(DataError, match="big.png: image of 800 x 800"):  # a PNG decodes in full
        images.load_image_bounded(tmp_path / "big.png", 100)


def test_pils_own_limit_is_left_as_it_was(tmp_path):
    Image.new("RGB", (20, 10)).save(tmp_path / "a.png")
    before = Image.MAX_IMAGE_PIXELS
    images.load_image(tmp_path / "a.png")
    assert Image.MAX_IMAGE_PIXELS == before


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="VmHWM of /proc/self/status")
def test_detect_on_a_20000_by_20000_jpeg_stays_small(model, tmp_path):
    """Over PIL's decompression-bomb limit by its stored size (4e8 pixels), decoded at 1/8."""
    import subprocess

    Image.new("L", (20000, 20000), 120).save(tmp_path / "huge.jpg", quality=70)  # 0.4 GB to write
    code = ("import sys, nocdet.cli as cli; rc = cli.main(sys.argv[1:]); "
            "print(next(x for x in open('/proc/self/status') if x.startswith('VmHWM')).split()[1]); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "detect", str(tmp_path / "huge.jpg"), "--checkpoint",
                           str(model), "--out", str(tmp_path / "out"), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    peak_mb = int(done.stdout.split()[-1]) / 1024
    assert peak_mb < 1200 + 20000 * 20000 * 3 / 2 ** 20 / 8  # imports + well under 1/8 of the full RGB (1.1 GB)
