"""Images and targets for end-to-end training, and the order in which they are seen.

:class:`DetectionImages` turns a :class:`~nocdet.data.sample.DetectionDataset` into the
torchvision detection contract: a float ``[3, H, W]`` image in ``0..1`` and a target
``{"boxes": [N, 4] x1y1x2y2 pixels, "labels": [N] int64 in 1..K}``. The model's own transform
resizes, normalises and pads, so images keep their size here and batches are plain lists.

Choices, as in Faster R-CNN (py-faster-rcnn, torchvision's references):

* difficult objects (VOC ``difficult``, COCO ``iscrowd``) are dropped from *training* targets:
  they count neither as objects nor as background;
* an image left without objects is kept as a pure-background image (torchvision's detectors
  accept empty targets; the RPN and the NoC then see negatives only);
* horizontal flips are decided by the sampler per (epoch, image), not by the loader, so workers,
  resumed runs and every process of a distributed run agree on them.

:class:`GroupedBatchSampler` yields an endless, seeded stream of global batches: each epoch is a
permutation of the images; with aspect-ratio grouping, wide (W >= H) and tall images wait in
separate buffers and a batch is emitted whenever a buffer is full (leftovers carry into the next
epoch, as torchvision's GroupedBatchSampler and Detectron2's AspectRatioGroupedDataset do). Each
process takes its slice of every global batch, like DistributedSampler. Its state (epoch, cursor,
buffers) is small and is checkpointed, so a resumed run sees the same batches.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nocdet.data.images import load_image, unit_tensor
from nocdet.data.sample import DetectionDataset, Sample
from nocdet.errors import ConfigError, DataError

_SNAPSHOTS_KEPT = 256  # far more than a DataLoader prefetches (2 batches per worker)

Key = tuple[int, bool]
"""A dataset item: ``(image index, flipped)``."""


def sample_target(sample: Sample, *, drop_difficult: bool = True) -> dict[str, Tensor]:
    """The ``{"boxes", "labels"}`` target of a sample; degenerate boxes are a DataError."""
    keep = ~sample.difficult if drop_difficult else np.ones(len(sample.labels), bool)
    boxes = sample.boxes[keep]
    bad = np.flatnonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    if len(bad):
        box = boxes[bad[0]].tolist()
        raise DataError(f"box {box} has no area (x2 <= x1 or y2 <= y1)", path=sample.path,
                        record=f"image {sample.image_id}, object {int(np.flatnonzero(keep)[bad[0]])}")
    return {"boxes": torch.from_numpy(boxes.copy()), "labels": torch.from_numpy(sample.labels[keep].copy())}


class DetectionImages(torch.utils.data.Dataset):
    """Items ``(image [3, H, W] float 0..1, target)`` addressed by :data:`Key` ``(index, flipped)``.

    ``drop_difficult`` (training) removes difficult objects from the targets. An image whose
    decoded size differs from the annotated ``width x height`` is a DataError: its boxes would
    be in another frame.
    """

    def __init__(self, dataset: DetectionDataset, *, drop_difficult: bool = True):
        self.dataset = dataset
        self.drop_difficult = drop_difficult

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Key | int) -> tuple[Tensor, dict[str, Tensor]]:
        index, flipped = (key, False) if isinstance(key, (int, np.integer)) else key
        sample = self.dataset.samples[int(index)]
        pixels = load_image(sample.path)
        if pixels.shape[:2] != (sample.height, sample.width):
            raise DataError(f"image is {pixels.shape[1]}x{pixels.shape[0]} but annotated as "
                            f"{sample.width}x{sample.height}", path=sample.path, record=f"image {sample.image_id}")
        if flipped:
            pixels = pixels[:, ::-1]
            sample = sample.flipped()
        image = unit_tensor(pixels)
        return image, sample_target(sample, drop_difficult=self.drop_difficult)


def collate(batch: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Batches stay lists: the detector's transform resizes and pads them together."""
    return [image for image, _ in batch], [target for _, target in batch]


def aspect_groups(dataset: DetectionDataset) -> np.ndarray:
    """Group of each image: 0 = wide or square (W >= H), 1 = tall."""
    return np.array([0 if s.width >= s.height else 1 for s in dataset.samples], np.int64)


