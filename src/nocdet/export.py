"""A trained frozen-feature detector as one ONNX graph (``nocdet export``), and its runner.

The graph is the network part of :meth:`nocdet.frozen_detector.FrozenNoCDetector.detect`:

    image [3, H, W] float32 RGB in [0, 1]  +  proposals [R, 4] float32 (x1, y1, x2, y2 pixels)
      -> normalise -> image pyramid (shorter side to each configured scale, the ``max_size`` cap,
         antialiased bilinear when shrinking) -> frozen backbone on each level
      -> per-box level choice (the single best level, or the adjacent pair of a maxout NoC:
         :func:`nocdet.features.pyramid.select_scale` / ``select_adjacent_pair``, the same code)
      -> RoI pooling (max or align) -> NoC -> softmax without background, or the post-hoc SVMs
      -> class-specific post-hoc box regression when the model has one
      => scores [R, K], boxes [R, K, 4] (refined per class, or the proposal repeated)

``H``, ``W`` and ``R`` are dynamic. Selective Search is not a network and stays outside; clipping,
per-class NMS and top-k stay outside too: :func:`nocdet.postprocess.detect_from_scores` finishes
the job (the class names and the post-processing numbers are in the model's metadata,
:func:`onnx_metadata`). To keep the graph free of data-dependent control flow, every box is pooled
at every pyramid level (``[S, R, C, m, m]``, S levels) and the chosen level(s) gathered, so the
graph's pooling costs S times the Python path's.

Two details make the graph match PyTorch: the legacy TorchScript exporter (``dynamo=False``;
torchvision registers its ``roi_pool``/``roi_align`` symbolics there) has no symbolic for the
antialiased resize, so one is registered here as ONNX ``Resize(antialias=1, exclude_outside=1)``
(opset 18), which onnxruntime computes as PyTorch does; and since whether a level shrinks depends
on the image size, both the antialiased and the plain resize are computed and selected per level.

Shape shorthand: S pyramid levels, R regions, C channels, m RoI size, K object classes.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool

from nocdet.detector import load
from nocdet.frozen_detector import FrozenNoCDetector
from nocdet.prediction import ImageLike, as_rgb_array
from nocdet.errors import ConfigError, DataError
from nocdet.export_opsets import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from nocdet.extras import require_extra
from nocdet.features.pyramid import MAX_ASPECT, select_adjacent_pair, select_scale
from nocdet.io import atomic_write_bytes

if TYPE_CHECKING:
    import onnxruntime

FORMATS = ("onnx",)
INPUT_NAMES = ("image", "proposals")
OUTPUT_NAMES = ("scores", "boxes")


class DetectorGraph(nn.Module):
    """``forward(image [3, H, W], proposals [R, 4]) -> (scores [R, K], boxes [R, K, 4])`` of a
    :class:`FrozenNoCDetector`, written for tracing (see the module docstring)."""

    def __init__(self, detector: FrozenNoCDetector):
        super().__init__()
        cfg = detector.config
        self.backbone = detector.backbone.eval()
        self.scorer = detector.scorer.eval()
        self.register_buffer("scales", torch.tensor(cfg.pyramid.scales, dtype=torch.float64), persistent=False)
        self.max_size = cfg.pyramid.max_size
        self.target_area = float(cfg.pyramid.target_area)
        self.pool_mode = cfg.pyramid.pool
        self.spatial_scale = 1.0 / getattr(detector.backbone, "stride", 16)
        self.roi_size = int(detector.backbone.roi_size)

    def factors(self, image: Tensor) -> Tensor:
        """The resize factor of each level ``[S]`` (float64, ascending), as
        :func:`nocdet.features.pyramid.pyramid_scale_factors` (with its ``MAX_ASPECT`` cap); the
        config's scales ascend."""
        hw = torch._shape_as_tensor(image)[1:].to(torch.float64)
        short, long = hw.min(), hw.max()
        f = self.scales / short
        if self.max_size is not None:
            f = torch.where(torch.round(f * long) > self.max_size, self.max_size / long, f)
        longest, cap = f.max() * long, MAX_ASPECT * self.scales.max()
        return torch.where(longest > cap, f * cap / longest, f)

    def pyramid(self, image: Tensor, factors: Tensor) -> list[Tensor]:
        """The image resized by each factor, ``round(H f) x round(W f)`` (as ``resize_to_scales``)."""
        hw = torch._shape_as_tensor(image)[1:].to(torch.float64)
        batch = image.unsqueeze(0)
        levels = []
        for f in factors.unbind(0):
            size = torch.round(hw * f).clamp(min=1).to(torch.int64)
            size = (size[0], size[1])
            shrunk = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)
            plain = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=False)
            levels.append(torch.where(f < 1.0, shrunk, plain))
        return levels

    def pool(self, feature_map: Tensor, boxes: Tensor, factor: Tensor) -> Tensor:
        """All boxes ``[R, 4]`` (float64, image pixels) pooled from one level: ``[R, C, m, m]``."""
        scaled = boxes * factor
        rois = torch.cat([torch.zeros_like(scaled[:, :1]), scaled], dim=1).to(feature_map.dtype)
        if self.pool_mode == "max":
            return roi_pool(feature_map, rois, self.roi_size, self.spatial_scale)
        return roi_align(feature_map, rois, self.roi_size, self.spatial_scale, -1, False)

    def forward(self, image: Tensor, proposals: Tensor) -> tuple[Tensor, Tensor]:
        x = self.backbone.normalize(image.to(torch.float32))
        factors = self.factors(x)
        boxes = proposals.to(torch.float64)
        pooled = torch.stack([self.pool(self.backbone(level), boxes, f)
                              for level, f in zip(self.pyramid(x, factors), factors.unbind(0))])  # [S, R, C, m, m]
        regions = pooled.shape[1]
        flat = pooled.flatten(0, 1)  # row l * R + r: box r at level l
        index = torch.arange(regions, device=flat.device)
        if pooled.shape[0] == 1:
            single = pooled[0]
            pair = [single, single]
        else:
            best = select_scale(boxes, factors, self.target_area)
            levels = select_adjacent_pair(boxes, factors, self.target_area)
            # the Python path takes the pair's slot that holds the best level (else the first)
            chosen = torch.where(levels[:, 1] == best, levels[:, 1], levels[:, 0])
            single = flat.index_select(0, chosen * regions + index)
            pair = [flat.index_select(0, levels[:, 0] * regions + index),
                    flat.index_select(0, levels[:, 1] * regions + index)]
        return self.scorer(pair, single, proposals)


