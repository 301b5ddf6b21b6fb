"""Frozen BatchNorm folded into the conv before it (nocdet.features.bn_folding): the same network,
outputs and gradients, the same state dict, and the pairs found where torchvision's layouts have them."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from nocdet.features.bn_folding import FoldedConv2d, fold_frozen_batchnorm, is_folded
from nocdet.features.registry import build_backbone


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial statistics and affine values in every frozen BatchNorm (fresh ones are identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.weight.numel()
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def test_a_folded_pair_computes_the_batchnorm_formula_by_hand():
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=True)
    bn = FrozenBatchNorm2d(3, eps=1e-3)
    _randomise_bn(bn)
    pair = nn.Sequential(conv, bn)
    x = torch.randn(1, 2, 5, 6)
    # y = (W*x + b - mean) * gamma / sqrt(var + eps) + beta, written out
    z = F.conv2d(x, conv.weight, conv.bias, padding=1)
    expected = ((z - bn.running_mean.view(1, -1, 1, 1)) * bn.weight.view(1, -1, 1, 1)
                / (bn.running_var.view(1, -1, 1, 1) + 1e-3).sqrt() + bn.bias.view(1, -1, 1, 1))
    assert fold_frozen_batchnorm(pair) == 1
    assert isinstance(pair[0], FoldedConv2d) and is_folded(pair)
    torch.testing.assert_close(pair(x), expected, rtol=1e-5, atol=1e-6)
    assert bn(z) is z  # the BatchNorm itself now passes its input through


@pytest.mark.parametrize("name, options, pairs", [
    # ResNet-50: stem 1 + (3 + 4 + 6 + 3) blocks x 3 convs + 4 projection shortcuts
    ("resnet50", {"upto": "res4"}, 1 + 16 * 3 + 4),
    ("resnet50", {"upto": "res5", "atrous": True}, 1 + 16 * 3 + 4),
    # GoogLeNet: conv1-3 + 9 inception modules x 6 BasicConv2d (its 5x5 branch is a 3x3 in torchvision)
    ("googlenet", {}, 3 + 9 * 6),
    # small-resnet with frozen BatchNorm: stem 1 + (1 + 1 + 1 + 2) BasicBlocks x 2 + 3 projections
    ("small-resnet", {"frozen_bn": True}, 1 + 5 * 2 + 3),
])
def test_backbones_fold_every_pair_and_keep_outputs_gradients_and_state(name, options, pairs):
    torch.manual_seed(0)
    folded = build_backbone(name, None, **options)
    assert folded.folded_batchnorm
    _randomise_bn(folded)
    plain = copy.deepcopy(folded).use_folded_batchnorm(False)
    assert not is_folded(plain) and fold_frozen_batchnorm(copy.deepcopy(plain)) == pairs
    assert sum(isinstance(m, FoldedConv2d) for m in folded.modules()) == pairs
    assert {k: v.shape for k, v in folded.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}

    x = folded.normalize(torch.rand(1, 3, 96, 128))
    folded.train(), plain.train()
    with torch.no_grad():
        torch.testing.assert_close(folded(x), plain(x), rtol=1e-4, atol=1e-4 * float(plain(x).abs().max()))
    # gradients in float64: float32 rounding can flip a max pool's choice and reroute a gradient
    folded.double(), plain.double()
    for model in (folded, plain):
        out = model(x.double())
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
    grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    assert len(grads) >= pairs // 2, "the trainable convs were not reached"
    for n, p in folded.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-9, atol=1e-9 * float(grads[n].abs().max()))


def test_a_copy_folds_with_its_own_batchnorm_and_weights_load_either_way():
    torch.manual_seed(0)
    a = build_backbone("small-resnet", None, frozen_bn=True)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.bn1.weight.mul_(2.0)  # only the copy changes
    x = torch.rand(1, 3, 64, 64)
    assert not torch.allclose(a(x), b(x))
    assert b.conv1._folded_bn is b.bn1 and a.conv1._folded_bn is a.bn1
    plain = copy.deepcopy(b).use_folded_batchnorm(False)
    a.load_state_dict(plain.state_dict())  # an unfolded network's weights into a folded one
    torch.testing.assert_close(a(x), plain(x), rtol=1e-5, atol=1e-5)


def test_trainable_batchnorm_is_left_alone():
    net = build_backbone("small-resnet", None)  # frozen_bn=False: BatchNorm2d learns its statistics
    assert fold_frozen_batchnorm(net) == 0 and not is_folded(net)
