"""NoCHead: the region-wise classifier built from a NoC string (paper Sec. 3, Sec. 4).

Shape shorthand: R regions, C channels of the RoI-pooled map, m its side (m x m), K classes
(K + 1 outputs with background), D the classifier's input size (the features for post-hoc SVMs).

A maxout NoC (Sec. 3.5) takes two pooled maps per region, one per pyramid scale. Every layer
before ``mo`` runs on both pathways with the *same* modules: the two inputs are concatenated
along the region axis ([2R, ...]), run once, split and merged by element-wise max, so a maxout
NoC has exactly the parameters of its twin without ``mo``. When ``mo`` stands after the
classifier, the logits are merged by max, the features too, and each class's box deltas come
from the pathway whose logit won that class.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from nocdet.errors import SpecError
from nocdet.noc.spec import LayerSpec, NoCSpec, as_spec
from nocdet.noc.stages import build_stage

StageFactory = Callable[[list[str], int], tuple[nn.Module, int]]


class NoCOutput(NamedTuple):
    logits: Tensor  # [R, K+1], before softmax
    features: Tensor  # [R, D], the classifier's input (after ReLU when it follows a hidden layer)
    deltas: Tensor | None  # [R, 4(K+1)] class-specific box deltas, or None


class NoCOutputShape(NamedTuple):
    """Per-region shapes of the three outputs."""

    logits: tuple[int, ...]
    features: tuple[int, ...]
    deltas: tuple[int, ...] | None


@dataclass(frozen=True)
class NoCLayer:
    """One layer of a built head: its spec, its module (None for ``mo``), its per-region output
    shape and on how many pathways it runs (2 before ``mo``, else 1)."""

    spec: LayerSpec
    module: nn.Module | None
    output_shape: tuple[int, ...]
    pathways: int


def _maxout(h: Tensor, regions: int) -> Tensor:
    return torch.maximum(h[:regions], h[regions:])


class NoCHead(nn.Module):
    """The NoC of ``spec`` on [R, C, m, m] inputs, with an (n+1)-way classifier and, optionally,
    a sibling fc layer for class-specific box regression on the same features.

    ``num_classes`` (K, without background) resolves ``fn+1`` and is checked against a numeric
    classifier. ``stage_factory(names, in_channels) -> (module, out_channels)`` builds stage
    tokens (``res5a,5b,5c``, ``inc4e,5a,5b``); by default torchvision blocks with random weights,
    where ``stage_stride`` (2 or 1) says whether res5a halves the pooled map (see noc/stages.py).
    ``dropout`` p > 0 ends each hidden fc layer with dropout p unless an explicit ``d<q>`` follows
    it (the paper's training; noc/spec.py, "Dropout").
    """

    def __init__(self, spec: str | NoCSpec, in_channels: int, roi_size: int,
                 num_classes: int | None = None, box_regression: bool = False,
                 stage_factory: StageFactory | None = None, stage_stride: int = 2, dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise SpecError(f"the NoC dropout probability must be in [0, 1), got {dropout}")
        spec = as_spec(spec)
        if num_classes is not None:
            spec = spec.resolve(num_classes)
        elif spec.num_outputs is None:
            raise SpecError(f"the NoC {spec} ends with n+1: give the number of classes "
                            "(num_classes, --classes)")
        if in_channels < 1 or roi_size < 1:
            raise SpecError(f"the NoC input must be C x m x m with C, m >= 1, "
                            f"got {in_channels}x{roi_size}x{roi_size}")
        self.spec = spec
        self.in_channels = in_channels
        self.roi_size = roi_size
        self.dropout = dropout
        dropped = set(spec.implicit_dropout()) if dropout > 0 else set()
        factory = stage_factory or functools.partial(build_stage, stride=stage_stride)

        self.blocks = nn.ModuleList()
        self._table: list[tuple[LayerSpec, int | None, tuple[int, ...]]] = []  # spec, block index, shape
        self._merge_at: int | None = None  # block index before which the pathways merge
        shape: tuple[int, ...] = (in_channels, roi_size, roi_size)
        cls_index = spec.classifier_index
        for i, layer in enumerate(spec.layers):
            if layer.kind == "maxout":
                self._merge_at = len(self.blocks) + (1 if i > cls_index else 0)
                self._table.append((layer, None, shape))
            elif i == cls_index:
                self.cls_score = nn.Linear(math.prod(shape), layer.params["out"])
                shape = (layer.params["out"],)
                self._table.append((layer, -1, shape))
            else:
                block, shape = self._build(layer, shape, spec.layers[i + 1], factory,
                                           dropout if i in dropped else 0.0)
                self.blocks.append(block)
                self._table.append((layer, len(self.blocks) - 1, shape))
        self.feature_dim = self.cls_score.in_features
        self.num_outputs = self.cls_score.out_features
        self.bbox_pred = nn.Linear(self.feature_dim, 4 * self.num_outputs) if box_regression else None
        self.channels_last = False

    def use_channels_last(self, enabled: bool = True) -> NoCHead:
        """Run the conv layers in the channels-last (NHWC) layout (their weights and the pooled
        input); fc layers are unaffected and outputs equal to float rounding. Returns self."""
        self.channels_last = enabled
        return self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    @staticmethod
    def _build(layer: LayerSpec, shape: tuple[int, ...], next_layer: LayerSpec, factory: StageFactory,
               dropout: float) -> tuple[nn.Module, tuple[int, ...]]:
        """The module of one hidden layer and its per-region output shape; ``dropout`` > 0 ends an fc
        layer with dropout (after the Linear and ReLU, which keep their indices in the state dict)."""
        p = layer.params
        if layer.kind == "conv":
            conv = nn.Conv2d(shape[0], p["out"], p["kernel"], padding=p["kernel"] // 2)
            relu = [] if next_layer.kind == "bn" else [nn.ReLU(inplace=True)]  # conv, bn, then ReLU
            return nn.Sequential(conv, *relu), (p["out"], *shape[1:])
        if layer.kind == "bn":
            return nn.Sequential(nn.BatchNorm2d(shape[0]), nn.ReLU(inplace=True)), shape
        if layer.kind == "fc":
            flatten = [nn.Flatten()] if len(shape) > 1 else []
            linear = nn.Linear(math.prod(shape), p["out"])
            drop = [nn.Dropout(dropout)] if dropout > 0 else []
            return nn.Sequential(*flatten, linear, nn.ReLU(inplace=True), *drop), (p["out"],)
        if layer.kind == "dropout":
            return nn.Dropout(p["p"]), shape
        if layer.kind == "stage":
            module, out_channels = factory(layer.stage_names, shape[0])
            return nn.Sequential(module, nn.AdaptiveAvgPool2d(1), nn.Flatten()), (out_channels,)
        raise SpecError(f"no module for layer kind {layer.kind!r} ({layer.text})")

    @property
    def is_maxout(self) -> bool:
        return self._merge_at is not None

    @property
    def num_pathways(self) -> int:
        """How many pooled maps per region ``forward`` takes: 2 for a maxout NoC, else 1."""
        return 2 if self.is_maxout else 1

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.roi_size, self.roi_size)

    @property
    def output_shape(self) -> NoCOutputShape:
        deltas = (4 * self.num_outputs,) if self.bbox_pred is not None else None
        return NoCOutputShape((self.num_outputs,), (self.feature_dim,), deltas)

    @property
    def layers(self) -> list[NoCLayer]:
        """The spec's layers with their modules, per-region output shapes and pathway counts."""
        merge_pos = next((i for i, (spec, _, _) in enumerate(self._table) if spec.kind == "maxout"), -1)
        out = []
        for i, (spec, index, shape) in enumerate(self._table):
            module = None if index is None else self.cls_score if index == -1 else self.blocks[index]
            out.append(NoCLayer(spec, module, shape, 2 if i < merge_pos else 1))
        return out

    def _inputs(self, x: Tensor | Sequence[Tensor]) -> list[Tensor]:
        if isinstance(x, Tensor):
            if self.is_maxout:
                raise ValueError(f"the maxout NoC {self.spec} takes two pooled maps per region "
                                 "(one per pyramid scale): pass a pair of [R, C, m, m] tensors")
            xs = [x]
        else:
            xs = list(x)
            if not self.is_maxout:
                raise ValueError(f"the NoC {self.spec} has no mo and takes one [R, C, m, m] tensor, "
                                 f"got {len(xs)}")
            if len(xs) != 2:
                raise ValueError(f"the maxout NoC {self.spec} takes exactly 2 tensors, got {len(xs)}")
        for t in xs:
            if t.dim() != 4 or tuple(t.shape[1:]) != self.input_shape:
                want = "x".join(map(str, self.input_shape))
                raise ValueError(f"the NoC {self.spec} takes [R, {want}] inputs, got {list(t.shape)}")
        if len(xs) == 2 and xs[0].shape[0] != xs[1].shape[0]:
            raise ValueError(f"the two maxout pathways need the same regions, got "
                             f"{xs[0].shape[0]} and {xs[1].shape[0]}")
        return xs

    def forward(self, x: Tensor | Sequence[Tensor]) -> NoCOutput:
        """``x``: [R, C, m, m], or for a maxout NoC two of them (the two scales of each region)."""
        xs = self._inputs(x)
        regions = xs[0].shape[0]
        h = torch.cat(xs) if len(xs) == 2 else xs[0]
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        for j, block in enumerate(self.blocks):
            if j == self._merge_at:
                h = _maxout(h, regions)
            h = block(h)
        if self._merge_at == len(self.blocks):
            h = _maxout(h, regions)
        features = h.flatten(1)
        logits = self.cls_score(features)
        deltas = self.bbox_pred(features) if self.bbox_pred is not None else None
        if self._merge_at == len(self.blocks) + 1:  # mo after the classifier
            second_wins = logits[regions:] > logits[:regions]
            logits = _maxout(logits, regions)
            features = _maxout(features, regions)
            if deltas is not None:
                d1, d2 = deltas[:regions].view(regions, -1, 4), deltas[regions:].view(regions, -1, 4)
                deltas = torch.where(second_wins.unsqueeze(-1), d2, d1).reshape(regions, -1)
        return NoCOutput(logits, features, deltas)

    def extra_repr(self) -> str:
        return (f"spec={str(self.spec)!r}, input={'x'.join(map(str, self.input_shape))}"
                + (f", dropout={self.dropout:g}" if self.dropout else ""))


def _stage_macs(module: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Multiply-adds of a stage on one region, counted by torch's FlopCounterMode (FLOPs / 2)."""
    param = next(module.parameters(), None)
    x = torch.zeros((1, *in_shape), device=param.device if param is not None else "meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module.eval()(x)
    return counter.get_total_flops() // 2


def _layer_macs(layer: NoCLayer, in_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one layer on one pathway: conv and fc analytically, stages counted."""
    kind, p = layer.spec.kind, layer.spec.params
    if kind == "conv":
        out_c, h, w = layer.output_shape
        return out_c * in_shape[0] * p["kernel"] ** 2 * h * w
    if kind == "fc":
        return math.prod(in_shape) * layer.output_shape[0]
    if kind == "stage":
        return _stage_macs(layer.module, in_shape)
    return 0  # mo, bn, dropout: element-wise, no multiply-adds


def describe_noc(spec: str | NoCSpec, in_channels: int, roi_size: int, num_classes: int | None = None,
                 box_regression: bool = False, stage_factory: StageFactory | None = None,
                 stage_stride: int = 2) -> dict:
    """Layers, output shapes, parameters and multiply-adds per RoI of a NoC, and the totals.

    Built on the meta device (no memory, no work). MACs count conv/fc multiply-adds (element-wise
    ops are free) and, for a maxout NoC, both pathways up to ``mo``.
    """
    with torch.device("meta"):
        head = NoCHead(spec, in_channels, roi_size, num_classes, box_regression, stage_factory, stage_stride)
    rows, in_shape = [], head.input_shape
    for layer in head.layers:
        rows.append({
            "name": layer.spec.text, "kind": layer.spec.kind,
            "output_shape": list(layer.output_shape), "pathways": layer.pathways,
            "params": sum(p.numel() for p in layer.module.parameters()) if layer.module else 0,
            "macs": _layer_macs(layer, in_shape) * layer.pathways,
        })
        if layer.module is head.cls_score and head.bbox_pred is not None:
            rows.append({
                "name": "bbox_pred", "kind": "fc", "output_shape": [head.bbox_pred.out_features],
                "pathways": layer.pathways, "params": sum(p.numel() for p in head.bbox_pred.parameters()),
                "macs": head.feature_dim * head.bbox_pred.out_features * layer.pathways,
            })
        in_shape = layer.output_shape
    return {
        "spec": str(head.spec), "input_shape": list(head.input_shape),
        "layers": rows,
        "params": sum(p.numel() for p in head.parameters()),
        "macs_per_roi": sum(r["macs"] for r in rows),
        "feature_dim": head.feature_dim, "num_outputs": head.num_outputs,
    }
