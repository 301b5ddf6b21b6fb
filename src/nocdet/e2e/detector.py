"""The end-to-end detector (paper Sec. 4) behind the detector contract of :mod:`nocdet.detector`:
a trained :class:`~nocdet.e2e.model.NoCFasterRCNN` that detects on paths, PIL images, arrays or
tensors of any size (the model's transform resizes them and maps the boxes back)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from nocdet.data.sample import DetectionDataset, Detections
from nocdet.e2e.data import DetectionImages, collate
from nocdet.e2e.model import NoCFasterRCNN, build_e2e_model
from nocdet.errors import ConfigError
from nocdet.experiment import ExperimentConfig, config_from_dict
from nocdet.prediction import ImageLike, Prediction, as_rgb_array, predictions

FORMAT = "nocdet-e2e-detector"


class E2EDetector:
    """A NoC Faster R-CNN with its experiment config; ``load`` rebuilds one from ``model.pt``."""

    def __init__(self, model: NoCFasterRCNN, config: ExperimentConfig, device: str = "cpu",
                 category_ids: Sequence[int] | None = None):
        self.model = model.eval().to(device)
        self.config = config
        self.classes: list[str] = list(model.classes)
        self.category_ids: list[int] = list(category_ids or range(1, len(self.classes) + 1))  # the data set's ids
        self.device = device

    @classmethod
    def from_state(cls, state: dict, device: str = "cpu") -> E2EDetector:
        """The detector of a ``model.pt`` state (see ``run_e2e_experiment``); a config saved in the
        old end-to-end layout (``detector``, ``model``) is translated."""
        cfg = config_from_dict(state["config"])
        classes = list(state["classes"])
        model = build_e2e_model(cfg, len(classes), classes=classes, pretrained=False)
        model.load_state_dict(state["model"])
        return cls(model, cfg, device, state.get("category_ids"))

    @torch.inference_mode()
    def detect(self, image: ImageLike, image_id: str = "image") -> Detections:
        """Detections of one image (internal format, labels ``1..K``)."""
        array = as_rgb_array(image)
        x = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255).to(self.device)
        det = self.model([x])[0]
        return Detections(image_id, det["boxes"].float().cpu().numpy(), det["scores"].float().cpu().numpy(),
                          det["labels"].cpu().numpy())

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> list[Prediction]:
        """Detections of each image (paths, PIL images, NumPy arrays or tensors) with class names."""
        return predictions(self, images)

    @torch.inference_mode()
    def detect_dataset(self, dataset: DetectionDataset, progress: bool = True, batch_size: int = 2
                       ) -> list[Detections]:
        """Detections of every image of ``dataset``, in its order, ``batch_size`` images at a time."""
        if dataset.classes != self.classes:
            raise ConfigError(f"the model's classes {self.classes} are not the data set's {dataset.classes}")
        images = DetectionImages(dataset, drop_difficult=False)
        out: list[Detections] = []
        for start in tqdm(range(0, len(dataset), batch_size), desc="test", unit="batch", disable=not progress):
            batch, _ = collate([images[i] for i in range(start, min(start + batch_size, len(dataset)))])
            found = self.model([image.to(self.device) for image in batch])
            for sample, det in zip(dataset.samples[start:start + batch_size], found):
                out.append(Detections(sample.image_id, det["boxes"].float().cpu().numpy(),
                                      det["scores"].float().cpu().numpy(), det["labels"].cpu().numpy()))
        return out
