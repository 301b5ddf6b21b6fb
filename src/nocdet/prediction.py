"""What a detector returns and takes: ``Prediction`` (detections with class names) and the image
kinds every detector accepts (``as_rgb_array``), shared by both settings' detectors."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from nocdet.data.images import load_image
from nocdet.data.sample import Detections
from nocdet.errors import NocdetError

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor


@dataclass
class Prediction:
    """Detections of one image with class names: ``boxes [N, 4]`` (x1, y1, x2, y2 pixels),
    ``scores [N]``, ``labels [N]`` in ``1..K``, ``names[i] = classes[labels[i] - 1]`` and
    ``category_ids [N]``, the training data set's own ids of the classes (its COCO category
    ids; ``labels`` for VOC data), ready for a COCO results file."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]
    category_ids: np.ndarray


class _Detects(Protocol):
    classes: list[str]
    category_ids: list[int]

    def detect(self, image: ImageLike, image_id: str = "image") -> Detections: ...


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


def predictions(detector: _Detects, images: ImageLike | Sequence[ImageLike]) -> list[Prediction]:
    """``detector.detect`` of each image, with class names (the shared body of ``predict``)."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    out = []
    for i, image in enumerate(images):
        det = detector.detect(image, str(i))
        ids = np.array([detector.category_ids[k - 1] for k in det.labels], np.int64)
        out.append(Prediction(det.boxes, det.scores, det.labels, [detector.classes[k - 1] for k in det.labels], ids))
    return out
