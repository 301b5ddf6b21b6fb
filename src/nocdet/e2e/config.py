"""Configuration of the end-to-end setting (paper Sec. 4): Faster R-CNN whose region-wise
classifier is a NoC, trained with its trunk and RPN.

One YAML file is one experiment (``configs/e2e/``). It says ``detector: faster-rcnn``, which is
how ``nocdet train`` tells it from a frozen-feature config (:func:`is_e2e_config`). The model part
is :class:`E2EModelConfig`; defaults are the Faster R-CNN numbers of SPEC.md sections 3, 4 and 6.
Inheritance (``_base_``), ``--set`` overrides and unknown-key errors come from :mod:`nocdet.config`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from nocdet.config import bounded, load_config, load_yaml
from nocdet.devices import check_device_name
from nocdet.e2e.solver import E2ESolverConfig
from nocdet.errors import ConfigError
from nocdet.experiment import DataConfig
from nocdet.features.registry import REGISTRY, check_finetune_init, entry
from nocdet.noc.spec import parse_noc

DETECTOR = "faster-rcnn"
DETECTOR_KEY = "detector"



@dataclass
class E2EBackboneConfig:
    """The shared trunk. ``variant`` (paper Table 8): ``c4`` pools RoIs from the stride-16 map
    before the last stage (res4 / inc4d / EfficientNet-Lite stage 6) so that the last stage can be
    the NoC; ``naive`` pools after the last conv layer (res5c / inc5b / the EfficientNet head conv:
    stride 32; conv5_3 for VGG: stride 16); ``atrous`` pools after the last stage with its stride
    removed and its convs dilated (stride 16)."""

    name: str = "small-resnet"
    weights: str | None = None  # None/"random", "imagenet[:ENUM]" or a checkpoint path
    options: dict[str, Any] = field(default_factory=dict)
    variant: Literal["c4", "naive", "atrous"] = "c4"


@dataclass
class TransformConfig:
    """Resize (shorter side ``min_size``, longer side at most ``max_size``); several ``min_size``
    values draw one per training batch, testing uses the last (torchvision's rule)."""

    min_size: list[int] = field(default_factory=lambda: [600])
    max_size: int = 1000


@dataclass
class RPNConfig:
    """Faster R-CNN's RPN (SPEC.md 3); anchor sizes in pixels of the resized image."""

    anchor_sizes: list[int] = field(default_factory=lambda: [128, 256, 512])
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    pre_nms_top_n_train: int = 12000
    post_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 6000
    post_nms_top_n_test: int = 300
    nms_iou: float = 0.7
    fg_iou: float = 0.7
    bg_iou: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5


@dataclass
class RoIConfig:
    """RoI pooling of the shared map: ``max`` (RoI pooling, as the paper) or ``align`` (RoIAlign,
    ``sampling_ratio`` and ``aligned`` as torchvision). ``size`` None: the backbone's m (7 for
    VGG/ResNet/GoogLeNet), doubled for a conv NoC whose stage halves it (14 -> 7, Detectron's C4)."""

    pool: Literal["max", "align"] = "max"
    size: int | None = None
    sampling_ratio: int = 0
    aligned: bool = False


@dataclass
class E2ENoCConfig:
    """The NoC string (paper notation) and its init. ``stage_stride`` 2: res5a (eff7a) halves the
    pooled map (pool 14 x 14, work at 7 x 7); 1: no stride in the stage (pool 7 x 7); ResNets and
    EfficientNet-Lite only."""

    spec: str = "res5a,5b,5c, fcn+1"
    init: Literal["gaussian", "finetune"] = "gaussian"
    fc_std: float = 0.01
    cls_std: float = 0.01
    bbox_std: float = 0.001
    stage_stride: int = 2
    dropout: float = bounded(0.0, ge=0, lt=1)  # after each hidden fc (Fast/Faster R-CNN's VGG-16: 0.5; noc/spec.py)


@dataclass
class E2ESamplingConfig:
    """RoIs per image for the NoC's loss: foreground IoU >= ``fg_iou``, background IoU in
    [``bg_iou_lo``, ``bg_iou_hi``) ([0, 0.5) end to end, [0.1, 0.5) in Fast R-CNN); ground-truth
    boxes are added to the proposals."""

    rois_per_image: int = 512
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_iou_lo: float = 0.0
    bg_iou_hi: float = 0.5


@dataclass
class E2ETestConfig:
    """Inference (SPEC.md 6): softmax score threshold, per-class NMS, detections per image."""

    score_threshold: float = 0.05
    nms_iou: float = 0.3
    max_detections: int = 100


@dataclass
class E2EModelConfig:
    backbone: E2EBackboneConfig = field(default_factory=E2EBackboneConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi: RoIConfig = field(default_factory=RoIConfig)
    noc: E2ENoCConfig = field(default_factory=E2ENoCConfig)
    sampling: E2ESamplingConfig = field(default_factory=E2ESamplingConfig)
    test: E2ETestConfig = field(default_factory=E2ETestConfig)

    def check(self) -> E2EModelConfig:
        """Cross-field checks a type check cannot do (the NoC string is parsed here)."""
        _check_ranges(self)
        b, noc = self.backbone, self.noc
        set_by_variant = sorted({"upto", "atrous"} & set(b.options))
        if set_by_variant:
            raise ConfigError(f"model.backbone.options {set_by_variant}: set model.backbone.variant "
                              f"(c4, naive, atrous) instead")
        if b.variant not in entry(b.name).variants:
            with_variants = [n for n, e in REGISTRY.items() if b.variant in e.variants]
            raise ConfigError(f"model.backbone.variant {b.variant!r}: backbone {b.name!r} has one trunk, "
                              f"its last conv layer; use variant 'naive' (variants c4/atrous: "
                              f"{', '.join(with_variants)})")
        spec = parse_noc(noc.spec)
        if spec.has_maxout:
            raise ConfigError(f"model.noc.spec {noc.spec!r}: a maxout NoC takes two pyramid scales per "
                              "region; the end-to-end setting pools one feature map")
        has_stage = any(layer.kind == "stage" for layer in spec.layers)
        if has_stage and b.variant != "c4":
            raise ConfigError(f"model.noc.spec {noc.spec!r} reuses the last stage of the trunk, which "
                              f"variant {b.variant!r} already runs on the whole image: use variant 'c4'")
        if noc.stage_stride not in (1, 2):
            raise ConfigError(f"model.noc.stage_stride must be 1 or 2, got {noc.stage_stride}")
        if noc.stage_stride == 1 and b.name == "googlenet":
            raise ConfigError("model.noc.stage_stride 1 is for ResNets and EfficientNet-Lite; GoogLeNet's "
                              "inc5a keeps maxpool4")
        if noc.init == "finetune":
            check_finetune_init(b.name, "model.noc.init")
        return self


def _check_ranges(cfg: E2EModelConfig) -> None:
    s, r, t = cfg.sampling, cfg.rpn, cfg.transform
    problems = []
    if not 0.0 <= s.bg_iou_lo < s.bg_iou_hi <= s.fg_iou <= 1.0:
        problems.append(f"model.sampling needs 0 <= bg_iou_lo < bg_iou_hi <= fg_iou <= 1, got "
                        f"{s.bg_iou_lo}, {s.bg_iou_hi}, {s.fg_iou}")
    if not 0.0 <= r.bg_iou <= r.fg_iou <= 1.0:
        problems.append(f"model.rpn needs 0 <= bg_iou <= fg_iou <= 1, got {r.bg_iou}, {r.fg_iou}")
    for name, value in (("model.sampling.fg_fraction", s.fg_fraction),
                        ("model.rpn.positive_fraction", r.positive_fraction)):
        if not 0.0 < value <= 1.0:
            problems.append(f"{name} must be in (0, 1], got {value}")
    counts = {"model.sampling.rois_per_image": s.rois_per_image,
              "model.rpn.batch_size_per_image": r.batch_size_per_image,
              "model.rpn.pre_nms_top_n_train": r.pre_nms_top_n_train,
              "model.rpn.post_nms_top_n_train": r.post_nms_top_n_train,
              "model.rpn.pre_nms_top_n_test": r.pre_nms_top_n_test,
              "model.rpn.post_nms_top_n_test": r.post_nms_top_n_test,
              "model.transform.max_size": t.max_size,
              "model.test.max_detections": cfg.test.max_detections}
    problems += [f"{name} must be positive, got {v}" for name, v in counts.items() if v < 1]
    if not t.min_size or min(t.min_size) < 1 or max(t.min_size) > t.max_size:
        problems.append(f"model.transform.min_size must be positive values <= max_size {t.max_size}, "
                        f"got {t.min_size}")
    if not r.anchor_sizes or min(r.anchor_sizes) <= 0 or not r.aspect_ratios or min(r.aspect_ratios) <= 0:
        problems.append(f"model.rpn anchor_sizes and aspect_ratios must be positive, got "
                        f"{r.anchor_sizes}, {r.aspect_ratios}")
    if cfg.roi.size is not None and cfg.roi.size < 1:
        problems.append(f"model.roi.size must be positive or null, got {cfg.roi.size}")
    for name, value in (("model.rpn.nms_iou", r.nms_iou), ("model.test.nms_iou", cfg.test.nms_iou)):
        if not 0.0 < value <= 1.0:
            problems.append(f"{name} must be in (0, 1], got {value}")
    if problems:
        raise ConfigError("; ".join(problems))


@dataclass
class E2EExperimentConfig:
    """One end-to-end experiment: data, model and the trainer's solver."""

    detector: str = DETECTOR
    name: str = "e2e"
    seed: int = 0
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: E2EModelConfig = field(default_factory=E2EModelConfig)
    solver: E2ESolverConfig = field(default_factory=E2ESolverConfig)

    def check(self) -> E2EExperimentConfig:
        if self.detector != DETECTOR:
            raise ConfigError(f"detector {self.detector!r}: the end-to-end setting is {DETECTOR!r}")
        if not self.data.train:
            raise ConfigError("data.train lists no split")
        check_device_name(self.device)
        self.model.check()
        self.solver.validate()
        return self


def is_e2e_config(path: str | Path) -> bool:
    """True when the file (with its bases) has a ``detector`` key: an end-to-end config."""
    return DETECTOR_KEY in load_yaml(path)


def load_e2e_experiment(path: str | Path | None, overrides: Sequence[str] = ()) -> E2EExperimentConfig:
    """Load ``path`` (``_base_`` inheritance), apply ``key.path=value`` overrides, check."""
    return load_config(E2EExperimentConfig, path, overrides).check()
