"""What every embedded scene is made of, whatever its objects: real photographs as backgrounds,
stroke colours that contrast with them, stroke clutter, and the affine warp that scales and
rotates an object's alpha mask.

* **Scenes**: photographs bundled offline with scikit-image, scikit-learn and matplotlib; train
  (and val) scenes and test scenes are different photographs. Left out on purpose: images that
  need a download (``pooch``), synthetic images (checkerboard, colour wheel, logos, blobs),
  ``text`` (it shows handwritten digits and letters that would be unlabelled objects), ``clock``
  (a clock face) and ``cat`` (the same photograph as ``chelsea``).

The drawing functions return float32 alpha masks (0..1) or float32 RGB crops; the caller places
and blends them (:mod:`nocdet.data.scenes`).
"""
from __future__ import annotations

import colorsys
import importlib.util
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from nocdet.errors import DataError
from nocdet.extras import require_extra

TRAIN_PHOTOS = (
    "skimage:astronaut", "skimage:coffee", "skimage:rocket", "skimage:hubble_deep_field",
    "skimage:immunohistochemistry", "skimage:camera", "skimage:brick", "skimage:grass",
    "skimage:page", "skimage:coins", "skimage:moon", "sklearn:china",
)
TEST_PHOTOS = (
    "skimage:chelsea", "skimage:retina", "skimage:gravel", "skimage:cell",
    "sklearn:flower", "matplotlib:grace_hopper",
)
_PACKAGE_PHOTO_FOLDERS = {"sklearn": "datasets/images", "matplotlib": "mpl-data/sample_data"}
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B


def photos_for(split: str) -> tuple[str, ...]:
    """The scene photographs of a split: val images are carved from the train side and share its photos."""
    return TEST_PHOTOS if split == "test" else TRAIN_PHOTOS


# ------------------------------------------------------------------------------- loading

@lru_cache(maxsize=None)
def load_photo(name: str) -> tuple[np.ndarray, bool]:
    """One bundled photograph as ``[H, W, 3] uint8`` RGB, and whether it is a grey photo.

    scikit-learn's and matplotlib's sample photos are read from their package folders, which
    spares importing scikit-learn (seconds) for two JPEG files.
    """
    source, _, key = name.partition(":")
    if source == "skimage":
        require_extra("demo", "the scene photographs of scikit-image")
        import skimage.data

        image = np.asarray(getattr(skimage.data, key)())
    elif source in _PACKAGE_PHOTO_FOLDERS:
        spec = importlib.util.find_spec(source)
        if spec is None or not spec.submodule_search_locations:
            raise DataError(f"the package {source} is not installed", record=name)
        path = Path(spec.submodule_search_locations[0]) / _PACKAGE_PHOTO_FOLDERS[source] / f"{key}.jpg"
        try:
            with Image.open(path) as file:
                image = np.asarray(file.convert("RGB"))
        except OSError as err:
            raise DataError(f"cannot read the photograph bundled with {source}: {err}", path=path,
                            record=name) from err
    else:
        raise DataError(f"unknown photo source {source!r}", record=name)
    if image.dtype != np.uint8:
        raise DataError(f"expected an 8-bit photograph, got {image.dtype}", record=name)
    grey = image.ndim == 2
    if grey:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3]), grey


# ------------------------------------------------------------------------------- drawing

def warp_alpha(patch: np.ndarray, scale_y: float, aspect: float, angle: float) -> np.ndarray:
    """``patch`` (float32, zero-padded) scaled by ``scale_y`` vertically and ``scale_y * aspect``
    horizontally, then rotated by ``angle`` degrees, in a canvas that just holds it (bicubic)."""
    theta = np.deg2rad(angle)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    linear = rotation @ np.diag([scale_y * aspect, scale_y])
    corners = linear @ np.array([[0, patch.shape[1], 0, patch.shape[1]], [0, 0, patch.shape[0], patch.shape[0]]])
    low, high = corners.min(axis=1), corners.max(axis=1)
    size = (int(np.ceil(high[0] - low[0])) + 1, int(np.ceil(high[1] - low[1])) + 1)
    return cv2.warpAffine(patch, np.hstack([linear, -low[:, None]]), size, flags=cv2.INTER_CUBIC,
                          borderValue=0)


