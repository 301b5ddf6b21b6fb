"""Small backbones for CPUs: the paper's two settings at a size that trains on a laptop.

- ``small-zf``: the ZF layout (:class:`~nocdet.features.backbones.ZFNet`) with narrow layers and
  BatchNorm, stride 8 by default: the scene-digits images are ~320 px with digits of 16-160 px,
  and at stride 16 a 16 px digit would cover a single cell of the map. Its own fc6/fc7
  (``fc_dim``) let a NoC be fine-tuned from a pre-trained head (paper Sec. 3.4).
- ``small-resnet``: a ResNet with torchvision BasicBlocks, trunk conv1 + res2..res4 (stride 16)
  and a res5 stage that a conv NoC reuses (paper Sec. 4), or that the trunk ends with
  (``upto="res5"``, stride 32; ``atrous=True``, stride 16).

No ImageNet weights exist for these: train them from scratch or from a nocdet checkpoint.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock
from torchvision.ops import FrozenBatchNorm2d

from nocdet.errors import ConfigError
from nocdet.features.backbones import IMAGENET_MEAN, IMAGENET_STD, ResNetLike, ZFNet

SMALL_ZF_CHANNELS = (32, 64, 96, 96, 64)  # conv1..conv5 at width 1.0
SMALL_RESNET_CHANNELS = (32, 64, 128, 256)  # res2..res5 at width 1.0 (conv1 = res2's width)


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded to a multiple of 8 (at least 8)."""
    if width <= 0:
        raise ConfigError(f"width multiplier must be positive, got {width}")
    return max(8, int(round(channels * width / 8)) * 8)


def small_zf(*, width: float = 1.0, stride: int = 8, fc_dim: int = 512, norm: str = "bn") -> ZFNet:
    """A narrow ZF net: conv1..conv5 = 32-64-96-96-64 channels x ``width``, RoI 6 x 6, fc6/fc7 ``fc_dim``.

    ``stride=8`` drops pool2 (finer map for small objects); ``stride=16`` is ZF's geometry.
    ``norm="bn"`` (default) trains quickly from scratch; ``"lrn"`` is ZF's own normalisation.
    """
    channels = tuple(scaled(c, width) for c in SMALL_ZF_CHANNELS)
    return ZFNet(name="small-zf", channels=channels, stride=stride, norm=norm, fc_dim=fc_dim, roi_size=6,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD)


class SmallResNet(ResNetLike):
    """A small ResNet of torchvision BasicBlocks in torchvision's layout.

    conv1 7x7/2 + max pool 3x3/2, then res2 (stride 4), res3 (8), res4 (16), res5 (32) with
    32-64-128-256 channels x ``width``; ``blocks`` = BasicBlocks in res2..res4, ``res5_blocks`` in
    res5 (the conv NoC ``res5a, res5b, ...``). ``upto``, ``atrous`` and ``frozen_stages`` as for
    ResNet (:class:`~nocdet.features.backbones.ResNetLike`). ``frozen_bn`` (FrozenBatchNorm2d)
    defaults to False: BatchNorm must learn its statistics when training from scratch.
    """

    def __init__(self, *, width: float = 1.0, blocks: Sequence[int] = (1, 1, 1), res5_blocks: int = 2,
                 upto: str | None = None, atrous: bool = False, frozen_stages: int = 0, frozen_bn: bool = False):
        if len(blocks) != 3 or min(blocks) < 1 or res5_blocks < 1:
            raise ConfigError(f"small-resnet: blocks must be 3 positive counts (res2..res4) and res5_blocks >= 1, "
                              f"got {list(blocks)} and {res5_blocks}")
        norm = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        widths = [scaled(c, width) for c in SMALL_RESNET_CHANNELS]
        net = nn.Module()
        net.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        net.bn1 = norm(widths[0])
        net.relu = nn.ReLU(inplace=True)
        net.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        counts = [*blocks, res5_blocks]
        in_channels = widths[0]
        for i, (out, count) in enumerate(zip(widths, counts), start=1):
            layer = _basic_layer(in_channels, out, count, stride=1 if i == 1 else 2, norm=norm)
            setattr(net, f"layer{i}", layer)
            in_channels = out
        if atrous:
            _make_atrous(net.layer4)
        _init_like_torchvision(net)
        super().__init__(net, name="small-resnet", channels=(widths[2], widths[3]), upto=upto, atrous=atrous,
                         frozen_stages=frozen_stages)


def _basic_layer(in_channels: int, out_channels: int, count: int, stride: int, norm: type[nn.Module]
                 ) -> nn.Sequential:
    """``count`` BasicBlocks, the first one striding and projecting (torchvision's ``_make_layer``)."""
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                   norm(out_channels))
    layers = [BasicBlock(in_channels, out_channels, stride, downsample, norm_layer=norm)]
    layers += [BasicBlock(out_channels, out_channels, norm_layer=norm) for _ in range(count - 1)]
    return nn.Sequential(*layers)


def _make_atrous(layer: nn.Sequential, dilation: int = 2) -> None:
    """Remove the stride of ``layer`` and dilate every 3x3 conv after the one that had it.

    torchvision's BasicBlock refuses ``dilation > 1``; this does what ``replace_stride_with_dilation``
    does for Bottleneck layers: the striding conv keeps dilation 1, the convs after it sample the
    now twice-denser map at twice the spacing, so the receptive fields stay those of the strided net.
    """
    first = layer[0]
    first.conv1.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)
    later = [first.conv2] + [conv for block in layer[1:] for conv in (block.conv1, block.conv2)]
    for conv in later:
        conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)


def _init_like_torchvision(net: nn.Module) -> None:
    """torchvision ResNet's initialisation: He normal (fan_out) convs, unit-scale norms."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
