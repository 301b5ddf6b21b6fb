"""Post-hoc linear SVMs on region features, trained with hard-negative mining (R-CNN / SPPnet).

After a NoC is trained, the paper (Sec. 3.2) takes its second-to-last fc layer as a feature of
each region and trains one linear SVM per class on it, "for a fair comparison" with SPPnet and
R-CNN, whose recipe this module follows (docs/reference.md §5):

* positives: the ground-truth boxes of the class (their own features, not proposals);
* negatives: regions whose IoU with every ground-truth box of the class is below 0.3; regions
  in ``[0.3, 1]`` that are not ground truth are ignored for that class;
* liblinear's L2-regularised L1-loss (hinge) SVM solved in the dual, C = 1e-3, positive weight 2,
  bias multiplier 10 (the bias is a constant feature of value 10, regularised like the weights);
* features scaled by one factor so that their mean L2 norm is 20, estimated on a random sample
  of up to 200 regions per image; the factor is stored with the model and applied at test time;
* hard-negative mining in one pass over the images: for each image and class, negatives scoring
  above -1.0001 that are not yet cached are added; a class is retrained after the first image
  (the initial zero model scores every region 0, so all its negatives are "hard"), whenever more
  than 2000 new negatives arrived, and at the end; after each retraining negatives scoring below
  -1.2 are evicted, so the cache holds only hard negatives.

Difficult objects: SPPnet's code drops them from the ground truth by default
(``exclude_difficult_samples``); so do we (``use_difficult=False``): they are not positives,
and regions on them may be negatives. ``use_difficult=True`` treats them like other objects, as
the original R-CNN did.

Solver: scikit-learn's ``LinearSVC`` (liblinear), chosen by measurement against a dual FISTA
solver in torch (one class, CPU limited to 2 threads, on the H100 machine of the device tool):

===================  =========  ======================  ======================
cache (neg x dims)   liblinear  torch CPU 200/1000 it   torch CUDA 1000/3000 it
===================  =========  ======================  ======================
5k x 512             0.12 s     0.14 s / 0.77 s         0.11 s / 0.32 s
20k x 4096           2.0 s      5.4 s / 22 s            0.32 s / 0.86 s
===================  =========  ======================  ======================

200 FISTA iterations miss the optimum by 1-5%; 3000 reach it. On a CPU liblinear is faster
and exact; only a GPU would favour torch. Training reads the records as a stream: the features
of all images are never in memory at once.

Record protocol (:class:`RegionFeatures`): one record per training image with the features of all
its regions and its ground truth. For SVM training the ground-truth boxes must be among the
regions: the caller puts the ``G`` ground-truth boxes first, in the order of ``gt_boxes``, and
marks them with ``is_gt`` (``is_gt[:G]`` true, the rest false). Records for box regression or
testing may have no ground-truth rows (``is_gt`` all false, the default).

Shape shorthand: R regions of an image, D feature dimensions, K object classes (background
excluded; labels are ``1..K``), G ground-truth objects of an image.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.svm import LinearSVC
from torch import Tensor, nn
from tqdm import tqdm

from nocdet.boxes import box_iou
from nocdet.errors import ConfigError, DataError, TrainingError

logger = logging.getLogger(__name__)

KEY_ROW_BITS = 32
"""A cached region's key is ``image_index << 32 | row``: unique over images within a pass."""


