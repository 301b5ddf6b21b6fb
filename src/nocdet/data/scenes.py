"""How the embedded scene data sets are composed and written, whatever their objects.

A :class:`SceneKind` says what the objects are (scene-digits: MNIST digits; scene-glyphs:
letters and symbols in fonts): how one is picked and drawn, how it is painted, what clutter looks
like, and what the data set's files say about its sources. This module does the rest, the same
for every kind: each image (long side ``image_size``, aspect 0.6..1.6) is a crop of a real
photograph holding 1..``max_objects`` objects whose ink height is log-uniform in
``[min_height, image_size / 2]``, sometimes overlapping each other or hidden in part by an
occluding patch, among clutter placed clear of them (hard negatives). Boxes are the tight integer
bounding boxes of the *visible* ink (alpha >= 0.5). An object is ``difficult`` when its ink is
under ``tiny_height`` px tall or less than ``min_visible`` of it is visible.

Every image is drawn from its own random generator seeded by ``(seed, side, index)``, so images
can be made in any order or in worker processes, streamed to disk, and the same seed gives the
same bytes. Output, in the PASCAL VOC layout plus COCO files (see :func:`generate_scenes`)::

    JPEGImages/<id>.jpg  Annotations/<id>.xml  ImageSets/Main/{train,val,trainval,test}.txt
    annotations/instances_{train,val,trainval,test}.json  similarity_groups.json  classes.txt
    records.jsonl (per-object provenance)  dataset.json (version, config, counts)  README.md
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from nocdet.data.coco import write_coco_instances
from nocdet.data.sample import DetectionDataset, Sample
from nocdet.data.scene_sources import contrasting_colour, photo_crop
from nocdet.data.voc import write_voc_annotation, write_voc_split
from nocdet.errors import ConfigError, DataError
from nocdet.io import atomic_write_json, atomic_write_text, remove_entries

TEST_ID_OFFSET = 500000  # test ids are 500001.., train-side ids 000001..: the ranges never meet
SPLITS = ("train", "val", "trainval", "test")
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class SceneConfig:
    """What to generate. ``num_train`` counts the train-side images; every ``val_every``-th of
    them (ids 000008, 000016, ...) forms the val split, drawing its objects from the val sources."""

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
    overlap: float = 0.25  # chance that an object may overlap earlier ones
    occluder: float = 0.25  # chance of an occluding patch over an object
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
class SceneRecord:
    """One generated image and where its content came from; ``objects`` are the kind's
    :attr:`SceneKind.object_type` (each with ``label``, ``box`` and ``difficult``)."""

    image_id: str
    split: str  # train, val or test
    width: int
    height: int
    photo: str
    objects: list = field(default_factory=list)

    def to_sample(self, root: Path) -> Sample:
        return Sample(self.image_id, Path(root) / "JPEGImages" / f"{self.image_id}.jpg", self.width,
                      self.height, np.array([o.box for o in self.objects], np.float32).reshape(-1, 4),
                      [o.label for o in self.objects], [o.difficult for o in self.objects])

    @staticmethod
    def from_dict(data: dict, object_type: type) -> "SceneRecord":
        objects = [object_type(**{**o, "box": tuple(o["box"])}) for o in data["objects"]]
        return SceneRecord(**{**data, "objects": objects})


@dataclass
class Pick:
    """An object chosen for a scene, not yet placed: ``render(ink_height)`` draws its alpha mask
    (float32, 0..1, trimmed); ``source`` is what the kind needs to paint and record it."""

    label: int  # 1..len(classes)
    ink_height: float
    render: Callable[[float], np.ndarray]
    source: Any = None
    truncate: bool = False  # may be placed up to half outside the image


@dataclass
class Layer:
    """An object or an occluding patch, in paint order; ``mask`` is its opaque part inside the
    image, image-sized. An object's ``ink`` and ``ink_height`` count its whole mask, also the
    part a truncation left outside the image."""

    mask: np.ndarray
    box: Box
    alpha: np.ndarray | None = None  # objects: the alpha patch painted at ``at`` (row, column)
    at: tuple[int, int] = (0, 0)
    pick: Pick | None = None  # None for an occluder
    ink: int = 0
    ink_height: int = 0
    truncated: bool = False

    @property
    def label(self) -> int:
        return self.pick.label if self.pick else 0


class SceneKind(ABC):
    """What a scene data set's objects are. Subclasses are module-level and stateless, so that
    worker processes can unpickle them."""

    name: str  # e.g. "scene-digits": folder name in VOC files, README title
    generator: str  # written to dataset.json; marks a folder as this kind's output
    version: str
    classes: list[str]
    similarity_groups: list[list[str]]
    object_type: type  # the dataclass of one recorded object

    @abstractmethod
    def photos(self, split: str) -> tuple[str, ...]:
        """The background photographs of ``split`` (names for :func:`photo_crop`)."""

    @abstractmethod
    def pick(self, rng: np.random.Generator, split: str, config: SceneConfig) -> Pick:
        """Choose an object of ``split`` and its shape (ink height log-uniform, see :func:`ink_height`)."""

    @abstractmethod
    def paint(self, canvas: np.ndarray, rng: np.random.Generator, layer: Layer, config: SceneConfig) -> None:
        """Paint a placed object onto the float32 canvas."""

    @abstractmethod
    def clutter(self, rng: np.random.Generator, split: str, size: float) -> np.ndarray:
        """The alpha mask of a hard negative about ``size`` px across."""

    @abstractmethod
    def scene_object(self, layer: Layer, box: Box, difficult: bool, visible: float) -> Any:
        """The record of a placed object (an :attr:`object_type`): ``box`` is the tight box of its
        visible ink, ``visible`` the visible fraction of its ink."""

    @abstractmethod
    def sources(self) -> dict:
        """What dataset.json says about the sources, after the classes and before the counts."""

    @abstractmethod
    def readme(self, config: SceneConfig, counts: dict, table: str) -> str:
        """README.md, with ``table`` the markdown table of images, objects and difficult per split."""


def image_id(split: str, index: int) -> str:
    """The id of the ``index``-th (from 1) image of the train side or of the test split."""
    return f"{index + (TEST_ID_OFFSET if split == 'test' else 0):06d}"


def ink_height(rng: np.random.Generator, config: SceneConfig) -> float:
    """An object's ink height, log-uniform in ``[min_height, max_height]``."""
    return float(np.exp(rng.uniform(np.log(config.min_height), np.log(config.max_height))))


