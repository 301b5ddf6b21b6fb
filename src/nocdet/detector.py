"""The detector contract both settings meet, and ``load`` / ``build_detector`` for either.

A detector (the frozen-feature one of paper Sec. 3, :class:`nocdet.frozen_detector.FrozenNoCDetector`,
or the end-to-end Faster R-CNN of Sec. 4, :class:`nocdet.e2e.detector.E2EDetector`) has

- ``classes``: the class names, label ``i`` being ``classes[i - 1]``;
- ``detect(image, image_id) -> Detections``: one image, internal format (labels ``1..K``);
- ``predict(images) -> list[Prediction]``: images of any kind (:mod:`nocdet.prediction`), with names;
- ``detect_dataset(dataset, progress) -> list[Detections]``: every image of a data set.

``load(model.pt)`` reads the ``format`` a run wrote into its ``model.pt`` and rebuilds the
matching detector, so ``nocdet detect``, ``evaluate --checkpoint`` and the Python API work the
same for models of both settings.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from nocdet.data.sample import DetectionDataset, Detections
from nocdet.devices import require_device
from nocdet.e2e.detector import FORMAT as E2E_FORMAT, E2EDetector
from nocdet.errors import NocdetError
from nocdet.frozen_detector import FORMAT as FROZEN_FORMAT, FrozenNoCDetector
from nocdet.frozen_detector import build_detector as build_frozen_detector
from nocdet.prediction import ImageLike, Prediction
from nocdet.training.checkpoint import load_checkpoint


class Detector(Protocol):
    """What every nocdet detector offers (see the module doc)."""

    classes: list[str]

    def detect(self, image: ImageLike, image_id: str = "image") -> Detections: ...

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> list[Prediction]: ...

    def detect_dataset(self, dataset: DetectionDataset, progress: bool = True) -> list[Detections]: ...


def load(checkpoint: str | Path, device: str = "cpu") -> Detector:
    """The detector that ``nocdet train`` / ``nocdet demo`` saved as ``model.pt``, of either setting."""
    require_device(device)
    state = load_checkpoint(checkpoint)
    kind = state.get("format") if isinstance(state, Mapping) else None
    if kind == FROZEN_FORMAT:
        return FrozenNoCDetector.from_state(state, device)
    if kind == E2E_FORMAT:
        return E2EDetector.from_state(state, device)
    found = f"a checkpoint of format {kind!r}" if kind else "a file without a detector format"
    raise NocdetError(f"{checkpoint} is {found}, not a detector saved by nocdet train or nocdet demo "
                      f"(model.pt of format {FROZEN_FORMAT!r} or {E2E_FORMAT!r}); training checkpoints "
                      f"(train/checkpoint.pt) and pre-trained backbones are not detectors")


def build_detector(config: object, classes: Sequence[str] | None = None, *, allow_random: bool = False,
                   device: str | None = None) -> Detector:
    """An untrained detector of a frozen-feature experiment config: its pre-trained backbone and a
    freshly initialised NoC (see :func:`nocdet.frozen_detector.build_detector`)."""
    return build_frozen_detector(config, classes, allow_random=allow_random, device=device)
