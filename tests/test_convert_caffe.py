"""``nocdet convert-caffe``: Caffe ZF models become nocdet weights, or are refused with the reason.

The caffemodels are written here by a small protobuf wire-format encoder of this file (varints and
length-delimited fields with Caffe's field numbers), independent of the converter's run-time
message classes. The ZF layout written is py-faster-rcnn's (conv pads 3, 2, 1, 1, 1; pools 3x3/2
pad 1) or SPPnet's (conv pads 1, 0, 1, 1, 1; pools unpadded).
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nocdet.cli import main
from nocdet.errors import DataError
from nocdet.features.backbones import ZFNet
from nocdet.features.caffe_zf import convert_zf
from nocdet.features.caffemodel import read_caffemodel
from nocdet.features.registry import build_backbone

# ---- protobuf wire format ---------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def vint(field: int, n: int) -> bytes:
    return _varint(field << 3) + _varint(n)


def ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def text(field: int, s: str) -> bytes:
    return ld(field, s.encode())


def blob(values: np.ndarray, legacy: bool = False) -> bytes:
    """BlobProto: packed float data (5) and shape (7: packed dims), or legacy num/channels/height/width (1-4)."""
    data = ld(5, np.asarray(values, "<f4").tobytes())
    if legacy:
        dims = (1,) * (4 - values.ndim) + values.shape
        return b"".join(vint(i, d) for i, d in enumerate(dims, start=1)) + data
    return data + ld(7, ld(1, b"".join(_varint(d) for d in values.shape)))


def conv_param(out: int, kernel: int, stride: int, pad: int) -> bytes:
    return vint(1, out) + vint(3, pad) + vint(4, kernel) + vint(6, stride)


def pool_param(kernel: int, stride: int, pad: int) -> bytes:
    return vint(1, 0) + vint(2, kernel) + vint(3, stride) + vint(4, pad)


# ---- a ZF net as a list of layer specs --------------------------------------------------------

PY_FASTER_RCNN = {"conv_pads": (3, 2, 1, 1, 1), "pool_pad": 1}
SPPNET = {"conv_pads": (1, 0, 1, 1, 1), "pool_pad": 0}


def zf_layers(rng: np.random.Generator, widths=(96, 256, 384, 384, 256), geometry=PY_FASTER_RCNN,
              fc=None) -> list[dict]:
    """Layer specs {name, type, blobs, conv/pool/fc}; ``fc``: (fc6 inputs, fc6/fc7 width, fc8 classes) or None."""
    layers, channels = [], 3
    for i, (out, kernel, stride) in enumerate(zip(widths, (7, 5, 3, 3, 3), (2, 2, 1, 1, 1)), start=1):
        weight = rng.standard_normal((out, channels, kernel, kernel)).astype(np.float32)
        bias = rng.standard_normal(out).astype(np.float32)
        layers.append({"name": f"conv{i}", "type": "Convolution", "blobs": [weight, bias],
                       "conv": (out, kernel, stride, geometry["conv_pads"][i - 1])})
        layers.append({"name": f"relu{i}", "type": "ReLU", "blobs": []})
        if i <= 2:
            layers.append({"name": f"norm{i}", "type": "LRN", "blobs": []})
            layers.append({"name": f"pool{i}", "type": "Pooling", "blobs": [], "pool": (3, 2, geometry["pool_pad"])})
        channels = out
    if fc is not None:
        inputs, width, classes = fc
        for name, shape in (("fc6", (width, inputs)), ("fc7", (width, width)), ("fc8", (classes, width))):
            layers.append({"name": name, "type": "InnerProduct", "fc": True,
                           "blobs": [rng.standard_normal(shape).astype(np.float32),
                                     rng.standard_normal(shape[0]).astype(np.float32)]})
    return layers


_V1_ENUM = {"Convolution": 4, "InnerProduct": 14, "Pooling": 17, "LRN": 15, "ReLU": 18}
_V0_NAME = {"Convolution": "conv", "InnerProduct": "innerproduct", "Pooling": "pool", "LRN": "lrn", "ReLU": "relu"}


def caffemodel(layers: list[dict], fmt: str = "layer") -> bytes:
    """NetParameter bytes: ``layer`` (field 100), legacy V1 ``layers`` (field 2) or V0 inside V1."""
    out = text(1, "ZF")
    for spec in layers:
        conv = conv_param(*spec["conv"]) if "conv" in spec else b""
        pool = pool_param(*spec["pool"]) if "pool" in spec else b""
        ip = vint(1, spec["blobs"][0].shape[0]) if spec.get("fc") else b""
        if fmt == "layer":
            body = text(1, spec["name"]) + text(2, spec["type"]) + b"".join(ld(7, blob(b)) for b in spec["blobs"])
            body += (ld(106, conv) if conv else b"") + (ld(121, pool) if pool else b"") + (ld(117, ip) if ip else b"")
            out += ld(100, body)
        elif fmt == "v1":
            body = text(4, spec["name"]) + vint(5, _V1_ENUM[spec["type"]])
            body += b"".join(ld(6, blob(b, legacy=True)) for b in spec["blobs"])
            body += (ld(10, conv) if conv else b"") + (ld(19, pool) if pool else b"") + (ld(17, ip) if ip else b"")
            out += ld(2, body)
        else:  # V0: flat fields in the V0LayerParameter wrapped as V1's field 1
            v0 = text(1, spec["name"]) + text(2, _V0_NAME[spec["type"]])
            geometry = spec.get("conv", (None,) + spec.get("pool", ())) if ("conv" in spec or "pool" in spec) else None
            if geometry:
                _, kernel, stride, pad = geometry
                v0 += vint(7, pad) + vint(8, kernel) + vint(10, stride)
            v0 += b"".join(ld(50, blob(b, legacy=True)) for b in spec["blobs"])
            out += ld(2, ld(1, v0))
    return out


def small_zf() -> ZFNet:
    """A narrow ZF (same layers and geometry) to test the fc6/fc7 paths without 150 MB of fc6."""
    return ZFNet(channels=(4, 8, 8, 8, 8), fc_dim=16)


# ---- the CLI on true ZF shapes (conv layers only) ---------------------------------------------


@pytest.fixture(scope="module")
def zf_convs():
    return zf_layers(np.random.default_rng(0))


def test_converts_py_faster_rcnn_zf_flipping_conv1(tmp_path, zf_convs, capsys):
    model, out = tmp_path / "ZF.v2.caffemodel", tmp_path / "zf.pt"
    model.write_bytes(caffemodel(zf_convs))
    assert main(["convert-caffe", str(model), "--arch", "zf", "--out", str(out)]) == 0
    assert "flipped BGR -> RGB" in capsys.readouterr().out
    content = torch.load(out, weights_only=True)
    state, record = content["backbone"], content["caffe_conversion"]
    assert set(state) == {f"conv{i}.{p}" for i in range(1, 6) for p in ("weight", "bias")}
    caffe = {spec["name"]: spec["blobs"] for spec in zf_convs if spec["blobs"]}
    w1 = caffe["conv1"][0]
    # hand-computed flip: RGB channel 0 (R) is Caffe's channel 2 (R of BGR), 1 stays G, 2 (B) is Caffe's 0
    assert torch.equal(state["conv1.weight"][:, 0], torch.from_numpy(w1[:, 2]))
    assert torch.equal(state["conv1.weight"][:, 1], torch.from_numpy(w1[:, 1]))
    assert torch.equal(state["conv1.weight"][:, 2], torch.from_numpy(w1[:, 0]))
    for name in ("conv2", "conv3", "conv4", "conv5"):
        assert torch.equal(state[f"{name}.weight"], torch.from_numpy(caffe[name][0]))
    assert torch.equal(state["conv1.bias"], torch.from_numpy(caffe["conv1"][1]))
    assert record["channel_order"] == "RGB" and record["geometry"] == "py-faster-rcnn" and not record["fc67"]


def test_converted_conv1_on_rgb_equals_caffe_conv1_on_bgr(tmp_path, zf_convs):
    """The measured convention: nocdet's zf fed RGB in [0, 1] computes what Caffe computed on BGR 0-255 - mean."""
    model, out = tmp_path / "zf.caffemodel", tmp_path / "zf.pt"
    model.write_bytes(caffemodel(zf_convs))
    assert main(["convert-caffe", str(model), "--out", str(out)]) == 0
    net = build_backbone("zf", out)
    rgb = torch.rand(1, 3, 29, 31, generator=torch.Generator().manual_seed(1))
    ours = net.conv1(net.normalize(rgb))
    mean_bgr = torch.tensor([102.9801, 115.9465, 122.7717])[:, None, None]  # py-faster-rcnn's PIXEL_MEANS
    caffe_input = rgb[:, [2, 1, 0]] * 255 - mean_bgr
    w, b = (torch.from_numpy(x) for x in zf_convs[0]["blobs"])
    reference = F.conv2d(caffe_input, w, b, stride=2, padding=3)
    assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-2)
    assert not torch.allclose(net.conv1(net.normalize(rgb[:, [2, 1, 0]])), reference, atol=1.0)  # BGR fed: wrong
    assert net.fc67() is None


