"""Ground-truth boxes carry their class name on a white tag framed in the class colour, laid out
where no detection's tag lies."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from nocdet.data.sample import Detections, Sample
from nocdet.viz.draw import class_colours, draw_detections

CLASSES = ["cat", "dog", "bird"]
WHITE = (255, 255, 255)
GREY = (150, 150, 150)
BOX = (10, 20, 40, 38)  # on a 60 x 40 image, drawn 8 x: (80, 160, 320, 304)


def black(width: int = 60, height: int = 40) -> np.ndarray:
    return np.zeros((height, width, 3), np.uint8)


def no_detections() -> Detections:
    return Detections("x", np.zeros((0, 4)), [], [])


def ground_truth(label: int, difficult: bool = False, box=BOX) -> Sample:
    return Sample("x", "x.png", 60, 40, [box], [label], [difficult])


def white_tag(picture: np.ndarray, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> tuple[int, int, int, int]:
    """Bounding box ``(x1, y1, x2, y2)`` of the white pixels in rows ``y0:y1`` (columns ``x0:x1``)."""
    ys, xs = np.nonzero(np.all(picture[y0:y1, x0:x1] == WHITE, axis=2))
    assert len(ys), "no white tag there"
    return x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1


def ink_width(picture: np.ndarray, tag: tuple[int, int, int, int]) -> int:
    """Width of the black text inside a white tag."""
    x1, y1, x2, y2 = tag
    inside = picture[y1 + 3:y2 - 3, x1 + 3:x2 - 3]
    _, xs = np.nonzero(np.all(inside == 0, axis=2))
    return int(xs.max() - xs.min() + 1)


def rendered_width(text: str, size: int) -> int:
    """Width of ``text`` drawn by PIL's default font at ``size`` px, measured on its own canvas."""
    canvas = Image.new("L", (400, 100), 255)
    ImageDraw.Draw(canvas).text((10, 10), text, fill=0, font=ImageFont.load_default(size=size))
    _, xs = np.nonzero(np.asarray(canvas) < 128)
    return int(xs.max() - xs.min() + 1)


def test_a_ground_truth_box_is_labelled_with_its_class_name():
    colour = class_colours(3)[1]
    plain = np.asarray(draw_detections(black(), no_detections(), CLASSES))
    picture = np.asarray(draw_detections(black(), no_detections(), CLASSES, gt=ground_truth(2)))
    # above the dashed top edge (y = 160) nothing was drawn without the label; with it, a white tag
    assert not plain[100:157].any()
    tag = white_tag(picture, 100, 157)
    assert tag[0] == 80 + 2 and tag[3] <= 160  # at the box's left edge (inside its frame), above the box
    x1, y1, x2, y2 = tag
    frame = picture[y1 - 2:y2 + 2, x1 - 2:x2 + 2]
    assert np.all(frame[0] == colour) and np.all(frame[:, 0] == colour)  # framed in the class colour
    # the text is the class name: as wide as PIL draws "dog" in the picture's font (24 px at 480 px)
    assert abs(ink_width(picture, tag) - rendered_width("dog", 24)) <= 1
    longer = np.asarray(draw_detections(black(), no_detections(), ["cat", "hippopotamus"], gt=ground_truth(2)))
    assert abs(ink_width(longer, white_tag(longer, 100, 157)) - rendered_width("hippopotamus", 24)) <= 1


def test_a_difficult_object_has_a_grey_frame():
    picture = np.asarray(draw_detections(black(), no_detections(), CLASSES, gt=ground_truth(3, difficult=True)))
    x1, y1, x2, y2 = white_tag(picture, 100, 157)
    assert np.all(picture[y1 - 1, x1:x2] == GREY)
    assert abs(ink_width(picture, (x1, y1, x2, y2)) - rendered_width("bird", 24)) <= 1


def test_ground_truth_tags_keep_clear_of_detection_tags():
    colour = class_colours(3)[1]
    detection = Detections("x", [BOX], [0.9], [2])
    alone = np.asarray(draw_detections(black(), detection, CLASSES))
    both = np.asarray(draw_detections(black(), detection, CLASSES, gt=ground_truth(2)))
    # the detection keeps its filled tag above the box, unchanged
    np.testing.assert_array_equal(both[100:158, 80:320], alone[100:158, 80:320])
    assert np.all(both[130:158, 80:140] == colour, axis=2).mean() > 0.6
    # the ground truth's tag goes to the next free place, inside the box below its top edge, where the
    # detections-only picture is black
    tag = white_tag(both, 162, 300, 82, 318)
    assert tag[1] >= 160 and not alone[tag[1]:tag[3], tag[0]:tag[2]].any()
    assert abs(ink_width(both, tag) - rendered_width("dog", 24)) <= 1


def test_many_ground_truth_tags_do_not_overlap():
    boxes = [(5 + 3 * k, 10 + k, 30 + 3 * k, 30 + k) for k in range(5)]  # heavily overlapping boxes
    gt = Sample("x", "x.png", 60, 40, boxes, [1, 2, 3, 1, 2], [False] * 5)
    detections = Detections("x", boxes[:2], [0.8, 0.7], [1, 2])
    picture = np.asarray(draw_detections(black(), detections, CLASSES, gt=gt))
    white = np.all(picture == WHITE, axis=2)
    # five separate white tags (connected white areas larger than a dash), none merged with another
    from scipy import ndimage

    regions, count = ndimage.label(white)
    sizes = np.bincount(regions.ravel())[1:]
    assert (sizes > 200).sum() == 5


def test_a_ground_truth_label_outside_the_classes_is_refused():
    with pytest.raises(ValueError, match="ground truth of x: label 4 outside 1..3"):
        draw_detections(black(), no_detections(), CLASSES, gt=ground_truth(4))