@dataclass
class RegionFeatures:
    """Features of all regions of one image and its ground truth.

    ``features [R, D]`` (trailing dimensions are flattened, e.g. pooled ``[R, C, m, m]``),
    ``boxes [R, 4]``, ``gt_boxes [G, 4]``, ``gt_labels [G]`` in ``1..K``, ``gt_difficult [G]``,
    ``is_gt [R]``: rows that are the ground-truth boxes themselves (first ``G`` rows or none).
    """

    image_id: str
    features: Tensor
    boxes: Tensor
    gt_boxes: Tensor
    gt_labels: Tensor
    gt_difficult: Tensor
    is_gt: Tensor | None = None

    def __post_init__(self) -> None:
        rid = str(self.image_id)
        features = torch.as_tensor(self.features)
        if features.ndim >= 2:
            features = features.flatten(1)
        elif features.numel() == 0:
            features = features.reshape(0, 0)
        else:
            raise DataError(f"features must be [R, D], got shape {tuple(features.shape)}", record=rid)
        self.features = features.float()
        self.boxes = torch.as_tensor(self.boxes, dtype=torch.float32).reshape(-1, 4)
        self.gt_boxes = torch.as_tensor(self.gt_boxes, dtype=torch.float32).reshape(-1, 4)
        self.gt_labels = torch.as_tensor(self.gt_labels, dtype=torch.int64).reshape(-1)
        self.gt_difficult = torch.as_tensor(self.gt_difficult, dtype=torch.bool).reshape(-1)
        num_regions, num_gt = len(self.boxes), len(self.gt_boxes)
        self.is_gt = (torch.zeros(num_regions, dtype=torch.bool) if self.is_gt is None
                      else torch.as_tensor(self.is_gt, dtype=torch.bool).reshape(-1))
        if len(self.features) != num_regions or len(self.is_gt) != num_regions:
            raise DataError(f"{len(self.features)} feature rows, {num_regions} boxes and "
                            f"{len(self.is_gt)} is_gt flags: they must match", record=rid)
        if len(self.gt_labels) != num_gt or len(self.gt_difficult) != num_gt:
            raise DataError(f"{num_gt} gt boxes, {len(self.gt_labels)} labels and "
                            f"{len(self.gt_difficult)} difficult flags: they must match", record=rid)
        if not bool(torch.isfinite(self.features).all()):
            raise DataError("features contain NaN or infinite values", record=rid)
        if not bool(torch.isfinite(self.boxes).all() and torch.isfinite(self.gt_boxes).all()):
            raise DataError("boxes contain NaN or infinite values", record=rid)
        num_gt_rows = int(self.is_gt.sum())
        if num_gt_rows:
            if num_gt_rows != num_gt or not bool(self.is_gt[:num_gt].all()):
                raise DataError(f"is_gt marks {num_gt_rows} rows; the {num_gt} ground-truth boxes "
                                "must be the first rows, in gt_boxes order", record=rid)
            if not torch.allclose(self.boxes[:num_gt], self.gt_boxes, atol=1e-3):
                raise DataError("the rows marked is_gt differ from gt_boxes", record=rid)

    @property
    def num_gt_rows(self) -> int:
        """Number of leading rows that are the ground-truth boxes (``G`` or 0)."""
        return int(self.is_gt.sum())

    def check_labels(self, num_classes: int) -> None:
        """Raise :class:`DataError` unless every ground-truth label is in ``1..num_classes``."""
        bad = (self.gt_labels < 1) | (self.gt_labels > num_classes)
        if bool(bad.any()):
            raise DataError(f"ground-truth label {int(self.gt_labels[bad][0])} outside 1..{num_classes}",
                            record=str(self.image_id))

    def used_gt(self, use_difficult: bool) -> Tensor:
        """Mask ``[G]`` of the ground-truth objects training uses (all, or non-difficult only)."""
        return torch.ones_like(self.gt_difficult) if use_difficult else ~self.gt_difficult


Records = Iterable[RegionFeatures] | Callable[[], Iterable[RegionFeatures]]
"""Training input: a re-iterable collection of records, or a function returning a fresh stream."""


def open_records(records: Records) -> Iterable[RegionFeatures]:
    """One pass over the records (calls ``records`` when it is a function)."""
    return records() if callable(records) else records


def require_reiterable(records: Records, what: str) -> None:
    """Raise :class:`ConfigError` for a one-shot iterator when ``what`` reads the records twice."""
    if not callable(records) and iter(records) is records:
        raise ConfigError(f"{what} reads the records more than once: pass a list or a function "
                          "that returns a fresh iterable, not a one-shot iterator or generator")


def check_feature_dim(record: RegionFeatures, dim: int | None) -> int | None:
    """The feature dimension of the records so far: raises :class:`DataError` when ``record``'s
    differs from ``dim`` (records without regions do not count)."""
    if dim is not None and record.features.shape[1] != dim and len(record.features):
        raise DataError(f"features are {record.features.shape[1]}-d, earlier records {dim}-d",
                        record=str(record.image_id))
    return record.features.shape[1] if dim is None and len(record.features) else dim


