"""Backbones: map sizes and strides, stage sharing, a-trous geometry, freezing, option errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nocdet.errors import ConfigError, SpecError
from nocdet.features.backbones import WithinChannelLRN
from nocdet.features.registry import BACKBONE_NAMES, backbone_options, build_backbone


def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def caffe_pool_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return -(-(size + 2 * pad - kernel) // stride) + 1  # Caffe rounds pooling sizes up


def feature_map(backbone: nn.Module, height: int, width: int) -> torch.Tensor:
    backbone.eval()
    with torch.no_grad():
        return backbone(torch.randn(1, 3, height, width))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_within_channel_lrn_matches_caffe_formula():
    x = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3) * 10  # 10 .. 90
    alpha, beta = 0.01, 0.75
    y = WithinChannelLRN(size=3, alpha=alpha, beta=beta)(x)
    squares = (x[0, 0] ** 2)
    centre = 50 / (1 + alpha / 9 * squares.sum()) ** beta  # window = whole image
    corner = 10 / (1 + alpha / 9 * squares[:2, :2].sum()) ** beta  # zero padding still counts in the 9
    assert y[0, 0, 1, 1].item() == pytest.approx(centre.item(), rel=1e-5)
    assert y[0, 0, 0, 0].item() == pytest.approx(corner.item(), rel=1e-5)


def test_zf_layout_and_map_size():
    zf = build_backbone("zf")
    assert (zf.out_channels, zf.stride, zf.roi_size) == (256, 16, 6)
    widths = [zf.get_submodule(f"conv{i}").out_channels for i in range(1, 6)]
    assert widths == [96, 256, 384, 384, 256]
    assert zf.classifier[0].in_features == 256 * 6 * 6 and zf.classifier[3].out_features == 4096
    # py-faster-rcnn ZF: conv1 7/2 pad 3, pool 3/2 pad 1 (ceil), conv2 5/2 pad 2, pool 3/2 pad 1
    size = caffe_pool_out(conv_out(caffe_pool_out(conv_out(224, 7, 2, 3), 3, 2, 1), 5, 2, 2), 3, 2, 1)
    assert size == 15
    assert feature_map(zf, 224, 224).shape == (1, 256, size, size)
    assert zf.fc67() is None  # random weights: nothing to fine-tune from


@pytest.mark.parametrize("stride, expected", [(8, 29), (16, 15)])
def test_small_zf_stride_option(stride, expected):
    net = build_backbone("small-zf", stride=stride, width=0.5)
    assert net.stride == stride and net.roi_size == 6
    assert net.out_channels == 32  # 64 x 0.5
    assert feature_map(net, 224, 224).shape == (1, 32, expected, expected)
    assert net.classifier[0].in_features == 32 * 36


def test_vgg16_map_size():
    vgg = build_backbone("vgg16")
    assert (vgg.out_channels, vgg.stride, vgg.roi_size) == (512, 16, 7)
    assert feature_map(vgg, 64, 96).shape == (1, 512, 4, 6)
    assert isinstance(vgg.features[-1], nn.ReLU)  # conv5_3 + ReLU, no pool5


@pytest.mark.slow  # builds the 140M-parameter VGG-19
def test_vgg19_map_size_and_frozen_stages():
    vgg = build_backbone("vgg19", frozen_stages=2)
    assert feature_map(vgg, 64, 64).shape == (1, 512, 4, 4)
    convs = [m for m in vgg.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 16
    assert [c.weight.requires_grad for c in convs[:5]] == [False] * 4 + [True]  # conv1_1..conv2_2 fixed


@pytest.mark.parametrize("depth", [50, 101])
def test_resnet_c4_trunk(depth):
    net = build_backbone(f"resnet{depth}")
    assert (net.out_channels, net.stride, net.roi_size) == (1024, 16, 7)
    assert feature_map(net, 64, 96).shape == (1, 1024, 4, 6)
    assert net.stage_names() == ["res5a", "res5b", "res5c"]


def test_resnet_naive_res5():
    net = build_backbone("resnet50", upto="res5")
    assert (net.out_channels, net.stride) == (2048, 32)
    assert feature_map(net, 64, 64).shape == (1, 2048, 2, 2)
    with pytest.raises(SpecError, match="already part of the trunk"):
        net.stage(["res5a"], 1024)


def test_resnet_atrous_geometry():
    net = build_backbone("resnet50", atrous=True)
    assert (net.out_channels, net.stride) == (2048, 16)
    assert feature_map(net, 64, 64).shape == (1, 2048, 4, 4)
    first, second = net.layer4[0], net.layer4[1]
    assert first.conv2.stride == (1, 1) and first.downsample[0].stride == (1, 1)
    assert second.conv2.dilation == (2, 2) and net.layer4[2].conv2.dilation == (2, 2)


def test_atrous_resnet_is_the_strided_net_sampled_densely():
    """Same weights: the strided res5 output equals the a-trous output at every other position."""
    strided = build_backbone("resnet50", upto="res5").eval()
    atrous = build_backbone("resnet50", atrous=True).eval()
    atrous.load_state_dict(strided.state_dict())
    x = torch.randn(1, 3, 64, 64)  # res4 is 4 x 4: even, so the padding lines up too
    with torch.no_grad():
        coarse, dense = strided(x), atrous(x)
    torch.testing.assert_close(dense[..., ::2, ::2], coarse, rtol=1e-4, atol=1e-4)


def test_resnet_stage_shares_layer4_and_halves_the_roi_map():
    net = build_backbone("resnet50")
    stage, out_channels = net.stage(["res5a", "res5b", "res5c"], 1024)
    assert out_channels == 2048
    assert all(block is net.layer4[i] for i, block in enumerate(stage))
    assert stage[0].conv1.weight is net.layer4[0].conv1.weight
    stage.eval()
    with torch.no_grad():
        assert stage(torch.randn(2, 1024, 14, 14)).shape == (2, 2048, 7, 7)
    later, channels = net.stage(["res5b", "res5c"], 2048)
    assert channels == 2048 and later[0] is net.layer4[1]


@pytest.mark.parametrize("names, channels, message", [
    (["res5a", "res5c"], 1024, "consecutive"),
    (["res5b", "res5a"], 2048, "consecutive"),
    (["res5a"], 512, "takes 1024 channels"),
    (["res6a"], 1024, "no stage blocks"),
    ([], 1024, "no stage blocks"),
])
def test_resnet_stage_rejects_bad_requests(names, channels, message):
    net = build_backbone("resnet50")
    with pytest.raises(SpecError, match=message):
        net.stage(names, channels)


def test_vgg_and_zf_have_no_stage():
    with pytest.raises(SpecError, match="no blocks"):
        build_backbone("small-zf").stage(["res5a"], 64)


def test_googlenet_trunk_and_stage():
    net = build_backbone("googlenet")
    assert (net.out_channels, net.stride, net.roi_size) == (528, 16, 7)
    assert net.mean == (0.5, 0.5, 0.5) and net.std == (0.5, 0.5, 0.5)
    # conv1 7/2 pad 3, then max pools 3/2, 3/2, 3/2 rounding up (torchvision's ceil_mode): 64 -> 4
    size = caffe_pool_out(caffe_pool_out(caffe_pool_out(conv_out(64, 7, 2, 3), 3, 2, 0), 3, 2, 0), 3, 2, 0)
    assert size == 4
    assert feature_map(net, 64, 64).shape == (1, 528, size, size)
    stage, out_channels = net.stage(["inc4e", "inc5a", "inc5b"], 528)
    assert out_channels == 1024
    assert stage.inc4e is net.inception4e and stage.inc5b is net.inception5b
    assert stage.inc5a.inception5a is net.inception5a and isinstance(stage.inc5a.maxpool4, nn.MaxPool2d)
    stage.eval()
    with torch.no_grad():
        assert stage(torch.randn(1, 528, 14, 14)).shape == (1, 1024, 7, 7)  # maxpool4 halves it


def test_googlenet_naive_inc5b():
    net = build_backbone("googlenet", upto="inc5b")
    assert (net.out_channels, net.stride) == (1024, 32)
    assert feature_map(net, 64, 64).shape == (1, 1024, 2, 2)  # inc4d's 4 x 4 halved by maxpool4


def test_small_resnet_settings():
    net = build_backbone("small-resnet")
    assert (net.out_channels, net.stride, net.roi_size) == (128, 16, 7)
    assert feature_map(net, 224, 160).shape == (1, 128, 14, 10)
    stage, channels = net.stage(["res5a", "res5b"], 128)
    assert channels == 256 and stage[1] is net.layer4[1]
    stage.eval()
    with torch.no_grad():
        assert stage(torch.randn(1, 128, 14, 14)).shape == (1, 256, 7, 7)
    naive = build_backbone("small-resnet", upto="res5", res5_blocks=3, width=0.5)
    assert (naive.out_channels, naive.stride, len(naive.layer4)) == (128, 32, 3)
    assert feature_map(naive, 224, 224).shape == (1, 128, 7, 7)


def test_small_resnet_atrous_is_the_strided_net_sampled_densely():
    strided = build_backbone("small-resnet", upto="res5", res5_blocks=2).eval()
    atrous = build_backbone("small-resnet", atrous=True, res5_blocks=2).eval()
    assert atrous.stride == 16 and atrous.layer4[1].conv1.dilation == (2, 2)
    atrous.load_state_dict(strided.state_dict())
    x = torch.randn(1, 3, 128, 96)  # res4 8 x 6
    with torch.no_grad():
        coarse, dense = strided(x), atrous(x)
    assert dense.shape[-2:] == (8, 6)
    torch.testing.assert_close(dense[..., ::2, ::2], coarse, rtol=1e-4, atol=1e-5)


def bn_stats(modules):
    return [(m.running_mean.clone(), m.running_var.clone())
            for trunk in modules for m in trunk.modules() if isinstance(m, nn.BatchNorm2d)]


def test_freeze_fixes_trunk_parameters_and_bn_statistics():
    net = build_backbone("small-resnet")
    trunk = net.trunk_modules()
    before = bn_stats(trunk)
    assert before, "small-resnet has BatchNorm layers"
    net.train()
    net(torch.randn(2, 3, 64, 64))
    moved = bn_stats(trunk)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(before, moved))  # unfrozen: stats move

    net.freeze()
    assert net.frozen
    assert not any(p.requires_grad for m in trunk for p in m.parameters())
    assert all(p.requires_grad for p in net.layer4.parameters())  # the conv NoC's blocks stay trainable
    net.train()
    assert not any(m.training for t in trunk for m in t.modules())
    net(torch.randn(2, 3, 64, 64))
    for (mean0, var0), (mean1, var1) in zip(moved, bn_stats(trunk)):
        assert torch.equal(mean0, mean1) and torch.equal(var0, var1)


def test_resnet_frozen_stages_and_frozen_bn():
    net = build_backbone("resnet50", frozen_stages=2, frozen_bn=False)
    assert not net.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in net.layer1.parameters())
    assert all(p.requires_grad for p in net.layer2.parameters())
    net.train()
    assert not net.layer1.training and not net.bn1.training and net.layer2.training
    frozen_bn = build_backbone("resnet50")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen_bn.modules())
    assert all(p.requires_grad for p in frozen_bn.parameters())  # frozen_stages=0: all convs trainable


def test_normalize_uses_the_backbone_constants():
    net = build_backbone("small-zf")
    image = torch.full((3, 2, 2), 0.5)
    expected = torch.tensor([(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.5 - 0.406) / 0.225])
    torch.testing.assert_close(net.normalize(image)[:, 0, 0], expected)
    zf = build_backbone("zf")
    assert zf.normalize(torch.full((3, 1, 1), 122.7717 / 255))[0].item() == pytest.approx(0.0, abs=1e-4)
    assert zf.normalize(torch.full((3, 1, 1), 1.0))[0].item() == pytest.approx(255 - 122.7717, rel=1e-5)


def test_build_backbone_option_errors():
    with pytest.raises(ConfigError, match="unknown backbone 'alexnet'.*small-zf"):
        build_backbone("alexnet")
    with pytest.raises(ConfigError, match="no option.*'dilation'.*atrous="):
        build_backbone("resnet50", dilation=2)
    with pytest.raises(ConfigError, match="options: none"):
        build_backbone("zf", stride=8)
    with pytest.raises(ConfigError, match="atrous=True dilates res5"):
        build_backbone("resnet50", atrous=True, upto="res4")
    with pytest.raises(ConfigError, match="stride must be 8 or 16"):
        build_backbone("small-zf", stride=4)
    with pytest.raises(ConfigError, match="frozen_stages must be in 0..4"):
        build_backbone("small-resnet", frozen_stages=5)
    assert set(backbone_options("small-zf")) == {"width", "stride", "fc_dim", "norm"}
    assert set(BACKBONE_NAMES) == {"zf", "vgg16", "vgg19", "resnet50", "resnet101", "googlenet",
                                   "small-zf", "small-resnet", "efficientnet-lite0", "efficientnet-lite1",
                                   "efficientnet-lite2"}


@pytest.mark.parametrize("name, options", [("small-zf", {}), ("zf", {}), ("resnet50", {"upto": "res4"}),
                                           ("googlenet", {"upto": "inc4d"}), ("small-resnet", {}),
                                           ("efficientnet-lite0", {"upto": "eff6"})])
def test_backbones_run_channels_last_with_the_nchw_result(name, options):
    """build_backbone stores conv weights channels-last (the faster layout on the CPU, measured by
    benchmarks/bench_layout.py) and returns a plain contiguous map equal to the NCHW net's."""
    torch.manual_seed(0)
    backbone = build_backbone(name, "random", **options).eval()
    assert backbone.channels_last
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    image = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        fast = backbone(image)
        backbone.use_channels_last(False)
        assert not any(c.weight.is_contiguous(memory_format=torch.channels_last)
                       and not c.weight.is_contiguous() for c in convs)
        plain = backbone(image)
    assert fast.is_contiguous()
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5 * plain.abs().max().item())
