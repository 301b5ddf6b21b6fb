"""Read the layers of a Caffe ``.caffemodel``: names, types, weight blobs and conv/pool geometry.

A caffemodel is a serialised ``caffe.NetParameter`` protobuf message. It is decoded with the
``protobuf`` package (installed with ``onnx``, a nocdet dependency), using message classes built at
run time from a ``FileDescriptorProto`` that declares only the part of Caffe's schema read here;
the field numbers are Caffe's wire format. Fields outside that part are skipped by the parser.
No ``protoc``, no generated code, no copy of ``caffe.proto``.

Three generations of the format are read:

- ``NetParameter.layer`` (field 100): today's ``LayerParameter``, type as a string
  (``"Convolution"``), blobs with a ``shape``;
- ``NetParameter.layers`` (field 2): the legacy ``V1LayerParameter``, type as an enum, blobs with
  ``num``/``channels``/``height``/``width``;
- a ``V1LayerParameter`` wrapping a ``V0LayerParameter`` (its field 1): the 2014 format, type as a
  lower-case string (``"conv"``) and flat ``kernelsize``/``pad``/``stride`` fields.

Geometry (kernel, stride, padding, pooling rounding) is what the caffemodel itself records for each
layer (Caffe saves a layer's parameters with its blobs). It is None when the file records none
that this reader knows, e.g. forks that store it in fields of their own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from nocdet.errors import DataError

#: message -> its fields read here: (name, number, type, repeated); a capitalised type is a message
_SCHEMA: dict[str, list[tuple[str, int, str, bool]]] = {
    "BlobShape": [("dim", 1, "int64", True)],
    "BlobProto": [("num", 1, "int64", False), ("channels", 2, "int64", False), ("height", 3, "int64", False),
                  ("width", 4, "int64", False), ("data", 5, "float", True), ("shape", 7, "BlobShape", False),
                  ("double_data", 8, "double", True)],
    "ConvolutionParameter": [("num_output", 1, "uint32", False), ("bias_term", 2, "bool", False),
                             ("pad", 3, "uint32", True), ("kernel_size", 4, "uint32", True),
                             ("group", 5, "uint32", False), ("stride", 6, "uint32", True),
                             ("pad_h", 9, "uint32", False), ("pad_w", 10, "uint32", False),
                             ("kernel_h", 11, "uint32", False), ("kernel_w", 12, "uint32", False),
                             ("stride_h", 13, "uint32", False), ("stride_w", 14, "uint32", False),
                             ("dilation", 18, "uint32", True)],
    "PoolingParameter": [("pool", 1, "int32", False), ("kernel_size", 2, "uint32", False),
                         ("stride", 3, "uint32", False), ("pad", 4, "uint32", False),
                         ("kernel_h", 5, "uint32", False), ("kernel_w", 6, "uint32", False),
                         ("stride_h", 7, "uint32", False), ("stride_w", 8, "uint32", False),
                         ("pad_h", 9, "uint32", False), ("pad_w", 10, "uint32", False),
                         ("global_pooling", 12, "bool", False), ("round_mode", 13, "int32", False)],
    "InnerProductParameter": [("num_output", 1, "uint32", False), ("transpose", 6, "bool", False)],
    "LayerParameter": [("name", 1, "string", False), ("type", 2, "string", False),
                       ("blobs", 7, "BlobProto", True),
                       ("convolution_param", 106, "ConvolutionParameter", False),
                       ("inner_product_param", 117, "InnerProductParameter", False),
                       ("pooling_param", 121, "PoolingParameter", False)],
    "V0LayerParameter": [("name", 1, "string", False), ("type", 2, "string", False),
                         ("num_output", 3, "uint32", False), ("pad", 7, "uint32", False),
                         ("kernelsize", 8, "uint32", False), ("group", 9, "uint32", False),
                         ("stride", 10, "uint32", False), ("pool", 11, "int32", False),
                         ("blobs", 50, "BlobProto", True)],
    "V1LayerParameter": [("layer", 1, "V0LayerParameter", False), ("name", 4, "string", False),
                         ("type", 5, "int32", False), ("blobs", 6, "BlobProto", True),
                         ("convolution_param", 10, "ConvolutionParameter", False),
                         ("inner_product_param", 17, "InnerProductParameter", False),
                         ("pooling_param", 19, "PoolingParameter", False)],
    "NetParameter": [("name", 1, "string", False), ("layers", 2, "V1LayerParameter", True),
                     ("layer", 100, "LayerParameter", True)],
}
_PACKAGE = "nocdet_caffe_subset"
#: V1LayerParameter.LayerType values of the layers whose geometry or weights matter here
_V1_TYPES = {4: "Convolution", 14: "InnerProduct", 17: "Pooling", 15: "LRN", 18: "ReLU", 6: "Dropout"}
#: V0LayerParameter type strings (and the spelling of forks of that time)
_V0_TYPES = {"conv": "Convolution", "innerproduct": "InnerProduct", "inner_product": "InnerProduct",
             "pool": "Pooling", "lrn": "LRN", "relu": "ReLU", "dropout": "Dropout"}
_POOL_METHODS = {0: "max", 1: "ave", 2: "stochastic"}
_CAFFE_FLOOR = 1  # PoolingParameter.round_mode: CEIL = 0 (the default), FLOOR = 1


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution's (height, width) kernel, stride and padding, its dilation and groups."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: int = 1
    group: int = 1


@dataclass(frozen=True)
class PoolGeometry:
    """A pooling layer: method, (height, width) kernel, stride, padding, and Caffe's output rounding."""

    method: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    ceil: bool = True
    global_pooling: bool = False


