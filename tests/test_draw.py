"""Drawn detections: where boxes, labels and ground truth land, in which colours, at which size."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from nocdet.data.sample import Detections, Sample
from nocdet.viz.draw import class_colours, draw_detections, save_detections_png

CLASSES = ["cat", "dog", "bird"]
BLACK = (0, 0, 0)
WHITE = (255, 255, 255)


def black(width: int, height: int) -> np.ndarray:
    return np.zeros((height, width, 3), np.uint8)


def dets(*rows) -> Detections:
    """``rows``: (box, score, label)."""
    return Detections("x", [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


def pixel(picture: Image.Image, x: int, y: int) -> tuple:
    return tuple(np.asarray(picture)[y, x])


def colour_rows(picture: Image.Image, colour, x0: int, x1: int, y0: int, y1: int) -> int:
    """How many rows of the region hold ``colour`` somewhere."""
    region = np.asarray(picture)[y0:y1, x0:x1]
    return int(np.all(region == colour, axis=2).any(axis=1).sum())


def test_small_images_are_enlarged_by_a_whole_factor_large_ones_kept():
    assert draw_detections(black(60, 40), dets(), CLASSES).size == (480, 320)  # 8 x
    assert draw_detections(black(479, 100), dets(), CLASSES).size == (958, 200)  # 2 x
    assert draw_detections(black(1000, 800), dets(), CLASSES).size == (1000, 800)
    # nearest-neighbour enlargement keeps the pixels
    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    picture = np.asarray(draw_detections(image, dets(), CLASSES))
    np.testing.assert_array_equal(picture[::8, ::8], image)


def test_box_in_its_class_colour_only_above_threshold():
    colours = class_colours(3)
    # 100 x 100 -> 500 x 500 (5 x); the dog box (20, 40, 60, 90) becomes (100, 200, 300, 450)
    picture = draw_detections(black(100, 100), dets(((20, 40, 60, 90), 0.9, 2),
                                                    ((70, 10, 90, 30), 0.29, 3),
                                                    ((5, 60, 15, 95), 0.3, 1)), CLASSES, threshold=0.3)
    assert pixel(picture, 100, 330) == colours[1]  # left edge
    assert pixel(picture, 299, 330) == colours[1]  # right edge (x2 = 300 is exclusive)
    assert pixel(picture, 200, 449) == colours[1]  # bottom edge
    assert pixel(picture, 200, 330) == BLACK  # inside stays untouched
    assert pixel(picture, 350, 100) == BLACK  # the bird at 0.29 < 0.3 is not drawn
    assert pixel(picture, 25, 400) == colours[0]  # the cat at exactly 0.3 is


def test_highest_score_is_drawn_on_top():
    colours = class_colours(3)
    boxes = (((10, 30, 50, 60), 0.9, 1), ((10, 30, 50, 70), 0.5, 2))  # same left edge
    for rows in (boxes, boxes[::-1]):
        picture = draw_detections(black(100, 100), dets(*rows), CLASSES)
        assert pixel(picture, 50, 200) == colours[0]


def test_label_is_a_readable_tag_above_the_box():
    colours = class_colours(3)
    picture = draw_detections(black(60, 40), dets(((10, 20, 40, 38), 0.87, 2)), CLASSES)
    # 8 x: the box top is y = 160; the tag sits in the rows just above it, from x = 80
    tag_rows = colour_rows(picture, colours[1], 80, 240, 100, 160)
    assert tag_rows >= 14  # at least a 14-pixel font on a 480-pixel picture
    strip = np.asarray(picture)[100:160, 80:240].reshape(-1, 3)
    ink = ~np.all(strip == colours[1], axis=1) & ~np.all(strip == BLACK, axis=1)
    assert ink.sum() > 50  # the text "dog 0.87"


def test_label_stays_inside_the_picture():
    colours = class_colours(3)
    # a box touching the top edge gets its tag inside the box; one at the right edge is shifted left
    picture = draw_detections(black(100, 100), dets(((70, 0, 100, 30), 0.5, 3)), CLASSES)
    assert colour_rows(picture, colours[2], 350, 500, 2, 60) >= 14
    tag = np.all(np.asarray(picture)[2:40] == colours[2], axis=2)
    assert tag[:, 350:498].sum() > 20 * 60


def test_font_grows_with_the_picture():
    colours = class_colours(3)
    picture = draw_detections(black(2000, 1500), dets(((200, 600, 900, 1200), 0.99, 1)), CLASSES)
    assert colour_rows(picture, colours[0], 210, 600, 450, 595) >= 40  # 48-pixel font (the cap)


def test_ground_truth_dashed_in_class_colour_and_white_grey_if_difficult():
    colours = class_colours(3)
    gt = Sample("x", "x.jpg", 100, 100, [[10, 10, 90, 50], [10, 60, 90, 95]], [2, 2], [False, True])
    picture = np.asarray(draw_detections(black(100, 100), dets(), CLASSES, gt=gt))
    top = picture[50, 60:440]  # top edge of the first box (5 x)
    assert 0.3 < np.all(top == colours[1], axis=1).mean() < 0.7
    assert 0.3 < np.all(top == WHITE, axis=1).mean() < 0.7
    difficult = picture[300, 60:440]
    assert not np.all(difficult == colours[1], axis=1).any()
    assert np.all(difficult == (150, 150, 150), axis=1).mean() > 0.3
    assert picture[150, 250].tolist() == [0, 0, 0]


def test_class_colours_are_distinct():
    assert len(class_colours(0)) == 0
    for n in (3, 10, 20, 40):
        colours = class_colours(n)
        assert len(set(colours)) == n
        assert all(0 <= v <= 255 for c in colours for v in c)
    ten = np.array(class_colours(10), float)
    assert min(np.linalg.norm(a - b) for a, b in itertools.combinations(ten, 2)) > 60


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="uint8 RGB"):
        draw_detections(np.zeros((10, 10, 3), np.float32), dets(), CLASSES)
    with pytest.raises(ValueError, match="uint8 RGB"):
        draw_detections(np.zeros((10, 10), np.uint8), dets(), CLASSES)
    with pytest.raises(ValueError, match="label 4 outside 1..3"):
        draw_detections(black(10, 10), dets(((1, 1, 5, 5), 0.9, 4)), CLASSES)


def test_save_png(tmp_path):
    image = np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    detections = dets(((5, 5, 30, 40), 0.8, 1))
    path = save_detections_png(tmp_path / "sub" / "d.png", image, detections, CLASSES)
    with Image.open(path) as saved:
        assert saved.format == "PNG"
        np.testing.assert_array_equal(np.asarray(saved.convert("RGB")),
                                      np.asarray(draw_detections(image, detections, CLASSES)))
