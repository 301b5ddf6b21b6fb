"""The frozen-feature detector (paper Sec. 3) applied to any image: ``nocdet.load(model.pt).predict(images)``.

The same parts as training, composed for one image at a time: Selective Search proposals ->
pyramid features of the frozen backbone -> RoI pooling at each region's scale(s) -> NoC ->
softmax or SVM scores -> optional box regression -> clip, per-class NMS, top-k. Over many images
(``detect_dataset``, ``nocdet detect`` on a folder) :mod:`nocdet.batch_detection` runs the same
calls pipelined: Selective Search in worker processes ahead of the rest.
"""
from __future__ import annotations

import warnings
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from nocdet.batch_detection import detect_images
from nocdet.config import from_dict
from nocdet.data.sample import DetectionDataset, Detections
from nocdet.prediction import ImageLike, Prediction, as_rgb_array, predictions
from nocdet.errors import ConfigError
from nocdet.experiment import ExperimentConfig, config_from_dict, load_experiment, load_split
from nocdet.features.backbones import Backbone
from nocdet.features.registry import build_backbone
from nocdet.features.roi_cache import ExtractionSettings, pool_regions
from nocdet.noc.head import NoCHead
from nocdet.noc.init import init_finetune, init_gaussian
from nocdet.data.images import load_image, unit_tensor
from nocdet.postprocess import PostprocessConfig, detect_from_scores
from nocdet.proposals.selective_search import selective_search
from nocdet.training.bbox_regression import BoxRegressor
from nocdet.training.svm import LinearSVMs

FORMAT = "nocdet-frozen-detector"


