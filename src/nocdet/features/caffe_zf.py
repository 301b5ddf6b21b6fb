"""Convert a Caffe ZF model into nocdet's ZF weights file, refusing every model that would load silently wrong.

nocdet's ``zf`` (:class:`~nocdet.features.backbones.ZFNet`) is py-faster-rcnn's ZF: conv pads 3, 2,
1, 1, 1 and max pools 3 x 3 / 2 with pad 1, rounding up. A Caffe ZF checkpoint with the same weight
shapes can still be wrong for it in three ways, none of which a shape check sees:

1. **Channel order.** Caffe nets take BGR images; nocdet feeds RGB. The converter flips conv1's
   input channels (``W_rgb[:, c] = W_bgr[:, 2 - c]``), which makes conv1 compute on RGB exactly
   what it computed on BGR.
2. **Input scale.** Caffe's ZF takes pixels on the 0-255 scale minus py-faster-rcnn's mean pixel.
   The file records that convention (:data:`INPUT_SCALE`, :data:`PIXEL_MEAN_RGB`), and the weights
   loader sets the backbone's normalisation from it (for ``zf`` this equals its default,
   ``(x - CAFFE_MEAN) / CAFFE_STD`` = ``255 x - mean``, so nothing changes; the record makes the file
   self-describing).
3. **Geometry.** SPPnet's released ZF (``Zeiler_conv5``) pads conv1 by 1 and conv2 by 0 and does not
   pad its pools; its weights have py-faster-rcnn's shapes, so they would load and compute features
   shifted against the ones they were trained on. Its fc6 takes 12,800 inputs (256 channels x
   (1 + 4 + 9 + 36) spatial-pyramid bins), not the 256 x 6 x 6 RoI features of the fine-tuned rows.

**Safe behaviour: refuse.** A model whose recorded geometry differs from nocdet's ZF, whose geometry
the file does not record in a form read here (SPPnet's Caffe fork stores it in fields of its own),
or whose fc6 is SPPnet's pyramid fc6 is refused with the reason. There is no flag to convert the
conv layers anyway: nocdet builds no SPPnet-geometry ZF, so such a conversion could only produce
the silently shifted features this module exists to prevent.

The output file is ``{"backbone": state_dict, "caffe_conversion": record}``;
:func:`~nocdet.features.caffe_record.conversion_normalisation` is the weights loader's check of that record. Caffe's fc8 /
cls_score / bbox_pred / rpn layers are dropped: nocdet's ZF keeps conv1..conv5 and fc6/fc7
(``classifier.0`` / ``classifier.3``), and a detector trains its own classifier.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nocdet.errors import ConfigError, DataError
from nocdet.features.backbones import ZFNet
from nocdet.features.caffemodel import CaffeLayer, read_caffemodel
from nocdet.features.caffe_record import CONVERSION_KEY, FORMAT, GEOMETRY, INPUT_SCALE, PIXEL_MEAN_RGB
from nocdet.io import atomic_torch_save

#: Caffe layer name -> nocdet ZF state dict prefix (fc6 / fc7 are ``classifier[0]`` / ``classifier[3]``)
LAYER_KEYS = {"conv1": "conv1", "conv2": "conv2", "conv3": "conv3", "conv4": "conv4", "conv5": "conv5",
              "fc6": "classifier.0", "fc7": "classifier.3"}
#: SPPnet's 4-level pyramid {1x1, 2x2, 3x3, 6x6}: fc6 of its ZF takes conv5 channels x this many bins
SPP_BINS = 1 + 4 + 9 + 36
#: conv1..conv5 padding of SPPnet's ZF (model-defs/Zeiler_conv5.prototxt of the SPPnet release)
SPPNET_CONV_PADS = (1, 0, 1, 1, 1)


@dataclass
class ZFConversion:
    """A converted model: nocdet's state dict and the record stored with it."""

    state_dict: dict[str, Tensor]
    record: dict[str, object]

    def content(self) -> dict[str, object]:
        """What the weights file holds."""
        return {"backbone": self.state_dict, CONVERSION_KEY: self.record}

    def summary(self) -> str:
        """One line on what the conversion kept, dropped and expects as input."""
        record = self.record
        dropped = ", ".join(record["dropped_layers"]) or "none"
        return (f"converted {', '.join(record['converted_layers'])} (conv1 input channels flipped BGR -> RGB); "
                f"dropped {dropped}; input: RGB x {record['input_scale']:g} - mean {tuple(record['pixel_mean_rgb'])}")


