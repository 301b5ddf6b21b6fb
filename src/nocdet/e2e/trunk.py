"""The shared trunk of the end-to-end detector: a config's backbone ``variant`` (paper Table 8)
turned into a :class:`~nocdet.features.backbones.Backbone`, and the stage factory of a conv NoC.

- ``c4``: trunk to res4 (ResNet), inc4d (GoogLeNet) or stage 6 (EfficientNet-Lite, ``upto="eff6"``),
  stride 16; the last stage is left to the NoC (``res5a,5b,5c``, ``inc4e,5a,5b``,
  ``eff7a,7b,7c,7d,8a,9a``), shared with the backbone through ``Backbone.stage``.
- ``naive``: RoI pooling after the last conv layer: res5c / inc5b / EfficientNet-Lite's 1x1 head
  conv (stride 32), conv5_3 (VGG, 16).
- ``atrous``: the last stage in the trunk with its stride-2 operation set to stride 1 and every
  later 3x3 operation dilated by 2 ("algorithme a trous"), stride 16. ResNets and EfficientNet-Lite
  (its stages 7-8 depthwise convs) get it from ``build_backbone(..., atrous=True)``; GoogLeNet's
  is made here (:func:`make_googlenet_atrous`), as ``backbones.py`` has no such option.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from nocdet.errors import ConfigError
from nocdet.experiment import BackboneConfig
from nocdet.features.backbones import Backbone, GoogLeNetBackbone, ResNetLike
from nocdet.features.efficientnet import EfficientNetLiteBackbone
from nocdet.features.registry import build_backbone, variant_options

StageFactory = Callable[[list[str], int], tuple[nn.Module, int]]


def build_trunk(cfg: BackboneConfig, pretrained: bool = True) -> Backbone:
    """The backbone of ``cfg`` in its variant; ``pretrained=False`` skips ``cfg.weights`` (a model
    restored from a checkpoint gets its weights from the checkpoint)."""
    options = {**cfg.options, **variant_options(cfg.name, cfg.variant)}
    backbone = build_backbone(cfg.name, cfg.weights if pretrained else None, **options)
    if cfg.name == "googlenet" and cfg.variant == "atrous":
        make_googlenet_atrous(backbone)
    return backbone


def make_googlenet_atrous(backbone: GoogLeNetBackbone, dilation: int = 2) -> GoogLeNetBackbone:
    """Stride 16 instead of 32 for a GoogLeNet trunk to inc5b: maxpool4 (2x2/2) becomes 2x2/1
    with its window padded on the right/bottom (``ceil_mode``) so the map keeps its size, and every
    3x3 conv and pool of inception5a/5b samples at ``dilation`` (padding = dilation keeps the size).

    The pools are padded with zeros, which max pooling over ReLU outputs (>= 0) cannot tell from
    its own -inf padding; torch's max pool refuses a padding above half its (undilated) kernel."""
    if not isinstance(backbone, GoogLeNetBackbone) or "inception5b" not in backbone._trunk:
        raise ConfigError("the a trous GoogLeNet needs a GoogLeNet trunk to inc5b (upto='inc5b')")
    backbone.maxpool4 = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(2, stride=1))
    for block in (backbone.inception5a, backbone.inception5b):
        for m in block.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                m.dilation, m.padding = (dilation, dilation), (dilation, dilation)
        block.branch4[0] = nn.Sequential(nn.ZeroPad2d(dilation), nn.MaxPool2d(3, stride=1, dilation=dilation))
    backbone.stride = 16
    return backbone


def stage_factory(backbone: Backbone, stride: int) -> StageFactory:
    """The NoC head's stage factory: the backbone's own last-stage blocks (shared, pre-trained).

    ``stride=1`` removes res5a's (eff7a's) stride (the blocks are the NoC's alone in the c4
    variant). EfficientNet-Lite's ``Conv2dSame`` is a Conv2d whose forward reads ``self.stride``:
    at stride 1 it pads symmetrically, so the map keeps its size as ResNet's padded convs do."""
    def factory(names: list[str], in_channels: int) -> tuple[nn.Module, int]:
        module, out_channels = backbone.stage(names, in_channels)
        if stride == 1:
            if not isinstance(backbone, (ResNetLike, EfficientNetLiteBackbone)):
                raise ConfigError(f"stage stride 1 is for ResNets and EfficientNet-Lite, not {backbone.name!r}")
            for m in module.modules():
                if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
                    m.stride = (1, 1)
        return module, out_channels
    return factory