def test_v1_legacy_layers_give_the_same_weights(tmp_path, zf_convs):
    for fmt in ("layer", "v1"):
        (tmp_path / f"{fmt}.caffemodel").write_bytes(caffemodel(zf_convs, fmt))
        assert main(["convert-caffe", str(tmp_path / f"{fmt}.caffemodel"), "--out", str(tmp_path / f"{fmt}.pt")]) == 0
    new, v1 = (torch.load(tmp_path / f"{f}.pt", weights_only=True)["backbone"] for f in ("layer", "v1"))
    assert new.keys() == v1.keys() and all(torch.equal(new[k], v1[k]) for k in new)


def test_sppnet_geometry_is_refused(tmp_path, capsys):
    model = tmp_path / "Zeiler_conv5.caffemodel"
    model.write_bytes(caffemodel(zf_layers(np.random.default_rng(2), geometry=SPPNET), "v1"))
    assert main(["convert-caffe", str(model), "--out", str(tmp_path / "zf.pt")]) == 2
    err = capsys.readouterr().err
    assert str(model) in err and "conv1 pad 1 (nocdet: 3)" in err and "conv2 pad 0 (nocdet: 2)" in err
    assert "pool1 pad 0 (nocdet: 1)" in err and "SPPnet's ZF geometry" in err
    assert not (tmp_path / "zf.pt").exists()


