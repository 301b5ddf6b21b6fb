"""Post-hoc class-specific box regression, the "+bb" of R-CNN / SPPnet (docs/reference.md §5).

For each class a ridge regression maps a region's pooled conv features (R-CNN: pool5; here any
features the caller gives, flattened) to the deltas that move the region onto its ground truth:

* training examples: regions (ground-truth rows included, whose targets are zero) whose best IoU
  with any ground-truth box exceeds 0.6 (SPPnet's code: 0.5); the best box also decides the
  class (R-CNN's ``get_examples``), so a region trains one class's regressor only;
* targets ``tx = (Gx - Px) / Pw``, ``ty = (Gy - Py) / Ph``, ``tw = log(Gw / Pw)``,
  ``th = log(Gh / Ph)`` (:func:`nocdet.boxes.encode_deltas`, continuous widths);
* targets are centred and whitened per class as R-CNN does: ``y = (t - mean) S^-1/2`` with ``S``
  the targets' covariance plus 0.001 I (for uncorrelated targets this is division by their std);
  predictions are mapped back with ``S^1/2`` and ``mean``;
* features scaled so that their mean L2 norm is 20 (as for the SVMs), plus a constant 1 feature
  for the bias, regularised like the weights;
* closed-form ridge ``min ||A b - y||^2 + lambda ||b||^2`` with lambda 1000 (SPPnet's code: 4000)
  in float64, solved through the smaller of the normal equations ``(A'A + lambda I)`` and the
  kernel form ``A' (AA' + lambda I)^-1``. The Gram matrix comes from BLAS ``syrk`` (half the work
  of a general product). Measured on 2 CPU threads (N examples x D dims): 5000 x 9216 took
  2.4 s, against 3.8 s for torch float64 (Gram and Cholesky alone) and 3.2 s for scikit-learn
  ``Ridge``; 20000 x 4096 took 3.4 s, against 7.1 s and 4.2 s.

R-CNN applies the regressor once to each scored box (no iteration): so does :meth:`BoxRegressor.predict`.
Clipping to the image is left to post-processing (:func:`nocdet.boxes.clip_boxes`).

Difficult objects are left out of the ground truth unless ``use_difficult`` (as for the SVMs).
The examples' features are held in memory until the per-class solves (only regions above the
IoU threshold are kept, a few dozen per image); one pass over the records suffices.

The fit reads the features of two sets of rows per image only: the examples and the random
sample of the norm estimate. A record may therefore be a :class:`RegionsOnDemand`, which computes
just those rows (pooling every region of an image, when the fit reads its few dozen examples
and a sample of 200 for the norm, was most of the cost of the fit); the result is bit-identical
to that of a :class:`RegionFeatures` record with every row.

Shape shorthand: R regions, D feature dimensions, K object classes (labels ``1..K``).
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import blas, cho_factor, cho_solve
from torch import Tensor, nn
from tqdm import tqdm

from nocdet.boxes import box_iou, decode_deltas, encode_deltas
from nocdet.errors import ConfigError, DataError, TrainingError
from nocdet.training.svm import MeanNormEstimator, RegionFeatures, open_records

logger = logging.getLogger(__name__)


@dataclass
class BoxRegressionConfig:
    """Numbers of the post-hoc box regressor (defaults: R-CNN)."""

    ridge_lambda: float = 1000.0
    min_iou: float = 0.6
    normalize_targets: bool = True
    whitening_eps: float = 1e-3
    target_norm: float = 20.0
    norm_boxes_per_image: int = 200
    use_difficult: bool = False
    # also train on the flipped copies of a cache built with flips (SPPnet: no, opts.flip = false);
    # the records' source decides (training/post_hoc.py)
    use_flipped: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.ridge_lambda > 0:
            raise ConfigError(f"BoxRegressionConfig.ridge_lambda must be positive, got {self.ridge_lambda}")
        if not 0 <= self.min_iou < 1:
            raise ConfigError(f"BoxRegressionConfig.min_iou must be in [0, 1), got {self.min_iou}")
        for name in ("whitening_eps", "target_norm", "norm_boxes_per_image"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"BoxRegressionConfig.{name} must be positive, got {getattr(self, name)}")


@dataclass
class RegionsOnDemand:
    """One image's regions whose features are computed only for the rows the fit reads.

    ``regions`` carries the boxes and ground truth (its ``features`` are not read: an empty
    ``[R, 0]`` will do); ``features_of(rows)`` returns the features ``[n, ...]`` of the sorted,
    distinct row indices ``rows [n]``, each row as it would be among all ``R``.
    """

    regions: RegionFeatures
    features_of: Callable[[Tensor], Tensor]

    @property
    def image_id(self) -> str:
        return self.regions.image_id


BoxRecords = (Iterable[RegionFeatures | RegionsOnDemand]
              | Callable[[], Iterable[RegionFeatures | RegionsOnDemand]])
"""Input of :func:`train_box_regressor`: as :data:`nocdet.training.svm.Records`, records on demand allowed."""


def _rows_reader(record: RegionFeatures | RegionsOnDemand) -> tuple[RegionFeatures, Callable[[Tensor], Tensor]]:
    """The record's regions and a function from sorted rows ``[n]`` to their features ``[n, D]``
    (float32, finite: else :class:`DataError` naming the record)."""
    if isinstance(record, RegionFeatures):
        return record, lambda rows: record.features[rows]

    def features_of(rows: Tensor) -> Tensor:
        features = torch.as_tensor(record.features_of(rows)).float()
        if features.ndim < 2 or len(features) != len(rows):
            raise DataError(f"features of shape {tuple(features.shape)} computed for {len(rows)} regions: "
                            "they must be [regions, ...]", record=str(record.image_id))
        features = features.flatten(1)
        if not bool(torch.isfinite(features).all()):
            raise DataError("features contain NaN or infinite values", record=str(record.image_id))
        return features

    return record.regions, features_of


def regression_examples(record: RegionFeatures, min_iou: float, use_difficult: bool) -> tuple[Tensor, Tensor]:
    """Rows ``[E]`` of the regions whose best IoU with a (used) ground-truth box exceeds
    ``min_iou``, and the index ``[E]`` into ``record.gt_boxes`` of that best box."""
    gt_index = record.used_gt(use_difficult).nonzero().squeeze(1)
    if len(gt_index) == 0 or len(record.boxes) == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    best_iou, best = box_iou(record.boxes, record.gt_boxes[gt_index]).max(dim=1)
    rows = (best_iou > min_iou).nonzero().squeeze(1)
    return rows, gt_index[best[rows]]


def ridge_solve(a: np.ndarray, y: np.ndarray, ridge_lambda: float) -> np.ndarray:
    """``argmin_b ||a b - y||^2 + lambda ||b||^2`` for ``a [N, D]``, ``y [N, T]``; returns ``[D, T]``.

    Float64 Cholesky on whichever of ``a'a`` (D x D) and ``aa'`` (N x N) is smaller.
    """
    a = np.ascontiguousarray(a, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = a.shape
    a_fortran = a.T  # a Fortran-ordered view, which BLAS reads without copying
    if n >= d:
        gram = blas.dsyrk(1.0, a_fortran, trans=0)  # a'a, upper triangle
        gram[np.diag_indices(d)] += ridge_lambda
        factor = cho_factor(gram, lower=False, overwrite_a=True, check_finite=False)
        return cho_solve(factor, a.T @ y, check_finite=False)
    kernel = blas.dsyrk(1.0, a_fortran, trans=1)  # aa', upper triangle
    kernel[np.diag_indices(n)] += ridge_lambda
    factor = cho_factor(kernel, lower=False, overwrite_a=True, check_finite=False)
    return a.T @ cho_solve(factor, y, check_finite=False)


class BoxRegressor(nn.Module):
    """K ridge regressors from scaled features to box deltas.

    Buffers: ``weight [K, D, 4]``, ``bias [K, 4]``, ``target_mean [K, 4]``,
    ``target_unwhiten [K, 4, 4]`` (``S^1/2``) and the feature ``scale``. Deltas of a region of
    class k: ``((scale * x) @ weight[k] + bias[k]) @ target_unwhiten[k] + target_mean[k]``.
    """

    def __init__(self, weight: Tensor, bias: Tensor, target_mean: Tensor, target_unwhiten: Tensor,
                 feature_scale: float):
        super().__init__()
        weight = torch.as_tensor(weight, dtype=torch.float32)
        num_classes = weight.shape[0]
        shapes = {"bias": (bias, (num_classes, 4)), "target_mean": (target_mean, (num_classes, 4)),
                  "target_unwhiten": (target_unwhiten, (num_classes, 4, 4))}
        if weight.ndim != 3 or weight.shape[2] != 4:
            raise ValueError(f"BoxRegressor: weight must be [K, D, 4], got {tuple(weight.shape)}")
        self.register_buffer("weight", weight)
        for name, (value, shape) in shapes.items():
            value = torch.as_tensor(value, dtype=torch.float32)
            if tuple(value.shape) != shape:
                raise ValueError(f"BoxRegressor: {name} must be {list(shape)}, got {list(value.shape)}")
            self.register_buffer(name, value)
        self.register_buffer("scale", torch.tensor(float(feature_scale), dtype=torch.float32))

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> BoxRegressor:
        """Rebuild a regressor saved with ``state_dict()``."""
        names = ("weight", "bias", "target_mean", "target_unwhiten", "scale")
        missing = [n for n in names if n not in state]
        if missing:
            raise TrainingError(f"box regressor checkpoint lacks {missing}")
        return cls(state["weight"], state["bias"], state["target_mean"], state["target_unwhiten"],
                   float(state["scale"]))

    @property
    def feature_scale(self) -> float:
        return float(self.scale)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def deltas(self, features: Tensor, labels: Tensor) -> Tensor:
        """Predicted deltas ``[R, 4]`` (unnormalised ``tx, ty, tw, th``) of raw region features
        ``[R, D]`` for the classes ``labels [R]`` in ``1..K``."""
        features = features.flatten(1).to(self.weight)
        labels = torch.as_tensor(labels, dtype=torch.int64, device=features.device).reshape(-1)
        if features.shape[1] != self.weight.shape[1] or len(labels) != len(features):
            raise ValueError(f"box regressor expects [R, {self.weight.shape[1]}] features and [R] labels, "
                             f"got {tuple(features.shape)} and {tuple(labels.shape)}")
        if len(labels) and (int(labels.min()) < 1 or int(labels.max()) > self.num_classes):
            raise ValueError(f"box regressor labels must be in 1..{self.num_classes}")
        out = torch.zeros(len(features), 4, dtype=self.weight.dtype, device=features.device)
        for label in labels.unique().tolist():
            rows = labels == label
            k = label - 1
            whitened = (features[rows] * self.scale) @ self.weight[k] + self.bias[k]
            out[rows] = whitened @ self.target_unwhiten[k] + self.target_mean[k]
        return out

    def predict(self, features: Tensor, boxes: Tensor, labels: Tensor) -> Tensor:
        """Refined boxes ``[R, 4]``: ``boxes`` moved by the class-specific predicted deltas, once."""
        boxes = torch.as_tensor(boxes).reshape(-1, 4).to(self.weight)
        return decode_deltas(self.deltas(features, labels), boxes)

    def predict_all(self, features: Tensor, boxes: Tensor) -> Tensor:
        """Refined boxes of every class: ``[R, K, 4]`` (for class-specific NMS at test time), all
        classes in one product and no Python loop over them, so that the ONNX export traces it."""
        features = features.flatten(1).to(self.weight)
        num_classes, dim = self.weight.shape[0], self.weight.shape[1]
        weight = self.weight.permute(1, 0, 2).reshape(dim, num_classes * 4)
        whitened = ((features * self.scale) @ weight).view(-1, num_classes, 4) + self.bias
        deltas = torch.matmul(whitened.unsqueeze(2), self.target_unwhiten).squeeze(2) + self.target_mean
        repeated = torch.as_tensor(boxes).reshape(-1, 4).to(deltas)[:, None, :].expand(-1, num_classes, -1)
        return decode_deltas(deltas.reshape(-1, 4), repeated.reshape(-1, 4)).view(-1, num_classes, 4)

    forward = predict


def _fit_class(features: Tensor, targets: Tensor, config: BoxRegressionConfig
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Ridge fit of one class: scaled ``features [N, D]``, ``targets [N, 4]`` (float64) ->
    ``weight [D, 4]``, ``bias [4]``, ``target_mean [4]``, ``target_unwhiten [4, 4]``."""
    if config.normalize_targets:
        mean = targets.mean(0)
        centred = targets - mean
        covariance = centred.T @ centred / len(targets)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        eigenvalues = eigenvalues.clamp(min=0) + config.whitening_eps
        whiten = eigenvectors @ torch.diag(eigenvalues.rsqrt()) @ eigenvectors.T
        unwhiten = eigenvectors @ torch.diag(eigenvalues.sqrt()) @ eigenvectors.T
        y = centred @ whiten
    else:
        mean, unwhiten, y = torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64), targets
    a = np.empty((len(features), features.shape[1] + 1), dtype=np.float64)
    a[:, :-1] = features.numpy()
    a[:, -1] = 1.0
    beta = torch.from_numpy(ridge_solve(a, y.numpy(), config.ridge_lambda))
    return beta[:-1], beta[-1], mean, unwhiten


