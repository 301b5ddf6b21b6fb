"""Weights: the torchvision hub cache (downloaded into on a miss, never in these tests), local checkpoints,
clear errors."""
from __future__ import annotations

import email.message
import socket
from urllib.error import HTTPError, URLError

import pytest
import torch
import torchvision
from torch import nn

from nocdet.errors import ConfigError, DataError
from nocdet.features.registry import build_backbone
from nocdet.features.weights import imagenet_weights, is_offline, load_imagenet_state_dict

RESNET50_V2 = "resnet50-11ad3fa6.pth"  # torchvision's file name for ResNet50_Weights.IMAGENET1K_V2 (the default)
RESNET50_V2_URL = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
HAND_COMMAND = "torchvision.models.resnet50(weights='IMAGENET1K_V2')"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (AssertionError is not a network error nocdet catches)."""
    def refuse(*args, **kwargs):
        raise AssertionError("tests must never reach the network")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub dir; files go to its checkpoints/ folder as torchvision would put them."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.delenv("NOCDET_OFFLINE", raising=False)
    (tmp_path / "checkpoints").mkdir()
    return tmp_path / "checkpoints"


def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("this test must not download weights")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def fake_download(monkeypatch, content=None, error: BaseException | None = None) -> list[tuple]:
    """Replace torch.hub's download: record each call, then raise ``error`` or save ``content`` to ``dst``."""
    calls = []

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        if error is not None:
            raise error
        torch.save(content, dst)
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return calls


def tiny_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Linear(3, 2).state_dict()


def test_imagenet_weights_load_from_the_hub_cache(hub, monkeypatch):
    no_download(monkeypatch)
    torch.manual_seed(1)
    reference = torchvision.models.resnet50(weights=None).state_dict()  # the true file format
    torch.save(reference, hub / "resnet50-0676ba61.pth")  # IMAGENET1K_V1's file name
    monkeypatch.setenv("NOCDET_OFFLINE", "1")
    with pytest.raises(DataError, match=RESNET50_V2):
        build_backbone("resnet50", "imagenet")  # the default (V2) is still absent
    monkeypatch.delenv("NOCDET_OFFLINE")
    net = build_backbone("resnet50", "imagenet:IMAGENET1K_V1")  # FrozenBatchNorm2d by default
    assert torch.equal(net.layer3[2].conv2.weight, reference["layer3.2.conv2.weight"])
    assert torch.equal(net.layer4[0].bn1.running_var, reference["layer4.0.bn1.running_var"])
    assert net.weights_source == "imagenet:IMAGENET1K_V1"
    assert net.fc67() is None  # ResNet has no fc6/fc7
    trainable_bn = build_backbone("resnet50", "imagenet:IMAGENET1K_V1", frozen_bn=False)
    assert torch.equal(trainable_bn.bn1.running_mean, reference["bn1.running_mean"])


def test_cached_file_is_read_without_download(hub, monkeypatch):
    state = tiny_state(7)
    torch.save(state, hub / RESNET50_V2)
    calls = fake_download(monkeypatch, content=tiny_state(8))  # would give other tensors
    loaded = load_imagenet_state_dict("resnet50")
    assert calls == []
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_missing_file_is_downloaded_into_the_hub_cache_then_loaded(hub, monkeypatch):
    state = tiny_state(9)
    calls = fake_download(monkeypatch, content=state)
    loaded = load_imagenet_state_dict("resnet50")
    # one call, torchvision's url, the cache path as destination and the file name's hash prefix checked
    assert calls == [(RESNET50_V2_URL, str(hub / RESNET50_V2), "11ad3fa6")]
    assert imagenet_weights("resnet50").url == RESNET50_V2_URL
    assert (hub / RESNET50_V2).is_file()
    assert all(torch.equal(loaded[k], state[k]) for k in state) and loaded.keys() == state.keys()
    load_imagenet_state_dict("resnet50")  # now cached: no second download
    assert len(calls) == 1


def test_missing_hub_folder_is_created_for_the_download(hub, monkeypatch):
    hub.rmdir()  # a fresh TORCH_HOME has no hub/checkpoints yet
    calls = fake_download(monkeypatch, content=tiny_state(10))
    load_imagenet_state_dict("resnet50")
    assert len(calls) == 1 and (hub / RESNET50_V2).is_file()


