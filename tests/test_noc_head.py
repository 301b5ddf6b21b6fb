"""NoCHead: shapes, parameter counts by hand, maxout weight sharing, stage NoCs."""
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from nocdet.errors import SpecError
from nocdet.noc.head import NoCHead
from nocdet.noc.spec import parse_noc
from nocdet.noc.stages import stage_from_torchvision

TABLE3 = ["mo-c256-c256-f4096-f4096-f21", "c256-mo-c256-f4096-f4096-f21",
          "c256-c256-f4096-mo-f4096-f21", "c256-c256-f4096-f4096-f21-mo"]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def fc(i, o):
    return i * o + o


def conv(i, o, k=3):
    return i * o * k * k + o


def bottleneck(i, planes=512, downsample=False):
    out = 4 * planes
    p = i * planes + planes * planes * 9 + planes * out + 2 * (planes + planes + out)  # convs + BN
    return p + (i * out + 2 * out if downsample else 0)


RES5 = bottleneck(1024, downsample=True) + 2 * bottleneck(2048)


@pytest.mark.parametrize("text, c, m, box, expected", [
    ("f4096-f4096-f21", 256, 6, False, fc(9216, 4096) + fc(4096, 4096) + fc(4096, 21)),
    ("f4096-f4096-f21", 256, 6, True, fc(9216, 4096) + fc(4096, 4096) + fc(4096, 21) + fc(4096, 84)),
    ("c256-c256-f4096-f4096-f21", 256, 6, False,
     2 * conv(256, 256) + fc(9216, 4096) + fc(4096, 4096) + fc(4096, 21)),
    ("c512-f4096-f4096-f21", 512, 7, False, conv(512, 512) + fc(25088, 4096) + fc(4096, 4096) + fc(4096, 21)),
    ("fc81", 2048, 7, False, fc(2048 * 49, 81)),
    ("c64k1-bn-d0.5-f21", 32, 6, False, conv(32, 64, 1) + 2 * 64 + fc(64 * 36, 21)),
    ("res5a,5b,5c-f81", 1024, 14, False, RES5 + fc(2048, 81)),
])
def test_parameter_counts_by_hand(text, c, m, box, expected):
    with torch.device("meta"):
        head = NoCHead(text, c, m, box_regression=box)
    assert n_params(head) == expected


def test_res5_formula_matches_torchvision_resnet50_layer4():
    with torch.device("meta"):
        layer4 = torchvision.models.resnet50(weights=None).layer4
    assert n_params(layer4) == RES5


@pytest.mark.parametrize("text", TABLE3)
def test_maxout_has_the_parameters_of_its_twin(text):
    with torch.device("meta"):
        head = NoCHead(text, 256, 6)
        twin = NoCHead(parse_noc(text).without_maxout(), 256, 6)
    assert n_params(head) == n_params(twin)
    assert [(k, v.shape) for k, v in head.state_dict().items()] == \
           [(k, v.shape) for k, v in twin.state_dict().items()]


@pytest.mark.parametrize("text, box", [("f32-f16-f5", False), ("c8-mo-c8-f16-f5", True),
                                       ("fc5", True), ("c8-c8-f16-f5-mo", True)])
def test_output_shapes(text, box):
    torch.manual_seed(0)
    head = NoCHead(text, 4, 3, box_regression=box)
    x = torch.rand(7, 4, 3, 3)
    out = head((x, torch.rand(7, 4, 3, 3)) if head.is_maxout else x)
    d = 16 if "f16" in text else 36
    assert head.feature_dim == d and head.num_outputs == 5
    assert out.logits.shape == (7, 5) and out.features.shape == (7, d)
    assert (out.deltas is None) == (not box)
    if box:
        assert out.deltas.shape == (7, 20)
    assert head.output_shape == ((5,), (d,), (20,) if box else None)
    assert head.input_shape == (4, 3, 3) and head.num_pathways == (2 if head.is_maxout else 1)


def test_features_are_the_classifier_input_after_relu():
    torch.manual_seed(0)
    head = NoCHead("f32-f16-f5", 4, 3, box_regression=True)
    x = torch.randn(6, 4, 3, 3)
    out = head(x)
    l1, l2 = head.blocks[0][1], head.blocks[1][0]
    expected = F.relu(l2(F.relu(l1(x.flatten(1)))))
    torch.testing.assert_close(out.features, expected)
    torch.testing.assert_close(out.logits, expected @ head.cls_score.weight.T + head.cls_score.bias)
    torch.testing.assert_close(out.deltas, expected @ head.bbox_pred.weight.T + head.bbox_pred.bias)


def test_layer_table():
    head = NoCHead("c8-mo-c8-f16-f5", 4, 3)
    rows = [(x.spec.text, x.output_shape, x.pathways, x.module is None) for x in head.layers]
    assert rows == [("c8", (8, 3, 3), 2, False), ("mo", (8, 3, 3), 1, True), ("c8", (8, 3, 3), 1, False),
                    ("f16", (16,), 1, False), ("f5", (5,), 1, False)]
    assert head.layers[-1].module is head.cls_score