@dataclass
class CaffeLayer:
    """One layer of a caffemodel, in the file's order.

    ``kind``: ``"Convolution"``, ``"InnerProduct"``, ``"Pooling"``, ... (legacy enum and V0 names are
    mapped to these). ``blobs``: float32 arrays in the file's shape (legacy 4-d shapes kept).
    ``transposed``: an InnerProduct whose weight is stored ``[in, out]``.
    """

    name: str
    kind: str
    blobs: list[np.ndarray] = field(default_factory=list)
    conv: ConvGeometry | None = None
    pool: PoolGeometry | None = None
    transposed: bool = False


def read_caffemodel(path: str | Path) -> list[CaffeLayer]:
    """The layers of the caffemodel at ``path``; a file that is not one is a DataError naming it."""
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"cannot read the caffemodel: {error.strerror or error}", path=path) from error
    net = _message_classes()["NetParameter"]()
    try:
        net.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise DataError(f"not a Caffe model (the NetParameter protobuf does not decode: {error})", path=path) from error
    if net.layer:
        layers = [_layer(m.name, m.type, m, path) for m in net.layer]
    elif net.layers:
        layers = [_legacy_layer(m, path) for m in net.layers]
    else:
        raise DataError("not a Caffe model: it holds no layers (neither 'layer' nor the legacy 'layers')", path=path)
    return layers


def _layer(name: str, kind: str, m: Any, path: Path) -> CaffeLayer:
    """A ``LayerParameter`` or a ``V1LayerParameter`` (whose ``kind`` was mapped from its enum)."""
    conv = _conv_geometry(m.convolution_param) if m.HasField("convolution_param") else None
    pool = _pool_geometry(m.pooling_param) if m.HasField("pooling_param") else None
    transposed = m.HasField("inner_product_param") and m.inner_product_param.transpose
    return CaffeLayer(name, kind, [_blob_array(b, f"{name} blob {i}", path) for i, b in enumerate(m.blobs)],
                      conv, pool, transposed)