class MeanNormEstimator:
    """Running mean L2 norm of a random sample of up to ``boxes_per_image`` regions per image.

    R-CNN scales features by ``target_norm / mean_norm`` so that one SVM C (or ridge lambda)
    suits any layer.
    """

    def __init__(self, boxes_per_image: int, seed: int = 0):
        self.boxes_per_image = boxes_per_image
        self._generator = torch.Generator().manual_seed(seed)
        self._sum = 0.0
        self._count = 0

    def add(self, features: Tensor) -> None:
        """Add a random sample of the rows of ``features [R, D]``."""
        self.add_sample(features[self.draw(len(features))])

    def draw(self, num_rows: int) -> Tensor:
        """The next image's sample: row indices ``[min(R, boxes_per_image)]`` of its ``R`` regions
        (they depend only on ``R`` and the draws so far, so a caller may compute just these rows)."""
        return torch.randperm(num_rows, generator=self._generator)[: self.boxes_per_image]

    def add_sample(self, sampled: Tensor) -> None:
        """Add the features ``[n, D]`` of the rows :meth:`draw` returned, in that order."""
        norms = sampled.double().norm(dim=1)
        self._sum += float(norms.sum())
        self._count += len(norms)

    def scale(self, target_norm: float) -> float:
        """The factor that brings the sampled mean norm to ``target_norm``."""
        if self._count == 0 or not self._sum > 0:
            raise TrainingError("cannot scale features: no regions were seen or all features are zero")
        return target_norm * self._count / self._sum


def negative_mask(boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, num_classes: int,
                  iou_threshold: float) -> Tensor:
    """``[R, K]``: region r is a negative of class k when its IoU with every ground-truth box of
    class k is below ``iou_threshold`` (every region is a negative of a class absent from the image)."""
    max_iou = torch.zeros(len(boxes), num_classes, dtype=torch.float32)
    if len(gt_boxes):
        iou = box_iou(boxes, gt_boxes).float()
        columns = (gt_labels - 1).expand(len(boxes), -1)
        max_iou.scatter_reduce_(1, columns, iou, reduce="amax")
    return max_iou < iou_threshold


def region_keys(image_index: int, num_regions: int) -> Tensor:
    """Keys ``[R]`` identifying the regions of one image across the mining pass."""
    if num_regions >= 1 << KEY_ROW_BITS:
        raise DataError(f"image {image_index} has {num_regions} regions, more than keys can address")
    return (image_index << KEY_ROW_BITS) + torch.arange(num_regions, dtype=torch.int64)


class NegativeCache:
    """The hard negatives of one class: their (scaled) features and keys, plus the count added
    since the last retraining. Stored in chunks, concatenated only when read, so adding is cheap."""

    def __init__(self) -> None:
        self._features: list[Tensor] = []
        self._keys: list[Tensor] = []
        self.num_added = 0

    def __len__(self) -> int:
        return sum(len(k) for k in self._keys)

    @property
    def features(self) -> Tensor:
        """``[N, D]`` cached negative features (empty ``[0, 0]`` before the first addition)."""
        if len(self._features) > 1:
            self._features = [torch.cat(self._features)]
        return self._features[0] if self._features else torch.zeros(0, 0)

    @property
    def keys(self) -> Tensor:
        """``[N]`` keys of the cached negatives."""
        if len(self._keys) > 1:
            self._keys = [torch.cat(self._keys)]
        return self._keys[0] if self._keys else torch.zeros(0, dtype=torch.int64)

    def add_hard(self, features: Tensor, keys: Tensor, scores: Tensor, candidates: Tensor,
                 hard_threshold: float) -> int:
        """Cache the candidate negatives scoring above ``hard_threshold`` that are not cached yet.

        ``features [R, D]``, ``keys [R]``, ``scores [R]`` (current model), ``candidates [R]`` bool.
        Returns how many were added.
        """
        select = candidates & (scores > hard_threshold)
        if self._keys and bool(select.any()):
            select &= ~torch.isin(keys, self.keys)
        count = int(select.sum())
        if count:
            self._features.append(features[select].clone())
            self._keys.append(keys[select].clone())
            self.num_added += count
        return count

    def evict_easy(self, scores: Tensor, evict_threshold: float) -> int:
        """Drop the cached negatives whose ``scores [N]`` are below ``evict_threshold``; returns
        how many were dropped."""
        keep = scores >= evict_threshold
        dropped = len(keep) - int(keep.sum())
        if dropped:
            self._features = [self.features[keep]]
            self._keys = [self.keys[keep]]
        return dropped