class GroupedBatchSampler:
    """Endless seeded stream of global batches of :data:`Key`; yields this process's slice.

    ``groups[i]`` is the group of image i (use :func:`aspect_groups`, or None for one group).
    Epoch ``e`` visits the images in ``default_rng([seed, e]).permutation(n)``; with ``flip``,
    image ``i`` is mirrored in epoch ``e`` when ``default_rng([seed, e]).random(n)[i] < 0.5``
    (drawn after the permutation). Every process computes the same global batches and keeps
    ``batch[rank * b:(rank + 1) * b]`` with ``b = batch_size / world_size``.
    """

    def __init__(self, num_images: int, batch_size: int, *, seed: int, flip: bool,
                 groups: np.ndarray | None = None, rank: int = 0, world_size: int = 1):
        if num_images < 1:
            raise ConfigError("cannot train on an empty data set")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} outside a world of {world_size} processes")
        if batch_size % world_size:
            raise ConfigError(f"images_per_batch ({batch_size}) must be a multiple of the number of "
                              f"processes ({world_size})")
        self.num_images = num_images
        self.batch_size = batch_size
        self.seed = seed
        self.flip = flip
        self.groups = np.zeros(num_images, np.int64) if groups is None else np.asarray(groups, np.int64)
        if len(self.groups) != num_images:
            raise ValueError(f"{len(self.groups)} group ids for {num_images} images")
        self.rank = rank
        self.per_rank = batch_size // world_size
        self._state: dict[str, Any] = {"position": 0, "epoch": 0, "cursor": 0,
                                       "buffers": {int(g): [] for g in np.unique(self.groups)}}
        self._snapshots: dict[int, dict[str, Any]] = {}

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(permutation of image indices, flip flag of each image)`` of an epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.num_images)
        flips = rng.random(self.num_images) < 0.5 if self.flip else np.zeros(self.num_images, bool)
        return order, flips

    def next_global_batch(self) -> list[Key]:
        """Advance the stream by one global batch and return it (all processes' images)."""
        state = self._state
        order, flips = self.epoch_order(state["epoch"])
        while True:
            if state["cursor"] == self.num_images:
                state["epoch"] += 1
                state["cursor"] = 0
                order, flips = self.epoch_order(state["epoch"])
            index = int(order[state["cursor"]])
            state["cursor"] += 1
            buffer = state["buffers"][int(self.groups[index])]
            buffer.append((index, bool(flips[index])))
            if len(buffer) == self.batch_size:
                batch = list(buffer)
                buffer.clear()
                state["position"] += 1
                return batch

    def __iter__(self) -> Iterator[list[Key]]:
        self._snapshots.setdefault(self.position, copy.deepcopy(self._state))
        while True:
            batch = self.next_global_batch()
            self._snapshots[self._state["position"]] = copy.deepcopy(self._state)
            self._snapshots.pop(self._state["position"] - _SNAPSHOTS_KEPT, None)
            yield batch[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]

    @property
    def position(self) -> int:
        """Number of global batches produced so far (over the whole run, resumes included)."""
        return self._state["position"]

    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """The state after ``position`` batches (default: now). A DataLoader draws batches ahead
        of training, so the trainer asks for the batch count it has consumed; older snapshots
        are then forgotten."""
        if position is None or position == self._state["position"]:
            state = copy.deepcopy(self._state)
        elif position in self._snapshots:
            state = copy.deepcopy(self._snapshots[position])
        else:
            raise KeyError(f"no sampler snapshot after {position} batches")
        for old in [p for p in self._snapshots if p < state["position"]]:
            del self._snapshots[old]
        return {**state, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed or state["batch_size"] != self.batch_size:
            raise ConfigError(f"cannot resume the batch order: checkpoint has seed {state['seed']} and "
                              f"{state['batch_size']} images per batch, this run {self.seed} and {self.batch_size}")
        buffers = {int(g): [(int(i), bool(f)) for i, f in items] for g, items in state["buffers"].items()}
        self._state = {"position": int(state["position"]), "epoch": int(state["epoch"]),
                       "cursor": int(state["cursor"]), "buffers": buffers}
        self._snapshots.clear()