# --- maxout: shared weights, one batched run -------------------------------------------------

def reference_c4_mo_f3(head, x1, x2):
    """c4-mo-f3 written out: the same conv weights on both pathways, element-wise max, fc."""
    w, b = head.blocks[0][0].weight, head.blocks[0][0].bias
    y1 = F.relu(F.conv2d(x1, w, b, padding=1))
    y2 = F.relu(F.conv2d(x2, w, b, padding=1))
    return F.linear(torch.maximum(y1, y2).flatten(1), head.cls_score.weight, head.cls_score.bias)


def test_maxout_matches_the_definition_in_value_and_gradient():
    torch.manual_seed(0)
    head = NoCHead("c4-mo-f3", 2, 3)
    assert len([p for p in head.parameters() if p.dim() == 4]) == 1  # one conv weight tensor
    x1, x2 = torch.randn(5, 2, 3, 3), torch.randn(5, 2, 3, 3)
    out = head((x1, x2)).logits
    ref = reference_c4_mo_f3(head, x1, x2)
    torch.testing.assert_close(out, ref)
    conv_w = head.blocks[0][0].weight
    (g_head,) = torch.autograd.grad(out.square().sum(), conv_w)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), conv_w)
    torch.testing.assert_close(g_head, g_ref)


def test_gradient_reaches_the_shared_weights_from_the_winning_pathway_only_or_both():
    torch.manual_seed(0)
    head = NoCHead("c4-mo-f3", 2, 3)
    twin = NoCHead("c4-f3", 2, 3)
    with torch.no_grad():
        head.blocks[0][0].weight.abs_()
        head.blocks[0][0].bias.zero_()
    twin.load_state_dict(head.state_dict())
    x1 = torch.rand(4, 2, 3, 3) + 0.1
    conv_w = head.blocks[0][0].weight

    # pathway 2 is negative: positive weights give it ReLU(.) = 0, pathway 1 wins everywhere
    (g_one,) = torch.autograd.grad(head((x1, -x1)).logits.sum(), conv_w)
    (g_twin,) = torch.autograd.grad(twin(x1).logits.sum(), twin.blocks[0][0].weight)
    torch.testing.assert_close(g_one, g_twin)

    # both pathways win somewhere: the gradient differs from the pathway-1-only one
    x2 = torch.rand(4, 2, 3, 3) + 0.1
    (g_both,) = torch.autograd.grad(head((x1, x2)).logits.sum(), conv_w)
    assert not torch.allclose(g_both, g_one)
    (g_ref,) = torch.autograd.grad(reference_c4_mo_f3(head, x1, x2).sum(), conv_w)
    torch.testing.assert_close(g_both, g_ref)


def test_shared_part_runs_once_on_both_pathways():
    head = NoCHead("c8-c8-mo-f5", 4, 3)
    seen = []
    for block in head.blocks:
        block.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    head((torch.rand(3, 4, 3, 3), torch.rand(3, 4, 3, 3)))
    assert seen == [6, 6]


@pytest.mark.parametrize("text", TABLE3)
def test_maxout_placements_against_the_twin(text):
    """Layers before mo run on each pathway separately in the twin, then max, then the rest."""
    torch.manual_seed(0)
    small = text.replace("256", "6").replace("4096", "16").replace("f21", "f5")
    head = NoCHead(small, 4, 3, box_regression=True)
    twin = NoCHead(parse_noc(small).without_maxout(), 4, 3, box_regression=True)
    twin.load_state_dict(head.state_dict())
    x1, x2 = torch.randn(5, 4, 3, 3), torch.randn(5, 4, 3, 3)
    out = head((x1, x2))
    k = sum(1 for x in parse_noc(small).layers[:parse_noc(small).maxout_index] if x.kind != "maxout")
    if k == len(twin.blocks) + 1:  # mo after the classifier
        o1, o2 = twin(x1), twin(x2)
        torch.testing.assert_close(out.logits, torch.maximum(o1.logits, o2.logits))
        torch.testing.assert_close(out.features, torch.maximum(o1.features, o2.features))
        win2 = (o2.logits > o1.logits).repeat_interleave(4, dim=1)
        torch.testing.assert_close(out.deltas, torch.where(win2, o2.deltas, o1.deltas))
        return
    h1, h2 = x1, x2
    for block in twin.blocks[:k]:
        h1, h2 = block(h1), block(h2)
    h = torch.maximum(h1, h2)
    for block in twin.blocks[k:]:
        h = block(h)
    features = h.flatten(1)
    torch.testing.assert_close(out.features, features)
    torch.testing.assert_close(out.logits, twin.cls_score(features))
    torch.testing.assert_close(out.deltas, twin.bbox_pred(features))


