"""Error diagnosis of Hoiem, Chodpathumwan and Dai ("Diagnosing error in object detectors",
ECCV 2012), as the paper's Fig. 3 uses it: where do a detector's top-ranked detections go?

For each class ``c`` with ``N_c`` non-difficult objects, its ``ceil(top_factor * N_c)`` highest
scored detections (all of them when it has fewer) are each given exactly one category, checked
in this order of precedence (``Cor > Loc > Sim > Oth > BG``):

* **Cor**: the devkit matches it (IoU >= 0.5) to an object of class ``c``: the detection goes,
  in order of decreasing score, to the object of class ``c`` in its image with the highest IoU
  (first one on a tie), as VOCevaldet.m does, and that object was not matched before. A
  detection that the devkit matches to a *difficult* object is Cor too, because Hoiem's code
  counts it as correct (``label 0 >= 0``); the number of these is reported as ``difficult``. As
  in the devkit, a difficult object is never used up, so every such detection counts this way
  (Hoiem's code would make the second one a duplicate).
* **Loc**: not Cor, and IoU >= 0.1 with some object of class ``c``: poor localisation, or a
  duplicate detection of an already matched object.
* **Sim**: IoU >= 0.1 with an object of a class *similar* to ``c`` (sharing a similarity group).
* **Oth**: IoU >= 0.1 with an object of any other class.
* **BG**: everything else (IoU < 0.1 with every object).

Difficult objects count as objects for Loc, Sim and Oth (Hoiem's "weak" matching uses them).
Sim is preferred over Oth for a detection that overlaps both kinds (as Hoiem's per-detection
``issim`` / ``isother`` flags do; his top-N counter instead picks the most overlapping object).

IoU is :func:`torchvision.ops.box_iou` in float64 on the internal continuous boxes. For VOC data
this *is* the devkit's ``+1`` IoU (internal ``x1 = xmin - 1``, so ``x2 - x1 = xmax - xmin + 1``),
so Cor equals the devkit's true positives among the same detections (matched-to-difficult ones
aside); for COCO data it is COCO's IoU.

Detections are ranked by decreasing score, equal scores in input order (as
:func:`nocdet.evaluation.voc.evaluate_voc` ranks them). Whether a detection is Cor depends only
on higher-ranked ones, so a longer cut (a larger ``top_factor``) never re-labels a shorter one's
detections; :func:`false_positive_curve` uses this.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nocdet.data.sample import DetectionDataset, Detections, check_similarity_groups, read_similarity_groups
from nocdet.errors import ConfigError, DataError

CATEGORIES: tuple[str, ...] = ("Cor", "Loc", "Sim", "Oth", "BG")
"""The five categories of a top-ranked detection, in order of precedence."""
FP_TYPES: tuple[str, ...] = CATEGORIES[1:]
"""The four kinds of false positive."""
CORRECT_IOU = 0.5  # devkit: a match needs IoU >= 0.5
WEAK_IOU = 0.1  # Hoiem: Loc, Sim and Oth need IoU >= 0.1
DEFAULT_CURVE_FACTORS: tuple[float, ...] = (0.125, 0.25, 0.5, 1, 2, 4, 8)

_COR, _LOC, _SIM, _OTH, _BG = range(5)
_SAME, _SIMILAR, _OTHER = 0, 1, 2
_PROGRESS_MIN = 1000  # show a progress bar from this many images with detections on


# ------------------------------------------------------------------------------------ input

@dataclass
class ClassDetections:
    """The detections of one class over a data set: ``image_ids[i]``, ``scores [N]`` and
    ``boxes [N, 4]`` (internal coordinates), in input order (float64 keeps a result file's
    numbers as read)."""

    image_ids: list[str]
    scores: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        self.image_ids = list(self.image_ids)
        self.scores = np.asarray(self.scores, np.float64).reshape(-1)
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        if not (len(self.image_ids) == len(self.scores) == len(self.boxes)):
            raise ValueError(f"{len(self.image_ids)} image ids, {len(self.scores)} scores, "
                             f"{len(self.boxes)} boxes")

    @classmethod
    def from_devkit(cls, image_ids: Sequence[str], scores: np.ndarray, boxes: np.ndarray) -> "ClassDetections":
        """From devkit result-file coordinates (1-based inclusive): ``x1 = xmin - 1, y1 = ymin - 1``."""
        internal = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
        internal[:, :2] -= 1
        return cls(list(image_ids), scores, internal)


def detections_by_class(dataset: DetectionDataset, detections: Sequence[Detections]) -> dict[str, ClassDetections]:
    """Group per-image detections by class, keeping their order; checks images and labels."""
    known = {s.image_id for s in dataset.samples}
    ids: dict[int, list[str]] = {k: [] for k in range(1, dataset.num_classes + 1)}
    scores: dict[int, list[np.ndarray]] = {k: [] for k in ids}
    boxes: dict[int, list[np.ndarray]] = {k: [] for k in ids}
    for det in detections:
        if det.image_id not in known:
            raise DataError(f"detections on image {det.image_id!r}, which is not in "
                            f"{dataset.name or 'the data set'}")
        bad = (det.labels < 1) | (det.labels > dataset.num_classes)
        if bad.any():
            raise DataError(f"label {int(det.labels[bad][0])} outside 1..{dataset.num_classes}",
                            record=f"image {det.image_id}")
        for label in np.unique(det.labels).tolist():
            keep = det.labels == label
            ids[label].extend([det.image_id] * int(keep.sum()))
            scores[label].append(det.scores[keep])
            boxes[label].append(det.boxes[keep])
    return {name: ClassDetections(ids[k], np.concatenate(scores[k]) if scores[k] else np.zeros(0),
                                  np.concatenate(boxes[k]) if boxes[k] else np.zeros((0, 4)))
            for k, name in enumerate(dataset.classes, start=1)}


def _as_by_class(dataset: DetectionDataset,
                 detections: Sequence[Detections] | Mapping[str, ClassDetections]) -> dict[str, ClassDetections]:
    """Per-class detections of every class of the data set, checked: known images, finite numbers."""
    if isinstance(detections, Mapping):
        unknown = [name for name in detections if name not in dataset.classes]
        if unknown:
            raise DataError(f"detections of unknown class(es) {', '.join(map(repr, unknown))}; known "
                            f"classes: {', '.join(dataset.classes)}")
        known = {s.image_id for s in dataset.samples}
        for name, dets in detections.items():
            for index, image_id in enumerate(dets.image_ids):
                if image_id not in known:
                    raise DataError(f"unrecognized image {image_id!r} (not in {dataset.name or 'the data set'})",
                                    record=f"class {name}, detection {index}")
        empty = ClassDetections([], np.zeros(0), np.zeros((0, 4)))
        by_class = {name: detections.get(name, empty) for name in dataset.classes}
    else:
        by_class = detections_by_class(dataset, detections)
    for name, dets in by_class.items():
        bad = ~(np.isfinite(dets.scores) & np.isfinite(dets.boxes).all(axis=1))
        if bad.any():
            index = int(np.flatnonzero(bad)[0])
            raise DataError("non-finite score or box",
                            record=f"class {name}, detection {index} (image {dets.image_ids[index]})")
    return by_class


# ------------------------------------------------------------------------ similarity groups

def load_similarity_groups(path: str | Path, classes: Sequence[str]) -> list[list[str]]:
    """Read a JSON list of lists of class names; a name not in ``classes`` is a DataError."""
    return read_similarity_groups(path, classes)


def resolve_similarity_groups(dataset: DetectionDataset,
                              similarity_groups: str | Path | Sequence[Sequence[str]] | None = None
                              ) -> list[list[str]]:
    """The groups to use: ``similarity_groups`` (groups, or a JSON file of them), else the data
    set's own, else VOC's when the classes are the 20 VOC classes. Without any, every confusion
    with another class is Oth (a warning says so)."""
    from nocdet.data.voc import VOC_CLASSES, VOC_SIMILARITY_GROUPS

    if isinstance(similarity_groups, (str, Path)):
        return load_similarity_groups(similarity_groups, dataset.classes)
    if similarity_groups is not None:
        return check_similarity_groups(similarity_groups, dataset.classes)
    if dataset.similarity_groups:
        return check_similarity_groups(dataset.similarity_groups, dataset.classes)
    if set(dataset.classes) == set(VOC_CLASSES):
        return [list(g) for g in VOC_SIMILARITY_GROUPS]
    warnings.warn(f"{dataset.name or 'the data set'} defines no similarity groups: confusions with "
                  "other classes all count as Oth, none as Sim", stacklevel=2)
    return []


def _relation(classes: Sequence[str], groups: Sequence[Sequence[str]]) -> np.ndarray:
    """``[K + 1, K + 1]``: relation of detection label ``c`` to object label ``k``."""
    index = {name: k for k, name in enumerate(classes, start=1)}
    relation = np.full((len(classes) + 1, len(classes) + 1), _OTHER, np.int8)
    for group in groups:
        labels = [index[n] for n in group]
        relation[np.ix_(labels, labels)] = _SIMILAR
    np.fill_diagonal(relation, _SAME)
    return relation


# ---------------------------------------------------------------------------- classification

@dataclass
class RankedClass:
    """The top detections of one class by decreasing score: ``categories`` (indices into
    :data:`CATEGORIES`) and ``difficult`` (Cor by a match to a difficult object); ``num_objects``
    is ``N_c``, the number of non-difficult objects."""

    categories: np.ndarray
    difficult: np.ndarray
    num_objects: int


def _cut(num_objects: int, factor: float) -> int:
    """How many top detections ``factor * N`` means (rounded up; 1e-9 absorbs float noise)."""
    return math.ceil(factor * num_objects - 1e-9)


def _check_factor(factor: float, what: str) -> float:
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
        raise ConfigError(f"{what} must be a positive number, not {factor!r}")
    return float(factor)


def classify_detections(dataset: DetectionDataset,
                        detections: Sequence[Detections] | Mapping[str, ClassDetections],
                        similarity_groups: str | Path | Sequence[Sequence[str]] | None = None,
                        top_factor: float = 1.0) -> dict[str, RankedClass]:
    """Categorise the ``ceil(top_factor * N_c)`` top detections of every class (module doc)."""
    import torch  # here, not at the top: plots and the CLI's checks need no torch
    from torchvision.ops import box_iou

    top_factor = _check_factor(top_factor, "top_factor")
    groups = resolve_similarity_groups(dataset, similarity_groups)
    by_class = _as_by_class(dataset, detections)
    relation = _relation(dataset.classes, groups)
    samples = {s.image_id: s for s in dataset.samples}
    num_objects = {k: 0 for k in range(1, dataset.num_classes + 1)}
    for s in dataset.samples:
        for label in s.labels[~s.difficult].tolist():
            num_objects[label] += 1

    # The top detections of each class, as one flat list (class by class, in rank order).
    labels, image_ids, boxes = [], [], []
    for k, name in enumerate(dataset.classes, start=1):
        dets = by_class[name]
        order = np.argsort(-dets.scores, kind="stable")[:_cut(num_objects[k], top_factor)]
        labels.append(np.full(len(order), k, np.int64))
        image_ids.extend(dets.image_ids[i] for i in order.tolist())
        boxes.append(dets.boxes[order])
    labels_flat = np.concatenate(labels)
    boxes_flat = np.concatenate(boxes).reshape(-1, 4)

    # Per detection: best IoU with an object of its class (and which one), best with a similar
    # class's object, best with another class's object.
    n = len(labels_flat)
    same_iou, sim_iou, oth_iou = np.zeros(n), np.zeros(n), np.zeros(n)
    match = [("", -1)] * n
    by_image: dict[str, list[int]] = {}
    for index, image_id in enumerate(image_ids):
        by_image.setdefault(image_id, []).append(index)
    for image_id, indices in tqdm(by_image.items(), desc="diagnosing", unit="img",
                                  disable=len(by_image) < _PROGRESS_MIN):
        sample = samples[image_id]
        if len(sample.labels) == 0:
            continue
        iou = box_iou(torch.from_numpy(boxes_flat[indices]),
                      torch.from_numpy(sample.boxes.astype(np.float64))).numpy()
        iou = np.nan_to_num(iou, nan=0.0)
        rel = relation[labels_flat[indices]][:, sample.labels]
        same = np.where(rel == _SAME, iou, -1.0)
        best = np.argmax(same, axis=1)  # first of equal maxima, as the devkit
        same_iou[indices] = same[np.arange(len(indices)), best]
        sim_iou[indices] = np.where(rel == _SIMILAR, iou, 0.0).max(axis=1)
        oth_iou[indices] = np.where(rel == _OTHER, iou, 0.0).max(axis=1)
        for i, j in zip(indices, best.tolist()):
            match[i] = (image_id, j)

    result, start = {}, 0
    for k, name in enumerate(dataset.classes, start=1):
        stop = start + len(labels[k - 1])
        result[name] = _assign(samples, match[start:stop], same_iou[start:stop], sim_iou[start:stop],
                               oth_iou[start:stop], num_objects[k])
        start = stop
    return result


def _assign(samples, match, same_iou, sim_iou, oth_iou, num_objects: int) -> RankedClass:
    """Devkit matching in rank order, then the first category that applies (module doc)."""
    categories = np.full(len(match), _BG, np.int8)
    difficult = np.zeros(len(match), bool)
    detected: set[tuple[str, int]] = set()
    for r, (image_id, j) in enumerate(match):
        if same_iou[r] >= CORRECT_IOU:
            if samples[image_id].difficult[j]:
                categories[r], difficult[r] = _COR, True
            elif (image_id, j) in detected:
                categories[r] = _LOC  # duplicate
            else:
                categories[r] = _COR
                detected.add((image_id, j))
        elif same_iou[r] >= WEAK_IOU:
            categories[r] = _LOC
        elif sim_iou[r] >= WEAK_IOU:
            categories[r] = _SIM
        elif oth_iou[r] >= WEAK_IOU:
            categories[r] = _OTH
    return RankedClass(categories, difficult, num_objects)


# --------------------------------------------------------------------------------- summaries

def _fractions(counts: Mapping[str, int]) -> dict[str, float | None]:
    total = sum(counts[c] for c in CATEGORIES)
    return {c: (counts[c] / total if total else None) for c in CATEGORIES}


@dataclass
class ClassDiagnosis:
    """One class: ``counts`` per category of its top detections; ``num_objects`` = ``N_c``;
    ``difficult`` = how many of the Cor matched a difficult object."""

    counts: dict[str, int]
    num_objects: int
    difficult: int = 0

    @property
    def num_detections(self) -> int:
        return sum(self.counts.values())

    @property
    def fractions(self) -> dict[str, float | None]:
        """Share of each category (None for every category when no detection was considered)."""
        return _fractions(self.counts)

    @classmethod
    def from_ranked(cls, ranked: RankedClass, num: int) -> "ClassDiagnosis":
        """Counts over the first ``num`` ranked detections."""
        counts = np.bincount(ranked.categories[:num].astype(np.int64), minlength=len(CATEGORIES))
        return cls(dict(zip(CATEGORIES, map(int, counts))), ranked.num_objects,
                   int(ranked.difficult[:num].sum()))

    def to_json(self) -> dict:
        return {"counts": self.counts, "fractions": self.fractions, "num_objects": self.num_objects,
                "num_detections": self.num_detections, "difficult": self.difficult}


@dataclass
class Diagnosis:
    """The diagnosis of one experiment: per-class counts and their pooled shares."""

    per_class: dict[str, ClassDiagnosis]
    top_factor: float
    similarity_groups: list[list[str]]

    @property
    def counts(self) -> dict[str, int]:
        return {c: sum(d.counts[c] for d in self.per_class.values()) for c in CATEGORIES}

    @property
    def overall(self) -> dict[str, float | None]:
        """Share of each category among the top detections of all classes (sums to 1; None
        when no detection was considered)."""
        return _fractions(self.counts)

    @property
    def num_objects(self) -> int:
        return sum(d.num_objects for d in self.per_class.values())

    @property
    def num_detections(self) -> int:
        return sum(d.num_detections for d in self.per_class.values())

    def to_json(self) -> dict:
        return {"overall": self.overall, "counts": self.counts, "num_objects": self.num_objects,
                "num_detections": self.num_detections, "top_factor": self.top_factor,
                "difficult": sum(d.difficult for d in self.per_class.values()),
                "similarity_groups": self.similarity_groups,
                "per_class": {name: d.to_json() for name, d in self.per_class.items()}}


def diagnose(dataset: DetectionDataset,
             detections: Sequence[Detections] | Mapping[str, ClassDetections],
             similarity_groups: str | Path | Sequence[Sequence[str]] | None = None,
             top_factor: float = 1.0) -> Diagnosis:
    """Cor/Loc/Sim/Oth/BG of each class's ``ceil(top_factor * N_c)`` top detections (paper Fig. 3).

    ``detections``: per-image :class:`Detections`, or per-class :class:`ClassDetections`.
    ``similarity_groups``: see :func:`resolve_similarity_groups`.
    """
    groups = resolve_similarity_groups(dataset, similarity_groups)
    ranked = classify_detections(dataset, detections, groups, top_factor)
    per_class = {name: ClassDiagnosis.from_ranked(r, len(r.categories)) for name, r in ranked.items()}
    return Diagnosis(per_class, float(top_factor), groups)


def false_positive_curve(dataset: DetectionDataset,
                         detections: Sequence[Detections] | Mapping[str, ClassDetections],
                         similarity_groups: str | Path | Sequence[Sequence[str]] | None = None,
                         factors: Sequence[float] = DEFAULT_CURVE_FACTORS) -> dict:
    """Hoiem's false-positive trend: for each factor ``f``, the top ``ceil(f * N_c)`` detections
    of every class are pooled, and the share of Loc/Sim/Oth/BG among their false positives is
    given (None where there is none). ``"counts"`` holds all five categories' counts;
    ``"detections"`` and ``"false_positives"`` the totals; x = total detections / N.
    """
    factors = [_check_factor(f, "a curve factor") for f in factors]
    if not factors:
        raise ConfigError("false_positive_curve needs at least one factor")
    groups = resolve_similarity_groups(dataset, similarity_groups)
    ranked = classify_detections(dataset, detections, groups, max(factors))
    counts = {c: [] for c in CATEGORIES}
    for f in factors:
        per_class = [ClassDiagnosis.from_ranked(r, _cut(r.num_objects, f)) for r in ranked.values()]
        for c in CATEGORIES:
            counts[c].append(sum(d.counts[c] for d in per_class))
    false_positives = [sum(counts[c][i] for c in FP_TYPES) for i in range(len(factors))]
    shares = {c: [counts[c][i] / fp if fp else None for i, fp in enumerate(false_positives)]
              for c in FP_TYPES}
    return {"factors": factors, "num_objects": sum(r.num_objects for r in ranked.values()),
            "detections": [sum(counts[c][i] for c in CATEGORIES) for i in range(len(factors))],
            "false_positives": false_positives, **shares, "counts": counts}


def format_diagnosis_table(diagnoses: Mapping[str, Diagnosis]) -> str:
    """One row per experiment: the share (%) of each category, detections and objects."""
    width = max([len("experiment")] + [len(name) for name in diagnoses])
    head = f"{'experiment':<{width}}  " + "  ".join(f"{c:>6}" for c in CATEGORIES)
    lines = [head + f"  {'detections':>10}  {'objects':>7}"]
    for name, d in diagnoses.items():
        cells = ["-" if v is None else f"{100 * v:.1f}%" for v in d.overall.values()]
        lines.append(f"{name:<{width}}  " + "  ".join(f"{c:>6}" for c in cells)
                     + f"  {d.num_detections:>10}  {d.num_objects:>7}")
    return "\n".join(lines)
