"""The one sample format every reader produces and every consumer takes.

Boxes are ``(x1, y1, x2, y2)`` float32 arrays in continuous pixel coordinates: a box covering
pixel columns ``a..b`` (0-based, inclusive) is ``x1 = a, x2 = b + 1``. Readers and writers
convert at the boundary:

* PASCAL VOC XML / devkit result files are 1-based inclusive: ``x1 = xmin - 1, x2 = xmax``.
* COCO is ``[x, y, w, h]``: ``x1 = x, x2 = x + w``.

Labels are contiguous integers ``1..K`` (0 is reserved for background); ``classes[label - 1]``
is the name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from nocdet.errors import DataError


@dataclass
class Sample:
    """One annotated image.

    ``difficult`` marks objects that neither count as misses nor as false positives when
    evaluating (VOC ``<difficult>``; COCO ``iscrowd`` objects are carried the same way).
    """

    image_id: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        self.difficult = np.asarray(self.difficult, bool).reshape(-1)
        if not (len(self.boxes) == len(self.labels) == len(self.difficult)):
            raise ValueError(
                f"sample {self.image_id}: {len(self.boxes)} boxes, {len(self.labels)} labels, "
                f"{len(self.difficult)} difficult flags"
            )

    def flipped(self) -> "Sample":
        """The horizontally mirrored sample (the image itself is flipped by the loader)."""
        boxes = self.boxes.copy()
        boxes[:, 0] = self.width - self.boxes[:, 2]
        boxes[:, 2] = self.width - self.boxes[:, 0]
        return Sample(self.image_id, self.path, self.width, self.height, boxes, self.labels.copy(),
                      self.difficult.copy())


@dataclass
class DetectionDataset:
    """A list of samples with its class names (background excluded) and similarity groups.

    ``similarity_groups`` lists groups of class names that count as *similar* in the error
    diagnosis (Hoiem et al.); empty when the data set defines none. ``category_ids`` maps
    contiguous labels back to the ids of a COCO file.
    """

    classes: list[str]
    samples: list[Sample]
    name: str = ""
    similarity_groups: list[list[str]] = field(default_factory=list)
    category_ids: list[int] | None = None  # COCO category id of label i + 1, when read from COCO

    @property
    def num_classes(self) -> int:
        """Number of object classes, background excluded."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def label_of(self, name: str) -> int:
        """The contiguous label (1-based) of a class name."""
        return self.classes.index(name) + 1

    def by_id(self) -> dict[str, Sample]:
        return {s.image_id: s for s in self.samples}


def concat(datasets: list[DetectionDataset], name: str | None = None) -> DetectionDataset:
    """Concatenate data sets with the same class list (e.g. VOC "07+12")."""
    if not datasets:
        raise ValueError("concat needs at least one data set")
    classes = datasets[0].classes
    for d in datasets[1:]:
        if d.classes != classes:
            raise ValueError(f"cannot concatenate {d.name!r}: its classes differ from {datasets[0].name!r}")
    samples = [s for d in datasets for s in d.samples]
    ids = [s.image_id for s in samples]
    if len(set(ids)) != len(ids):
        raise ValueError("concatenated data sets share image ids; give each split its own ids")
    return DetectionDataset(classes, samples, name or "+".join(d.name for d in datasets),
                            datasets[0].similarity_groups, datasets[0].category_ids)


@dataclass
class Detections:
    """Detections of one image: ``boxes [N, 4]`` (internal coordinates), ``scores [N]``,
    ``labels [N]`` in ``1..K``."""

    image_id: str
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        if not (len(self.boxes) == len(self.scores) == len(self.labels)):
            raise ValueError(f"detections of {self.image_id}: lengths differ")


def check_similarity_groups(groups: object, classes: Sequence[str],
                            path: str | Path | None = None) -> list[list[str]]:
    """Validate groups (a list of lists of class names) against ``classes``."""
    if not isinstance(groups, (list, tuple)):
        raise DataError("similarity groups must be a list of lists of class names", path=path)
    for k, group in enumerate(groups):
        if not isinstance(group, (list, tuple)) or not all(isinstance(n, str) for n in group):
            raise DataError("expected a list of class names", path=path, record=f"group {k}")
        unknown = [n for n in group if n not in classes]
        if unknown:
            raise DataError(f"unknown class(es) {', '.join(map(repr, unknown))}; known classes: "
                            f"{', '.join(classes)}", path=path, record=f"group {k}")
    return [list(g) for g in groups]


def read_similarity_groups(path: str | Path, classes: Sequence[str]) -> list[list[str]]:
    """Read a JSON list of lists of class names (``similarity_groups.json``), checked against ``classes``."""
    path = Path(path)
    try:
        groups = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read similarity groups: {err}", path=path) from err
    return check_similarity_groups(groups, classes, path)
