"""NoC initialisation: Gaussian stds per layer kind, and the fine-tune init of Sec. 3.4 that
starts a conv NoC as exactly the pre-trained 3fc structure."""
import math

import pytest
import torch
import torchvision
from torch import nn

from nocdet.errors import SpecError
from nocdet.noc.head import NoCHead
from nocdet.noc.init import fc67_from_torchvision_vgg, init_finetune, init_gaussian


def test_gaussian_stds_and_zero_biases():
    head = init_gaussian(NoCHead("c64-f512-f512-f21", 64, 6, box_regression=True), seed=0)
    conv, fc6, fc7 = head.blocks[0][0], head.blocks[1][1], head.blocks[2][0]
    he = math.sqrt(2.0 / (64 * 9))  # MSRA: sqrt(2 / fan_in)
    for weight, std in [(conv.weight, he), (fc6.weight, 0.01), (fc7.weight, 0.01),
                        (head.cls_score.weight, 0.01), (head.bbox_pred.weight, 0.001)]:
        assert weight.mean().abs().item() < 0.1 * std
        assert weight.std().item() == pytest.approx(std, rel=0.05)
    for bias in (conv.bias, fc6.bias, fc7.bias, head.cls_score.bias, head.bbox_pred.bias):
        assert torch.count_nonzero(bias) == 0


def test_gaussian_options():
    head = init_gaussian(NoCHead("c64-f512-f21", 64, 6), fc_std=0.005, conv_std=0.02, cls_std=0.1, seed=1)
    assert head.blocks[0][0].weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert head.blocks[1][1].weight.std().item() == pytest.approx(0.005, rel=0.05)
    assert head.cls_score.weight.std().item() == pytest.approx(0.1, rel=0.1)


def test_gaussian_seed_reproducible():
    a = init_gaussian(NoCHead("c8-f16-f5", 4, 3), seed=3).state_dict()
    b = init_gaussian(NoCHead("c8-f16-f5", 4, 3), seed=3).state_dict()
    c = init_gaussian(NoCHead("c8-f16-f5", 4, 3), seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["cls_score.weight"], c["cls_score.weight"])


def test_gaussian_resets_batch_norm_and_leaves_stages_alone():
    def factory(names, in_channels):
        return nn.Conv2d(in_channels, 6, 1), 6

    head = NoCHead("res5a-f5", 4, 3, stage_factory=factory)
    before = head.blocks[0][0].weight.clone()
    init_gaussian(head, seed=0)
    assert torch.equal(head.blocks[0][0].weight, before)
    bn_head = NoCHead("c8-bn-f5", 4, 3)
    with torch.no_grad():
        bn_head.blocks[1][0].weight.fill_(3.0)
    init_gaussian(bn_head)
    assert torch.equal(bn_head.blocks[1][0].weight, torch.ones(8))


def _pretrained_fc(seed, d_in, d_hidden):
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(d_hidden, d_in, generator=g) * 0.1, torch.randn(d_hidden, generator=g) * 0.1),
            (torch.randn(d_hidden, d_hidden, generator=g) * 0.1, torch.randn(d_hidden, generator=g) * 0.1))


def _three_fc(fc6, fc7, classifier, box=False):
    """The pre-trained 3fc NoC on 8x3x3, written out with the given fc6/fc7 and classifier."""
    head = NoCHead("f32-f32-f5", 8, 3, box_regression=box)
    init_finetune(head, fc6, fc7, seed=0)
    head.cls_score.load_state_dict(classifier.state_dict())
    return head


@pytest.mark.parametrize("text", ["c8-c8-f32-f32-f5", "c8k1-c8-f32-f32-f5", "c8-d0.5-f32-f32-f5"])
def test_finetune_init_equals_the_pretrained_3fc(text):
    fc6, fc7 = _pretrained_fc(0, 72, 32)
    head = init_finetune(NoCHead(text, 8, 3, box_regression=True), fc6, fc7, seed=0).eval()
    three = _three_fc(fc6, fc7, head.cls_score).eval()
    x = torch.rand(10, 8, 3, 3)  # non-negative: the trunk's last op is a ReLU
    with torch.no_grad():
        got, want = head(x), three(x)
    torch.testing.assert_close(got.features, want.features)
    torch.testing.assert_close(got.logits, want.logits)
    torch.testing.assert_close(head.blocks[-1][0].weight, fc7[0])