def convert_caffemodel(path: str | Path, out: str | Path, arch: str = "zf") -> ZFConversion:
    """Read the caffemodel at ``path``, convert it for backbone ``arch`` and write ``out`` (atomically)."""
    if arch != "zf":
        raise ConfigError(f"convert-caffe converts ZF models only (arch 'zf'), not {arch!r}")
    path = Path(path)
    with torch.device("meta"):  # the target's shapes and geometry, without allocating its 58 M parameters
        target = ZFNet()
    conversion = convert_zf(read_caffemodel(path), target, path)
    with path.open("rb") as file:
        conversion.record["source_sha256"] = hashlib.file_digest(file, "sha256").hexdigest()
    atomic_torch_save(out, conversion.content())
    return conversion


def convert_zf(layers: list[CaffeLayer], target: ZFNet, source: str | Path) -> ZFConversion:
    """nocdet's state dict for ``target`` from the Caffe ``layers``; DataError naming ``source`` if they do not fit."""
    by_name = _index(layers, source)
    missing = [name for name in ("conv1", "conv2", "conv3", "conv4", "conv5") if name not in by_name]
    if missing:
        found = ", ".join(layer.name for layer in layers if layer.blobs) or "none"
        raise DataError(f"not a ZF model: no layer(s) {', '.join(missing)} (layers with weights: {found})",
                        path=source)
    fc = [name for name in ("fc6", "fc7") if name in by_name]
    if len(fc) == 1:
        raise DataError(f"the model has {fc[0]} but not {({'fc6', 'fc7'} - set(fc)).pop()}: nocdet's ZF takes "
                        f"both or neither", path=source)
    _refuse_sppnet_fc6(by_name, target, source)
    _check_geometry(layers, by_name, target, source)
    expected = target.state_dict()
    state: dict[str, Tensor] = {}
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", *fc):
        weight, bias = _weight_and_bias(by_name[name], source)
        prefix = LAYER_KEYS[name]
        state[f"{prefix}.weight"] = _fit(weight, expected[f"{prefix}.weight"].shape, f"{name} weight", source)
        state[f"{prefix}.bias"] = _fit(bias, expected[f"{prefix}.bias"].shape, f"{name} bias", source)
    state["conv1.weight"] = state["conv1.weight"].flip(1).contiguous()  # BGR -> RGB input channels
    kept = set(LAYER_KEYS) & set(by_name)
    record: dict[str, object] = {
        "format": FORMAT, "arch": target.name, "geometry": GEOMETRY, "channel_order": "RGB",
        "input_scale": INPUT_SCALE, "pixel_mean_rgb": list(PIXEL_MEAN_RGB), "source": Path(source).name,
        "converted_layers": [layer.name for layer in layers if layer.name in kept],
        "dropped_layers": [layer.name for layer in layers if layer.blobs and layer.name not in kept],
        "fc67": bool(fc)}
    return ZFConversion(state, record)


def _index(layers: list[CaffeLayer], source: str | Path) -> dict[str, CaffeLayer]:
    by_name: dict[str, CaffeLayer] = {}
    for layer in layers:
        if layer.name in by_name and layer.name in LAYER_KEYS:
            raise DataError(f"the model has two layers named {layer.name!r}", path=source)
        by_name.setdefault(layer.name, layer)
    return by_name


def _refuse_sppnet_fc6(by_name: dict[str, CaffeLayer], target: ZFNet, source: str | Path) -> None:
    if "fc6" not in by_name or not by_name["fc6"].blobs:
        return
    fc6 = by_name["fc6"]
    inputs = fc6.blobs[0].shape[-2] if fc6.transposed else fc6.blobs[0].shape[-1]
    if inputs == target.out_channels * SPP_BINS:
        raise DataError(f"this is SPPnet's ZF: its fc6 takes {inputs} inputs = {target.out_channels} channels x "
                        f"{SPP_BINS} spatial-pyramid bins (1x1 + 2x2 + 3x3 + 6x6), not the {target.out_channels} x "
                        f"{target.roi_size} x {target.roi_size} RoI features of nocdet's ZF, and its conv/pool "
                        f"padding differs from the py-faster-rcnn geometry nocdet builds, so even its conv layers "
                        f"would compute shifted features. Use py-faster-rcnn's ZF.v2.caffemodel "
                        f"(docs/zf_weights.md)", path=source)