@pytest.mark.parametrize("content", [b"\xff\xff\xff\xff garbage", b"", b"\x0a\x02ZF",
                                     caffemodel(zf_layers(np.random.default_rng(4), widths=(4, 8, 8, 8, 8)))[:-9]])
def test_malformed_file_exits_2_naming_it(tmp_path, capsys, content):
    """Garbage, an empty file, a NetParameter without layers, a truncated download."""
    model = tmp_path / "broken.caffemodel"
    model.write_bytes(content)
    assert main(["convert-caffe", str(model), "--out", str(tmp_path / "zf.pt")]) == 2
    err = capsys.readouterr().err
    assert str(model) in err and "not a Caffe model" in err


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["convert-caffe", str(tmp_path / "absent.caffemodel"), "--out", str(tmp_path / "zf.pt")]) == 2
    assert "absent.caffemodel" in capsys.readouterr().err


def test_help_imports_no_torch():
    code = ("import sys\nfrom nocdet.cli import main\ntry:\n    main(['convert-caffe', '--help'])\n"
            "except SystemExit:\n    pass\nprint([m for m in ('torch', 'google.protobuf') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--arch" in done.stdout and done.stdout.strip().endswith("[]"), done.stdout


# ---- the conversion itself, on a narrow ZF with fc6/fc7 ---------------------------------------


def narrow(geometry=PY_FASTER_RCNN, fc_inputs: int = 8 * 36) -> list[dict]:
    return zf_layers(np.random.default_rng(3), widths=(4, 8, 8, 8, 8), geometry=geometry, fc=(fc_inputs, 16, 5))


@pytest.mark.parametrize("fmt", ["layer", "v1", "v0"])
def test_fc6_fc7_map_to_classifier_and_fc8_is_dropped(tmp_path, fmt):
    specs = narrow()
    (tmp_path / "m.caffemodel").write_bytes(caffemodel(specs, fmt))
    conversion = convert_zf(read_caffemodel(tmp_path / "m.caffemodel"), small_zf(), tmp_path / "m.caffemodel")
    blobs = {spec["name"]: spec["blobs"] for spec in specs}
    state = conversion.state_dict
    assert torch.equal(state["classifier.0.weight"], torch.from_numpy(blobs["fc6"][0]))
    assert torch.equal(state["classifier.3.bias"], torch.from_numpy(blobs["fc7"][1]))
    assert conversion.record["dropped_layers"] == ["fc8"] and conversion.record["fc67"]
    net = small_zf()
    net.load_state_dict(state, strict=True)  # every key, right shapes


def test_sppnet_pyramid_fc6_is_refused(tmp_path):
    (tmp_path / "spp.caffemodel").write_bytes(caffemodel(narrow(fc_inputs=8 * 50)))
    with pytest.raises(DataError, match=r"spp.caffemodel.*SPPnet's ZF: its fc6 takes 400 inputs = 8 channels x 50"):
        convert_zf(read_caffemodel(tmp_path / "spp.caffemodel"), small_zf(), tmp_path / "spp.caffemodel")


def test_unrecorded_geometry_is_refused(tmp_path):
    specs = [{k: v for k, v in spec.items() if k != "conv"} for spec in narrow()]  # no convolution_param
    (tmp_path / "m.caffemodel").write_bytes(caffemodel(specs))
    with pytest.raises(DataError, match="no readable geometry .* for conv1, conv2, conv3, conv4, conv5"):
        convert_zf(read_caffemodel(tmp_path / "m.caffemodel"), small_zf(), "m.caffemodel")


def test_fc6_without_fc7_is_refused(tmp_path):
    specs = [spec for spec in narrow() if spec["name"] != "fc7"]
    (tmp_path / "m.caffemodel").write_bytes(caffemodel(specs))
    with pytest.raises(DataError, match="has fc6 but not fc7"):
        convert_zf(read_caffemodel(tmp_path / "m.caffemodel"), small_zf(), "m.caffemodel")


def test_blob_with_wrong_value_count_is_refused(tmp_path):
    bad = ld(100, text(1, "conv1") + text(2, "Convolution") + ld(7, ld(5, np.zeros(5, "<f4").tobytes())
                                                                 + ld(7, ld(1, _varint(2) + _varint(3)))))
    (tmp_path / "m.caffemodel").write_bytes(bad)
    with pytest.raises(DataError, match=r"conv1 blob 0 holds 5 values but its shape \(2, 3\) needs 6"):
        read_caffemodel(tmp_path / "m.caffemodel")


# ---- the weights loader's check ---------------------------------------------------------------


def test_loader_refuses_a_bare_zf_state_dict_and_keeps_nocdet_files(tmp_path):
    state = {k: v for k, v in ZFNet().state_dict().items() if not k.startswith("classifier.")}
    torch.save(state, tmp_path / "raw.pt")
    with pytest.raises(DataError, match=r"raw.pt: a bare state dict for 'zf' is refused.*convert-caffe"):
        build_backbone("zf", tmp_path / "raw.pt")
    torch.save({"backbone": state, "backbone_name": "zf"}, tmp_path / "pretrained.pt")
    net = build_backbone("zf", tmp_path / "pretrained.pt")
    assert torch.equal(net.conv3.weight, state["conv3.weight"])


def test_loader_checks_and_applies_the_conversion_record(tmp_path, zf_convs):
    model, out = tmp_path / "zf.caffemodel", tmp_path / "zf.pt"
    model.write_bytes(caffemodel(zf_convs))
    assert main(["convert-caffe", str(model), "--out", str(out)]) == 0
    content = torch.load(out, weights_only=True)
    net = build_backbone("zf", out)
    assert net.mean == pytest.approx((122.7717 / 255, 115.9465 / 255, 102.9801 / 255))
    assert net.std == pytest.approx((1 / 255,) * 3)
    content["caffe_conversion"]["channel_order"] = "BGR"
    torch.save(content, tmp_path / "bgr.pt")
    with pytest.raises(DataError, match="bgr.pt: .*channel order 'BGR' \\(nocdet feeds RGB\\)"):
        build_backbone("zf", tmp_path / "bgr.pt")
