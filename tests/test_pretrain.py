"""``nocdet pretrain``: the crop set, learning, the weights file that build_backbone loads, resume, CLI."""
from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

import nocdet.cli as cli
import nocdet.training.pretrain as pretrain_module
from nocdet.data.sample import Sample
from nocdet.data.voc import read_voc, write_voc_annotation, write_voc_split
from nocdet.errors import ConfigError
from nocdet.features.registry import build_backbone
from nocdet.training.checkpoint import load_checkpoint
from nocdet.training.pretrain import _crops, make_classification_set, pretrain

CLASSES = ["block", "frame"]
TINY_ZF = {"width": 0.25, "fc_dim": 32}  # conv widths 8-16-24-24-16
FAST = {"crop_size": 32, "batch_size": 16, "lr": 0.05, "per_object": 2, "backgrounds_per_image": 2,
        "holdout": 0.25, "progress": False, "threads": 1}


def _draw(rng: np.random.Generator, size: int = 96) -> tuple[np.ndarray, list, list]:
    """Dark noise with two non-overlapping white shapes: a filled square (block) and an outline (frame)."""
    image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    boxes, labels = [], []
    for label, (x_range, y_range) in zip(rng.permutation([1, 2]), [((4, 36), (4, 64)), ((52, 70), (4, 64))]):
        side = int(rng.integers(16, 26))
        x, y = int(rng.integers(*x_range)), int(rng.integers(*y_range))
        image[y:y + side, x:x + side] = 230
        if label == 2:
            image[y + 4:y + side - 4, x + 4:x + side - 4] = rng.integers(0, 60, (side - 8, side - 8, 3))
        boxes.append((x, y, x + side, y + side))
        labels.append(int(label))
    return image, boxes, labels


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """A VOC folder: 32 train images (ids 000001..) and 4 test images (ids 900001..), 2 objects each."""
    root = tmp_path_factory.mktemp("shapes") / "VOC"
    (root / "JPEGImages").mkdir(parents=True)
    rng = np.random.default_rng(7)
    ids = {"train": [f"{i:06d}" for i in range(1, 33)], "test": [f"{900000 + i}" for i in range(1, 5)]}
    for split, split_ids in ids.items():
        for image_id in split_ids:
            image, boxes, labels = _draw(rng)
            path = root / "JPEGImages" / f"{image_id}.png"
            Image.fromarray(image).save(path)
            sample = Sample(image_id, path, image.shape[1], image.shape[0], boxes, labels, [False] * len(boxes))
            write_voc_annotation(root / "Annotations" / f"{image_id}.xml", sample, CLASSES)
        write_voc_split(root, split, split_ids)
    return root


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """A 10-epoch small-zf run on the train split, shared by several tests."""
    out = tmp_path_factory.mktemp("weights") / "small-zf.pt"
    result = pretrain("small-zf", TINY_ZF, read_voc(shapes, "train", CLASSES), out, epochs=10, seed=0, **FAST)
    return result


def test_crop_set_uses_only_the_given_split(shapes, monkeypatch):
    loaded = []
    real = pretrain_module.load_image
    monkeypatch.setattr(pretrain_module, "load_image", lambda path: loaded.append(Path(path).stem) or real(path))
    train = read_voc(shapes, "train", CLASSES)
    crops = make_classification_set(train, crop_size=32, per_object=3, backgrounds_per_image=2, seed=1)
    assert loaded and set(loaded) <= {s.image_id for s in train.samples}
    assert not any(image_id.startswith("9") for image_id in loaded)  # no test image was ever read
    assert crops.classes == ["__background__", "block", "frame"]
    assert crops.images.shape[1:] == (32, 32, 3) and crops.images.dtype == np.uint8
    assert np.bincount(crops.labels, minlength=3)[1:].tolist() == [3 * 32, 3 * 32]  # 3 crops per object


