"""What a score threshold does to a detector's output: precision, recall and F1 of all classes
pooled against the threshold (to pick ``nocdet detect --threshold``), and the confusion matrix
of the detections kept at one threshold.

Both use the VOC devkit's matching at IoU 0.5: detections in decreasing score order, each to the
most overlapping unmatched object; objects marked difficult neither count nor are missed.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from nocdet.data.sample import DetectionDataset, Detections
from nocdet.evaluation.voc import ClassEval

MATCH_IOU = 0.5


@dataclass
class ThresholdCurve:
    """Pooled precision, recall and F1 of the detections scoring at least each of
    ``thresholds`` (decreasing)."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray

    @property
    def best(self) -> int:
        """Index of the highest F1 (the highest threshold on a tie)."""
        return int(np.argmax(self.f1))


def threshold_curve(class_evals: Mapping[str, ClassEval], scores: Mapping[str, np.ndarray]) -> ThresholdCurve:
    """The curve from per-class devkit evaluations (``tp``/``fp`` flags in ``order``) and each
    class's detection ``scores`` (in input order, as evaluated)."""
    flags = [(np.asarray(scores[name])[e.order], e.tp, e.fp) for name, e in class_evals.items() if len(e.order)]
    npos = sum(e.npos for e in class_evals.values())
    if not flags:
        empty = np.zeros(0)
        return ThresholdCurve(empty, empty, empty, empty)
    s, tp, fp = (np.concatenate(parts) for parts in zip(*flags))
    rank = np.argsort(-s, kind="stable")
    s, tp, fp = s[rank], np.cumsum(tp[rank]), np.cumsum(fp[rank])
    last = np.r_[s[1:] != s[:-1], True]  # a threshold keeps every detection of its score
    s, tp, fp = s[last], tp[last], fp[last]
    precision = np.divide(tp, tp + fp, out=np.zeros(len(tp)), where=tp + fp > 0)
    recall = tp / npos if npos else np.zeros(len(tp))
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(tp)),
                   where=precision + recall > 0)
    return ThresholdCurve(s, precision, recall, f1)


def confusion_matrix(dataset: DetectionDataset, detections: Sequence[Detections], threshold: float) -> np.ndarray:
    """``[K + 1, K + 1]`` counts at ``score >= threshold``: row = the object's true class
    (label - 1), column = the detected class; row K: detections matching no object (background
    and duplicates); column K: objects no detection matched (missed). A detection goes to the
    unmatched object of its own class with the highest IoU >= 0.5, else to the unmatched object
    of any class with the highest IoU >= 0.5; one on a difficult object is ignored."""
    k = dataset.num_classes
    matrix = np.zeros((k + 1, k + 1), np.int64)
    by_id = {d.image_id: d for d in detections}
    for sample in dataset.samples:
        det = by_id.get(sample.image_id)
        matched = np.zeros(len(sample.labels), bool)
        if det is not None and len(det.scores):
            keep = np.flatnonzero(np.asarray(det.scores) >= threshold)
            keep = keep[np.argsort(-np.asarray(det.scores)[keep], kind="stable")]
            iou = (box_iou(torch.as_tensor(np.asarray(det.boxes, np.float64)[keep]),
                           torch.as_tensor(np.asarray(sample.boxes, np.float64))).numpy()
                   if len(sample.labels) else np.zeros((len(keep), 0)))
            for row, d in enumerate(keep.tolist()):
                label = int(det.labels[d])
                free = (iou[row] >= MATCH_IOU) & ~matched
                same = free & (sample.labels == label)
                pick = same if same.any() else free
                if not pick.any():
                    matrix[k, label - 1] += 1
                    continue
                j = int(np.argmax(np.where(pick, iou[row], -1.0)))
                if sample.difficult[j]:
                    continue
                matched[j] = True
                matrix[int(sample.labels[j]) - 1, label - 1] += 1
        for j in np.flatnonzero(~matched & ~sample.difficult):
            matrix[int(sample.labels[j]) - 1, k] += 1
    return matrix