def trim(alpha: np.ndarray) -> np.ndarray:
    """``alpha`` without its all-zero border rows and columns."""
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    return alpha[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def stroke_alpha(rng: np.random.Generator, kind: str, size: float) -> np.ndarray:
    """A stroke hard negative in a ``size`` px square: a "curve" (cubic Bezier through random
    control points) or an "arc" (60..200 degrees of an ellipse: never a closed ring, which would
    read as a "0" or an "O")."""
    side = int(np.ceil(size))
    plane = np.zeros((side, side), np.uint8)
    thickness = max(1, round(size * rng.uniform(0.04, 0.12)))
    if kind == "curve":
        curve = _bent_curve(rng, side)
        cv2.polylines(plane, [np.rint(curve * 16).astype(np.int32)], False, 255, thickness, cv2.LINE_AA, 4)
    elif kind == "arc":
        start = rng.uniform(0, 360)
        axes = (max(1, side // 2 - thickness), max(1, int(side * rng.uniform(0.2, 0.5)) - thickness))
        cv2.ellipse(plane, (side // 2, side // 2), axes, rng.uniform(0, 180), start,
                    start + rng.uniform(60, 200), 255, thickness, cv2.LINE_AA)
    else:
        raise ValueError(f"unknown stroke kind {kind!r}")
    return plane.astype(np.float32) / 255


def _bent_curve(rng: np.random.Generator, side: int) -> np.ndarray:
    """32 points of a cubic Bezier in a ``side`` square that bends away from its chord by at least
    a quarter of the chord's length: a nearly straight stroke would read as a "1" or an "I"."""
    t = np.linspace(0, 1, 32)[:, None]
    while True:
        p = rng.uniform(0, side - 1, (4, 2))
        curve = ((1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t ** 2 * p[2]
                 + t ** 3 * p[3])
        chord = p[3] - p[0]
        length = float(np.hypot(*chord))
        relative = curve - p[0]
        offsets = np.abs(chord[0] * relative[:, 1] - chord[1] * relative[:, 0]) / max(length, 1e-6)
        if offsets.max() >= 0.25 * length and length >= 0.3 * side:
            return curve


def photo_crop(name: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of a photograph with the requested aspect (35..100% of the largest such
    crop), resized, maybe mirrored, grey photos maybe tinted, re-exposed; float32 ``[H, W, 3]``."""
    photo, grey = load_photo(name)
    ph, pw = photo.shape[:2]
    crop_w = min(pw, ph * width / height) * rng.uniform(0.35, 1.0)
    crop_h = crop_w * height / width
    x0, y0 = rng.uniform(0, pw - crop_w), rng.uniform(0, ph - crop_h)
    crop = photo[int(y0):int(y0) + max(1, int(crop_h)), int(x0):int(x0) + max(1, int(crop_w))]
    interpolation = cv2.INTER_AREA if crop.shape[1] > width else cv2.INTER_LINEAR
    image = cv2.resize(crop, (width, height), interpolation=interpolation).astype(np.float32)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    gain = rng.uniform(0.7, 1.2) * (rng.uniform(0.6, 1.0, 3) if grey and rng.random() < 0.5 else np.ones(3))
    return np.clip(image * gain.astype(np.float32) + np.float32(rng.uniform(-30, 30)), 0, 255)


def contrasting_colour(rng: np.random.Generator, background: np.ndarray, low: bool) -> np.ndarray:
    """A stroke colour of random hue and saturation whose luma differs from the mean luma of
    ``background`` by 70..180 (30..55 when ``low``), on whichever side has room; float32 RGB."""
    luma_bg = float(background.reshape(-1, 3).mean(axis=0) @ np.array(_LUMA))
    difference = rng.uniform(30, 55) if low else rng.uniform(70, 180)
    sides = [s for s, room in ((1, 255 - luma_bg), (-1, luma_bg)) if room >= difference]
    if sides:
        target = luma_bg + sides[rng.integers(len(sides))] * difference
    else:
        target = 255.0 if luma_bg < 128 else 0.0
    hue, saturation = rng.random(), rng.uniform(0, 1) ** 0.7
    lo, hi = 0.0, 1.0
    for _ in range(16):  # luma grows with HLS lightness: bisect for the target
        mid = (lo + hi) / 2
        if 255 * sum(w * c for w, c in zip(_LUMA, colorsys.hls_to_rgb(hue, mid, saturation))) < target:
            lo = mid
        else:
            hi = mid
    return np.array(colorsys.hls_to_rgb(hue, (lo + hi) / 2, saturation), np.float32) * 255
