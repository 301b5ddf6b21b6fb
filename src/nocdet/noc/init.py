"""Initialisation of a NoC head: random Gaussian (paper Sec. 3.2-3.3) or fine-tune (Sec. 3.4).

Random: zero biases and Gaussian weights whose std depends on the layer kind (docs/reference.md §4):
the (n+1)-way classifier 0.01 and the box regressor 0.001 (Fast R-CNN's fillers); hidden fc
layers 0.01 by default (Caffe's reference ImageNet nets draw their 4096-d fc6/fc7 with 0.005:
pass ``fc_std=0.005`` for that); conv layers MSRA/He normal, std sqrt(2 / (C_in k^2)), unless
``conv_std`` is given. Batch norm starts at scale 1, shift 0. Stages (res/inc blocks) keep the
initialisation or pre-trained weights their factory gave them.

Fine-tune: the two hidden fc layers are copied from a pre-trained classifier's fc6/fc7 and
each added conv layer starts as the identity mapping, so that at step 0 the NoC computes what
the pre-trained 3fc structure computes (for the non-negative inputs a ReLU trunk produces);
the classifier and box regressor are new and Gaussian.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from nocdet.errors import SpecError
from nocdet.noc.head import NoCHead

FcWeights = tuple[Tensor, Tensor] | nn.Linear  # (weight [out, in], bias [out]) or the layer itself


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(seed)


@torch.no_grad()
def _normal_(tensor: Tensor, std: float, generator: torch.Generator | None) -> None:
    # drawn on the CPU so that a seed gives the same weights on every device
    tensor.copy_(torch.randn(tuple(tensor.shape), generator=generator) * std)


def _first(module: nn.Module, kind: type) -> nn.Module:
    return next(m for m in module.modules() if isinstance(m, kind))


def _init_outputs(head: NoCHead, cls_std: float, bbox_std: float, g: torch.Generator | None) -> None:
    _normal_(head.cls_score.weight, cls_std, g)
    nn.init.zeros_(head.cls_score.bias)
    if head.bbox_pred is not None:
        _normal_(head.bbox_pred.weight, bbox_std, g)
        nn.init.zeros_(head.bbox_pred.bias)


def init_gaussian(head: NoCHead, fc_std: float = 0.01, conv_std: float | None = None,
                  cls_std: float = 0.01, bbox_std: float = 0.001, seed: int | None = None) -> NoCHead:
    """Random init of every NoC layer but stages (see module docstring); returns ``head``."""
    g = _generator(seed)
    for layer in head.layers:
        kind = layer.spec.kind
        if kind == "conv":
            conv = _first(layer.module, nn.Conv2d)
            fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
            _normal_(conv.weight, conv_std if conv_std is not None else math.sqrt(2.0 / fan_in), g)
            nn.init.zeros_(conv.bias)
        elif kind == "fc" and layer.module is not head.cls_score:
            linear = _first(layer.module, nn.Linear)
            _normal_(linear.weight, fc_std, g)
            nn.init.zeros_(linear.bias)
        elif kind == "bn":
            _first(layer.module, nn.BatchNorm2d).reset_parameters()
    _init_outputs(head, cls_std, bbox_std, g)
    return head


def _as_pair(name: str, fc: FcWeights) -> tuple[Tensor, Tensor]:
    if isinstance(fc, nn.Linear):
        if fc.bias is None:
            raise SpecError(f"{name} has no bias; fine-tune init copies weight and bias")
        return fc.weight, fc.bias
    weight, bias = fc
    if weight.dim() != 2 or bias.shape != weight.shape[:1]:
        raise SpecError(f"{name} must be (weight [out, in], bias [out]), got shapes "
                        f"{list(weight.shape)} and {list(bias.shape)}")
    return weight, bias


@torch.no_grad()
def init_finetune(head: NoCHead, fc6: FcWeights, fc7: FcWeights, cls_std: float = 0.01,
                  bbox_std: float = 0.001, seed: int | None = None) -> NoCHead:
    """Fine-tune init (Sec. 3.4): conv layers = identity, hidden fc = pre-trained fc6/fc7,
    classifier and box regressor Gaussian; returns ``head``. Stages are left as they are."""
    hidden_fc = [x for x in head.layers if x.spec.kind == "fc" and x.module is not head.cls_score]
    if len(hidden_fc) != 2:
        raise SpecError(f"fine-tune init copies fc6 and fc7 into the two hidden fc layers, but the "
                        f"NoC {head.spec} has {len(hidden_fc)}")
    if any(x.spec.kind == "bn" for x in head.layers):
        raise SpecError(f"the NoC {head.spec} has bn: a batch-normalised conv does not start as "
                        "the identity, so the fine-tune init would not equal the pre-trained 3fc")
    for layer in head.layers:
        if layer.spec.kind != "conv":
            continue
        conv = _first(layer.module, nn.Conv2d)
        if conv.in_channels != conv.out_channels:
            raise SpecError(f"{layer.spec.text} on a {conv.in_channels}-channel map cannot start as "
                            f"the identity; fine-tune init needs c{conv.in_channels}")
        k = conv.kernel_size[0]
        conv.weight.zero_()
        conv.weight[:, :, k // 2, k // 2] = torch.eye(conv.in_channels, dtype=conv.weight.dtype,
                                                         device=conv.weight.device)
        conv.bias.zero_()
    for layer, (name, fc) in zip(hidden_fc, (("fc6", fc6), ("fc7", fc7))):
        weight, bias = _as_pair(name, fc)
        linear = _first(layer.module, nn.Linear)
        if weight.shape != linear.weight.shape:
            raise SpecError(f"{name} has weight shape {list(weight.shape)} but {layer.spec.text} of "
                            f"the NoC {head.spec} needs {list(linear.weight.shape)} (input "
                            f"{'x'.join(map(str, head.input_shape))})")
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    _init_outputs(head, cls_std, bbox_std, _generator(seed))
    return head


def fc67_from_torchvision_vgg(model: nn.Module) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``((W6, b6), (W7, b7))`` copied from a torchvision VGG's ``classifier[0]`` and ``[3]``."""
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Sequential) or len(classifier) < 4 or not all(
            isinstance(classifier[i], nn.Linear) for i in (0, 3)):
        raise SpecError(f"expected a torchvision VGG (classifier[0] and [3] are fc6, fc7), "
                        f"got {type(model).__name__}")
    return tuple((classifier[i].weight.detach().clone(), classifier[i].bias.detach().clone())
                 for i in (0, 3))
