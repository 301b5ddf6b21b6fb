"""scene-glyphs: determinism, classes, tight glyph boxes, fonts kept apart, VOC/COCO round trip, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from nocdet.data.coco import read_coco
from nocdet.data.scene_glyphs import (
    CHARACTERS, CLASSES, SIMILARITY_GROUPS, TEST_FONTS, TEXT_PHOTOS, TRAIN_FONTS, SceneGlyphsConfig, font_path,
    generate_scene_glyphs, glyph_alpha, read_records, render_scene,
)
from nocdet.data.scene_sources import TEST_PHOTOS
from nocdet.data.scenes import bbox
from nocdet.data.voc import read_voc
from nocdet.errors import DataError

SPLITS = ("train", "val", "trainval", "test")
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """10 train-side images (one of them, 000008, in val) and 4 test images, seed 0."""
    return generate_scene_glyphs(tmp_path_factory.mktemp("sg") / "a", num_train=10, num_test=4, seed=0,
                                 progress=False)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_the_same_bytes_and_another_seed_other_images(small, tmp_path):
    again = generate_scene_glyphs(tmp_path / "b", num_train=10, num_test=4, seed=0, progress=False)
    first, second = tree(small), tree(again)
    assert sorted(first) == sorted(second)
    assert len([name for name in first if name.startswith("JPEGImages/")]) == 14
    for name in first:
        assert first[name] == second[name], name
    other = generate_scene_glyphs(tmp_path / "c", num_train=3, num_test=1, seed=1, progress=False)
    for path in sorted((other / "JPEGImages").glob("*.jpg")):
        assert path.read_bytes() != (small / "JPEGImages" / path.name).read_bytes(), path.name


def test_twenty_classes_and_valid_similarity_groups(small):
    assert len(CLASSES) == 20 and len(set(CLASSES)) == 20
    assert len(set(CHARACTERS.values())) == 20 and all(len(c) == 1 for c in CHARACTERS.values())
    assert (small / "classes.txt").read_text().split() == CLASSES
    assert json.loads((small / "similarity_groups.json").read_text()) == SIMILARITY_GROUPS
    for group in SIMILARITY_GROUPS:
        assert len(group) >= 2 and len(set(group)) == len(group) and set(group) <= set(CLASSES), group
    assert {"O", "Q", "C", "G"} in [set(g) for g in SIMILARITY_GROUPS]
    description = json.loads((small / "dataset.json").read_text())
    assert description["complete"] and description["classes"] == CLASSES
    assert (small / "README.md").read_text().startswith("# scene-glyphs")


# ------------------------------------------------------------------------- glyph boxes

def _pil_ink_ratio(char: str, font: str) -> float:
    """Width / height of ``char``'s ink drawn directly by PIL at 400 px (no warp)."""
    image = Image.new("L", (800, 800), 0)
    ImageDraw.Draw(image).text((200, 200), char, font=ImageFont.truetype(str(font_path(font)), 400), fill=255)
    ink = np.asarray(image) >= 128
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return (cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1)


def test_upright_glyph_box_is_its_ink_by_hand():
    """An upright DejaVu Sans "L" 100 px tall: its box is 100 px tall, its left column (the stem)
    and bottom row (the bar) are inked end to end, its top row holds only the stem and its right
    column only the bar's end; width/height matches PIL's own drawing."""
    ink = glyph_alpha("L", "DejaVuSans.ttf", 100.0, aspect=1.0, angle=0.0) >= 0.5
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    box = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = box.shape
    assert abs(h - 100) <= 1
    assert box[:, 0].all() and box[-1, :].all()
    assert box[0].sum() < 0.3 * w and box[:, -1].sum() < 0.3 * h
    assert w / h == pytest.approx(_pil_ink_ratio("L", "DejaVuSans.ttf"), abs=0.02)


@pytest.mark.parametrize("angle", [0.0, 30.0, -15.0])
def test_rotated_bar_box_follows_geometry(angle):
    """DejaVu Sans "I" is a plain bar (w x h): rotated by a, its box is
    (w cos a + h sin a) x (h cos a + w sin a), computed by hand."""
    h = 120.0
    w = h * _pil_ink_ratio("I", "DejaVuSans.ttf")
    ink = glyph_alpha("I", "DejaVuSans.ttf", h, aspect=1.0, angle=angle) >= 0.5
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    a = np.deg2rad(abs(angle))
    assert rows[-1] - rows[0] + 1 == pytest.approx(h * np.cos(a) + w * np.sin(a), abs=2.0)
    assert cols[-1] - cols[0] + 1 == pytest.approx(w * np.cos(a) + h * np.sin(a), abs=2.0)
    if angle == 0.0:
        assert ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # a bar fills its box


def test_outline_style_is_hollow_with_the_same_box():
    solid = glyph_alpha("O", "DejaVuSans-Bold.ttf", 80.0, 1.0, 0.0) >= 0.5
    hollow = glyph_alpha("O", "DejaVuSans-Bold.ttf", 80.0, 1.0, 0.0, outline=0.05) >= 0.5
    assert hollow.shape == solid.shape
    assert not (hollow & ~solid).any() and hollow.sum() < 0.75 * solid.sum()
    assert bbox(hollow) == bbox(solid)


