"""nocdet: two-stage object detection with Networks on Convolutional feature maps (NoC).

A detector is a shared convolutional feature extractor plus a region-wise classifier, the NoC,
applied to RoI-pooled regions (Ren, He, Girshick, Zhang, Sun, "Object Detection Networks on
Convolutional Feature Maps").
"""
from nocdet.errors import ConfigError, DataError, NocdetError, SpecError, TrainingError

__version__ = "0.1.0"


def load(checkpoint, device: str = "cpu"):
    """The detector saved as ``model.pt`` by ``nocdet train`` / ``nocdet demo``; call
    ``.predict(images)`` on paths, PIL images, NumPy arrays or tensors."""
    from nocdet.detector import load as load_detector

    return load_detector(checkpoint, device)


def build_detector(config, classes=None, *, allow_random: bool = False, device: str | None = None):
    """An untrained detector of an experiment config (``ExperimentConfig``, YAML path or dict):
    the configured pre-trained backbone and a freshly initialised NoC, with ``.predict``."""
    from nocdet.detector import build_detector as build

    return build(config, classes, allow_random=allow_random, device=device)


__all__ = ["ConfigError", "DataError", "NocdetError", "SpecError", "TrainingError", "__version__", "build_detector",
           "load"]
