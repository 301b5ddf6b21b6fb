"""Pictures of detections: boxes with class name and score, ground truth in a second style.

Detections are solid boxes in their class colour with a filled label ``"name 0.93"``; ground
truth is a dashed box in the class colour alternating with white (grey and white for difficult
objects), so it stays visible on any background and never looks like a detection, with its class
name on a white tag framed in that colour (no score: a detection's tag is filled).

Labels stay readable on any image size: an image whose longer side is below ``min_side`` is
enlarged by a whole factor (nearest neighbour, pixels stay sharp) before drawing, and the font
size and line width grow with the picture. The returned picture is therefore ``scale`` times
the input, with ``scale = picture.width / image.shape[1]``.

Tags never leave the picture and do not cover each other where there is room
(:func:`place_labels`: the detections' tags first, highest score first, then the ground truth's);
boxes are drawn first, tags over them.
"""
from __future__ import annotations

import colorsys
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from nocdet.data.sample import Detections, Sample
from nocdet.io import atomic_open

# Tableau's ten colours: distinct for the first ten classes, then evenly spaced hues.
_TABLEAU = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
_WHITE = (255, 255, 255)
_DIFFICULT = (150, 150, 150)


def class_colours(num_classes: int) -> list[tuple[int, int, int]]:
    """One distinct RGB colour per class (index ``label - 1``)."""
    if num_classes <= len(_TABLEAU):
        return list(_TABLEAU[:num_classes])
    colours = []
    for k in range(num_classes):
        # golden-ratio hue steps keep neighbouring labels far apart on the colour wheel
        hue = (k * 0.618033988749895) % 1.0
        lightness = (0.45, 0.6, 0.35)[k % 3]
        r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.85)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return colours


def draw_detections(
    image: np.ndarray,
    detections: Detections,
    classes: Sequence[str],
    gt: Sample | None = None,
    threshold: float = 0.3,
    *,
    min_side: int = 480,
) -> Image.Image:
    """Draw the detections scoring at least ``threshold`` (and ``gt`` when given) on ``image``.

    ``image`` is ``H x W x 3`` uint8 RGB; boxes are internal coordinates of that image. The
    highest scores are drawn last (on top). See the module doc for styles and scaling.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    truth = gt if gt is not None else Sample(detections.image_id, "", width, height)  # no boxes
    for what, labels in (("detections", detections.labels), ("ground truth", truth.labels)):
        bad = [int(v) for v in labels if not 1 <= v <= len(classes)]
        if bad:
            raise ValueError(f"{what} of {detections.image_id}: label {bad[0]} outside 1..{len(classes)}")
    scale = max(1, math.ceil(min_side / max(width, height)))
    picture = Image.fromarray(image, "RGB")
    if scale > 1:
        picture = picture.resize((width * scale, height * scale), Image.Resampling.NEAREST)
    side = max(picture.size)
    line = max(2, round(side / 200))
    font = ImageFont.load_default(size=max(14, min(48, round(side / 20))))
    colours = class_colours(len(classes))
    draw = ImageDraw.Draw(picture)

    gt_colours = [_DIFFICULT if difficult else colours[int(label) - 1]
                  for label, difficult in zip(truth.labels, truth.difficult)]
    for box, colour in zip(truth.boxes, gt_colours):
        _dashed_rectangle(draw, box * scale, colour, line, dash=4 * line)

    keep = np.flatnonzero(detections.scores >= threshold)
    keep = keep[np.argsort(detections.scores[keep], kind="stable")]
    texts = [f"{classes[int(detections.labels[k]) - 1]} {detections.scores[k]:.2f}" for k in keep]
    gt_texts = [classes[int(label) - 1] for label in truth.labels]
    sizes = [_tag_size(draw, text, font) for text in texts]
    # places are chosen from the highest score down, so the best detections get the best places,
    # then the ground truth's tags where no detection's lies
    places = place_labels(np.concatenate([detections.boxes[keep[::-1]], truth.boxes]) * scale,
                          sizes[::-1] + [_tag_size(draw, text, font) for text in gt_texts], picture.size)
    places, gt_places = places[:len(keep)][::-1], places[len(keep):]
    for k in keep:
        draw.rectangle(_pixel_box(detections.boxes[k] * scale), outline=colours[int(detections.labels[k]) - 1],
                       width=line)
    for text, place, colour in zip(gt_texts, gt_places, gt_colours):
        _label(draw, place, text, colour, font, frame=line)
    for k, text, place in zip(keep, texts, places):
        _label(draw, place, text, colours[int(detections.labels[k]) - 1], font)
    return picture


def save_detections_png(
    path: str | Path,
    image: np.ndarray,
    detections: Detections,
    classes: Sequence[str],
    gt: Sample | None = None,
    threshold: float = 0.3,
) -> Path:
    """Draw as :func:`draw_detections` and write the picture as a PNG at ``path``."""
    path = Path(path)
    picture = draw_detections(image, detections, classes, gt, threshold)
    with atomic_open(path, "wb") as f:
        picture.save(f, format="PNG")
    return path


def _pixel_box(box: np.ndarray) -> list[float]:
    """Continuous ``(x1, y1, x2, y2)`` -> PIL's inclusive pixel rectangle."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)]


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: np.ndarray, colour: tuple[int, int, int],
                      width: int, dash: int) -> None:
    """A rectangle outline of dashes alternating ``colour`` and white."""
    x1, y1, x2, y2 = _pixel_box(box)
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)),
                               ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = math.hypot(bx - ax, by - ay)
        steps = max(1, math.ceil(length / dash))
        for k in range(steps):
            t0, t1 = k / steps, (k + 1) / steps
            segment = [(ax + (bx - ax) * t0, ay + (by - ay) * t0), (ax + (bx - ax) * t1, ay + (by - ay) * t1)]
            draw.line(segment, fill=colour if k % 2 == 0 else _WHITE, width=width)