def _legacy_layer(m: Any, path: Path) -> CaffeLayer:
    if not m.HasField("layer"):
        return _layer(m.name, _V1_TYPES.get(m.type, f"V1 layer type {m.type}"), m, path)
    v0 = m.layer  # V0: everything sits in the wrapped V0LayerParameter, square kernels only
    kind = _V0_TYPES.get(v0.type.lower(), v0.type)
    layer = CaffeLayer(v0.name, kind, [_blob_array(b, f"{v0.name} blob {i}", path) for i, b in enumerate(v0.blobs)])
    if v0.HasField("kernelsize"):
        kernel, pad = (v0.kernelsize,) * 2, (v0.pad,) * 2
        stride = (v0.stride if v0.HasField("stride") else 1,) * 2
        if kind == "Convolution":
            layer.conv = ConvGeometry(kernel, stride, pad, 1, v0.group if v0.HasField("group") else 1)
        elif kind == "Pooling":
            layer.pool = PoolGeometry(_POOL_METHODS.get(v0.pool, str(v0.pool)), kernel, stride, pad)
    return layer


def _pair(m: Any, single: str, height: str, width: str, default: int | None) -> tuple[int, int] | None:
    """(h, w) from ``<height>``/``<width>`` when set, else from ``<single>`` (one value or a list of 1-2)."""
    if m.HasField(height) or m.HasField(width):
        return int(getattr(m, height)), int(getattr(m, width))
    value = getattr(m, single)
    if isinstance(value, int):  # an optional field
        if m.HasField(single):
            return value, value
        return None if default is None else (default, default)
    values = [int(v) for v in value]
    if not values:
        return None if default is None else (default, default)
    return (values[0], values[-1])


def _conv_geometry(p: Any) -> ConvGeometry | None:
    kernel = _pair(p, "kernel_size", "kernel_h", "kernel_w", None)
    if kernel is None:
        return None
    dilation = max([int(d) for d in p.dilation] or [1])
    return ConvGeometry(kernel, _pair(p, "stride", "stride_h", "stride_w", 1), _pair(p, "pad", "pad_h", "pad_w", 0),
                        dilation, p.group if p.HasField("group") else 1)


def _pool_geometry(p: Any) -> PoolGeometry | None:
    kernel = _pair(p, "kernel_size", "kernel_h", "kernel_w", None)
    if kernel is None and not p.global_pooling:
        return None
    return PoolGeometry(_POOL_METHODS.get(p.pool, str(p.pool)), kernel or (0, 0),
                        _pair(p, "stride", "stride_h", "stride_w", 1), _pair(p, "pad", "pad_h", "pad_w", 0),
                        p.round_mode != _CAFFE_FLOOR, p.global_pooling)


def _blob_array(blob: Any, where: str, path: Path) -> np.ndarray:
    """A BlobProto as a float32 array of its shape (``shape``, else the legacy num/channels/height/width)."""
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = (int(blob.num), int(blob.channels), int(blob.height), int(blob.width))
    source = blob.data if len(blob.data) else blob.double_data
    values = np.fromiter(source, dtype=np.float32, count=len(source))
    if values.size != int(np.prod(shape)) or any(d < 0 for d in shape):
        raise DataError(f"{where} holds {values.size} values but its shape {shape} needs {int(np.prod(shape))}",
                        path=path)
    return values.reshape(shape)


@cache
def _message_classes() -> dict[str, type]:
    """The message classes of :data:`_SCHEMA`, built in a private descriptor pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    scalar = descriptor_pb2.FieldDescriptorProto
    types = {"int64": scalar.TYPE_INT64, "int32": scalar.TYPE_INT32, "uint32": scalar.TYPE_UINT32,
             "bool": scalar.TYPE_BOOL, "float": scalar.TYPE_FLOAT, "double": scalar.TYPE_DOUBLE,
             "string": scalar.TYPE_STRING}
    file = descriptor_pb2.FileDescriptorProto(name=f"{_PACKAGE}.proto", package=_PACKAGE, syntax="proto2")
    for message_name, fields in _SCHEMA.items():
        message = file.message_type.add(name=message_name)
        for name, number, kind, repeated in fields:
            f = message.field.add(name=name, number=number,
                                  label=scalar.LABEL_REPEATED if repeated else scalar.LABEL_OPTIONAL)
            if kind in types:  # packed or not, the parser reads repeated numbers either way
                f.type = types[kind]
            else:
                f.type, f.type_name = scalar.TYPE_MESSAGE, f".{_PACKAGE}.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
            for name in _SCHEMA}
