"""A trained frozen-feature detector applied to any image: ``nocdet.load(model.pt).predict(images)``.

The same parts as training, composed for one image at a time: Selective Search proposals ->
pyramid features of the frozen backbone -> RoI pooling at each region's scale(s) -> NoC ->
softmax or SVM scores -> optional box regression -> clip, per-class NMS, top-k.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from nocdet.config import from_dict
from nocdet.data.images import load_image
from nocdet.data.sample import Detections
from nocdet.errors import NocdetError
from nocdet.experiment import ExperimentConfig
from nocdet.features.backbones import build_backbone
from nocdet.features.roi_cache import ExtractionSettings, pool_regions
from nocdet.noc.head import NoCHead
from nocdet.noc.spec import parse_noc
from nocdet.postprocess import detect_from_scores
from nocdet.proposals.selective_search import selective_search
from nocdet.training.bbox_regression import BoxRegressor
from nocdet.training.checkpoint import load_checkpoint
from nocdet.training.svm import LinearSVMs

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor


@dataclass
class Prediction:
    """Detections of one image with class names: ``boxes [N, 4]`` (x1, y1, x2, y2 pixels),
    ``scores [N]``, ``labels [N]`` in ``1..K`` and ``names[i] = classes[labels[i] - 1]``."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]


def as_rgb_array(image: ImageLike) -> np.ndarray:
    """A path, PIL image, ``H x W x 3`` uint8 array or ``[3, H, W]`` float tensor in [0, 1] as
    an ``H x W x 3`` uint8 RGB array."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise NocdetError(f"an image tensor must be [3, H, W], got {tuple(image.shape)}")
        return (image.detach().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise NocdetError(f"an image array must be H x W x 3, got shape {array.shape}")
    return array.astype(np.uint8)


class FrozenNoCDetector:
    """The detector a frozen-feature run saved in ``model.pt``."""

    def __init__(self, state: dict, device: str = "cpu"):
        self.config: ExperimentConfig = from_dict(ExperimentConfig, state["config"])
        self.classes: list[str] = list(state["classes"])
        cfg = self.config
        self.backbone = build_backbone(cfg.backbone.name, None, **cfg.backbone.options)
        self.backbone.load_state_dict(state["backbone_state"])
        self.backbone.freeze().eval().to(device)
        spec = parse_noc(cfg.noc.spec).resolve(len(self.classes))
        stage_factory = self.backbone.stage if any(layer.kind == "stage" for layer in spec.layers) else None
        self.head = NoCHead(spec, self.backbone.out_channels, self.backbone.roi_size, len(self.classes),
                            stage_factory=stage_factory)
        self.head.load_state_dict(state["head"])
        self.head.eval().to(device)
        self.svms = LinearSVMs.from_state_dict(state["svms"]) if state.get("svms") else None
        self.regressor = BoxRegressor.from_state_dict(state["bbox"]) if state.get("bbox") else None
        self.device = device
        self.settings = ExtractionSettings(scales=list(cfg.pyramid.scales), max_size=cfg.pyramid.max_size,
                                           pool_mode=cfg.pyramid.pool, include_gt=False, flip=False,
                                           target_area=cfg.pyramid.target_area)

    @torch.inference_mode()
    def detect(self, image: ImageLike, image_id: str = "image") -> Detections:
        """Detections of one image (internal format, labels ``1..K``)."""
        array = as_rgb_array(image)
        height, width = array.shape[:2]
        p = self.config.proposals
        boxes = selective_search(array, min_size=p.min_size, max_boxes=p.max_boxes, max_side=p.max_side,
                                 ks=p.ks, sigma=p.sigma, color_spaces=p.color_spaces)
        if len(boxes) == 0:
            return Detections(image_id, np.zeros((0, 4)), np.zeros(0), np.zeros(0))
        x = torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1).float() / 255.0
        x = self.backbone.normalize(x).to(self.device)
        rois = torch.from_numpy(boxes).to(self.device)
        pooled, _, best = pool_regions(self.backbone, x, rois, self.settings, self.backbone.roi_size)
        single = pooled[torch.arange(len(best)), best] if pooled.shape[1] > 1 else pooled[:, 0]
        out = self.head([pooled[:, 0], pooled[:, -1]] if self.head.spec.has_maxout else single)
        scores = (self.svms.score(out.features.cpu()) if self.config.test.score == "svm"
                  else torch.softmax(out.logits, 1)[:, 1:].cpu())
        region_boxes = torch.from_numpy(boxes)
        if self.regressor is not None:
            region_boxes = self.regressor.predict_all(single.cpu().flatten(1), region_boxes)
        return detect_from_scores(image_id, region_boxes, scores, width, height, self.config.test)

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> list[Prediction]:
        """Detections of each image (paths, PIL images, NumPy arrays or tensors) with class names."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        out = []
        for i, image in enumerate(images):
            det = self.detect(image, str(i))
            out.append(Prediction(det.boxes, det.scores, det.labels, [self.classes[k - 1] for k in det.labels]))
        return out


def load(checkpoint: str | Path, device: str = "cpu") -> FrozenNoCDetector:
    """The detector saved as ``model.pt`` by ``nocdet train`` / ``nocdet demo``."""
    state = load_checkpoint(checkpoint)
    if not isinstance(state, dict) or state.get("format") != "nocdet-frozen-detector":
        raise NocdetError(f"{checkpoint} is not a detector saved by nocdet train (model.pt)")
    return FrozenNoCDetector(state, device)
