"""Proposal recall: how many ground-truth objects some proposal covers well enough.

Recall at IoU ``t`` is the fraction of ground-truth boxes that at least one proposal of their
image overlaps with IoU >= ``t``. The mean best overlap (MABO, Uijlings et al., who report about
0.80 for the "fast" mode on VOC 2007 test) is the mean over ground-truth boxes of their best IoU
with any proposal. IoUs come from ``torchvision.ops.box_iou`` on internal ``(x1, y1, x2, y2)``
coordinates.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from nocdet.data.sample import DetectionDataset
from nocdet.errors import DataError

_LISTED = 10


def best_overlaps(gt_boxes: np.ndarray, proposals: np.ndarray) -> np.ndarray:
    """For each ground-truth box ``[G, 4]``, its best IoU with any proposal ``[P, 4]`` (0 if none)."""
    if len(gt_boxes) == 0 or len(proposals) == 0:
        return np.zeros(len(gt_boxes), np.float64)
    iou = box_iou(torch.as_tensor(gt_boxes, dtype=torch.float64),
                  torch.as_tensor(proposals, dtype=torch.float64))
    return iou.max(dim=1).values.numpy()


def proposal_recall(dataset: DetectionDataset, proposals: Mapping[str, np.ndarray],
                    thresholds: Sequence[float] = (0.5, 0.7),
                    ignore_difficult: bool = True) -> dict[str, Any]:
    """Recall of ``proposals`` over the ground truth of ``dataset``.

    Returns ``{"recall": {t: r}, "per_class": {class: {t: r}}, "mean_best_iou": m,
    "num_gt": n, "num_gt_per_class": {class: n}, "num_images": i, "boxes_per_image":
    {"mean", "median", "min", "max"}}``; a recall over no ground truth is None. Difficult
    objects are left out when ``ignore_difficult`` (as the VOC evaluation ignores them).
    Every image of the data set must have an entry in ``proposals`` (possibly empty).
    """
    missing = [s.image_id for s in dataset.samples if s.image_id not in proposals]
    if missing:
        raise DataError(f"no proposals for {len(missing)} of {len(dataset)} images: "
                        f"{', '.join(missing[:_LISTED])}{', ...' if len(missing) > _LISTED else ''}",
                        record=dataset.name or None)
    best, labels, counts = [], [], []
    for sample in dataset.samples:
        boxes = np.asarray(proposals[sample.image_id], np.float32).reshape(-1, 4)
        counts.append(len(boxes))
        keep = ~sample.difficult if ignore_difficult else np.ones(len(sample.labels), bool)
        best.append(best_overlaps(sample.boxes[keep], boxes))
        labels.append(sample.labels[keep])
    best_iou = np.concatenate(best) if best else np.zeros(0)
    gt_labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    per_class = {}
    num_per_class = {}
    for label, name in enumerate(dataset.classes, start=1):
        of_class = best_iou[gt_labels == label]
        per_class[name] = _recalls(of_class, thresholds)
        num_per_class[name] = int(len(of_class))
    sizes = np.asarray(counts, np.float64)
    return {
        "recall": _recalls(best_iou, thresholds),
        "per_class": per_class,
        "mean_best_iou": float(best_iou.mean()) if len(best_iou) else None,
        "num_gt": int(len(best_iou)),
        "num_gt_per_class": num_per_class,
        "num_images": len(dataset),
        "boxes_per_image": {
            "mean": float(sizes.mean()) if len(sizes) else 0.0,
            "median": float(np.median(sizes)) if len(sizes) else 0.0,
            "min": int(sizes.min()) if len(sizes) else 0,
            "max": int(sizes.max()) if len(sizes) else 0,
        },
    }


def _recalls(best_iou: np.ndarray, thresholds: Sequence[float]) -> dict[float, float | None]:
    if len(best_iou) == 0:
        return {float(t): None for t in thresholds}
    return {float(t): float((best_iou >= t).mean()) for t in thresholds}