def test_crop_labels_and_overlaps(shapes):
    train = read_voc(shapes, "train", CLASSES)
    crops = make_classification_set(train, crop_size=32, per_object=3, backgrounds_per_image=4, seed=1)
    assert (crops.labels == 0).sum() > 3 * len(train)  # most images get their 4 background boxes
    for k in range(len(crops)):
        sample = train.samples[crops.image_index[k]]
        iou = box_iou(torch.from_numpy(crops.boxes[k:k + 1]), torch.from_numpy(sample.boxes))[0]
        if crops.labels[k] == 0:
            assert iou.max() < 0.3
        else:  # objects are apart (IoU 0 between them): the crop's object is the one it overlaps most
            best = int(iou.argmax())
            assert iou[best] >= 0.7 and crops.labels[k] == sample.labels[best]
        box = crops.boxes[k]
        assert 0 <= box[0] < box[2] <= sample.width and 0 <= box[1] < box[3] <= sample.height


def test_crop_set_is_deterministic(shapes):
    train = read_voc(shapes, "train", CLASSES)
    a, b = (make_classification_set(train, 32, 2, 2, seed=3) for _ in range(2))
    c = make_classification_set(train, 32, 2, 2, seed=4)
    assert a.fingerprint() == b.fingerprint()
    assert np.array_equal(a.images, b.images) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.boxes, c.boxes)


def test_roi_is_the_box_inside_its_crop():
    """A white 20 x 30 box on black, cropped with context 2 (a 60 px square) and resized to 30 px:
    the white pixels of the crop are the RoI, which is the box scaled by 1/2 around the centre."""
    image = np.zeros((100, 100, 3), np.uint8)
    image[40:70, 30:50] = 255  # box (30, 40, 50, 70): centre (40, 55)
    crops, rois = _crops(image, np.array([[30.0, 40.0, 50.0, 70.0]]), np.array([2.0]), 30)
    # square side 60 at (10, 25); scale 30 / 60: box -> (10, 7.5, 20, 22.5)
    assert rois[0].tolist() == pytest.approx([10.0, 7.5, 20.0, 22.5])
    rows, cols = np.nonzero(crops[0, :, :, 0] > 127)
    assert (cols.min(), cols.max() + 1) == (10, 20)
    assert abs(rows.min() - 7.5) <= 0.5 and abs(rows.max() + 1 - 22.5) <= 0.5


def test_pretrain_learns(trained):
    assert trained.interrupted is None and trained.epochs == 10
    # held-out crops: 8 images x (2 objects x 2 + 2 backgrounds); the largest class is a third
    assert trained.num_heldout >= 40
    assert trained.accuracy >= 0.8, trained.history
    assert trained.history[-1]["loss"] < trained.history[0]["loss"]


def test_weights_load_through_build_backbone(trained):
    state = load_checkpoint(trained.path)
    assert state["backbone_name"] == "small-zf" and state["backbone_options"] == TINY_ZF
    loaded = build_backbone("small-zf", weights=trained.path, **state["backbone_options"])
    assert loaded.fc_pretrained
    (w6, b6), (w7, b7) = loaded.fc67()
    classifier = trained.backbone.classifier
    for got, want in [(w6, classifier[0].weight), (b6, classifier[0].bias), (w7, classifier[3].weight),
                      (b7, classifier[3].bias)]:
        assert torch.equal(got, want.detach())
    trained_state = trained.backbone.state_dict()
    for key, value in loaded.state_dict().items():  # conv trunk, BatchNorm statistics, fc6/fc7
        assert torch.equal(value, trained_state[key]), key
    assert not torch.equal(loaded.conv1.weight, build_backbone("small-zf", **TINY_ZF).conv1.weight)


def test_small_resnet_weights_load(shapes, tmp_path):
    options = {"width": 0.25}
    out = tmp_path / "small-resnet.pt"
    result = pretrain("small-resnet", options, read_voc(shapes, "train", CLASSES), out, epochs=1, **FAST)
    loaded = build_backbone("small-resnet", weights=out, **options)
    assert loaded.fc67() is None  # no fc6/fc7: the res5 stage is what a conv NoC reuses
    trained_state = result.backbone.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, trained_state[key]), key
    assert any(key.startswith("layer4.") for key in trained_state)  # res5 was trained through RoI pooling


