"""Small stand-ins shared by the tests: a fixed conv trunk for the RoI feature cache and a writer of
tiny VOC folders. Imported as ``from fakes import ...`` (pytest puts ``tests/`` on ``sys.path``; a
``spawn``ed multiprocessing child inherits that path)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from nocdet.data.sample import Sample
from nocdet.data.voc import write_voc_annotation, write_voc_split


class FixedTrunk(torch.nn.Module):
    """A fixed stride-4 conv net (kernel 4, no padding) standing in for a frozen pre-trained trunk.

    The weights are those of ``torch.manual_seed(0)`` followed by ``Conv2d(3, out_channels, 4,
    stride=4)``: the same for every instance with the same ``out_channels``. ``relu=False`` gives
    signed features."""

    def __init__(self, out_channels: int = 4, roi_size: int = 3, relu: bool = True):
        super().__init__()
        self.out_channels, self.stride, self.roi_size = out_channels, 4, roi_size
        self.mean, self.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, out_channels, 4, stride=4)
        self.relu = relu

    def forward(self, x):
        y = self.conv(x)
        return torch.relu(y) if self.relu else y


Objects = Sequence[tuple[Sequence[float], int, bool]]  # [(internal box x1 y1 x2 y2, label 1..K, difficult)]


def write_voc(root: Path, objects: Mapping[str, Objects] | Mapping[str, tuple[int, int, Objects]],
              classes: Sequence[str], *, size: tuple[int, int] | None = None, split: str = "test",
              image: Callable[[str, int, int, Objects], np.ndarray] | None = None, ext: str = "jpg") -> Path:
    """A tiny VOC folder under ``root``: ``JPEGImages/<id>.<ext>``, ``Annotations/<id>.xml`` and
    ``ImageSets/Main/<split>.txt`` listing the images in the order of ``objects``; returns ``root``.

    ``objects`` maps an image id to its objects, every image ``size`` = (width, height); with
    ``size`` None it maps an image id to ``(width, height, objects)``. The image files are empty
    unless ``image(image_id, width, height, objects)`` gives their pixels (uint8, H x W x 3; JPEG
    files are saved at quality 92). The images are written in the order of ``objects``."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for image_id, entry in objects.items():
        w, h, objs = (*size, entry) if size is not None else entry
        path = root / "JPEGImages" / f"{image_id}.{ext}"
        if image is None:
            path.write_bytes(b"")
        else:
            Image.fromarray(image(image_id, w, h, objs)).save(path, **({"quality": 92} if ext == "jpg" else {}))
        sample = Sample(image_id, path, w, h, [o[0] for o in objs], [o[1] for o in objs], [o[2] for o in objs])
        write_voc_annotation(root / "Annotations" / f"{image_id}.xml", sample, classes)
    write_voc_split(root, split, list(objects))
    return root
