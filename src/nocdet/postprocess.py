"""From per-region class scores to detections: clip, per-class NMS, top-k (docs/reference.md §6).

Shape shorthand: R = regions, K = object classes (background excluded).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from nocdet.config import bounded, only_in
from nocdet.data.sample import Detections


@dataclass
class PostprocessConfig:
    """Test-time settings of both settings (the base of the ``test`` section)."""

    nms_iou: float = bounded(0.3, gt=0, le=1)
    max_detections: int = bounded(100, ge=1)
    # what max_detections counts: the detections of an "image" over all classes (py-faster-rcnn), or
    # those of each "class" in an image (SPPnet's and R-CNN's test code); end to end: per image
    cap: Literal["image", "class"] = only_in("frozen", "image")
    score_threshold: float = 0.05  # softmax scores; SVM scores use e.g. -1.5 (SPPnet)


def _cap_per_class(keep: Tensor, labels: Tensor, limit: int) -> Tensor:
    """The first ``limit`` of each class among ``keep`` (indices in decreasing score), order kept."""
    lab = labels[keep]
    order = torch.argsort(lab, stable=True)  # grouped by class, decreasing score within a class
    counts = torch.bincount(lab[order])
    first_of_class = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=keep.device) - first_of_class[lab[order]]
    chosen = torch.zeros(len(keep), dtype=torch.bool, device=keep.device)
    chosen[order[rank < limit]] = True
    return keep[chosen]


#: boxes narrower or lower than this many pixels after clipping are dropped (torchvision's rule)
MIN_BOX_SIZE = 1e-2


def select_detections(boxes: Tensor, scores: Tensor, width: int, height: int, config: PostprocessConfig
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """The detections of one image, on the tensors' device, in decreasing score: ``(boxes [D, 4],
    scores [D], labels [D] in 1..K)``.

    ``boxes`` is ``[R, 4]`` (the same box for every class) or ``[R, K, 4]`` (class-specific boxes
    after box regression); ``scores`` is ``[R, K]`` (softmax probabilities without the background
    column, or SVM scores). Boxes are clipped to the image, those under ``score_threshold`` or
    smaller than :data:`MIN_BOX_SIZE` dropped, then per-class NMS, and the ``max_detections`` best
    are kept: of the image (``cap`` "image", or no cap setting) or of each class (``cap`` "class").
    Both settings' detectors use it.
    """
    num_regions, num_classes = scores.shape
    if boxes.dim() == 2:
        boxes = boxes[:, None, :].expand(num_regions, num_classes, 4)
    boxes = clip_boxes_to_image(boxes.reshape(-1, 4).float(), (height, width))
    scores = scores.reshape(-1).float()
    labels = torch.arange(1, num_classes + 1, device=scores.device).repeat(num_regions)
    keep = ((scores > config.score_threshold) & (boxes[:, 2] - boxes[:, 0] >= MIN_BOX_SIZE)
            & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_SIZE))
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, config.nms_iou)  # decreasing score
    if getattr(config, "cap", None) == "class":
        keep = _cap_per_class(keep, labels, config.max_detections)
    else:
        keep = keep[: config.max_detections]
    return boxes[keep], scores[keep], labels[keep]


def detect_from_scores(image_id: str, boxes: Tensor, scores: Tensor, width: int, height: int,
                       config: PostprocessConfig) -> Detections:
    """:func:`select_detections` of one image as :class:`~nocdet.data.sample.Detections`."""
    boxes, scores, labels = select_detections(boxes, scores, width, height, config)
    return Detections(image_id, boxes.cpu().numpy(), scores.cpu().numpy(), labels.cpu().numpy())