def visible_masks(masks: list[np.ndarray]) -> list[np.ndarray]:
    """For layers painted in the given order, the part of each mask no later layer covers."""
    visible = []
    covered = None
    for mask in reversed(masks):
        visible.append(mask if covered is None else mask & ~covered)
        covered = mask.copy() if covered is None else covered | mask
    return visible[::-1]


# ------------------------------------------------------------------------------ one scene

def render_scene(kind: SceneKind, config: SceneConfig, side: str, index: int) -> tuple[np.ndarray, SceneRecord]:
    """Image ``index`` (from 1) of ``side`` ("trainval" or "test") as ``[H, W, 3] uint8`` and its record."""
    if side not in ("trainval", "test") or index < 1:
        raise ValueError(f"no image {index} on side {side!r}: sides are 'trainval' and 'test', "
                         "indices start at 1")
    rng = np.random.default_rng([config.seed, int(side == "test"), index])
    split = "test" if side == "test" else ("val" if index % config.val_every == 0 else "train")
    aspect = float(np.exp(rng.uniform(*np.log(config.aspect_range))))
    width, height = ((config.image_size, round(config.image_size / aspect)) if aspect >= 1
                     else (round(config.image_size * aspect), config.image_size))
    photos = kind.photos(split)
    photo = photos[rng.integers(len(photos))]
    canvas = np.ascontiguousarray(photo_crop(photo, width, height, rng))
    layers = _layout(kind, config, rng, split, height, width)
    object_boxes = [layer.box for layer in layers if layer.label]
    for _ in range(rng.integers(0, config.max_clutter + 1)):
        _paint_clutter(canvas, rng, kind.clutter(rng, split, _clutter_size(rng, config)), object_boxes, config)
    for layer in layers:
        if layer.label:
            kind.paint(canvas, rng, layer, config)
        else:
            _paint_occluder(canvas, rng, layer, photos)
    objects = []
    for layer, visible in zip(layers, visible_masks([layer.mask for layer in layers])):
        if layer.label:
            fraction = round(float(visible.sum() / layer.ink), 4)
            difficult = layer.ink_height < config.tiny_height or fraction < config.min_visible
            objects.append(kind.scene_object(layer, bbox(visible), difficult, fraction))
    if rng.random() < 0.15:
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.5, 0.9))
    if rng.random() < 0.5:
        canvas += rng.standard_normal(canvas.shape, np.float32) * np.float32(rng.uniform(1.0, 6.0))
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, SceneRecord(image_id(side, index), split, width, height, photo, objects)


