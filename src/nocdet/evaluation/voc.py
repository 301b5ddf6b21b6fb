"""PASCAL VOC detection metric, reproducing the devkit's ``VOCevaldet.m`` to the last digit.

The devkit's rules (docs/reference.md §8), per class:

* detections are sorted by decreasing score; equal scores keep their input order, as MATLAB's
  ``sort`` is stable (input order = result-file order, or the order of the ``Detections`` list);
* each detection goes to the ground-truth box of its class in its image with the highest IoU,
  over *all* of them (difficult ones and ones already matched included; the first box wins a tie);
* IoU is computed on 1-based inclusive devkit coordinates with ``+1`` pixel widths;
* IoU >= 0.5 (``> 0.5`` with ``strict_threshold``, as py-faster-rcnn's port) with a difficult box:
  neither TP nor FP; with a box already detected: FP; otherwise TP. Below the threshold: FP;
* ``npos`` = number of non-difficult boxes; recall = cum(TP) / npos, precision = cum(TP) /
  (cum(TP) + cum(FP)).

Two AP definitions: VOC2007's 11-point AP and VOC2010+'s area under the precision envelope.
Where floating point could differ from the MATLAB code, the code below does the same operations
in the same order (see :data:`VOC07_RECALL_THRESHOLDS` and :func:`voc_ap`). Two documented
departures, where the devkit gives NaN: a class with no non-difficult object has ``ap = None``
(reported, left out of the mean), and precision is 0 (not 0/0) while all detections so far were
matched to difficult boxes; the AP is unchanged by the latter except that the devkit's NaN for a
class whose every detection is ignored becomes 0.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nocdet.data.sample import DetectionDataset, Detections
from nocdet.errors import ConfigError, DataError
from nocdet.evaluation.diagnosis import detections_by_class

METRICS = ("voc07", "voc")

# MATLAB's ``0:0.1:1``. The colon operator builds the first half as ``a + k*d`` and the second
# half as ``b - k*d`` (symmetric about the midpoint), so 0.6 and 0.7 are ``1 - 0.4`` and
# ``1 - 0.3``, not ``6 * 0.1`` and ``7 * 0.1`` as ``np.arange`` gives: a recall of exactly 3/5 or
# 7/10 reaches those thresholds in the devkit and misses them with ``np.arange``.
VOC07_RECALL_THRESHOLDS: tuple[float, ...] = tuple(
    [k * 0.1 for k in range(6)] + [1.0 - k * 0.1 for k in range(4, -1, -1)]
)


@dataclass
class ClassEval:
    """The evaluation of one class.

    ``order`` lists the input detections by decreasing score (the devkit's rank order); ``tp``
    and ``fp`` are 0/1 flags in that order (both 0 for a detection matched to a difficult box);
    ``recall`` and ``precision`` are the cumulative curves. ``ap`` is None when ``npos == 0``.
    """

    ap: float | None
    recall: np.ndarray
    precision: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    order: np.ndarray
    npos: int
    num_detections: int


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Average precision of a PR curve, as the devkit computes it.

    ``use_07_metric``: VOC2007's mean over recall thresholds 0, 0.1, ..., 1 of the highest
    precision at recall >= t (0 when the curve does not reach t). Otherwise VOC2010+'s
    ``VOCap.m``: area under the precision envelope (precision made monotone from the right),
    summed where recall changes. NaN precisions are skipped, as MATLAB's ``max`` skips them.
    """
    rec = np.asarray(recall, np.float64).reshape(-1)
    prec = np.asarray(precision, np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"recall has {rec.size} points, precision {prec.size}")
    prec = np.where(np.isnan(prec), 0.0, prec)
    if use_07_metric:
        ap = 0.0
        for t in VOC07_RECALL_THRESHOLDS:  # ap = ap + p/11, accumulated in the devkit's order
            reached = prec[rec >= t]
            ap = ap + (float(reached.max()) if reached.size else 0.0) / 11
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    # MATLAB's sum adds left to right; np.cumsum does too (np.sum would sum pairwise).
    return float(np.cumsum((mrec[changes] - mrec[changes - 1]) * mpre[changes])[-1])


def _best_overlaps(dets: np.ndarray, gts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each detection ``[n, 4]``, the highest devkit IoU with ``gts [m, 4]`` and its index.

    Same arithmetic as VOCevaldet.m, element by element; pairs that do not intersect
    (``iw <= 0`` or ``ih <= 0``) are skipped, and no overlap at all gives ``-inf``.
    """
    if len(gts) == 0:
        return np.full(len(dets), -np.inf), np.zeros(len(dets), np.int64)
    d, g = dets[:, None, :], gts[None, :, :]
    iw = np.minimum(d[..., 2], g[..., 2]) - np.maximum(d[..., 0], g[..., 0]) + 1
    ih = np.minimum(d[..., 3], g[..., 3]) - np.maximum(d[..., 1], g[..., 1]) + 1
    ua = ((d[..., 2] - d[..., 0] + 1) * (d[..., 3] - d[..., 1] + 1)
          + (g[..., 2] - g[..., 0] + 1) * (g[..., 3] - g[..., 1] + 1)
          - iw * ih)
    with np.errstate(divide="ignore", invalid="ignore"):
        ov = np.where((iw > 0) & (ih > 0), iw * ih / ua, -np.inf)
    jmax = np.argmax(ov, axis=1)  # the first of equal maxima, as the devkit's ``ov > ovmax``
    return ov[np.arange(len(dets)), jmax], jmax


def evaluate_class(
    gt: Mapping[str, tuple[np.ndarray, np.ndarray]],
    image_ids: Sequence[str],
    scores: np.ndarray,
    boxes: np.ndarray,
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
    strict_threshold: bool = False,
) -> ClassEval:
    """Evaluate the detections of one class against its ground truth, as VOCevaldet.m.

    ``gt`` maps every test image id (with or without objects of the class) to ``(boxes [N, 4],
    difficult [N])``; ``boxes`` of both GT and detections are devkit coordinates (1-based,
    inclusive). A detection on an image id missing from ``gt`` raises :class:`DataError`.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    image_ids = list(image_ids)
    if not (len(image_ids) == len(scores) == len(boxes)):
        raise ValueError(f"{len(image_ids)} image ids, {len(scores)} scores, {len(boxes)} boxes")
    if np.isnan(scores).any():
        raise DataError("score is NaN", record=f"detection {int(np.flatnonzero(np.isnan(scores))[0])}")
    for index, image_id in enumerate(image_ids):
        if image_id not in gt:
            raise DataError(f"unrecognized image {image_id!r} (not in the ground truth)",
                            record=f"detection {index}")

    # Flatten the ground truth: image i's boxes are rows offset[i] .. offset[i] + n_i.
    offset: dict[str, int] = {}
    difficult: list[bool] = []
    for image_id, (gt_boxes, gt_difficult) in gt.items():
        gt_difficult = np.asarray(gt_difficult, bool).reshape(-1)
        if len(np.asarray(gt_boxes).reshape(-1, 4)) != len(gt_difficult):
            raise ValueError(f"ground truth of {image_id}: boxes and difficult flags differ in length")
        offset[image_id] = len(difficult)
        difficult.extend(gt_difficult.tolist())
    npos = difficult.count(False)

    # The best overlap of a detection does not depend on the matching: compute it per image.
    ovmax = np.full(len(scores), -np.inf)
    jmax = np.zeros(len(scores), np.int64)
    by_image: dict[str, list[int]] = {}
    for index, image_id in enumerate(image_ids):
        by_image.setdefault(image_id, []).append(index)
    for image_id, indices in by_image.items():
        gt_boxes = np.asarray(gt[image_id][0], np.float64).reshape(-1, 4)
        ovmax[indices], local = _best_overlaps(boxes[indices], gt_boxes)
        jmax[indices] = local + offset[image_id]

    order = np.argsort(-scores, kind="stable")  # MATLAB: [sc, si] = sort(-confidence)
    matched = ovmax > iou_threshold if strict_threshold else ovmax >= iou_threshold
    tp = np.zeros(len(scores))
    fp = np.zeros(len(scores))
    detected = [False] * len(difficult)
    for rank, (is_match, j) in enumerate(zip(matched[order].tolist(), jmax[order].tolist())):
        if not is_match:
            fp[rank] = 1
        elif not difficult[j]:
            if detected[j]:
                fp[rank] = 1  # multiple detection
            else:
                tp[rank] = 1
                detected[j] = True

    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(ctp + cfp > 0, ctp / (ctp + cfp), 0.0)
    if npos == 0:
        return ClassEval(None, np.zeros_like(ctp), precision, tp, fp, order, 0, len(scores))
    recall = ctp / npos
    return ClassEval(voc_ap(recall, precision, use_07_metric), recall, precision, tp, fp, order,
                     npos, len(scores))


@dataclass
class VOCEval:
    """Per-class evaluations of a data set; classes without non-difficult objects have AP None."""

    metric: str
    class_evals: dict[str, ClassEval]

    @property
    def per_class(self) -> dict[str, float | None]:
        return {name: e.ap for name, e in self.class_evals.items()}

    @property
    def skipped_classes(self) -> list[str]:
        """Classes left out of the mean: no non-difficult object in the ground truth."""
        return [name for name, e in self.class_evals.items() if e.ap is None]

    @property
    def mAP(self) -> float | None:
        """Mean AP over the classes with objects (MATLAB's ``mean``: left-to-right sum / n)."""
        aps = [ap for ap in self.per_class.values() if ap is not None]
        if not aps:
            return None
        total = 0.0
        for ap in aps:
            total += ap
        return total / len(aps)

    def to_json(self) -> dict:
        return {"mAP": self.mAP, "per_class": self.per_class, "metric": self.metric,
                "skipped_classes": self.skipped_classes}

    def format_table(self) -> str:
        """A per-class table: AP (fraction), number of non-difficult objects, of detections."""
        width = max([len("class"), len("mAP")] + [len(n) for n in self.class_evals])
        lines = [f"{'class':<{width}}  {'AP':>6}  {'objects':>7}  {'detections':>10}"]
        for name, e in self.class_evals.items():
            ap = "-" if e.ap is None else f"{e.ap:.4f}"
            lines.append(f"{name:<{width}}  {ap:>6}  {e.npos:>7}  {e.num_detections:>10}")
        mean = "-" if self.mAP is None else f"{self.mAP:.4f}"
        lines.append(f"{'mAP':<{width}}  {mean:>6}  ({self.metric}, "
                     f"{len(self.class_evals) - len(self.skipped_classes)} classes)")
        if self.skipped_classes:
            lines.append("left out of the mean (no non-difficult object): "
                         + ", ".join(self.skipped_classes))
        return "\n".join(lines)


def _use_07_metric(metric: str) -> bool:
    if metric not in METRICS:
        raise ConfigError(f"unknown VOC metric {metric!r}; choose one of {', '.join(METRICS)}")
    return metric == "voc07"


def _to_devkit(boxes: np.ndarray) -> np.ndarray:
    """Internal (x1, y1, x2, y2) -> devkit 1-based inclusive (x1 + 1, y1 + 1, x2, y2)."""
    out = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    out[:, :2] += 1
    return out


def ground_truth_by_class(
    dataset: DetectionDataset, classes: Sequence[str] | None = None
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``{class: {image_id: (devkit boxes, difficult)}}`` over every image of the data set, for
    ``classes`` (default: the data set's; a name it lacks gets no objects)."""
    classes = dataset.classes if classes is None else list(classes)
    labels = {c: dataset.label_of(c) if c in dataset.classes else 0 for c in classes}
    gt: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {c: {} for c in classes}
    for sample in dataset.samples:
        boxes = _to_devkit(sample.boxes)
        for name, label in labels.items():
            keep = sample.labels == label
            gt[name][sample.image_id] = (boxes[keep], sample.difficult[keep])
    return gt


def evaluate_voc(
    dataset: DetectionDataset,
    detections: Sequence[Detections],
    metric: str = "voc07",
    *,
    iou_threshold: float = 0.5,
    strict_threshold: bool = False,
) -> VOCEval:
    """Evaluate in-memory detections (internal coordinates) on a data set with the VOC metric.

    Images without detections are fine; equal scores keep the order of ``detections``.
    """
    use_07 = _use_07_metric(metric)
    by_class = detections_by_class(dataset, detections)
    gt = ground_truth_by_class(dataset)
    evals = {}
    for name in dataset.classes:
        dets = by_class[name]
        evals[name] = evaluate_class(gt[name], dets.image_ids, dets.scores, _to_devkit(dets.boxes),
                                     iou_threshold=iou_threshold, use_07_metric=use_07,
                                     strict_threshold=strict_threshold)
    return VOCEval(metric, evals)


def evaluate_voc_results_dir(
    root: str | Path,
    split: str,
    results_dir: str | Path,
    metric: str = "voc07",
    classes: Sequence[str] | None = None,
    *,
    year: str | None = None,
    strict_threshold: bool = False,
) -> VOCEval:
    """Evaluate devkit result files ``comp4_det_<split>_<class>.txt`` against a VOC split.

    ``classes``: the classes to evaluate (objects of other classes are ignored); by default the
    20 VOC classes when every name in the annotations is one of them, else the sorted names
    found. The result files' boxes are already devkit coordinates and are used as read
    (float64). A class without a result file counts as having no detections (the reader warns).
    Only the annotations are read: the images need not be there.
    """
    from nocdet.data.voc import read_voc, read_voc_results

    use_07 = _use_07_metric(metric)
    if not Path(results_dir).is_dir():
        raise DataError("results folder does not exist", path=results_dir)
    dataset = read_voc(root, split, year=year, require_images=False)
    names = dataset.classes if classes is None else list(classes)
    results = read_voc_results(results_dir, split, names,
                               known_ids={s.image_id for s in dataset.samples})
    gt = ground_truth_by_class(dataset, names)
    evals = {}
    for name in names:
        r = results[name]
        try:
            evals[name] = evaluate_class(gt[name], r.image_ids, r.scores, r.boxes,
                                         use_07_metric=use_07, strict_threshold=strict_threshold)
        except DataError as err:
            raise DataError(err.reason, path=Path(results_dir) / f"comp4_det_{split}_{name}.txt",
                            record=err.record) from err
    return VOCEval(metric, evals)