def _resize_antialias_symbolic(g, input, output_size, align_corners, scale_factors):
    """``aten::_upsample_bilinear2d_aa`` (align_corners False) as ONNX Resize; onnxruntime's
    antialiased linear filter equals PyTorch's with ``exclude_outside=1``."""
    batch_channels = g.op("Slice", g.op("Shape", input), g.op("Constant", value_t=torch.tensor([0])),
                          g.op("Constant", value_t=torch.tensor([2])))
    sizes = g.op("Concat", batch_channels, g.op("Cast", output_size, to_i=7), axis_i=0)  # 7: INT64
    empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    return g.op("Resize", input, empty, empty, sizes, mode_s="linear", antialias_i=1, exclude_outside_i=1,
                coordinate_transformation_mode_s="pytorch_half_pixel")


def _metadata(detector: FrozenNoCDetector) -> dict[str, str]:
    test = detector.config.test
    return {"nocdet.format": "nocdet-frozen-detector-onnx", "nocdet.classes": json.dumps(detector.classes),
            "nocdet.score": test.score,
            "nocdet.postprocess": json.dumps({"nms_iou": test.nms_iou, "max_detections": test.max_detections,
                                              "cap": test.cap, "score_threshold": test.score_threshold}),
            "nocdet.noc": str(detector.head.spec), "nocdet.backbone": detector.config.backbone.name}