def _check_geometry(layers: list[CaffeLayer], by_name: dict[str, CaffeLayer], target: ZFNet,
                    source: str | Path) -> None:
    """Refuse unless conv1..conv5 and the pools after conv1 and conv2 record ``target``'s geometry."""
    differences, unreadable = [], []
    pads = []
    for i in range(1, 6):
        layer, module = by_name[f"conv{i}"], target.get_submodule(f"conv{i}")
        if layer.kind != "Convolution":
            raise DataError(f"layer conv{i} is a {layer.kind} layer, not a Convolution", path=source)
        if layer.conv is None:
            unreadable.append(f"conv{i}")
            continue
        pads.append(layer.conv.pad[0])
        for what, got, want in (("kernel", layer.conv.kernel, tuple(module.kernel_size)),
                                ("stride", layer.conv.stride, tuple(module.stride)),
                                ("pad", layer.conv.pad, tuple(module.padding)),
                                ("dilation", layer.conv.dilation, module.dilation[0]),
                                ("group", layer.conv.group, module.groups)):
            if got != want:
                differences.append(f"conv{i} {what} {_show(got)} (nocdet: {_show(want)})")
    order = [layer.name for layer in layers]
    for i, (start, end) in enumerate((("conv1", "conv2"), ("conv2", "conv3")), start=1):
        module = target.get_submodule(f"pool{i}")
        pools = [layer for layer in layers[order.index(start) + 1:order.index(end)] if layer.kind == "Pooling"]
        if len(pools) != 1 or pools[0].pool is None:
            unreadable.append(f"the pooling between {start} and {end}" + (f" ({len(pools)} found)" if len(pools) != 1
                                                                           else ""))
            continue
        pool = pools[0].pool
        want = (("method", pool.method, "max"), ("kernel", pool.kernel, (module.kernel_size,) * 2),
                ("stride", pool.stride, (module.stride,) * 2), ("pad", pool.pad, (module.padding,) * 2),
                ("rounding", "up" if pool.ceil else "down", "up" if module.ceil_mode else "down"),
                ("global pooling", pool.global_pooling, False))
        differences += [f"{pools[0].name} {what} {_show(got)} (nocdet: {_show(expected)})"
                        for what, got, expected in want if got != expected]
    if differences:
        sppnet = " This is SPPnet's ZF geometry." if tuple(pads) == SPPNET_CONV_PADS else ""
        raise DataError(f"the model's layer geometry is not the py-faster-rcnn ZF that nocdet builds: "
                        f"{'; '.join(differences)}.{sppnet} Its weights have the same shapes, so they would load "
                        f"and compute shifted features; refused (docs/zf_weights.md)", path=source)
    if unreadable:
        raise DataError(f"the model records no readable geometry (kernel, stride, padding) for "
                        f"{', '.join(unreadable)}, so it cannot be checked against the py-faster-rcnn ZF that "
                        f"nocdet builds (SPPnet's release stores its layers this way); refused "
                        f"(docs/zf_weights.md)", path=source)


def _weight_and_bias(layer: CaffeLayer, source: str | Path) -> tuple[np.ndarray, np.ndarray]:
    if len(layer.blobs) != 2:
        raise DataError(f"layer {layer.name} holds {len(layer.blobs)} blobs, expected 2 (weight and bias)",
                        path=source)
    weight, bias = layer.blobs
    if layer.transposed:  # an InnerProduct stored [in, out]
        weight = _squeeze(weight, 2).T
    return weight, bias


def _fit(values: np.ndarray, shape: torch.Size, what: str, source: str | Path) -> Tensor:
    """``values`` as a tensor of ``shape``; legacy leading 1-dims (Caffe's 4-d biases and fc weights) dropped."""
    values = _squeeze(values, len(shape))
    if tuple(values.shape) != tuple(shape):
        raise DataError(f"{what} has shape {tuple(values.shape)}, nocdet's ZF needs {tuple(shape)}", path=source)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def _squeeze(values: np.ndarray, ndim: int) -> np.ndarray:
    extra = values.ndim - ndim
    if extra > 0 and all(d == 1 for d in values.shape[:extra]):
        return values.reshape(values.shape[extra:])
    return values


def _show(value: object) -> str:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == value[1]:
        return str(value[0])
    return str(value)