def test_downloaded_weights_load_into_the_backbone(hub, monkeypatch):
    torch.manual_seed(11)
    reference = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False).state_dict()
    calls = fake_download(monkeypatch, content=reference)
    net = build_backbone("googlenet", "imagenet")
    assert [call[1] for call in calls] == [str(hub / "googlenet-1378be20.pth")]
    assert torch.equal(net.inception4d.branch2[1].conv.weight, reference["inception4d.branch2.1.conv.weight"])
    assert net.weights_source == "imagenet"


@pytest.mark.parametrize("error", [
    URLError("[Errno -3] Temporary failure in name resolution"),
    HTTPError(RESNET50_V2_URL, 403, "Forbidden", hdrs=None, fp=None),
    ConnectionResetError(104, "Connection reset by peer"),
    RuntimeError('invalid hash value (expected "11ad3fa6", got "0123abcd")'),  # torch.hub's hash mismatch
], ids=["url", "http", "reset", "hash"])
def test_failed_download_names_the_file_and_the_url(hub, monkeypatch, error):
    calls = fake_download(monkeypatch, error=error)
    with pytest.raises(DataError) as info:
        build_backbone("resnet50", "imagenet")
    message = str(info.value)
    assert len(calls) == 1
    assert info.value.path == str(hub / RESNET50_V2) and str(hub / RESNET50_V2) in message
    assert RESNET50_V2_URL in message and "failed" in message and str(error) in message
    assert HAND_COMMAND in message and "TORCH_HOME" in message and f"to {hub}/" in message
    assert isinstance(info.value.__cause__, type(error))
    assert not (hub / RESNET50_V2).exists()


class BrokenResponse:
    """An HTTP response that sends ``chunks`` then, when ``error`` is given, drops the connection."""

    def __init__(self, chunks: list[bytes], error: BaseException | None):
        self.chunks, self.error = list(chunks), error
        self.headers = email.message.Message()
        self.headers["Content-Length"] = str(10 * sum(map(len, chunks)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def info(self):
        return self.headers

    def read(self, size=-1):
        if self.chunks:
            return self.chunks.pop(0)
        if self.error is not None:
            raise self.error
        return b""


@pytest.mark.parametrize("case", ["interrupted", "hash_mismatch"])
def test_torch_hub_leaves_no_partial_file(hub, monkeypatch, case):
    """torch.hub's real download_url_to_file (only its urlopen faked) writes a temporary file and moves it
    into place only when complete and verified: a broken download leaves nothing in the cache."""
    error = ConnectionResetError(104, "Connection reset by peer") if case == "interrupted" else None
    opened = []

    def urlopen(request, *args, **kwargs):
        opened.append(request.full_url)
        return BrokenResponse([b"PK\x03\x04 not the whole file"], error)
    monkeypatch.setattr(torch.hub, "urlopen", urlopen)
    with pytest.raises(DataError, match="downloading them from .* failed") as info:
        load_imagenet_state_dict("resnet50")
    assert opened == [RESNET50_V2_URL]
    assert ("invalid hash value" in str(info.value)) == (case == "hash_mismatch")
    assert list(hub.iterdir()) == []  # neither the final file nor a .partial one


def test_offline_never_downloads(hub, monkeypatch):
    calls = fake_download(monkeypatch, content=tiny_state(12))  # would succeed if it were called
    monkeypatch.setenv("NOCDET_OFFLINE", "1")
    with pytest.raises(DataError) as info:
        build_backbone("resnet50", "imagenet")
    message = str(info.value)
    assert calls == []
    assert str(hub / RESNET50_V2) in message and RESNET50_V2_URL in message
    assert "NOCDET_OFFLINE=1" in message
    assert HAND_COMMAND in message and "TORCH_HOME" in message
    assert not (hub / RESNET50_V2).exists()


@pytest.mark.parametrize("value, offline", [("1", True), ("true", True), ("YES", True), ("on", True),
                                            ("0", False), ("", False), ("false", False)])
def test_offline_values(monkeypatch, value, offline):
    monkeypatch.setenv("NOCDET_OFFLINE", value)
    assert is_offline() is offline
    monkeypatch.delenv("NOCDET_OFFLINE")
    assert is_offline() is False


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