def _tag_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, round((bottom - top) * 0.2))
    return right - left + 2 * pad, bottom - top + 2 * pad


def place_labels(boxes: np.ndarray, sizes: Sequence[tuple[int, int]], picture: tuple[int, int]
                 ) -> list[tuple[float, float, float, float]]:
    """Rectangles ``(x1, y1, x2, y2)`` for the tags of ``boxes`` (in priority order), each inside
    the picture and overlapping no earlier tag where the picture has room: the first free one of
    above the box's top-left corner, inside it, below the box, inside its bottom; failing those,
    that spot moved down (then up) in steps of the tag's height."""
    width, height = picture
    placed: list[tuple[float, float, float, float]] = []

    def free(r: tuple[float, float, float, float]) -> bool:
        return all(r[2] <= o[0] or o[2] <= r[0] or r[3] <= o[1] or o[3] <= r[1] for o in placed)

    for box, (w, h) in zip(boxes, sizes):
        x = min(max(0.0, float(box[0])), max(0.0, width - w))
        tops = [float(box[1]) - h, float(box[1]), float(box[3]), float(box[3]) - h]
        candidates = [min(max(0.0, y), max(0.0, height - h)) for y in tops]
        steps = range(1, max(1, int(height // max(h, 1))) + 1)
        candidates += [min(max(0.0, candidates[0] + s * d * h), max(0.0, height - h)) for s in steps for d in (1, -1)]
        rects = [(x, y, x + w, y + h) for y in candidates]
        placed.append(next((r for r in rects if free(r)), rects[0]))
    return placed


def _label(draw: ImageDraw.ImageDraw, place: tuple[float, float, float, float], text: str,
           colour: tuple[int, int, int], font: ImageFont.FreeTypeFont, frame: int = 0) -> None:
    """A tag with ``text`` in the rectangle ``place`` (from :func:`place_labels`): filled with
    ``colour`` (a detection's), or with ``frame`` > 0 white in a ``frame``-pixel border of ``colour``
    with black text (a ground-truth box's)."""
    left, top, _, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, round((bottom - top) * 0.2))
    x, y, x2, y2 = place
    if frame:
        draw.rectangle([x, y, x2 - 1, y2 - 1], fill=_WHITE, outline=colour, width=min(frame, pad))
        ink = (0, 0, 0)
    else:
        draw.rectangle([x, y, x2 - 1, y2 - 1], fill=colour)
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        ink = (0, 0, 0) if luminance > 150 else _WHITE
    draw.text((x + pad - left, y + pad - top), text, fill=ink, font=font)