# ------------------------------------------------------------------------- scenes

@pytest.fixture(scope="module")
def rendered() -> list:
    config = SceneGlyphsConfig()
    return [render_scene(config, "trainval", i) for i in range(1, 41)] + \
           [render_scene(config, "test", i) for i in range(1, 21)]


def test_boxes_difficult_and_truncation_follow_the_rules(rendered):
    config = SceneGlyphsConfig()
    difficult = truncated = at_border = total = 0
    for image, record in rendered:
        assert image.shape == (record.height, record.width, 3)
        assert record.photo not in TEXT_PHOTOS
        assert record.photo in TEST_PHOTOS if record.split == "test" else record.photo not in TEST_PHOTOS
        for obj in record.objects:
            x1, y1, x2, y2 = obj.box
            assert 0 <= x1 < x2 <= record.width and 0 <= y1 < y2 <= record.height
            assert obj.font in (TEST_FONTS if record.split == "test" else TRAIN_FONTS)
            assert 0.25 <= obj.visible_fraction <= 1.0
            if obj.visible_fraction == 1.0:
                assert not obj.truncated and y2 - y1 == obj.ink_height
            if obj.truncated:  # some ink is outside the image; mostly the box touches the border
                assert obj.visible_fraction < 1.0
                at_border += x1 == 0 or y1 == 0 or x2 == record.width or y2 == record.height
            assert obj.difficult == (obj.ink_height < config.tiny_height or obj.visible_fraction < config.min_visible)
            difficult += obj.difficult
            truncated += obj.truncated
            total += 1
    assert 0.03 * total <= difficult <= 0.3 * total
    assert truncated >= 0.03 * total and at_border >= 0.8 * truncated
    styles = {o.style for _, r in rendered for o in r.objects}
    assert styles == {"fill", "outline", "contour", "gradient"}


def test_train_and_test_fonts_are_disjoint_and_all_draw_every_class():
    assert not set(TRAIN_FONTS) & set(TEST_FONTS)
    for font in TRAIN_FONTS + TEST_FONTS:
        for char in CHARACTERS.values():
            assert (glyph_alpha(char, font, 24.0, 1.0, 0.0) >= 0.5).any(), (font, char)


# ------------------------------------------------------------------------- files and readers

def test_voc_and_coco_read_back_equal_the_records(small):
    records = read_records(small)
    by_split = {split: [r for r in records if r.split == split] for split in ("train", "val", "test")}
    by_split["trainval"] = [r for r in records if r.split != "test"]
    assert [r.image_id for r in by_split["val"]] == ["000008"]
    for split in SPLITS:
        voc = read_voc(small, split)  # classes from classes.txt
        coco = read_coco(small / "annotations" / f"instances_{split}.json", small / "JPEGImages")
        assert voc.classes == CLASSES and coco.classes == CLASSES
        assert voc.similarity_groups == SIMILARITY_GROUPS
        assert [s.image_id for s in voc.samples] == [r.image_id for r in by_split[split]]
        for record, from_voc, from_coco in zip(by_split[split], voc.samples, coco.samples, strict=True):
            boxes = np.array([o.box for o in record.objects], np.float32).reshape(-1, 4)
            for sample in (from_voc, from_coco):
                np.testing.assert_array_equal(sample.boxes, boxes)
                assert sample.labels.tolist() == [o.label for o in record.objects]
                assert sample.difficult.tolist() == [o.difficult for o in record.objects]
    xml = "".join(p.read_text() for p in (small / "Annotations").glob("*.xml"))
    assert "<difficult>" in xml


def test_refuses_a_scene_digits_output(small, tmp_path):
    from nocdet.data.scene_digits import generate_scene_digits

    digits = generate_scene_digits(tmp_path / "d", num_train=1, num_test=1, progress=False)
    with pytest.raises(DataError, match="not a scene-glyphs output"):
        generate_scene_glyphs(digits, num_train=1, num_test=1, progress=False)


def test_cli_help_imports_no_torch_and_make_summarises(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    code = ("import sys, contextlib, io\nfrom nocdet.cli import main\nout = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n    try:\n        main(['data', 'make', '--help'])\n"
            "    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'cv2', 'matplotlib', 'PIL') if m in sys.modules]\n"
            "print(heavy, 'scene-glyphs' in out.getvalue())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] True"

    command = [sys.executable, "-m", "nocdet", "data", "make", "scene-glyphs", "--out", str(tmp_path / "g"),
               "--train", "3", "--test", "2", "--seed", "4", "--no-progress", "--workers", "1"]
    made = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert made.returncode == 0, made.stderr
    description = json.loads((tmp_path / "g" / "dataset.json").read_text())
    assert description["generator"] == "nocdet scene-glyphs" and description["config"]["seed"] == 4
    lines = made.stdout.splitlines()
    assert lines[0].startswith("scene-glyphs (seed 4)") and lines[1].split()[-1] == "question"
    test_line = next(line for line in lines if line.startswith("test"))
    assert test_line.split()[1:3] == ["2", str(description["counts"]["test"]["objects"])]
