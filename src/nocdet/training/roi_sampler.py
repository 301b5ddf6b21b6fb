"""Mini-batches of RoIs from the feature cache (SPPnet / Fast R-CNN sampling, docs/reference.md §4).

A batch takes ``images_per_batch`` images and ``rois_per_image`` regions from each, at most
``fg_fraction`` of them foreground (IoU >= ``fg_iou`` with a ground-truth box, labelled with its
class) and the rest background (IoU in ``[bg_iou_lo, bg_iou_hi)``, label 0). Images are visited in
a seeded random order, epoch after epoch; the sampler's state is one numpy ``Generator`` plus a
position, so a resumed run draws exactly the batches the uninterrupted run would have drawn.

Which pyramid level(s) of a region feed the NoC is a :class:`Pathways` value. The cache keeps
two adjacent levels per region (those bracketing its ideal scale), so the jitter of ``random`` is
one of those two; SPPnet's jitter (``all``: a uniformly random level of the whole pyramid) and the
maxout training rule (``random_pair``: a uniformly random adjacent pair) pool other levels and need
the ``maps`` store, which keeps every level's conv maps (:mod:`nocdet.features.map_store`).

Shape shorthand: R = regions in a batch, P = cached pathways, C, m = pooled channels and size.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
from torch import Tensor

from nocdet.config import bounded, only_in
from nocdet.errors import ConfigError
from nocdet.features.float16 import to_float32
from nocdet.features.map_store import MapFeatures
from nocdet.features.pyramid import random_adjacent_pair, random_scale
from nocdet.features.roi_cache import CacheShard, RoIFeatureCache, region_slice


@dataclass
class SamplingConfig:
    """The ``sampling`` section of an experiment, both settings (the end-to-end defaults differ:
    ``nocdet.experiment.E2E_DEFAULTS``)."""

    images_per_batch: int = only_in("frozen", 2, ge=1)  # end to end: solver.images_per_batch
    rois_per_image: int = bounded(64, ge=1)
    fg_fraction: float = bounded(0.25, gt=0, le=1)
    fg_iou: float = bounded(0.5, gt=0, le=1)
    bg_iou_lo: float = bounded(0.1, ge=0, le=1)
    bg_iou_hi: float = bounded(0.5, gt=0, le=1)



@dataclass
class RoIBatch:
    """``inputs``: one ``[R, C, m, m]`` tensor, or two for a maxout NoC; ``labels [R]``;
    ``boxes``/``targets [R, 4]`` the regions and their best ground-truth boxes."""

    inputs: list[Tensor]
    labels: Tensor
    boxes: Tensor
    targets: Tensor


class Pathways(StrEnum):
    """Which pyramid level(s) of a region feed the NoC."""

    PAIR = "pair"  # both cached adjacent levels: the two pathways of a maxout NoC (test time)
    BEST = "best"  # the level whose region is closest to the target area (test time)
    RANDOM = "random"  # one of the two cached levels at random: nocdet's narrow training jitter
    ALL = "all"  # a uniformly random level of all levels: SPPnet's training jitter (maps store)
    RANDOM_PAIR = "random_pair"  # a uniformly random adjacent pair of all levels: maxout training (maps store)

    @property
    def at_test(self) -> Pathways:
        """The test-time counterpart of a training choice (no jitter): BEST or PAIR."""
        return {Pathways.RANDOM: Pathways.BEST, Pathways.ALL: Pathways.BEST,
                Pathways.RANDOM_PAIR: Pathways.PAIR}.get(self, self)

    @property
    def needs_every_level(self) -> bool:
        """True when regions are pooled at levels the cache need not hold (the ``maps`` store has all)."""
        return self in (Pathways.ALL, Pathways.RANDOM_PAIR)


#: ``noc.train_scale`` values: the range of the training-scale jitter (configs/README.md)
TRAIN_SCALES = ("all", "random", "best")


def pathways_for(maxout: bool, train_scale: str, training: bool) -> Pathways:
    """The NoC's input levels. Test time: the best level, or the cached pair for a maxout NoC.
    Training, by ``train_scale``: ``all`` draws from every pyramid level (a level; for a maxout NoC
    an adjacent pair), ``random`` one of the two cached levels (a maxout NoC: the cached pair, no
    jitter), ``best`` no jitter."""
    if train_scale not in TRAIN_SCALES:
        raise ConfigError(f"noc.train_scale must be one of {', '.join(TRAIN_SCALES)}, got {train_scale!r}")
    if not training or train_scale == "best":
        return Pathways.PAIR if maxout else Pathways.BEST
    if train_scale == "all":
        return Pathways.RANDOM_PAIR if maxout else Pathways.ALL
    return Pathways.PAIR if maxout else Pathways.RANDOM


def _maps_of(shard: CacheShard, pathways: Pathways) -> MapFeatures:
    if not isinstance(shard.features, MapFeatures):
        raise ConfigError(f"pathways {pathways.value!r} pool regions at any pyramid level, but this cache "
                          "keeps each region's pooled features at its two cached levels only (store "
                          "'pooled'); use pyramid.cache: maps, or noc.train_scale: random")
    return shard.features


def _every_level(shard: CacheShard, index: np.ndarray, pathways: Pathways,
                 rng: np.random.Generator) -> Tensor:
    """Regions ``index`` pooled at freshly drawn levels of the whole pyramid: ``[R, P, C, m, m]``."""
    features = _maps_of(shard, pathways)
    boxes = torch.from_numpy(np.asarray(shard.boxes[index], np.float32))
    num_levels = features.index.offset.shape[1]
    generator = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))  # the sampler's state decides
    if pathways is Pathways.ALL:
        levels = random_scale(boxes, num_levels, generator)[:, None]
    elif num_levels == 1:  # one level: both pathways see it, as with a one-level cache
        levels = torch.zeros(len(index), 2, dtype=torch.int64)
    else:
        levels = random_adjacent_pair(boxes, num_levels, generator)
    view = MapFeatures(features.maps, features.index, np.asarray(shard.boxes[index]),
                       np.asarray(shard.image[index]), levels.numpy())
    return to_float32(view[np.arange(len(index))])


def gather_inputs(shard: CacheShard, index: np.ndarray, pathways: Pathways | str,
                  rng: np.random.Generator | None) -> list[Tensor]:
    """The pooled features of regions ``index`` of a shard as NoC inputs (see :class:`Pathways`);
    ``rng`` draws the levels of the random choices."""
    pathways = Pathways(pathways)
    if pathways.needs_every_level:
        x = _every_level(shard, index, pathways, rng)
        return [x[:, k] for k in range(x.shape[1])]
    order = np.argsort(index)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    rows = np.asarray(shard.features[index[order]])[inverse]  # sorted reads from the memmap
    x = to_float32(rows)
    if pathways is Pathways.PAIR:
        if x.shape[1] == 1:
            return [x[:, 0], x[:, 0]]
        return [x[:, 0], x[:, 1]]
    if x.shape[1] == 1:
        return [x[:, 0]]
    if pathways is Pathways.BEST:
        slot = shard.best[index].astype(np.int64)
    else:
        slot = rng.integers(0, 2, len(index))
    return [x[torch.arange(len(index)), torch.from_numpy(slot)]]


class RoISampler:
    """Endless seeded stream of :class:`RoIBatch` from a cache."""

    def __init__(self, cache: RoIFeatureCache, config: SamplingConfig, seed: int, pathways: Pathways | str):
        self.cache = cache
        self.config = config
        self.pathways = Pathways(pathways)
        if self.pathways.needs_every_level:
            for shard in cache.shards:
                _maps_of(shard, self.pathways)
        self.images = [(s, i) for s, i in cache.images()]
        if not self.images:
            raise ValueError(f"the cache {cache.path} holds no images")
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(self.images))
        self.position = 0

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "order": self.order.tolist(), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order = np.asarray(state["order"], np.int64)
        self.position = int(state["position"])

    def _next_image(self) -> tuple[CacheShard, int]:
        if self.position >= len(self.order):
            self.order = self.rng.permutation(len(self.images))
            self.position = 0
        image = self.images[self.order[self.position]]
        self.position += 1
        return image

    def sample_image(self, shard: CacheShard, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Region indices (within the shard) and labels of one image's share of the batch."""
        cfg = self.config
        regions = region_slice(shard, index)
        overlap = shard.overlap[regions]
        fg = np.flatnonzero(overlap >= cfg.fg_iou)
        bg = np.flatnonzero((overlap >= cfg.bg_iou_lo) & (overlap < cfg.bg_iou_hi))
        num_fg = min(len(fg), int(round(cfg.fg_fraction * cfg.rois_per_image)))
        fg = self.rng.choice(fg, num_fg, replace=False) if num_fg else fg[:0]
        num_bg = min(len(bg), cfg.rois_per_image - num_fg)
        bg = self.rng.choice(bg, num_bg, replace=False) if num_bg else bg[:0]
        chosen = np.concatenate([fg, bg]).astype(np.int64) + regions.start
        labels = np.concatenate([shard.label[fg + regions.start], np.zeros(len(bg), np.int64)])
        return chosen, labels

    def next(self) -> RoIBatch:
        parts, labels, boxes, targets = [], [], [], []
        visited = 0
        while len(parts) < self.config.images_per_batch:
            if visited >= len(self.images) + self.config.images_per_batch and not parts:
                raise ValueError(f"no image of {self.cache.path} has a foreground or background region "
                                 "in the configured IoU bands")
            visited += 1
            shard, index = self._next_image()
            chosen, lab = self.sample_image(shard, index)
            if len(chosen) == 0:
                continue
            parts.append(gather_inputs(shard, chosen, self.pathways, self.rng))
            labels.append(torch.from_numpy(lab))
            boxes.append(torch.from_numpy(shard.boxes[chosen]))
            targets.append(torch.from_numpy(shard.target[chosen]))
        inputs = [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]
        return RoIBatch(inputs, torch.cat(labels), torch.cat(boxes), torch.cat(targets))