@pytest.mark.parametrize("text", ["c8-mo-c8-f32-f32-f5", "mo-c8-c8-f32-f32-f5", "c8-c8-f32-f32-f5-mo"])
def test_finetune_init_of_a_maxout_noc(text):
    fc6, fc7 = _pretrained_fc(1, 72, 32)
    head = init_finetune(NoCHead(text, 8, 3), fc6, fc7)
    three = _three_fc(fc6, fc7, head.cls_score)
    x = torch.rand(10, 8, 3, 3)
    with torch.no_grad():
        want = three(x)
        same = head((x, x))  # both pathways get the same input
        torch.testing.assert_close(same.logits, want.logits)
        torch.testing.assert_close(same.features, want.features)
        if text.startswith(("c8-mo", "mo")):  # max of identity maps = max of the inputs
            smaller = x * torch.rand_like(x)
            torch.testing.assert_close(head((smaller, x)).logits, want.logits)


def test_finetune_init_sets_the_classifier_and_box_regressor_gaussian():
    fc6, fc7 = _pretrained_fc(0, 72, 32)
    head = init_finetune(NoCHead("c8-f32-f32-f50", 8, 3, box_regression=True), fc6, fc7, seed=0)
    assert head.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.15)
    assert head.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.15)
    assert torch.count_nonzero(head.cls_score.bias) == 0


def test_finetune_accepts_linear_layers():
    fc6, fc7 = nn.Linear(72, 32), nn.Linear(32, 32)
    head = init_finetune(NoCHead("f32-f32-f5", 8, 3), fc6, fc7)
    assert torch.equal(head.blocks[0][1].weight, fc6.weight)
    assert torch.equal(head.blocks[1][0].bias, fc7.bias)


@pytest.mark.parametrize("text, c, message", [
    ("c16-f32-f32-f5", 8, "c16 on a 8-channel map cannot start as the identity; fine-tune init needs c8"),
    ("f32-f32-f32-f5", 8, "two hidden fc layers, but the NoC f32-f32-f32-f5 has 3"),
    ("c8-bn-f32-f32-f5", 8, "has bn"),
    ("f32-f32-f5", 4, r"fc6 has weight shape \[32, 72\] but f32 of the NoC f32-f32-f5 needs \[32, 36\]"),
])
def test_finetune_errors(text, c, message):
    fc6, fc7 = _pretrained_fc(0, 72, 32)
    with pytest.raises(SpecError, match=message):
        init_finetune(NoCHead(text, c, 3), fc6, fc7)


def test_fc67_from_torchvision_vgg16_fits_the_paper_vgg_noc():
    with torch.device("meta"):  # shapes only: no 500 MB of weights
        vgg = torchvision.models.vgg16(weights=None)
        (w6, b6), (w7, b7) = fc67_from_torchvision_vgg(vgg)
        head = NoCHead("c512-c512-f4096-f4096-f21", 512, 7)
        init_finetune(head, (w6, b6), (w7, b7))
    assert w6.shape == (4096, 25088) and w7.shape == (4096, 4096)


def test_fc67_values_come_from_classifier_0_and_3():
    class TinyVGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Dropout(), nn.Linear(6, 6),
                                            nn.ReLU(), nn.Dropout(), nn.Linear(6, 10))

    model = TinyVGG()
    (w6, b6), (w7, b7) = fc67_from_torchvision_vgg(model)
    assert torch.equal(w6, model.classifier[0].weight) and torch.equal(b7, model.classifier[3].bias)
    assert w6.data_ptr() != model.classifier[0].weight.data_ptr()  # copies
    with pytest.raises(SpecError, match="expected a torchvision VGG"):
        fc67_from_torchvision_vgg(nn.Linear(2, 2))