def test_maxout_first_is_the_twin_on_the_max_of_the_inputs():
    torch.manual_seed(0)
    head = NoCHead("mo-c6-f5", 4, 3)
    twin = NoCHead("c6-f5", 4, 3)
    twin.load_state_dict(head.state_dict())
    x1, x2 = torch.randn(5, 4, 3, 3), torch.randn(5, 4, 3, 3)
    torch.testing.assert_close(head([x1, x2]).logits, twin(torch.maximum(x1, x2)).logits)


def test_input_errors():
    plain, maxout = NoCHead("f8-f5", 4, 3), NoCHead("mo-f8-f5", 4, 3)
    x = torch.rand(2, 4, 3, 3)
    with pytest.raises(ValueError, match="has no mo and takes one"):
        plain((x, x))
    with pytest.raises(ValueError, match="takes two pooled maps"):
        maxout(x)
    with pytest.raises(ValueError, match="exactly 2 tensors"):
        maxout((x, x, x))
    with pytest.raises(ValueError, match=r"takes \[R, 4x3x3\] inputs, got \[2, 4, 6, 6\]"):
        plain(torch.rand(2, 4, 6, 6))
    with pytest.raises(ValueError, match="same regions"):
        maxout((x, torch.rand(3, 4, 3, 3)))


def test_classes():
    assert NoCHead("f8-fn+1", 4, 3, num_classes=20).num_outputs == 21
    assert str(NoCHead("fc8, fcn+1", 4, 3, num_classes=80).spec) == "fc8, fc81"
    with pytest.raises(SpecError, match="give the number of classes"):
        NoCHead("f8-fn+1", 4, 3)
    with pytest.raises(SpecError, match="write f11 or fn\\+1"):
        NoCHead("f8-f21", 4, 3, num_classes=10)


# --- stage NoCs ------------------------------------------------------------------------------

def _stage_map_shape(head, x):
    shapes = []
    head.blocks[0][0].register_forward_hook(lambda mod, inp, out: shapes.append(tuple(out.shape)))
    out = head(x)
    return shapes[0], out


@pytest.mark.parametrize("stride, side", [(2, 7), (1, 14)])
def test_res5_stage(stride, side):
    torch.manual_seed(0)
    head = NoCHead("res5a,5b,5c-f81", 1024, 14, stage_stride=stride).eval()
    with torch.no_grad():
        shape, out = _stage_map_shape(head, torch.rand(2, 1024, 14, 14))
    assert shape == (2, 2048, side, side)
    assert out.features.shape == (2, 2048) and out.logits.shape == (2, 81)
    assert isinstance(head.blocks[0][0][0], torchvision.models.resnet.Bottleneck)


def test_inception_stage():
    torch.manual_seed(0)
    head = NoCHead("inc4e,5a,5b, fc81", 528, 14).eval()
    with torch.no_grad():
        shape, out = _stage_map_shape(head, torch.rand(2, 528, 14, 14))
    assert shape == (2, 1024, 7, 7)  # maxpool4 halves 14 -> 7
    assert out.features.shape == (2, 1024)
    assert [name for name, _ in head.blocks[0][0].named_children()] == \
           ["inception4e", "maxpool4", "inception5a", "inception5b"]


def test_custom_stage_factory_and_global_average_pooling():
    calls = []

    def factory(names, in_channels):
        calls.append((names, in_channels))
        return nn.Conv2d(in_channels, 6, 1, bias=False), 6

    head = NoCHead("res5a,5b,5c-f3", 4, 5, stage_factory=factory)
    assert calls == [(["res5a", "res5b", "res5c"], 4)]
    x = torch.rand(2, 4, 5, 5)
    expected = F.conv2d(x, head.blocks[0][0].weight).mean(dim=(2, 3))
    torch.testing.assert_close(head(x).features, expected)


def test_stage_from_torchvision_copies_pretrained_blocks():
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None).eval()
    head = NoCHead("res5a,5b,5c-f81", 1024, 14,
                   stage_factory=lambda names, c: stage_from_torchvision(resnet, names)).eval()
    x = torch.rand(1, 1024, 14, 14)
    with torch.no_grad():
        expected = resnet.layer4(x).mean(dim=(2, 3))
        torch.testing.assert_close(head(x).features, expected)
    assert head.blocks[0][0][0].conv1.weight is not resnet.layer4[0].conv1.weight  # a copy


@pytest.mark.parametrize("spec", ["c32-c32-f64-f5", "c32-mo-c32-f64-f5", "f64-f5"])
def test_channels_last_noc_gives_the_nchw_outputs_and_gradients(spec):
    """NoCHead.use_channels_last only changes the conv layers' memory layout: logits and gradients
    equal the default NCHW head's to float rounding."""
    torch.manual_seed(0)
    plain = NoCHead(spec, 16, 5)
    fast = copy.deepcopy(plain).use_channels_last()
    xs = [torch.randn(7, 16, 5, 5) for _ in range(plain.num_pathways)]
    inputs = xs if plain.is_maxout else xs[0]
    out_plain, out_fast = plain(inputs).logits, fast(inputs).logits
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-5, atol=1e-6)
    out_plain.square().sum().backward()
    out_fast.square().sum().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