def paint_plain(canvas: np.ndarray, rng: np.random.Generator, layer: Layer, config: SceneConfig) -> None:
    """Paint an object's alpha in one colour contrasting with the background under it
    (low contrast with probability ``config.low_contrast``), 85..100% opaque."""
    (y, x), (h, w) = layer.at, layer.alpha.shape
    colour = contrasting_colour(rng, canvas[y:y + h, x:x + w], rng.random() < config.low_contrast)
    blend(canvas, layer.alpha * np.float32(rng.uniform(0.85, 1.0)), y, x, colour)


def blend(canvas: np.ndarray, alpha: np.ndarray, y: int, x: int, colour: np.ndarray) -> None:
    """Blend ``colour`` (RGB, or an ``[h, w, 3]`` image) into ``canvas`` at ``(y, x)`` through ``alpha``."""
    region = canvas[y:y + alpha.shape[0], x:x + alpha.shape[1]]
    region += alpha[:, :, None] * (colour - region)


def _layout(kind: SceneKind, config: SceneConfig, rng: np.random.Generator, split: str, height: int,
            width: int) -> list[Layer]:
    """Place 1..max_objects objects, each maybe followed by an occluding patch (paint order).
    An object that finds no place in 10 tries shrinks by 20%, up to 3 times, then is left out.
    An object whose pick may be truncated may stick out of the image by up to half its size, if
    a quarter of its ink stays inside."""
    layers: list[Layer] = []
    for _ in range(rng.integers(1, config.max_objects + 1)):
        pick = kind.pick(rng, split, config)
        height_px = pick.ink_height
        max_overlap = 0.3 if rng.random() < config.overlap else 0.0
        placed = None
        for attempt in range(40):
            if attempt % 10 == 0:
                alpha = pick.render(height_px)
                height_px *= 0.8
            h, w = alpha.shape
            if h > height or w > width:
                continue
            slack_y, slack_x = (h // 2, w // 2) if pick.truncate else (0, 0)
            y = int(rng.integers(-slack_y, height - h + slack_y + 1))
            x = int(rng.integers(-slack_x, width - w + slack_x + 1))
            candidate = _placed(alpha, y, x, height, width, pick)
            if candidate is not None and _fits(layers, candidate, max_overlap):
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


def _placed(alpha: np.ndarray, y: int, x: int, height: int, width: int, pick: Pick) -> Layer | None:
    """The layer of ``alpha`` with its top left corner at ``(y, x)`` (maybe outside the image),
    cut to the image; None if less than a quarter of its ink would be inside."""
    ink = alpha >= 0.5
    rows = np.flatnonzero(ink.any(axis=1))
    y1, x1 = max(y, 0), max(x, 0)
    y2, x2 = min(y + alpha.shape[0], height), min(x + alpha.shape[1], width)
    inside = alpha[y1 - y:y2 - y, x1 - x:x2 - x]
    if (inside >= 0.5).sum() < 0.25 * ink.sum():
        return None
    mask = np.zeros((height, width), bool)
    mask[y1:y2, x1:x2] = inside >= 0.5
    ink_inside, ink_all = int(mask.sum()), int(ink.sum())
    return Layer(mask, bbox(mask), inside, (y1, x1), pick, ink_all, int(rows[-1] - rows[0] + 1), ink_inside < ink_all)


def _fits(layers: list[Layer], candidate: Layer, max_overlap: float) -> bool:
    """A new layer fits if its box overlaps no object's box by more than ``max_overlap`` of the
    smaller box (with 0, it also keeps a 3 px gap) and every object keeps 25% of its ink visible."""
    for layer in layers:
        if layer.label and candidate.label:
            limit = max_overlap * min(_area(candidate.box), _area(layer.box))
            if _intersection(candidate.box, layer.box, margin=0 if max_overlap else 3) > limit:
                return False
    if not any(_intersection(candidate.box, layer.box) for layer in layers):
        return True
    visible = visible_masks([layer.mask for layer in layers] + [candidate.mask])
    return all(v.sum() >= 0.25 * layer.mask.sum() for layer, v in zip(layers, visible) if layer.label)


def _occluder(rng: np.random.Generator, target: Layer, layers: list[Layer]) -> Layer | None:
    """A rectangle or ellipse hiding at least 10% of the ``target`` object's ink, or None if none
    fits. Its sides differ by at most 1.6x: a long thin bar would read as a "1" or an "I"."""
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
        candidate = Layer(mask, bbox(mask))
        if (mask & target.mask).sum() >= 0.1 * target.mask.sum() and _fits(layers, candidate, 1.0):
            return candidate
    return None


def _paint_occluder(canvas: np.ndarray, rng: np.random.Generator, layer: Layer,
                    photos: tuple[str, ...]) -> None:
    """Fill the occluder's mask with a patch of a photograph or a plain colour."""
    x1, y1, x2, y2 = layer.box
    if rng.random() < 0.6:
        fill = photo_crop(photos[rng.integers(len(photos))], x2 - x1, y2 - y1, rng)
    else:
        fill = np.broadcast_to(rng.uniform(0, 255, 3).astype(np.float32), (y2 - y1, x2 - x1, 3))
    inside = layer.mask[y1:y2, x1:x2]
    canvas[y1:y2, x1:x2][inside] = fill[inside]


def _clutter_size(rng: np.random.Generator, config: SceneConfig) -> float:
    return float(np.exp(rng.uniform(np.log(config.min_height), np.log(config.max_height * 0.8))))


def _paint_clutter(canvas: np.ndarray, rng: np.random.Generator, alpha: np.ndarray, object_boxes: list[Box],
                   config: SceneConfig) -> None:
    """One hard negative placed clear of every object's box (dropped if it finds no place in 10 tries)."""
    h, w = alpha.shape
    if not (alpha >= 0.5).any() or h > canvas.shape[0] or w > canvas.shape[1]:
        return
    for _ in range(10):
        y, x = int(rng.integers(0, canvas.shape[0] - h + 1)), int(rng.integers(0, canvas.shape[1] - w + 1))
        if all(_intersection((x, y, x + w, y + h), box, margin=3) == 0 for box in object_boxes):
            colour = contrasting_colour(rng, canvas[y:y + h, x:x + w], rng.random() < config.low_contrast)
            blend(canvas, alpha * np.float32(rng.uniform(0.8, 1.0)), y, x, colour)
            return


def bbox(mask: np.ndarray) -> Box:
    """Tight ``(x1, y1, x2, y2)`` of a boolean mask: columns ``x1..x2-1`` hold its pixels."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _intersection(a: Box, b: Box, margin: int = 0) -> int:
    """Intersection area of two boxes, ``b`` grown by ``margin`` px on every side."""
    w = min(a[2], b[2] + margin) - max(a[0], b[0] - margin)
    h = min(a[3], b[3] + margin) - max(a[1], b[1] - margin)
    return max(w, 0) * max(h, 0)


# ------------------------------------------------------------------------------ the data set

_OWNED = ("JPEGImages", "Annotations", "ImageSets", "annotations", "similarity_groups.json", "classes.txt",
          "records.jsonl", "README.md", "dataset.json")  # what a previous output may hold; replaced


def generate_scenes(kind: SceneKind, config: SceneConfig, out: str | Path, progress: bool = True,
                    workers: int = 1) -> Path:
    """Generate ``kind``'s data set into ``out`` (VOC layout + COCO files, module doc) and return ``out``.

    ``config.num_train`` train-side images (ids 000001.., every 8th one in val) and
    ``config.num_test`` test images (ids 500001..) are rendered one by one, in ``workers``
    processes, and streamed to disk; the bytes written do not depend on ``workers``. Workers are
    spawned (not forked), so a script that calls this with ``workers > 1`` needs the usual
    ``if __name__ == "__main__":`` guard. ``out`` must be new, empty, or a previous output of the
    same kind (which is replaced); anything else is a :class:`DataError`, so that no unrelated
    folder is overwritten.
    """
    config.validate()
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    out = Path(out)
    _prepare_output(kind, out)
    atomic_write_json(out / "dataset.json", _description(kind, config, None))
    tasks = ([("trainval", i) for i in range(1, config.num_train + 1)]
             + [("test", i) for i in range(1, config.num_test + 1)])
    make = partial(_make_image, kind, config, out)
    with tqdm(total=len(tasks), desc=f"{kind.name} -> {out}", unit="img", disable=not progress) as bar:
        if workers == 1:
            records = [_tick(bar, make(task)) for task in tasks]
        else:
            # spawn, not fork: a fork after OpenCV has started its thread pool can deadlock the child
            with get_context("spawn").Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
                records = [_tick(bar, r) for r in pool.imap(make, tasks, chunksize=8)]
    _write_indexes(kind, out, config, records)
    return out


def read_scene_records(kind: SceneKind, root: str | Path) -> list[SceneRecord]:
    """The per-image records (with the sources of every object) of a generated data set."""
    path = Path(root) / "records.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise DataError(f"cannot read the {kind.name} records: {err.strerror or err}", path=path) from err
    try:
        return [SceneRecord.from_dict(json.loads(line), kind.object_type) for line in lines]
    except (ValueError, TypeError, KeyError) as err:
        raise DataError(f"malformed record: {err}", path=path) from err


def is_output_of(root: str | Path, generator: str) -> bool:
    """Whether ``root`` holds a (maybe unfinished) output of ``generator`` (dataset.json's "generator")."""
    try:
        description = json.loads((Path(root) / "dataset.json").read_text(encoding="utf-8"))
        return description.get("generator") == generator
    except (OSError, ValueError, AttributeError):
        return False


def _prepare_output(kind: SceneKind, out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError("exists and is not a folder", path=out)
    if out.is_dir() and any(out.iterdir()):
        if not is_output_of(out, kind.generator):
            raise DataError(f"the folder is not empty and is not a {kind.name} output (it has no "
                            "dataset.json written by this generator), so it is left alone; give a "
                            f"new or empty folder, or a previous {kind.name} output to replace", path=out)
        remove_entries(out, _OWNED)
    out.mkdir(parents=True, exist_ok=True)


def _make_image(kind: SceneKind, config: SceneConfig, out: Path, task: tuple[str, int]) -> SceneRecord:
    """Render one image, write its JPEG and VOC annotation, return its record."""
    image, record = render_scene(kind, config, *task)
    sample = record.to_sample(out)
    sample.path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(sample.path, "JPEG", quality=config.jpeg_quality)
    write_voc_annotation(out / "Annotations" / f"{record.image_id}.xml", sample, kind.classes, folder=kind.name)
    return record


def _tick(bar: tqdm, record: SceneRecord) -> SceneRecord:
    bar.update()
    return record


def _write_indexes(kind: SceneKind, out: Path, config: SceneConfig, records: list[SceneRecord]) -> None:
    """Split lists, COCO files, similarity groups, records, README; dataset.json last (complete)."""
    members = {split: [r for r in records if r.split == split] for split in ("train", "val", "test")}
    members["trainval"] = [r for r in records if r.split != "test"]
    for split in SPLITS:
        write_voc_split(out, split, [r.image_id for r in members[split]])
        samples = [r.to_sample(out) for r in members[split]]
        dataset = DetectionDataset(kind.classes, samples, f"{kind.name} {split}", kind.similarity_groups)
        write_coco_instances(out / "annotations" / f"instances_{split}.json", dataset)
    atomic_write_json(out / "similarity_groups.json", kind.similarity_groups)
    atomic_write_text(out / "classes.txt", "".join(f"{name}\n" for name in kind.classes))
    atomic_write_text(out / "records.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in records))
    counts = {split: _counts(kind, members[split]) for split in SPLITS}
    table = "\n".join(f"| {split} | {c['images']} | {c['objects']} | {c['difficult']} |"
                      for split, c in counts.items())
    atomic_write_text(out / "README.md", kind.readme(config, counts, table))
    atomic_write_json(out / "dataset.json", _description(kind, config, counts))


def _counts(kind: SceneKind, records: list[SceneRecord]) -> dict:
    objects = [o for r in records for o in r.objects]
    per_class = {name: sum(o.label == k + 1 for o in objects) for k, name in enumerate(kind.classes)}
    return {"images": len(records), "objects": len(objects), "difficult": sum(o.difficult for o in objects),
            "per_class": per_class}


def _description(kind: SceneKind, config: SceneConfig, counts: dict | None) -> dict:
    """dataset.json: ``complete`` is false while images are being written."""
    return {"generator": kind.generator, "version": kind.version, "complete": counts is not None,
            "config": asdict(config), "classes": kind.classes, "similarity_groups": kind.similarity_groups,
            **kind.sources(), "counts": counts}