@dataclass
class SVMConfig:
    """Numbers of the post-hoc SVMs (defaults: R-CNN / SPPnet, docs/reference.md §5)."""

    C: float = 1e-3
    positive_weight: float = 2.0
    bias_multiplier: float = 10.0
    negative_iou: float = 0.3
    target_norm: float = 20.0
    norm_boxes_per_image: int = 200
    hard_threshold: float = -1.0001
    evict_threshold: float = -1.2
    retrain_limit: int = 2000
    hard_epochs: int = 1
    use_difficult: bool = False
    # also train on the flipped copies of a cache built with flips (SPPnet: no, opts.flip = false);
    # the records' source decides (training/post_hoc.py)
    use_flipped: bool = True
    # liblinear's -e. R-CNN and SPPnet pass none, so theirs is liblinear's default for the dual
    # solver, 0.1; measured here (benchmarks/RESULTS.md, "SVM tolerance") 0.1 stops far from the
    # optimum (3fc twin: 50.1 VOC07 against 58.0), 1e-2..1e-4 agree within 0.3 points, and 1e-4
    # needs up to 3.5x the time on ill-conditioned NoC features (4fc: 455 s against 128 s)
    tol: float = 1e-3
    max_iter: int = 10000
    seed: int = 0

    def __post_init__(self) -> None:
        positive = {"C": self.C, "positive_weight": self.positive_weight,
                    "bias_multiplier": self.bias_multiplier, "target_norm": self.target_norm,
                    "norm_boxes_per_image": self.norm_boxes_per_image, "hard_epochs": self.hard_epochs,
                    "tol": self.tol, "max_iter": self.max_iter}
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"SVMConfig.{name} must be positive, got {value}")
        if not 0 < self.negative_iou <= 1:
            raise ConfigError(f"SVMConfig.negative_iou must be in (0, 1], got {self.negative_iou}")
        if not self.evict_threshold < self.hard_threshold:
            raise ConfigError(f"SVMConfig.evict_threshold ({self.evict_threshold}) must be below "
                              f"hard_threshold ({self.hard_threshold}), or fresh negatives are evicted")
        if self.retrain_limit < 0:
            raise ConfigError(f"SVMConfig.retrain_limit must be >= 0, got {self.retrain_limit}")


class LinearSVMs(nn.Module):
    """K linear SVMs on scaled region features: ``score = (feature_scale * x) @ weight.T + bias``.

    ``weight [K, D]``, ``bias [K]`` and the scale are buffers, so ``state_dict`` /
    ``load_state_dict`` / ``.to(device)`` work as for any module.
    """

    def __init__(self, weight: Tensor, bias: Tensor, feature_scale: float):
        super().__init__()
        weight = torch.as_tensor(weight, dtype=torch.float32)
        bias = torch.as_tensor(bias, dtype=torch.float32).reshape(-1)
        if weight.ndim != 2 or len(bias) != len(weight):
            raise ValueError(f"LinearSVMs: weight {tuple(weight.shape)} and bias {tuple(bias.shape)} "
                             "must be [K, D] and [K]")
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.register_buffer("scale", torch.tensor(float(feature_scale), dtype=torch.float32))

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> LinearSVMs:
        """Rebuild SVMs saved with ``state_dict()``."""
        missing = {"weight", "bias", "scale"} - set(state)
        if missing:
            raise TrainingError(f"SVM checkpoint lacks {sorted(missing)}")
        return cls(state["weight"], state["bias"], float(state["scale"]))

    @property
    def feature_scale(self) -> float:
        """Factor applied to raw features before scoring (mean norm -> ``target_norm``)."""
        return float(self.scale)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def score(self, features: Tensor) -> Tensor:
        """Scores ``[R, K]`` of raw (unscaled) region features ``[R, D]``."""
        features = features.flatten(1).to(self.weight)
        if features.shape[1] != self.weight.shape[1]:
            raise ValueError(f"SVMs expect {self.weight.shape[1]}-d features, got {features.shape[1]}")
        return (features * self.scale) @ self.weight.T + self.bias

    forward = score


def fit_linear_svm(positives: Tensor, negatives: Tensor, config: SVMConfig) -> tuple[Tensor, float]:
    """One liblinear SVM (L2-regularised hinge loss, dual) on scaled features; returns
    ``(weight [D], bias)``. The bias is the constant feature ``bias_multiplier`` times its weight."""
    x = torch.cat([positives, negatives]).numpy().astype(np.float64)
    y = np.concatenate([np.ones(len(positives)), -np.ones(len(negatives))])
    svm = LinearSVC(loss="hinge", dual=True, C=config.C,
                    class_weight={1: config.positive_weight, -1: 1.0},
                    intercept_scaling=config.bias_multiplier, tol=config.tol,
                    max_iter=config.max_iter, random_state=config.seed)
    svm.fit(x, y)
    return torch.from_numpy(svm.coef_[0]).float(), float(svm.intercept_[0])


