"""The backbone registry: every backbone by name, with what it can do.

One table says, for each name, how to build it and its capabilities: the trunk variants of the
end-to-end setting (paper Table 8: ``c4``, ``naive``, ``atrous``) as the options that make them,
and whether it has fc6/fc7 for a fine-tuned NoC (paper Sec. 3.4). The backbone classes live in
``backbones.py`` (ZF, VGG, ResNet, GoogLeNet), ``small_nets.py`` and ``efficientnet.py``; this
module imports them all, and none of them imports it.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from nocdet.errors import ConfigError
from nocdet.features import efficientnet, small_nets
from nocdet.features.backbones import Backbone, GoogLeNetBackbone, ResNetBackbone, VGGBackbone, ZFNet

#: the options of each end-to-end trunk variant, for backbones that have all three
_RESNET_VARIANTS = {"c4": {"upto": "res4"}, "naive": {"upto": "res5"}, "atrous": {"atrous": True}}
_GOOGLENET_VARIANTS = {"c4": {"upto": "inc4d"}, "naive": {"upto": "inc5b"}, "atrous": {"upto": "inc5b"}}
_EFFICIENTNET_VARIANTS = {"c4": {"upto": "eff6"}, "naive": {"upto": "eff9"}, "atrous": {"atrous": True}}


@dataclass(frozen=True)
class BackboneEntry:
    """How to build one backbone, and what it offers."""

    build: Callable[..., Backbone]
    #: trunk variant -> the options that make it; a backbone without variants has only "naive" ({})
    variants: dict[str, dict[str, object]] = field(default_factory=lambda: {"naive": {}})
    #: fc6/fc7 layers a NoC can start from (``noc.init: finetune``)
    fc67: bool = False
    #: what the net has instead of fc6/fc7, said when ``finetune`` is refused ("" : nothing to add)
    no_fc67: str = ""


def _zf() -> ZFNet:
    """ZF itself: a fixed net, no options (ZFNet's arguments are for ZF-like nets such as small-zf)."""
    return ZFNet()


_LITE_HEAD = "EfficientNet-Lite ends in global average pooling and one 1000-way fc"
REGISTRY: dict[str, BackboneEntry] = {
    "zf": BackboneEntry(_zf, fc67=True),
    "vgg16": BackboneEntry(partial(VGGBackbone, 16), fc67=True),
    "vgg19": BackboneEntry(partial(VGGBackbone, 19), fc67=True),
    "resnet50": BackboneEntry(partial(ResNetBackbone, 50), _RESNET_VARIANTS),
    "resnet101": BackboneEntry(partial(ResNetBackbone, 101), _RESNET_VARIANTS),
    "googlenet": BackboneEntry(GoogLeNetBackbone, _GOOGLENET_VARIANTS),
    "small-zf": BackboneEntry(small_nets.small_zf, fc67=True),
    "small-resnet": BackboneEntry(small_nets.SmallResNet, _RESNET_VARIANTS),
    **{name: BackboneEntry(partial(efficientnet.EfficientNetLiteBackbone, name), _EFFICIENTNET_VARIANTS,
                           no_fc67=_LITE_HEAD) for name in efficientnet.VARIANTS},
}
BACKBONE_NAMES = tuple(REGISTRY)
FC67_BACKBONES = tuple(name for name, entry in REGISTRY.items() if entry.fc67)


def entry(name: str) -> BackboneEntry:
    """The registry entry of ``name``; an unknown name is a ConfigError listing the known ones."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(BACKBONE_NAMES)}")
    return REGISTRY[name]


def check_finetune_init(name: str, key: str = "noc.init") -> None:
    """Refuse ``finetune`` for a backbone that has no fc6/fc7 layers, saying what it has instead."""
    if entry(name).fc67:
        return
    what = entry(name).no_fc67 or f"backbone {name!r} has no fc6/fc7 layers"
    raise ConfigError(f"{key} is 'finetune', but {what}: there are no pre-trained fc6/fc7 to start the NoC "
                      f"from; use 'gaussian' (finetune works with {', '.join(FC67_BACKBONES)})")


def variant_options(name: str, variant: str) -> dict[str, object]:
    """The backbone options that make trunk ``variant`` of ``name`` (paper Table 8)."""
    variants = entry(name).variants
    if variant not in variants:
        raise ConfigError(f"backbone {name!r} has no {variant!r} variant; it has {', '.join(variants)}")
    return dict(variants[variant])


def backbone_options(name: str) -> dict[str, object]:
    """The options ``build_backbone(name, **options)`` accepts, with their defaults."""
    parameters = inspect.signature(entry(name).build).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def build_backbone(name: str, weights: str | Path | None = None, **options: object) -> Backbone:
    """Build backbone ``name`` with ``options`` and load ``weights`` (None/"random", "imagenet", a path).

    Names: zf, vgg16, vgg19, resnet50, resnet101, googlenet, small-zf, small-resnet,
    efficientnet-lite0/1/2 (:mod:`nocdet.features.efficientnet`); see each class for its options
    (:func:`backbone_options` lists them). The backbone runs channels-last
    (:meth:`~nocdet.features.backbones.Backbone.use_channels_last`) with its frozen BatchNorms folded
    into the convs (:meth:`~nocdet.features.backbones.Backbone.use_folded_batchnorm`).
    """
    accepted = backbone_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"backbone {name!r} has no option(s) {unknown}; its options: "
                          + (", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "none"))
    return entry(name).build(**options).load_weights(weights).use_channels_last().use_folded_batchnorm()
