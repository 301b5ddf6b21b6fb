"""Weights: the local torchvision hub cache (never a download), local checkpoints, clear errors."""
from __future__ import annotations

import pytest
import torch
import torchvision

from nocdet.errors import ConfigError, DataError
from nocdet.features.backbones import build_backbone


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub dir; files go to its checkpoints/ folder as torchvision would put them."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    return tmp_path / "checkpoints"


def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("nocdet must never download weights")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_missing_imagenet_file_says_which_file_and_how_to_get_it(hub, monkeypatch):
    no_download(monkeypatch)
    with pytest.raises(DataError) as info:
        build_backbone("resnet50", "imagenet")
    message = str(info.value)
    assert str(hub / "resnet50-11ad3fa6.pth") in message  # torchvision's file name for IMAGENET1K_V2
    assert "torchvision.models.resnet50(weights='IMAGENET1K_V2')" in message
    assert "never downloads" in message


def test_imagenet_weights_load_from_the_hub_cache(hub, monkeypatch):
    no_download(monkeypatch)
    torch.manual_seed(1)
    reference = torchvision.models.resnet50(weights=None).state_dict()  # the true file format
    torch.save(reference, hub / "resnet50-0676ba61.pth")  # IMAGENET1K_V1's file name
    with pytest.raises(DataError, match="resnet50-11ad3fa6.pth"):
        build_backbone("resnet50", "imagenet")  # the default (V2) is still absent
    net = build_backbone("resnet50", "imagenet:IMAGENET1K_V1")  # FrozenBatchNorm2d by default
    assert torch.equal(net.layer3[2].conv2.weight, reference["layer3.2.conv2.weight"])
    assert torch.equal(net.layer4[0].bn1.running_var, reference["layer4.0.bn1.running_var"])
    assert net.weights_source == "imagenet:IMAGENET1K_V1"
    assert net.fc67() is None  # ResNet has no fc6/fc7
    trainable_bn = build_backbone("resnet50", "imagenet:IMAGENET1K_V1", frozen_bn=False)
    assert torch.equal(trainable_bn.bn1.running_mean, reference["bn1.running_mean"])


def test_unknown_weights_variant(hub):
    with pytest.raises(ConfigError, match="imagenet:IMAGENET1K_V1, imagenet:IMAGENET1K_V2"):
        build_backbone("resnet50", "imagenet:V9")


def test_googlenet_hub_file_with_aux_heads(hub):
    torch.manual_seed(2)
    reference = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True).state_dict()
    assert any(k.startswith("aux1.") for k in reference)
    torch.save(reference, hub / "googlenet-1378be20.pth")
    net = build_backbone("googlenet", "imagenet")
    assert torch.equal(net.inception4d.branch2[1].conv.weight, reference["inception4d.branch2.1.conv.weight"])
    assert torch.equal(net.inception5b.branch1.bn.running_mean, reference["inception5b.branch1.bn.running_mean"])
    assert net.mean == (0.5, 0.5, 0.5)  # torchvision's transform_input, expressed as normalisation


def test_imagenet_for_nets_torchvision_does_not_have(hub):
    with pytest.raises(ConfigError, match="ZF net weights are not in torchvision"):
        build_backbone("zf", "imagenet")
    with pytest.raises(ConfigError, match="no ImageNet weights for 'small-resnet'"):
        build_backbone("small-resnet", "imagenet")


def small_zf_state(seed: int, **options) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_backbone("small-zf", **options).state_dict()


@pytest.mark.parametrize("layout", ["plain", "backbone", "model", "ddp"])
def test_local_checkpoint_layouts(tmp_path, layout):
    state = small_zf_state(3)
    content = {
        "plain": state,
        "backbone": {"backbone": state, "iteration": 7, "optimizer": {"lr": 0.1}},
        "model": {"model": {**{f"backbone.{k}": v for k, v in state.items()}, "head.fc.weight": torch.ones(2)}},
        "ddp": {f"module.{k}": v for k, v in state.items()},
    }[layout]
    path = tmp_path / "ckpt.pt"
    torch.save(content, path)
    net = build_backbone("small-zf", path)
    assert torch.equal(net.conv4.weight, state["conv4.weight"])
    assert torch.equal(net.bn2.running_var, state["bn2.running_var"])
    assert net.weights_source == str(path)
    (w6, b6), (w7, b7) = net.fc67()
    assert torch.equal(w6, state["classifier.0.weight"]) and torch.equal(b7, state["classifier.3.bias"])


def test_checkpoint_without_fc_layers_gives_no_fc67(tmp_path):
    state = {k: v for k, v in small_zf_state(4).items() if not k.startswith("classifier.")}
    state["classifier.6.weight"] = torch.zeros(10, 512)  # a pre-training fc8 is ignored
    torch.save(state, tmp_path / "convs.pt")
    net = build_backbone("small-zf", tmp_path / "convs.pt")
    assert net.fc67() is None
    assert torch.equal(net.conv1.weight, state["conv1.weight"])


def test_mismatched_checkpoints_list_the_keys(tmp_path):
    state = small_zf_state(5)
    cases = {
        "missing": ({k: v for k, v in state.items() if not k.startswith("conv5.")}, r"missing keys \(1\): conv5.weight"),
        "unexpected": ({**state, "extra.weight": torch.zeros(1)}, r"unexpected keys \(1\): extra.weight"),
        "half_fc": ({k: v for k, v in state.items() if not k.startswith("classifier.3.")},
                    "missing keys.*classifier.3.weight"),
        "shape": (small_zf_state(5, width=0.5), r"shape mismatches .*conv1.weight: checkpoint \(16, 3, 7, 7\) "
                                                r"vs network \(32, 3, 7, 7\)"),
    }
    for name, (content, pattern) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(content, path)
        with pytest.raises(DataError, match=pattern) as info:
            build_backbone("small-zf", path)
        assert str(path) in str(info.value), name


def test_wrong_architecture_checkpoint_is_refused(tmp_path):
    torch.save(build_backbone("small-resnet").state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(DataError, match="missing keys.*unexpected keys"):
        build_backbone("small-zf", tmp_path / "resnet.pt")


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(DataError, match="no such checkpoint file"):
        build_backbone("small-zf", tmp_path / "absent.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(DataError, match="cannot read the checkpoint"):
        build_backbone("small-zf", tmp_path / "text.pt")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "list.pt")
    with pytest.raises(DataError, match="not tensors: weights"):
        build_backbone("small-zf", tmp_path / "list.pt")


@pytest.mark.slow  # writes and reads a 528 MB state dict
def test_vgg16_fc67_are_torchvision_fc6_fc7(hub):
    torch.manual_seed(6)
    model = torchvision.models.vgg16(weights=None)
    torch.save(model.state_dict(), hub / "vgg16-397923af.pth")
    net = build_backbone("vgg16", "imagenet")
    (w6, b6), (w7, b7) = net.fc67()
    assert torch.equal(w6, model.classifier[0].weight) and torch.equal(b6, model.classifier[0].bias)
    assert torch.equal(w7, model.classifier[3].weight) and torch.equal(b7, model.classifier[3].bias)
    assert w6.shape == (4096, 512 * 7 * 7)
    assert torch.equal(net.features[28].weight, model.features[28].weight)  # conv5_3
