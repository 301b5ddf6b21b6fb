"""Post-hoc stages of the frozen-feature setting, fed from the RoI feature cache (docs/reference.md §5).

* SVMs (paper Sec. 3.2): one linear SVM per class on the NoC's second-to-last layer, with
  hard-negative mining over the training images.
* "+bb": ridge box regression on the pooled conv features (R-CNN's pool5) of each region at its
  best pyramid level, applied once to the test regions; the fit pools only the regions it reads
  (its examples and its norm sample, :class:`~nocdet.training.bbox_regression.RegionsOnDemand`).

The cache's ground-truth rows are the non-difficult objects (difficult ones are left out of
training, as in Fast R-CNN), so the records carry those objects only. A training cache built
with flips holds each image twice; both stages read the flipped copies only when their config's
``use_flipped`` says so (SPPnet trains them on the unflipped images).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from nocdet.features.float16 import to_float32
from nocdet.features.map_store import MapFeatures
from nocdet.features.roi_cache import CacheShard, RoIFeatureCache, region_slice
from nocdet.noc.head import NoCHead
from nocdet.training.bbox_regression import BoxRegressionConfig, BoxRegressor, RegionsOnDemand, train_box_regressor
from nocdet.training.roi_sampler import Pathways, gather_inputs
from nocdet.training.svm import LinearSVMs, RegionFeatures, SVMConfig, train_svms


FeaturesOf = Callable[[CacheShard, np.ndarray], Tensor]
"""``features_of(shard, rows)``: features ``[n, D]`` of the shard's regions at ``rows [n]``."""


def _records(cache: RoIFeatureCache, features_of: FeaturesOf, use_flipped: bool,
             on_demand: bool = False) -> Callable[[], Iterator[RegionFeatures | RegionsOnDemand]]:
    """Re-iterable per-image records of a training cache with ``features_of(shard, rows)``;
    without ``use_flipped`` the cache's flipped copies are left out. ``on_demand`` records
    (:class:`RegionsOnDemand`) compute the features of the rows their reader asks for only."""

    def records() -> Iterator[RegionFeatures | RegionsOnDemand]:
        for shard, index in cache.images():
            if shard.flipped[index] and not use_flipped:
                continue
            regions = region_slice(shard, index)
            rows = np.arange(regions.start, regions.stop)
            is_gt = torch.from_numpy(np.asarray(shard.is_gt[regions]))
            boxes = torch.from_numpy(np.asarray(shard.boxes[regions]))
            gt_boxes = boxes[is_gt]
            record = RegionFeatures(
                image_id=f"{shard.image_ids[index]}{'/flip' if shard.flipped[index] else ''}",
                features=torch.zeros(len(rows), 0) if on_demand else features_of(shard, rows),
                boxes=boxes, gt_boxes=gt_boxes,
                gt_labels=torch.from_numpy(np.asarray(shard.label[regions]))[is_gt],
                gt_difficult=torch.zeros(len(gt_boxes), dtype=torch.bool), is_gt=is_gt)
            if on_demand:
                yield RegionsOnDemand(record, partial(_rows_of, features_of, shard, rows))
            else:
                yield record

    return records


def _rows_of(features_of: FeaturesOf, shard: CacheShard, image_rows: np.ndarray, rows: Tensor) -> Tensor:
    """Features of the image's regions ``rows`` (indices among ``image_rows``, the shard rows)."""
    return features_of(shard, image_rows[rows.numpy()])


def noc_features(head: NoCHead, mode: str, chunk: int = 2048) -> Callable[[CacheShard, np.ndarray], Tensor]:
    """The NoC's second-to-last layer output ``[R, D]`` of cached regions."""

    @torch.inference_mode()
    def features_of(shard: CacheShard, rows: np.ndarray) -> Tensor:
        head.eval()
        device = next(head.parameters()).device
        out = []
        for start in range(0, len(rows), chunk):
            inputs = [x.to(device) for x in gather_inputs(shard, rows[start:start + chunk], mode, None)]
            out.append(head(inputs if len(inputs) == 2 else inputs[0]).features.cpu())
        return torch.cat(out) if out else torch.zeros(0, head.feature_dim)

    return features_of


def pooled_features(shard: CacheShard, rows: np.ndarray) -> Tensor:
    """Pooled conv features of regions at their best level, flattened: ``[R, C*m*m]`` (a maps
    shard pools that level only, not both of the region's pair)."""
    if isinstance(shard.features, MapFeatures):
        return to_float32(shard.features.at_slots(rows, shard.best[rows])).flatten(1)
    return gather_inputs(shard, rows, Pathways.BEST, None)[0].flatten(1)


def fit_svms(head: NoCHead, cache: RoIFeatureCache, num_classes: int, mode: str, config: SVMConfig,
             progress: bool) -> LinearSVMs:
    return train_svms(_records(cache, noc_features(head, mode), config.use_flipped), num_classes, config,
                      progress)


def fit_box_regressor(cache: RoIFeatureCache, num_classes: int, config: BoxRegressionConfig,
                      progress: bool, class_names: Sequence[str] | None = None) -> BoxRegressor:
    return train_box_regressor(_records(cache, pooled_features, config.use_flipped, on_demand=True),
                               num_classes, config, progress, class_names)
