"""Frozen BatchNorm folded into the conv before it, on the fly.

A :class:`~torchvision.ops.FrozenBatchNorm2d` after a conv is an affine map per output channel,
``y = conv(x) * s + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)``, so the pair is one
conv with weights ``W * s`` and bias ``b * s + beta - mean * s``. Computing that folded conv each
forward (a few thousand multiplies on the weights) replaces two passes over the feature map (the
BatchNorm's multiply and add), and it stays exact in training: gradients reach ``W`` (and the
conv's bias) through the fold, and the BatchNorm's buffers stay what they were.

:func:`fold_frozen_batchnorm` does it in place without changing a parameter, a buffer or a
state-dict key: the conv's class becomes :class:`FoldedConv2d` (it reads its BatchNorm at forward
time) and the BatchNorm's :class:`FoldedFrozenBatchNorm2d` (identity forward). Weights loaded
before or after the fold give the same network. Pairs are found by the torchvision layouts the
backbones use: ``convN`` then ``bnN`` (ResNet blocks and stem), ``conv`` then ``bn`` (GoogLeNet's
BasicConv2d), and a conv followed by a BatchNorm in an ``nn.Sequential`` (ResNet's downsample).
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d


def folded_scale_and_shift(bn: FrozenBatchNorm2d) -> tuple[Tensor, Tensor]:
    """The per-channel ``s`` and ``beta - mean * s`` of a frozen BatchNorm."""
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    return scale, bn.bias - bn.running_mean * scale


class FoldedConv2d(nn.Conv2d):
    """A conv whose output is that of ``bn(conv(x))`` for its frozen BatchNorm ``_folded_bn``."""

    _folded_bn: FrozenBatchNorm2d

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = folded_scale_and_shift(self._folded_bn)
        bias = shift if self.bias is None else self.bias * scale + shift
        return self._conv_forward(x, self.weight * scale.view(-1, 1, 1, 1), bias)


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A frozen BatchNorm already applied by the conv before it: passes its input through."""

    def forward(self, x: Tensor) -> Tensor:
        return x


def _pairs(module: nn.Module) -> list[tuple[nn.Conv2d, FrozenBatchNorm2d]]:
    """(conv, its BatchNorm) directly under ``module``, by the layouts the module docstring names."""
    children = dict(module.named_children())
    pairs = []
    names = list(children)
    for i, name in enumerate(names):
        conv = children[name]
        if type(conv) not in (nn.Conv2d, FoldedConv2d):
            continue
        if isinstance(module, nn.Sequential):
            bn = children[names[i + 1]] if i + 1 < len(names) else None
        else:
            bn = children.get(name.replace("conv", "bn")) if "conv" in name else None
        if isinstance(bn, FrozenBatchNorm2d):
            pairs.append((conv, bn))
    return pairs


def fold_frozen_batchnorm(module: nn.Module, enabled: bool = True) -> int:
    """Fold (``enabled``) or unfold every conv + FrozenBatchNorm2d pair under ``module``, in place;
    returns the number of pairs. Only exact ``nn.Conv2d`` layers are folded (a subclass with its
    own forward, as EfficientNet-Lite's ``Conv2dSame``, does its own folding)."""
    count = 0
    for parent in module.modules():
        for conv, bn in _pairs(parent):
            if enabled:
                conv.__class__, bn.__class__ = FoldedConv2d, FoldedFrozenBatchNorm2d
                object.__setattr__(conv, "_folded_bn", bn)  # not a submodule: no second state-dict entry
            else:
                conv.__class__, bn.__class__ = nn.Conv2d, FrozenBatchNorm2d
                conv.__dict__.pop("_folded_bn", None)
            count += 1
    return count


def is_folded(module: nn.Module) -> bool:
    """Whether any conv under ``module`` has a BatchNorm folded into it."""
    return any(isinstance(m, FoldedConv2d) for m in module.modules())
