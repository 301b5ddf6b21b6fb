"""The detector contract both settings meet, and ``load`` / ``build_detector`` for either.

A detector (the frozen-feature one of paper Sec. 3, :class:`nocdet.frozen_detector.FrozenNoCDetector`,
or the end-to-end Faster R-CNN of Sec. 4, :class:`nocdet.e2e.detector.E2EDetector`) has

- ``classes``: the class names, label ``i`` being ``classes[i - 1]``;
- ``detect(image, image_id) -> Detections``: one image, internal format (labels ``1..K``);
- ``predict(images) -> list[Prediction]``: images of any kind, with class names;
- ``detect_dataset(dataset, progress) -> list[Detections]``: every image of a data set.

``load(model.pt)`` reads the ``format`` a run wrote into its ``model.pt`` and rebuilds the
matching detector, so ``nocdet detect``, ``evaluate --checkpoint`` and the Python API work the
same for models of both settings.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from nocdet.data.images import load_image
from nocdet.data.sample import DetectionDataset, Detections
from nocdet.errors import NocdetError

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor
FROZEN_FORMAT, E2E_FORMAT = "nocdet-frozen-detector", "nocdet-e2e-detector"


@dataclass
class Prediction:
    """Detections of one image with class names: ``boxes [N, 4]`` (x1, y1, x2, y2 pixels),
    ``scores [N]``, ``labels [N]`` in ``1..K`` and ``names[i] = classes[labels[i] - 1]``."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]


class Detector(Protocol):
    """What every nocdet detector offers (see the module doc)."""

    classes: list[str]

    def detect(self, image: ImageLike, image_id: str = "image") -> Detections: ...

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> list[Prediction]: ...

    def detect_dataset(self, dataset: DetectionDataset, progress: bool = True) -> list[Detections]: ...


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


def predictions(detector: Detector, images: ImageLike | Sequence[ImageLike]) -> list[Prediction]:
    """``detector.detect`` of each image, with class names (the shared body of ``predict``)."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    out = []
    for i, image in enumerate(images):
        det = detector.detect(image, str(i))
        out.append(Prediction(det.boxes, det.scores, det.labels, [detector.classes[k - 1] for k in det.labels]))
    return out


def load(checkpoint: str | Path, device: str = "cpu") -> Detector:
    """The detector that ``nocdet train`` / ``nocdet demo`` saved as ``model.pt``, of either setting."""
    from nocdet.training.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    kind = state.get("format") if isinstance(state, Mapping) else None
    if kind == FROZEN_FORMAT:
        from nocdet.frozen_detector import FrozenNoCDetector

        return FrozenNoCDetector.from_state(state, device)
    if kind == E2E_FORMAT:
        from nocdet.e2e.detector import E2EDetector

        return E2EDetector.from_state(state, device)
    found = f"a checkpoint of format {kind!r}" if kind else "a file without a detector format"
    raise NocdetError(f"{checkpoint} is {found}, not a detector saved by nocdet train or nocdet demo "
                      f"(model.pt of format {FROZEN_FORMAT!r} or {E2E_FORMAT!r}); training checkpoints "
                      f"(train/checkpoint.pt) and pre-trained backbones are not detectors")


def build_detector(config: object, classes: Sequence[str] | None = None, *, allow_random: bool = False,
                   device: str | None = None) -> Detector:
    """An untrained detector of a frozen-feature experiment config: its pre-trained backbone and a
    freshly initialised NoC (see :func:`nocdet.frozen_detector.build_detector`)."""
    from nocdet.frozen_detector import build_detector as build_frozen

    return build_frozen(config, classes, allow_random=allow_random, device=device)
