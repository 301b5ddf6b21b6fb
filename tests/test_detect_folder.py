"""``nocdet detect`` over a folder of mixed images and broken files.

It must process every readable image whatever its size, mode or format, and report every file
it could not use at the end (name and reason, also in ``failed.json``) with exit status 1,
instead of stopping at the first bad one.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nocdet.cli as cli
from nocdet.experiment import load_experiment
from nocdet.training.checkpoint import save_checkpoint
from nocdet.frozen_detector import build_frozen_backbone, build_head

CLASSES = ["one", "two"]


def tiny_model(path: Path) -> Path:
    """A model.pt with random weights: a quarter-width small-zf, one scale, few proposals."""
    cfg = load_experiment(None, [
        "backbone.name=small-zf", "backbone.options={width: 0.25, fc_dim: 32}", "proposals.min_size=6",
        "proposals.max_boxes=20", "proposals.color_spaces=[hsv]", "proposals.ks=[100]", "proposals.max_side=160",
        "pyramid.scales=[96]", "pyramid.max_size=160", "noc.spec=f32-fn+1", "svm.enabled=false",
        "bbox.enabled=false", "test.score=softmax", "test.score_threshold=0.0"])
    backbone = build_frozen_backbone(cfg)
    head = build_head(cfg, backbone, len(CLASSES))
    save_checkpoint(path, {"format": "nocdet-frozen-detector", "version": 1, "config": asdict(cfg),
                           "classes": CLASSES, "similarity_groups": [], "head": head.state_dict(),
                           "backbone_state": backbone.state_dict(), "svms": None, "bbox": None})
    return path


def mixed_folder(folder: Path) -> tuple[list[str], dict[str, str]]:
    """Readable images of many kinds, and broken files with the reason they must be reported for."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def rgb(w, h):
        return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))

    good = {
        "rgb.jpg": rgb(120, 90), "rgb.png": rgb(64, 48), "tall.png": rgb(12, 200), "wide.jpg": rgb(300, 20),
        "tiny.png": rgb(1, 1), "small.jpg": rgb(7, 5), "big.jpg": rgb(640, 480),
        "gray.png": rgb(80, 60).convert("L"), "gray.jpg": rgb(70, 50).convert("L"),
        "bilevel.png": rgb(50, 50).convert("1"), "rgba.png": rgb(60, 40).convert("RGBA"),
        "la.png": rgb(40, 60).convert("LA"), "palette.png": rgb(64, 64).convert("P"),
        "palette.gif": rgb(50, 30).convert("P"), "cmyk.jpg": rgb(60, 60).convert("CMYK"),
        "image.bmp": rgb(33, 47), "image.tif": rgb(45, 35), "image.webp": rgb(66, 44),
        "sub/nested.png": rgb(30, 30), "UPPER.JPG": rgb(50, 40),
    }
    sixteen = Image.fromarray((rng.integers(0, 65535, (48, 64))).astype(np.uint16))
    transparent = rgb(40, 40).convert("P")
    transparent.info["transparency"] = 0
    for name, image in good.items():
        (folder / name).parent.mkdir(exist_ok=True)
        image.save(folder / name)
    sixteen.save(folder / "depth16.png")
    transparent.save(folder / "transparent.png", transparency=0)
    good = sorted([*good, "depth16.png", "transparent.png"])
    assert Image.open(folder / "depth16.png").mode.startswith("I")

    jpeg = folder / "rgb.jpg"
    bad = {
        "empty.jpg": "empty file",
        "truncated.jpg": "truncated",
        "text.png": "not an image",
        "noise.webp": "not an image",
        "folder.png": "is a folder",
        "truncated.png": "truncated",
    }
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(jpeg.read_bytes()[:600])
    (folder / "text.png").write_text("this is not a picture\n")
    (folder / "noise.webp").write_bytes(rng.integers(0, 255, 500, dtype=np.uint8).tobytes())
    (folder / "folder.png").mkdir()
    (folder / "truncated.png").write_bytes((folder / "rgb.png").read_bytes()[:300])
    (folder / "notes.txt").write_text("not an image extension: skipped, not an error\n")
    return good, bad


def test_detect_processes_every_readable_image_and_lists_the_rest_at_the_end(tmp_path, capsys, monkeypatch):
    model = tiny_model(tmp_path / "model.pt")
    good, bad = mixed_folder(tmp_path / "images")
    monkeypatch.setattr(cli, "COMMANDS", ["detect"])
    out = tmp_path / "out"
    code = cli.main(["detect", "--checkpoint", str(model), str(tmp_path / "images"), "--out", str(out),
                     "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 1
    assert len(good) + len(bad) == 28
    # every readable image is drawn, whatever came before or after a broken file
    drawn = sorted(p.name.split("_", 1)[1] for p in out.glob("*.png"))
    assert drawn == sorted(Path(name).stem + ".png" for name in good)
    # the failures come last, each with its file name and reason, and a count
    summary = printed[printed.index("could not read"):]
    assert f"could not read {len(bad)} of {len(good) + len(bad)} image files" in summary
    for name, reason in bad.items():
        line = next(line for line in summary.splitlines() if name in line)
        assert reason in line.lower(), line
    assert "notes.txt" not in summary and "skipped 1 file" in printed
    failed = json.loads((out / "failed.json").read_text())
    assert sorted(Path(f["file"]).name for f in failed) == sorted(bad)
    records = json.loads((out / "detections.json").read_text())
    assert {Path(r["file"]).name for r in records} <= set(Path(g).name for g in good)
    assert all(r["category"] in CLASSES and len(r["bbox"]) == 4 for r in records)


def test_detect_with_only_good_images_exits_0(tmp_path, capsys, monkeypatch):
    model = tiny_model(tmp_path / "model.pt")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(folder / "a.png")
    monkeypatch.setattr(cli, "COMMANDS", ["detect"])
    assert cli.main(["detect", "--checkpoint", str(model), str(folder), "--out", str(tmp_path / "out"),
                     "--no-progress"]) == 0
    assert "could not read" not in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "failed.json").read_text()) == []


@pytest.mark.parametrize("missing", ["missing.jpg", "missing_folder"])
def test_a_missing_input_is_reported_not_fatal(tmp_path, capsys, monkeypatch, missing):
    model = tiny_model(tmp_path / "model.pt")
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setattr(cli, "COMMANDS", ["detect"])
    code = cli.main(["detect", "--checkpoint", str(model), str(tmp_path / missing), str(tmp_path / "a.png"),
                     "--out", str(tmp_path / "out"), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 1 and "does not exist" in printed and missing in printed
    assert len(list((tmp_path / "out").glob("*.png"))) == 1