def export_onnx(checkpoint: str | Path, out_path: str | Path, opset: int = DEFAULT_OPSET,
                format: str = "onnx") -> Path:
    """Export the ``model.pt`` of a frozen-feature run as ONNX to ``out_path``; returns the path.

    Inputs ``image`` (float32 ``[3, H, W]``, RGB in [0, 1]) and ``proposals`` (float32 ``[R, 4]``);
    outputs ``scores [R, K]`` and ``boxes [R, K, 4]``. The file is checked by ``onnx.checker`` and
    written atomically; its metadata carries the class names and post-processing numbers.
    """
    require_extra("export", "exporting to ONNX")
    import onnx
    from torch.onnx import register_custom_op_symbolic

    if format not in FORMATS:
        raise ConfigError(f"unsupported export format {format!r}; supported: {', '.join(FORMATS)}")
    if opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset} is too old: the graph's antialiased resize needs opset >= {MIN_OPSET}")
    if opset > MAX_OPSET:
        raise ConfigError(f"--opset {opset} is newer than torch's TorchScript exporter writes (<= {MAX_OPSET})")
    detector = load(checkpoint)
    if not isinstance(detector, FrozenNoCDetector):
        raise ConfigError(f"{checkpoint} is an end-to-end detector: nocdet export writes frozen-feature detectors "
                          "only. The end-to-end graph (RPN top-k and NMS per image, then the NoC on a variable "
                          "number of regions) is not exported yet; run it with nocdet detect or nocdet.load")
    graph = DetectorGraph(detector).eval()
    register_custom_op_symbolic("aten::_upsample_bilinear2d_aa", _resize_antialias_symbolic, MIN_OPSET)
    # A non-square example with two pyramid levels shrinking and growing; tracing records the
    # size arithmetic, not these numbers.
    example = (torch.rand(3, 150, 200, generator=torch.Generator().manual_seed(0)),
               torch.tensor([[10.0, 20.0, 90.0, 140.0], [0.0, 0.0, 199.0, 149.0], [30.0, 40.0, 60.0, 55.0]]))
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on the Python-side input checks, deprecation notes
        torch.onnx.export(graph, example, buffer, dynamo=False, opset_version=opset,
                          input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          dynamic_axes={"image": {1: "height", 2: "width"}, "proposals": {0: "regions"},
                                        "scores": {0: "regions"}, "boxes": {0: "regions"}})
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in _metadata(detector).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    out_path = Path(out_path)
    atomic_write_bytes(out_path, model.SerializeToString())
    return out_path


def onnx_session(path: str | Path) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session of an exported model; a file that is not one is a DataError."""
    require_extra("export", "running an ONNX model")
    import onnxruntime

    path = Path(path)
    if not path.is_file():
        raise DataError("no such ONNX model file", path=path)
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for a bad file
        raise DataError(f"not an ONNX model onnxruntime can load ({type(err).__name__}: {err})", path=path) from err
    if session.get_modelmeta().custom_metadata_map.get("nocdet.format") != "nocdet-frozen-detector-onnx":
        raise DataError("not a detector exported by nocdet export", path=path)
    return session


def onnx_metadata(session: onnxruntime.InferenceSession) -> dict:
    """Class names, score kind and post-processing numbers stored by :func:`export_onnx`."""
    meta = session.get_modelmeta().custom_metadata_map
    return {"classes": json.loads(meta["nocdet.classes"]), "score": meta["nocdet.score"],
            "postprocess": json.loads(meta["nocdet.postprocess"]), "noc": meta["nocdet.noc"]}


def run_onnx(model: str | Path | onnxruntime.InferenceSession, image: ImageLike,
             proposals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``[R, K]`` and boxes ``[R, K, 4]`` of an exported model on one image (path, PIL image,
    ``H x W x 3`` uint8 array or ``[3, H, W]`` tensor in [0, 1]) and its proposals ``[R, 4]``."""
    session = model if not isinstance(model, (str, Path)) else onnx_session(model)
    array = as_rgb_array(image)
    x = np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
    boxes = np.ascontiguousarray(np.asarray(proposals, dtype=np.float32).reshape(-1, 4))
    scores, refined = session.run(list(OUTPUT_NAMES), {"image": x, "proposals": boxes})
    return scores, refined