def _collect_positives(records: Records, num_classes: int, config: SVMConfig,
                       progress: bool) -> tuple[list[Tensor], float]:
    """First pass: ground-truth features per class (unscaled) and the feature scale."""
    positives: list[list[Tensor]] = [[] for _ in range(num_classes)]
    norms = MeanNormEstimator(config.norm_boxes_per_image, config.seed)
    dim = None
    for record in tqdm(open_records(records), desc="SVM positives", unit="image", disable=not progress):
        record.check_labels(num_classes)
        dim = check_feature_dim(record, dim)
        if len(record.gt_boxes) and record.num_gt_rows == 0:
            raise DataError("SVM training needs the ground-truth boxes' features: put them first in "
                            "boxes/features and mark them with is_gt", record=str(record.image_id))
        norms.add(record.features)
        used = record.used_gt(config.use_difficult)
        gt_features = record.features[: record.num_gt_rows]
        for k in record.gt_labels[used].unique().tolist():
            positives[k - 1].append(gt_features[used & (record.gt_labels == k)].clone())
    if dim is None:
        raise TrainingError("no training record has any region")
    missing = [k + 1 for k in range(num_classes) if not positives[k]]
    if missing:
        raise TrainingError(f"classes {missing} have no ground-truth (positive) examples; an SVM "
                            "cannot be trained for them")
    return [torch.cat(p) for p in positives], norms.scale(config.target_norm)


def _hinge_objective(positives: Tensor, negatives: Tensor, weight: Tensor, bias: float,
                     config: SVMConfig) -> float:
    """liblinear's primal objective of one class (logged after each retraining, as R-CNN did)."""
    pos_loss = config.positive_weight * (1 - (positives @ weight + bias)).clamp(min=0).sum()
    neg_loss = (1 + (negatives @ weight + bias)).clamp(min=0).sum()
    reg = 0.5 * weight.dot(weight) + 0.5 * (bias / config.bias_multiplier) ** 2
    return float(config.C * (pos_loss + neg_loss) + reg)


def train_svms(records: Records, num_classes: int, config: SVMConfig | None = None,
               progress: bool = True) -> LinearSVMs:
    """Train K linear SVMs with R-CNN's hard-negative mining (see the module docstring).

    ``records`` is read ``1 + hard_epochs`` times (positives and feature scale first, then the
    mining passes), one image at a time, in the same order each pass; memory holds the positives
    and the hard-negative caches only.
    """
    config = config or SVMConfig()
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    require_reiterable(records, "SVM training")
    positives, scale = _collect_positives(records, num_classes, config, progress)
    positives = [p * scale for p in positives]
    dim = positives[0].shape[1]
    weight, bias = torch.zeros(num_classes, dim), torch.zeros(num_classes)
    caches = [NegativeCache() for _ in range(num_classes)]
    trained = [False] * num_classes

    def retrain(k: int) -> None:
        cache = caches[k]
        w, b = fit_linear_svm(positives[k], cache.features, config)
        weight[k], bias[k], trained[k] = w, b, True
        cache.num_added = 0
        objective = _hinge_objective(positives[k], cache.features, w, b, config)
        dropped = cache.evict_easy(cache.features @ w + b, config.evict_threshold)
        logger.debug("SVM class %d: objective %.4f, %d positives, %d hard negatives kept, %d evicted",
                    k + 1, objective, len(positives[k]), len(cache), dropped)

    first_image = True
    for epoch in range(config.hard_epochs):
        stream = tqdm(open_records(records), desc=f"SVM hard negatives {epoch + 1}/{config.hard_epochs}",
                      unit="image", disable=not progress)
        for image_index, record in enumerate(stream):
            record.check_labels(num_classes)
            check_feature_dim(record, dim)
            if len(record.boxes) == 0:
                continue
            features = record.features * scale
            scores = features @ weight.T + bias
            used = record.used_gt(config.use_difficult)
            negatives = negative_mask(record.boxes, record.gt_boxes[used], record.gt_labels[used],
                                      num_classes, config.negative_iou)
            keys = region_keys(image_index, len(features))
            for k, cache in enumerate(caches):
                cache.add_hard(features, keys, scores[:, k], negatives[:, k], config.hard_threshold)
                if (first_image or cache.num_added > config.retrain_limit) and len(cache):
                    retrain(k)
            first_image = False
    for k, cache in enumerate(caches):
        # Evicting easy (non-support-vector) negatives leaves the optimum unchanged, so only
        # classes with new negatives need a last retraining.
        if cache.num_added > 0:
            retrain(k)
    untrained = [k + 1 for k in range(num_classes) if not trained[k]]
    if untrained:
        raise TrainingError(f"classes {untrained} never saw a negative region; an SVM needs both")
    return LinearSVMs(weight, bias, scale)
