"""Backbone stages used as a convolutional NoC (paper Sec. 4): ResNet conv5, GoogLeNet inception.

With RoI pooling moved to a stride-16 map (res4b22 for ResNet-101, inc4d for GoogLeNet), the
remaining blocks of the pre-trained network become the region-wise classifier: ``res5a,5b,5c``
or ``inc4e,5a,5b``, then global average pooling (added by the head) and the fc layers.

A *stage factory* ``factory(names, in_channels) -> (module, out_channels)`` builds those blocks.
:func:`build_stage` is the default: torchvision's own block classes (``Bottleneck``,
``Inception``) with torchvision's random initialisation, never a download. A backbone that holds
pre-trained weights passes ``lambda names, c: stage_from_torchvision(model, names)`` instead.

``stride`` is the resolution change inside the stage: 2 (default) lets res5a halve the pooled
map, as in Detectron's C4 head that pools 14 x 14 and works at 7 x 7 from res5a on (and as in the
original ResNet detection system); 1 keeps the pooled resolution (pool 7 x 7 directly). For
GoogLeNet, 2 keeps ``maxpool4`` before inc5a, 1 drops it. torchvision's Bottleneck strides in its
3x3 conv (ResNet v1.5); the original Caffe ResNet strides in the first 1x1 conv.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

from torch import nn
from torchvision.models.googlenet import Inception
from torchvision.models.resnet import Bottleneck

from nocdet.errors import ConfigError, SpecError
from nocdet.features.efficientnet import efficientnet_stage
from nocdet.noc.spec import STAGE_BLOCKS

RES5_PLANES = 512  # Bottleneck width of conv5; its output has 4 x 512 = 2048 channels
# torchvision GoogLeNet: in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj
INCEPTION_CONFIGS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "4a": (480, 192, 96, 208, 16, 48, 64),
    "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64),
    "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128),
    "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}


def _split_names(names: list[str]) -> tuple[str, list[str]]:
    families = {name[:3] for name in names}
    if len(families) != 1 or not names:
        raise SpecError(f"a stage is one run of res or inc blocks, got {names}")
    family = families.pop()
    if family not in STAGE_BLOCKS:
        raise SpecError(f"unknown stage family {family!r} in {names}; known: {', '.join(STAGE_BLOCKS)}")
    blocks = [name[3:] for name in names]
    unknown = [b for b in blocks if b not in STAGE_BLOCKS[family]]
    if unknown:
        raise SpecError(f"unknown {family} blocks {unknown}; known: {list(STAGE_BLOCKS[family])}")
    return family, blocks


def _check_stride(stride: int) -> None:
    if stride not in (1, 2):
        raise ConfigError(f"stage_stride must be 1 or 2, got {stride}")


def resnet_stage(names: list[str], in_channels: int, stride: int = 2) -> tuple[nn.Module, int]:
    """ResNet conv5 blocks (``res5a``, ``res5b``, ``res5c``) with torchvision's ResNet init."""
    _check_stride(stride)
    out_channels = RES5_PLANES * Bottleneck.expansion
    blocks, channels = [], in_channels
    for name in names:
        block_stride = stride if name == "res5a" else 1
        downsample = None
        if block_stride != 1 or channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(channels, out_channels, 1, stride=block_stride, bias=False),
                nn.BatchNorm2d(out_channels))
        blocks.append(Bottleneck(channels, RES5_PLANES, block_stride, downsample))
        channels = out_channels
    stage = nn.Sequential(*blocks)
    for m in stage.modules():  # as torchvision.models.ResNet.__init__
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return stage, out_channels


def _inception_out(config: tuple[int, ...]) -> int:
    _, ch1x1, _, ch3x3, _, ch5x5, pool_proj = config
    return ch1x1 + ch3x3 + ch5x5 + pool_proj


def inception_stage(names: list[str], in_channels: int, stride: int = 2) -> tuple[nn.Module, int]:
    """GoogLeNet inception blocks (``inc4a`` .. ``inc5b``) with torchvision's GoogLeNet init."""
    _check_stride(stride)
    layers: list[tuple[str, nn.Module]] = []
    channels = in_channels
    for name in names:
        block = name[3:]
        if block == "5a" and stride == 2:
            layers.append(("maxpool4", nn.MaxPool2d(2, stride=2, ceil_mode=True)))
        config = (channels, *INCEPTION_CONFIGS[block][1:])
        layers.append((f"inception{block}", Inception(*config)))
        channels = _inception_out(config)
    stage = nn.Sequential(OrderedDict(layers))
    for m in stage.modules():  # as torchvision.models.GoogLeNet.__init__
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return stage, channels


def build_stage(names: list[str], in_channels: int, stride: int = 2) -> tuple[nn.Module, int]:
    """The default stage factory: torchvision blocks (EfficientNet-Lite0's for ``eff``) with random
    weights (no download)."""
    family, _ = _split_names(names)
    if family == "eff":
        return efficientnet_stage(names, in_channels, stride)
    return (resnet_stage if family == "res" else inception_stage)(names, in_channels, stride)


def stage_from_torchvision(model: nn.Module, names: list[str], stride: int = 2) -> tuple[nn.Module, int]:
    """Copy the named blocks, with their weights, out of a torchvision ResNet or GoogLeNet.

    The copy is independent of ``model``. ``stride=1`` removes res5a's stride (or maxpool4).
    """
    _check_stride(stride)
    family, blocks = _split_names(names)
    if family == "res":
        if not hasattr(model, "layer4"):
            raise ConfigError(f"{names} need a torchvision ResNet, got {type(model).__name__}")
        picked = [copy.deepcopy(model.layer4["abc".index(b[1])]) for b in blocks]
        if stride == 1 and blocks[0] == "5a":
            picked[0].conv2.stride = (1, 1)
            if picked[0].downsample is not None:
                picked[0].downsample[0].stride = (1, 1)
        return nn.Sequential(*picked), picked[-1].conv3.out_channels
    if not hasattr(model, "inception5b"):
        raise ConfigError(f"{names} need a torchvision GoogLeNet, got {type(model).__name__}")
    layers: list[tuple[str, nn.Module]] = []
    for b in blocks:
        if b == "5a" and stride == 2:
            layers.append(("maxpool4", copy.deepcopy(model.maxpool4)))
        layers.append((f"inception{b}", copy.deepcopy(getattr(model, f"inception{b}"))))
    last = layers[-1][1]
    out = sum(branch.conv.out_channels if hasattr(branch, "conv") else branch[-1].conv.out_channels
              for branch in (last.branch1, last.branch2, last.branch3, last.branch4))
    return nn.Sequential(OrderedDict(layers)), out