def _check_dim(features: Tensor, dim: int | None, image_id: str) -> int | None:
    """As :func:`nocdet.training.svm.check_feature_dim`, for the rows read of one record."""
    if len(features) == 0:
        return dim
    if dim is not None and features.shape[1] != dim:
        raise DataError(f"features are {features.shape[1]}-d, earlier records {dim}-d", record=str(image_id))
    return features.shape[1]


def _class_name(label: int, class_names: Sequence[str] | None) -> str:
    return f"class {class_names[label - 1]!r}" if class_names else f"class {label}"


def train_box_regressor(records: BoxRecords, num_classes: int, config: BoxRegressionConfig | None = None,
                        progress: bool = True, class_names: Sequence[str] | None = None) -> BoxRegressor:
    """Fit K class-specific ridge box regressors in one pass over ``records`` (module docstring).

    A class without any example gets the identity regressor (zero deltas) and a warning naming
    it (``class_names``: label k's name is ``class_names[k - 1]``; else "class k").
    """
    config = config or BoxRegressionConfig()
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    norms = MeanNormEstimator(config.norm_boxes_per_image, config.seed)
    features, targets, classes = [], [], []
    dim = None
    for record in tqdm(open_records(records), desc="box regression examples", unit="image",
                       disable=not progress):
        regions, features_of = _rows_reader(record)
        regions.check_labels(num_classes)
        sample = norms.draw(len(regions.boxes))
        rows, gt = regression_examples(regions, config.min_iou, config.use_difficult)
        needed = torch.cat([sample, rows]).unique()  # sorted
        read = features_of(needed)
        dim = _check_dim(read, dim, regions.image_id)
        norms.add_sample(read[torch.searchsorted(needed, sample)])
        if len(rows):
            features.append(read[torch.searchsorted(needed, rows)])
            targets.append(encode_deltas(regions.boxes[rows].double(), regions.gt_boxes[gt].double()))
            classes.append(regions.gt_labels[gt])
    if dim is None:
        raise TrainingError("no training record has any region")
    scale = norms.scale(config.target_norm)
    weight = torch.zeros(num_classes, dim, 4, dtype=torch.float64)
    bias = torch.zeros(num_classes, 4, dtype=torch.float64)
    mean = torch.zeros(num_classes, 4, dtype=torch.float64)
    unwhiten = torch.eye(4, dtype=torch.float64).repeat(num_classes, 1, 1)
    all_features = torch.cat(features) if features else torch.zeros(0, dim)
    all_targets = torch.cat(targets) if targets else torch.zeros(0, 4, dtype=torch.float64)
    all_classes = torch.cat(classes) if classes else torch.zeros(0, dtype=torch.int64)
    for k in tqdm(range(num_classes), desc="box regression solves", unit="class", disable=not progress):
        select = all_classes == k + 1
        if not bool(select.any()):
            warnings.warn(f"box regression: {_class_name(k + 1, class_names)} has no region with IoU > {config.min_iou}; "
                          "its regressor leaves boxes unchanged", stacklevel=2)
            continue
        weight[k], bias[k], mean[k], unwhiten[k] = _fit_class(all_features[select] * scale,
                                                              all_targets[select], config)
        logger.debug("box regression %s: %d examples", _class_name(k + 1, class_names), int(select.sum()))
    return BoxRegressor(weight, bias, mean, unwhiten, scale)
