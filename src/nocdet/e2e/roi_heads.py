"""The region-wise part of Faster R-CNN with a NoC: RoI sampling, RoI pooling, the NoC, its loss
and its detections (paper Sec. 4; torchvision's ``RoIHeads`` with a configurable background band).

Shape shorthand: R regions (all images), G ground-truth boxes of an image, C channels of the
shared map, m the pooled side, K classes (K + 1 outputs with background).

Training samples ``rois_per_image`` regions per image from the RPN proposals plus the ground
truth: foreground IoU >= ``fg_iou`` (label of the best GT), background IoU in [``bg_lo``,
``bg_hi``) (label 0), the rest ignored; at most ``fg_fraction`` foreground (torchvision's
``BalancedPositiveNegativeSampler``). Loss: cross-entropy + smooth L1 on the true class's deltas,
as torchvision's ``fastrcnn_loss``; deltas are encoded with weights (10, 10, 5, 5), i.e. targets
divided by the stds (0.1, 0.1, 0.2, 0.2) of docs/reference.md §5.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import box_iou, roi_align, roi_pool

from nocdet.boxes import END_TO_END_STDS
from nocdet.noc.head import NoCHead
from nocdet.postprocess import PostprocessConfig, select_detections

BOX_WEIGHTS = tuple(1.0 / s for s in END_TO_END_STDS)  # (10, 10, 5, 5)


@dataclass(frozen=True)
class RoISampling:
    rois_per_image: int = 512
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_lo: float = 0.0
    bg_hi: float = 0.5


@dataclass(frozen=True)
class RoIPooling:
    """``pool`` "max" (RoI pooling) or "align" (RoIAlign); ``spatial_scale`` = 1 / stride."""

    pool: str
    size: int
    spatial_scale: float
    sampling_ratio: int = 0
    aligned: bool = False

    def __call__(self, features: Tensor, boxes: list[Tensor]) -> Tensor:
        """``[B, C, H, W]`` map and per-image ``[R_i, 4]`` boxes -> ``[R, C, m, m]``."""
        if self.pool == "max":
            return roi_pool(features, boxes, self.size, self.spatial_scale)
        return roi_align(features, boxes, self.size, self.spatial_scale, self.sampling_ratio, self.aligned)


class NoCRoIHeads(nn.Module):
    """Sampling, pooling, the NoC (with class-specific box deltas) and the post-processing."""

    def __init__(self, noc: NoCHead, pooling: RoIPooling, sampling: RoISampling, inference: PostprocessConfig):
        super().__init__()
        if noc.bbox_pred is None:
            raise ValueError("the end-to-end NoC needs its box regressor (box_regression=True)")
        if noc.roi_size != pooling.size:
            raise ValueError(f"the NoC takes {noc.roi_size} x {noc.roi_size} regions, the pooling "
                             f"gives {pooling.size} x {pooling.size}")
        self.noc = noc
        self.pooling = pooling
        self.sampling = sampling
        self.inference = inference
        self.box_coder = det_utils.BoxCoder(BOX_WEIGHTS)
        self.sampler = det_utils.BalancedPositiveNegativeSampler(sampling.rois_per_image, sampling.fg_fraction)

    def assign(self, proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> tuple[Tensor, Tensor]:
        """Per proposal: its label (class of the best GT if IoU >= fg_iou, 0 if IoU is in the
        background band, -1 ignored) and the index of its best GT (0 without GT)."""
        if gt_boxes.numel() == 0:
            best_iou = proposals.new_zeros(len(proposals))
            matched = torch.zeros(len(proposals), dtype=torch.int64, device=proposals.device)
            labels = torch.zeros(len(proposals), dtype=torch.int64, device=proposals.device)
        else:
            best_iou, matched = box_iou(gt_boxes, proposals).max(dim=0)
            labels = gt_labels[matched].to(torch.int64)
        s = self.sampling
        background = (best_iou >= s.bg_lo) & (best_iou < s.bg_hi)
        labels = torch.where(best_iou >= s.fg_iou, labels,
                             torch.where(background, torch.zeros_like(labels), torch.full_like(labels, -1)))
        return labels, matched

    def sample(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
               ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Training regions per image: boxes ``[S_i, 4]``, labels ``[S_i]`` (0 = background) and
        encoded regression targets ``[S_i, 4]``. Uses torch's global RNG (seed it to repeat)."""
        boxes, labels, regression = [], [], []
        for props, target in zip(proposals, targets):
            gt_boxes = target["boxes"].to(props.dtype)
            props = torch.cat([props, gt_boxes])
            image_labels, matched = self.assign(props, gt_boxes, target["labels"])
            positive, negative = self.sampler([image_labels])
            keep = torch.where(positive[0].bool() | negative[0].bool())[0]
            props, image_labels, matched = props[keep], image_labels[keep], matched[keep]
            matched_boxes = gt_boxes[matched] if len(gt_boxes) else torch.zeros_like(props)
            boxes.append(props)
            labels.append(image_labels)
            regression.append(self.box_coder.encode_single(matched_boxes, props))
        return boxes, labels, regression

    def losses(self, features: Tensor, proposals: list[Tensor], targets: list[dict[str, Tensor]]
               ) -> dict[str, Tensor]:
        """``loss_classifier`` and ``loss_box_reg`` on sampled regions (zero when none is sampled)."""
        boxes, labels, regression = self.sample(proposals, targets)
        if sum(len(b) for b in boxes) == 0:  # e.g. no GT and bg_lo > 0: nothing to learn from
            zero = features.new_zeros(())
            return {"loss_classifier": zero, "loss_box_reg": zero.clone()}
        out = self.noc(self.pooling(features, boxes))
        loss_classifier, loss_box_reg = fastrcnn_loss(out.logits, out.deltas, labels, regression)
        return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

    def detect(self, features: Tensor, proposals: list[Tensor], image_sizes: list[tuple[int, int]]
               ) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes" [D, 4], "labels" [D] in 1..K, "scores" [D]}`` in the pixels of the
        (resized) image: softmax, class-specific decoded boxes clipped, score threshold, per-class
        NMS, the ``max_detections`` best."""
        out = self.noc(self.pooling(features, proposals))
        scores = F.softmax(out.logits, dim=-1)
        num_outputs = scores.shape[1]
        boxes = self.box_coder.decode(out.deltas, proposals).reshape(-1, num_outputs, 4)
        counts = [len(p) for p in proposals]
        results = []
        for image_boxes, image_scores, (height, width) in zip(boxes.split(counts), scores.split(counts), image_sizes):
            kept_boxes, kept_scores, labels = select_detections(image_boxes[:, 1:], image_scores[:, 1:], width,
                                                                height, self.inference)
            results.append({"boxes": kept_boxes, "labels": labels, "scores": kept_scores})
        return results
