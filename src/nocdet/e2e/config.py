"""The config sections only the end-to-end setting has (paper Sec. 4: Faster R-CNN whose
region-wise classifier is a NoC, trained with its trunk and RPN): the image transform, the RPN and
RoI pooling. They sit beside the shared sections of :class:`nocdet.experiment.ExperimentConfig`
(``setting: e2e``); defaults are the Faster R-CNN numbers of docs/reference.md sections 3, 4 and 6.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nocdet.config import bounded
from nocdet.errors import ConfigError


@dataclass
class TransformConfig:
    """Resize (shorter side ``min_size``, longer side at most ``max_size``); several ``min_size``
    values draw one per training batch, testing uses the last (torchvision's rule)."""

    min_size: list[int] = bounded(default_factory=lambda: [600], ge=1)
    max_size: int = bounded(1000, ge=1)


@dataclass
class RPNConfig:
    """Faster R-CNN's RPN (docs/reference.md §3); anchor sizes in pixels of the resized image."""

    anchor_sizes: list[int] = bounded(default_factory=lambda: [128, 256, 512], gt=0)
    aspect_ratios: list[float] = bounded(default_factory=lambda: [0.5, 1.0, 2.0], gt=0)
    pre_nms_top_n_train: int = bounded(12000, ge=1)
    post_nms_top_n_train: int = bounded(2000, ge=1)
    pre_nms_top_n_test: int = bounded(6000, ge=1)
    post_nms_top_n_test: int = bounded(300, ge=1)
    nms_iou: float = bounded(0.7, gt=0, le=1)
    fg_iou: float = bounded(0.7, ge=0, le=1)
    bg_iou: float = bounded(0.3, ge=0, le=1)
    batch_size_per_image: int = bounded(256, ge=1)
    positive_fraction: float = bounded(0.5, gt=0, le=1)


@dataclass
class RoIConfig:
    """RoI pooling of the shared map: ``max`` (RoI pooling, as the paper) or ``align`` (RoIAlign,
    ``sampling_ratio`` and ``aligned`` as torchvision). ``size`` None: the backbone's m (7 for
    VGG/ResNet/GoogLeNet), doubled for a conv NoC whose stage halves it (14 -> 7, Detectron's C4)."""

    pool: Literal["max", "align"] = "max"
    size: int | None = bounded(None, ge=1)
    sampling_ratio: int = bounded(0, ge=0)
    aligned: bool = False


def check_e2e_sections(transform: TransformConfig, rpn: RPNConfig) -> None:
    """The rules between fields of these sections (each field's range is its bound)."""
    if not transform.min_size or max(transform.min_size) > transform.max_size:
        raise ConfigError(f"transform.min_size must be positive values <= max_size {transform.max_size}, "
                          f"got {transform.min_size}")
    if rpn.bg_iou > rpn.fg_iou:
        raise ConfigError(f"rpn needs bg_iou <= fg_iou, got {rpn.bg_iou}, {rpn.fg_iou}")
    if not rpn.anchor_sizes or not rpn.aspect_ratios:
        raise ConfigError("rpn.anchor_sizes and rpn.aspect_ratios must not be empty")
