"""NoCFasterRCNN: Faster R-CNN whose region-wise classifier is a NoC (paper Sec. 4).

transform (resize, normalise by the backbone's mean/std, pad to a multiple of 32) -> shared trunk
-> RPN (torchvision's, on the one feature map) -> RoI pooling -> NoC -> softmax + class-specific
box deltas. The data contract is torchvision's ``GeneralizedRCNN``: ``images`` a list of float
``[3, H, W]`` RGB tensors in [0, 1], ``targets`` a list of ``{"boxes" [N, 4] (x1, y1, x2, y2)
pixels, "labels" [N] int64 in 1..K}``; training returns the four losses, evaluation the
detections in each input image's pixels.

Parameters shared by the trunk and the NoC (the c4 variant's res5 blocks belong to both
``backbone`` and ``roi_heads.noc``) appear once in ``parameters()`` and twice in
``state_dict()``. ``requires_grad`` is False for frozen trunk stages and for backbone blocks
neither the trunk nor the NoC runs; the backbone's own fc6/fc7 are dropped (a fine-tuned NoC
holds copies), so every trainable parameter gets a gradient.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import clip_boxes_to_image

from nocdet.e2e.roi_heads import NoCRoIHeads, RoIPooling, RoISampling
from nocdet.e2e.trunk import build_trunk, stage_factory
from nocdet.errors import ConfigError, DataError
from nocdet.experiment import ExperimentConfig
from nocdet.features.backbones import Backbone
from nocdet.noc.head import NoCHead
from nocdet.noc.init import init_finetune, init_gaussian
from nocdet.noc.spec import parse_noc

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")


class NoCFasterRCNN(nn.Module):
    """The end-to-end detector; built by :func:`build_e2e_model`.

    ``config`` is the model config it was built from and ``classes`` the class names (label i is
    ``classes[i - 1]``): with the ``state_dict`` they are what a checkpoint needs to rebuild it
    (``build_e2e_model(config, len(classes), classes=classes, pretrained=False)``).
    """

    def __init__(self, transform: GeneralizedRCNNTransform, backbone: Backbone, rpn: RegionProposalNetwork,
                 roi_heads: NoCRoIHeads, num_classes: int, classes: Sequence[str] | None = None,
                 config: ExperimentConfig | None = None):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.num_classes = num_classes
        self.classes = list(classes) if classes is not None else [str(i) for i in range(1, num_classes + 1)]
        if len(self.classes) != num_classes:
            raise ConfigError(f"{len(self.classes)} class names for {num_classes} classes")
        self.config = config

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: the losses ``{loss_objectness, loss_rpn_box_reg, loss_classifier,
        loss_box_reg}``; evaluation: per image ``{"boxes" [D, 4], "labels" [D], "scores" [D]}``."""
        if self.training:
            if targets is None:
                raise ValueError("in training mode the detector needs targets (model.eval() to detect)")
            return self._losses(images, targets)
        return self._detect(images)

    @torch.no_grad()
    def compute_losses(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The training losses without gradients, in whatever mode the model is: in eval mode no
        BatchNorm statistics or dropout change, while the RPN keeps its training top-N and the
        regions are sampled as in training (a validation loss)."""
        return self._losses(images, targets)

    def _losses(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        self._check_inputs(images, targets)
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        with _training_mode(self.rpn):
            proposals, rpn_losses = self.rpn(image_list, {"0": features}, targets)
        return {**rpn_losses, **self.roi_heads.losses(features, proposals, targets)}

    def _detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        self._check_inputs(images, None)
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        image_list, _ = self.transform(images)
        features = self.backbone(image_list.tensors)
        proposals, _ = self.rpn(image_list, {"0": features})
        detections = self.roi_heads.detect(features, proposals, image_list.image_sizes)
        detections = self.transform.postprocess(detections, image_list.image_sizes, original_sizes)
        for det, size in zip(detections, original_sizes):  # rescaling may overshoot by rounding
            det["boxes"] = clip_boxes_to_image(det["boxes"], size)
        return detections

    def _check_inputs(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None) -> None:
        for i, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
                raise DataError(f"an image is a float [3, H, W] RGB tensor, got {image.dtype} "
                                f"{list(image.shape)}", record=f"image {i} of the batch")
        if targets is None:
            return
        if len(targets) != len(images):
            raise DataError(f"{len(images)} images but {len(targets)} targets")
        for i, target in enumerate(targets):
            where = f"target {i} of the batch"
            if "boxes" not in target or "labels" not in target:
                raise DataError(f"a target needs 'boxes' and 'labels', got {sorted(target)}", record=where)
            boxes, labels = target["boxes"], target["labels"]
            if boxes.dim() != 2 or boxes.shape[1] != 4 or len(labels) != len(boxes):
                raise DataError(f"boxes must be [N, 4] and labels [N], got {list(boxes.shape)} and "
                                f"{list(labels.shape)}", record=where)
            if labels.dtype != torch.int64 or (len(labels) and not (
                    1 <= int(labels.min()) and int(labels.max()) <= self.num_classes)):
                raise DataError(f"labels must be int64 in 1..{self.num_classes}, got {labels.dtype} "
                                f"{labels.tolist()}", record=where)
            bad = torch.where((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))[0]
            if len(bad):
                raise DataError(f"degenerate boxes (x2 <= x1 or y2 <= y1) at {bad.tolist()}: "
                                f"{boxes[bad].tolist()}", record=where)


@contextmanager
def _training_mode(module: nn.Module) -> Iterator[None]:
    """Run ``module`` (the RPN: convs only, no BatchNorm or dropout) with its training settings."""
    was_training = module.training
    module.train(True)
    try:
        yield
    finally:
        module.train(was_training)


def build_noc(cfg: ExperimentConfig, backbone: Backbone, num_classes: int, pretrained: bool = True) -> NoCHead:
    """The NoC of ``cfg.noc`` on the backbone's pooled regions, with class-specific deltas.

    Gaussian init (docs/reference.md §4) of its own layers; stages keep the backbone's weights. Fine-tune
    init copies the backbone's pre-trained fc6/fc7 (only when ``pretrained``: a restored model
    gets them from its checkpoint)."""
    spec = parse_noc(cfg.noc.spec).resolve(num_classes)
    has_stage = any(layer.kind == "stage" for layer in spec.layers)
    size = cfg.roi.size
    if size is None:
        size = backbone.roi_size * (2 if has_stage and cfg.noc.stage_stride == 2 else 1)
    head = NoCHead(spec, backbone.out_channels, size, num_classes, box_regression=True,
                   stage_factory=stage_factory(backbone, cfg.noc.stage_stride), dropout=cfg.noc.dropout)
    noc = cfg.noc
    if noc.init == "finetune" and pretrained:
        fc67 = backbone.fc67()
        if fc67 is None:
            raise ConfigError(f"noc.init 'finetune' needs pre-trained fc6/fc7, but the weights "
                              f"{backbone.weights_source!r} of {backbone.name!r} have none")
        return init_finetune(head, *fc67, cls_std=noc.cls_std, bbox_std=noc.bbox_std)
    return init_gaussian(head, fc_std=noc.fc_std, cls_std=noc.cls_std, bbox_std=noc.bbox_std)


def _freeze_unused(backbone: Backbone, noc: NoCHead) -> None:
    """Drop the backbone's fc6/fc7 (a fine-tuned NoC holds its own copies) and fix the backbone
    parameters neither the trunk nor the NoC uses (stage blocks an fc NoC leaves), so that every
    trainable parameter gets a gradient (DistributedDataParallel needs that)."""
    backbone.classifier = None
    used = {id(p) for m in backbone.trunk_modules() for p in m.parameters()}
    used |= {id(p) for p in noc.parameters()}
    for p in backbone.parameters():
        if id(p) not in used:
            p.requires_grad_(False)


def build_rpn(cfg: ExperimentConfig, in_channels: int) -> RegionProposalNetwork:
    r = cfg.rpn
    anchors = AnchorGenerator(sizes=(tuple(r.anchor_sizes),), aspect_ratios=(tuple(r.aspect_ratios),))
    head = RPNHead(in_channels, anchors.num_anchors_per_location()[0])
    return RegionProposalNetwork(
        anchors, head, fg_iou_thresh=r.fg_iou, bg_iou_thresh=r.bg_iou,
        batch_size_per_image=r.batch_size_per_image, positive_fraction=r.positive_fraction,
        pre_nms_top_n={"training": r.pre_nms_top_n_train, "testing": r.pre_nms_top_n_test},
        post_nms_top_n={"training": r.post_nms_top_n_train, "testing": r.post_nms_top_n_test},
        nms_thresh=r.nms_iou)


def build_e2e_model(cfg: ExperimentConfig, num_classes: int, *, classes: Sequence[str] | None = None,
                    pretrained: bool = True) -> NoCFasterRCNN:
    """The detector of ``cfg`` for ``num_classes`` object classes (background excluded).

    ``pretrained`` False builds the same architecture without reading ``cfg.backbone.weights``
    (to load a checkpoint's state dict; also works under ``torch.device("meta")``).
    """
    if cfg.setting != "e2e":
        raise ConfigError(f"an end-to-end detector needs a config with setting: e2e, got {cfg.setting!r}")
    cfg.check()
    backbone = build_trunk(cfg.backbone, pretrained)
    noc = build_noc(cfg, backbone, num_classes, pretrained)
    _freeze_unused(backbone, noc)
    pooling = RoIPooling(cfg.roi.pool, noc.roi_size, 1.0 / backbone.stride, cfg.roi.sampling_ratio,
                         cfg.roi.aligned)
    s = cfg.sampling
    roi_heads = NoCRoIHeads(noc, pooling, RoISampling(s.rois_per_image, s.fg_fraction, s.fg_iou, s.bg_iou_lo,
                                                      s.bg_iou_hi),
                            cfg.test)
    transform = GeneralizedRCNNTransform(tuple(cfg.transform.min_size), cfg.transform.max_size,
                                         list(backbone.mean), list(backbone.std))
    return NoCFasterRCNN(transform, backbone, build_rpn(cfg, backbone.out_channels), roi_heads,
                         num_classes, classes, cfg)