def test_resume_after_interruption_equals_a_straight_run(shapes, tmp_path, monkeypatch):
    train = read_voc(shapes, "train", CLASSES)
    straight = pretrain("small-zf", TINY_ZF, train, tmp_path / "straight.pt", epochs=2, seed=5, **FAST)

    real_save = pretrain_module.save_checkpoint

    def save_then_interrupt(path, state):  # Ctrl-C right after the first epoch's checkpoint
        real_save(path, state)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(pretrain_module, "save_checkpoint", save_then_interrupt)
    out = tmp_path / "resumed.pt"
    first = pretrain("small-zf", TINY_ZF, train, out, epochs=2, seed=5, **FAST)
    assert first.interrupted == "SIGINT" and first.epochs == 1
    # the signal is seen after the next batch, the first of epoch 2: the checkpoint holds it
    steps_per_epoch = load_checkpoint(tmp_path / "straight.pt")["iteration"] // 2
    interrupted = load_checkpoint(out)
    assert interrupted["epoch"] == 1 and interrupted["iteration"] == steps_per_epoch + 1
    assert len(interrupted["epoch_losses"]) == 1
    monkeypatch.setattr(pretrain_module, "save_checkpoint", real_save)
    resumed = pretrain("small-zf", TINY_ZF, train, out, epochs=2, seed=5, resume=True, **FAST)
    assert resumed.epochs == 2 and resumed.interrupted is None
    a, b = load_checkpoint(tmp_path / "straight.pt"), load_checkpoint(out)
    assert a["backbone"].keys() == b["backbone"].keys()
    for key in a["backbone"]:
        assert torch.equal(a["backbone"][key], b["backbone"][key]), key
    assert torch.equal(a["fc"]["weight"], b["fc"]["weight"])
    assert resumed.accuracy == straight.accuracy

    with pytest.raises(ConfigError, match="lr"):
        pretrain("small-zf", TINY_ZF, train, out, epochs=2, seed=5, resume=True, **{**FAST, "lr": 0.01})


def run_cli(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(cli, "COMMANDS", ["pretrain"])
    return cli.main(["pretrain", *map(str, args)])


def test_cli_writes_weights(shapes, tmp_path, monkeypatch, capsys):
    out = tmp_path / "w.pt"
    rc = run_cli(monkeypatch, "--voc-root", shapes, "--backbone", "small-zf", "--option", "width=0.25",
                 "--option", "fc_dim=32", "--epochs", "1", "--crop-size", "32", "--out", out, "--no-progress",
                 "--threads", "1")
    printed = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert "held-out accuracy" in printed and str(out) in printed
    assert build_backbone("small-zf", weights=out, width=0.25, fc_dim=32).fc_pretrained


def test_cli_refuses_the_test_split_and_bad_options(shapes, tmp_path, monkeypatch, capsys):
    assert run_cli(monkeypatch, "--voc-root", shapes, "--split", "test", "--out", tmp_path / "w.pt") == 2
    assert "test" in capsys.readouterr().err and not (tmp_path / "w.pt").exists()
    assert run_cli(monkeypatch, "--voc-root", shapes, "--option", "depth=3", "--out", tmp_path / "w.pt") == 2
    assert "depth" in capsys.readouterr().err


def test_pretrain_refuses_to_write_over_a_file_that_is_not_its_own(shapes, tmp_path):
    train = read_voc(shapes, "train", CLASSES)
    model = tmp_path / "model.pt"
    torch.save({"format": "nocdet-frozen-detector", "head": {}}, model)
    weights = tmp_path / "weights.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, weights)
    for path in (model, weights):
        before = path.read_bytes()
        with pytest.raises(ConfigError, match="is not a nocdet pre-training checkpoint: pre-training would "
                                              "overwrite it"):
            pretrain("small-zf", TINY_ZF, train, path, epochs=1, **FAST)
        assert path.read_bytes() == before
    with pytest.raises(ConfigError, match="is a folder"):
        pretrain("small-zf", TINY_ZF, train, tmp_path, epochs=1, **FAST)