class RegionScorer(nn.Module):
    """The frozen detector's scoring of pooled regions, one code for every path that scores: the
    test on the training cache, ``detect`` on any image, the ONNX graph and the benchmarks.

    ``forward(pathways, single, boxes)``: ``pathways`` the NoC's input (the two adjacent scales
    ``[R, C, m, m]`` of a maxout NoC), ``single`` each region's best scale ``[R, C, m, m]`` (the
    input of a single-scale NoC and of the box regressor), ``boxes [R, 4]``. Returns scores
    ``[R, K]`` (softmax without background, or the post-hoc SVMs' scores) and boxes ``[R, K, 4]``
    (refined per class by the post-hoc regressor, or the regions repeated).
    """

    def __init__(self, head: NoCHead, score: str, svms: LinearSVMs | None = None,
                 regressor: BoxRegressor | None = None):
        super().__init__()
        if score == "svm" and svms is None:
            raise ConfigError("test.score is 'svm' but the detector has no SVMs; score with softmax")
        self.head, self.score, self.svms, self.regressor = head, score, svms, regressor

    def forward(self, pathways: Sequence[torch.Tensor], single: torch.Tensor, boxes: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(list(pathways) if self.head.spec.has_maxout else single)
        if self.score == "svm":
            scores = self.svms.score(out.features.to(self.svms.weight.device))
        else:
            scores = torch.softmax(out.logits, 1)[:, 1:]
        if self.regressor is None:
            return scores, boxes[:, None, :].expand(-1, scores.shape[1], -1)
        return scores, self.regressor.predict_all(single.flatten(1).to(self.regressor.weight.device), boxes)


class FrozenNoCDetector:
    """A frozen-feature detector: backbone, NoC, optional SVMs and box regressor, and the config
    (proposals, pyramid, test-time post-processing) that ties them together.

    ``load`` rebuilds the one a run saved in ``model.pt``; ``build_detector`` makes an untrained
    one from a config.
    """

    def __init__(self, config: ExperimentConfig, classes: Sequence[str], backbone: Backbone, head: NoCHead,
                 svms: LinearSVMs | None = None, regressor: BoxRegressor | None = None, device: str = "cpu",
                 category_ids: Sequence[int] | None = None):
        if head.num_outputs != len(classes) + 1:
            raise ConfigError(f"the NoC has {head.num_outputs} outputs but there are {len(classes)} classes "
                              "+ background")
        self.config = config
        self.classes: list[str] = list(classes)
        self.category_ids: list[int] = list(category_ids or range(1, len(self.classes) + 1))  # the data set's ids
        self.backbone = backbone.freeze().eval().to(device)
        self.head = head.eval().to(device)
        self.svms = svms
        self.regressor = regressor
        self.scorer = RegionScorer(self.head, config.test.score, svms, regressor)
        self.device = device
        self.settings = ExtractionSettings(scales=list(config.pyramid.scales), max_size=config.pyramid.max_size,
                                           pool_mode=config.pyramid.pool, include_gt=False, flip=False,
                                           target_area=config.pyramid.target_area)

    @classmethod
    def from_state(cls, state: dict, device: str = "cpu") -> FrozenNoCDetector:
        """The detector of a ``model.pt`` state (see ``run_frozen_experiment``)."""
        cfg = from_dict(ExperimentConfig, state["config"])
        classes = list(state["classes"])
        backbone = build_backbone(cfg.backbone.name, None, **cfg.backbone.options)
        backbone.load_state_dict(state["backbone_state"])
        head = build_head(cfg, backbone, len(classes), initialise=False)
        head.load_state_dict(state["head"])
        svms = LinearSVMs.from_state_dict(state["svms"]) if state.get("svms") else None
        regressor = BoxRegressor.from_state_dict(state["bbox"]) if state.get("bbox") else None
        return cls(cfg, classes, backbone, head, svms, regressor, device, state.get("category_ids"))

    def proposal_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`selective_search` for the config's proposals."""
        p = self.config.proposals
        return {"min_size": p.min_size, "max_boxes": p.max_boxes, "max_side": p.max_side, "ks": p.ks,
                "sigma": p.sigma, "color_spaces": p.color_spaces}

    def proposals(self, image: ImageLike) -> np.ndarray:
        """Selective Search boxes ``[R, 4]`` of one image with the config's settings."""
        return selective_search(as_rgb_array(image), **self.proposal_options())

    @torch.inference_mode()
    def score_regions(self, image: ImageLike, boxes: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class scores ``[R, K]`` (softmax without background, or SVM scores) of the regions
        ``boxes [R, 4]`` of one image, and their boxes ``[R, K, 4]`` (refined per class by the box
        regressor, or as given); see :class:`RegionScorer`."""
        array = as_rgb_array(image)
        region_boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
        x = self.backbone.normalize(unit_tensor(array)).to(self.device)
        pooled, _, best = pool_regions(self.backbone, x, region_boxes.to(self.device),
                                       self.settings,
                                       self.backbone.roi_size)
        single = pooled[torch.arange(len(best)), best] if pooled.shape[1] > 1 else pooled[:, 0]
        scores, refined = self.scorer([pooled[:, 0], pooled[:, -1]], single, region_boxes.to(self.device))
        return scores.cpu(), refined.cpu()

    def detect(self, image: ImageLike, image_id: str = "image") -> Detections:
        """Detections of one image (internal format, labels ``1..K``)."""
        array = as_rgb_array(image)
        return self.detect_proposals(array, self.proposals(array), image_id)

    def detect_proposals(self, image: ImageLike, boxes: np.ndarray, image_id: str = "image") -> Detections:
        """Detections of one image among its proposals ``boxes [R, 4]``: ``detect`` after Selective Search."""
        array = as_rgb_array(image)
        if len(boxes) == 0:
            return Detections(image_id, np.zeros((0, 4)), np.zeros(0), np.zeros(0))
        scores, region_boxes = self.score_regions(array, boxes)
        return detect_from_scores(image_id, region_boxes, scores, array.shape[1], array.shape[0], self.config.test)

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> list[Prediction]:
        """Detections of each image (paths, PIL images, NumPy arrays or tensors) with class names."""
        return predictions(self, images)

    def detect_dataset(self, dataset: DetectionDataset, progress: bool = True, workers: int | None = None
                       ) -> list[Detections]:
        """Detections of every image of ``dataset``, in its order: Selective Search in ``workers``
        processes ahead of the features and NoC (:mod:`nocdet.batch_detection`; None: from this
        process's torch threads), or image by image in this process when ``workers`` is 0.
        The first image that fails raises its error, as ``detect`` would."""
        items = [(sample.image_id, sample.path) for sample in dataset.samples]
        found = []
        with closing(detect_images(self, items, load_image, workers)) as results:
            for result in tqdm(results, total=len(items), desc="detect", unit="img", disable=not progress):
                if result.error is not None:
                    raise result.error
                found.append(result.detections)
        return found


def build_frozen_backbone(cfg: ExperimentConfig) -> Backbone:
    """The config's backbone with its weights, frozen (eval mode, no gradients), on ``cfg.device``."""
    backbone = build_backbone(cfg.backbone.name, cfg.backbone.weights, **cfg.backbone.options)
    return backbone.freeze().eval().to(cfg.device)


def build_head(cfg: ExperimentConfig, backbone: Backbone, num_classes: int, initialise: bool = True) -> NoCHead:
    """The NoC of ``cfg.noc.spec`` on the backbone's pooled features (stage tokens reuse the
    backbone's blocks), initialised as ``cfg.noc`` says, or not (a checkpoint's weights follow)."""
    head = NoCHead(cfg.noc.spec, backbone.out_channels, backbone.roi_size, num_classes,
                   stage_factory=backbone.stage, dropout=cfg.noc.dropout).to(cfg.device)
    if not initialise:
        return head
    if cfg.noc.init == "finetune":
        fc67 = backbone.fc67()
        if fc67 is None:
            raise ConfigError(f"noc.init is 'finetune' but backbone {cfg.backbone.name!r} with weights "
                              f"{cfg.backbone.weights!r} has no pre-trained fc6/fc7; pre-train it "
                              "(nocdet pretrain) or use noc.init: gaussian")
        init_finetune(head, fc67[0], fc67[1], cls_std=cfg.noc.cls_std, seed=cfg.seed)
    else:
        init_gaussian(head, fc_std=cfg.noc.fc_std, cls_std=cfg.noc.cls_std, seed=cfg.seed)
    return head


def _experiment(config: ExperimentConfig | str | Path | Mapping) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        return config.check()
    if isinstance(config, (str, Path)):
        return load_experiment(config)
    if isinstance(config, Mapping):
        return config_from_dict(config)
    raise ConfigError(f"a config is an ExperimentConfig, a YAML path or a dict, got {type(config).__name__}")


def build_detector(config: ExperimentConfig | str | Path | Mapping, classes: Sequence[str] | None = None, *,
                   allow_random: bool = False, device: str | None = None) -> FrozenNoCDetector:
    """An untrained detector of ``config``: its backbone with the pre-trained ``backbone.weights``
    and a freshly initialised NoC (``noc.init``, ``noc.spec``) for ``classes``.

    ``classes`` default to those of the config's first training split (read from its
    annotations, as training does). A config without pre-trained weights (``random``) is an
    error unless ``allow_random``: a detector on random features detects nothing. It has no SVMs
    and no box regressor yet, so a config that scores with SVMs scores with softmax (threshold
    0.05) and says so in a warning. Same ``detect``/``predict`` API as a loaded model.
    """
    from nocdet.features.weights import is_imagenet, is_random

    cfg = _experiment(config)
    weights = cfg.backbone.weights
    if is_random(weights) and not allow_random:
        raise ConfigError("backbone.weights is 'random' (not set): give the pre-trained weights' path "
                          "(nocdet pretrain) or pass allow_random=True")
    if not is_random(weights) and not is_imagenet(weights) and not Path(weights).is_file():
        raise ConfigError(f"backbone.weights file {weights} does not exist (nocdet pretrain writes one)")
    if device is not None:
        cfg = replace(cfg, device=device)
    if classes is None:
        classes = load_split(cfg.data, cfg.data.train[0], cfg.data.classes).classes
    if cfg.test.score == "svm":
        warnings.warn("the config scores with SVMs, which are fitted after training: this untrained "
                      "detector scores with softmax")
        cfg = replace(cfg, test=replace(cfg.test, score="softmax", score_threshold=PostprocessConfig.score_threshold))
    backbone = build_frozen_backbone(cfg)
    head = build_head(cfg, backbone, len(classes))
    return FrozenNoCDetector(cfg, classes, backbone, head, device=cfg.device)
