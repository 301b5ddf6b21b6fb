"""The end-to-end configs (configs/e2e): every experiment loads and builds, the paper rows carry
the trunks and NoCs of paper Tables 8 and 9 and the Faster R-CNN numbers of SPEC.md, the
scene-digits twins differ from each other only where the table rows do, and the loader refuses
bad configs. The big models are built on torch's meta device (shapes, no memory, no weights),
the small-resnet twins for real with random weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nocdet.config import load_yaml, to_dict
from nocdet.experiment import ExperimentConfig, load_experiment
from nocdet.e2e.model import build_e2e_model
from nocdet.errors import ConfigError
from nocdet.noc.spec import parse_noc

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
E2E = CONFIGS / "e2e"
EXPERIMENTS = sorted(p for p in E2E.rglob("*.yaml") if p.parent.name != "base")
PAPER = sorted((E2E / "paper").glob("*.yaml"))
TWINS = sorted((E2E / "scene_digits").glob("table8_*.yaml"))
LITE0 = sorted((E2E / "scene_digits" / "lite0").glob("table8_*.yaml"))  # the twins with the Lite0 trunk

# Table 8 (COCO val, trained on train): backbone, variant (where the RoIs are pooled), NoC, from
# the paper's text ("Naive Faster R-CNN", "Using MLP as NoC", "Using ConvNet as NoC").
MLP = "fc4096, fc4096, fc81"
TABLE8 = {
    "table8_vgg16_3fc": ("vgg16", "naive", MLP),
    "table8_googlenet_naive_1fc": ("googlenet", "naive", "fc81"),
    "table8_googlenet_naive_3fc": ("googlenet", "naive", MLP),
    "table8_googlenet_atrous_1fc": ("googlenet", "atrous", "fc81"),
    "table8_googlenet_atrous_3fc": ("googlenet", "atrous", MLP),
    "table8_googlenet_conv_noc": ("googlenet", "c4", "inc4e,5a,5b, fc81"),
    "table8_resnet101_naive_1fc": ("resnet101", "naive", "fc81"),
    "table8_resnet101_naive_3fc": ("resnet101", "naive", MLP),
    "table8_resnet101_atrous_1fc": ("resnet101", "atrous", "fc81"),
    "table8_resnet101_atrous_3fc": ("resnet101", "atrous", MLP),
    "table8_resnet101_conv_noc": ("resnet101", "c4", "res5a,5b,5c, fc81"),
}
# Table 9 (VOC 2007 test, trained on 07+12), ResNet-101.
TABLE9 = {
    "table9_resnet101_atrous_1fc_voc0712": ("resnet101", "atrous", "fcn+1"),
    "table9_resnet101_atrous_3fc_voc0712": ("resnet101", "atrous", "fc4096, fc4096, fcn+1"),
    "table9_resnet101_conv_noc_voc0712": ("resnet101", "c4", "res5a,5b,5c, fcn+1"),
}
# Feature stride of the map the RoIs are pooled from: conv5_3 16, res5c / inc5b 32, a trous 16,
# res4b22 / inc4d 16 (paper Sec. 4).
STRIDE = {("vgg16", "naive"): 16, ("googlenet", "naive"): 32, ("resnet101", "naive"): 32,
          ("googlenet", "atrous"): 16, ("resnet101", "atrous"): 16, ("googlenet", "c4"): 16, ("resnet101", "c4"): 16}


def num_classes(cfg: ExperimentConfig) -> int:
    if cfg.data.format == "coco":
        return 80
    return 20 if "VOCdevkit" in cfg.data.root else 10


def rel(path: Path) -> str:
    return str(path.relative_to(E2E))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=rel)
def test_every_experiment_loads_and_its_noc_fits_the_data(path):
    cfg = load_experiment(path)
    assert cfg.setting == "e2e"
    spec = parse_noc(cfg.noc.spec)
    assert str(spec) == cfg.noc.spec  # the paper's comma notation, canonical
    assert spec.resolve(num_classes(cfg)).num_outputs == num_classes(cfg) + 1


@pytest.mark.parametrize("path", PAPER, ids=rel)
def test_paper_models_build_with_the_paper_geometry(path):
    cfg = load_experiment(path)
    with torch.device("meta"):
        model = build_e2e_model(cfg, num_classes(cfg), pretrained=False)
    b = cfg.backbone
    assert model.backbone.stride == STRIDE[(b.name, b.variant)]
    pooling, noc = model.roi_heads.pooling, model.roi_heads.noc
    conv_noc = b.variant == "c4"
    assert pooling.size == (14 if conv_noc else 7) and pooling.spatial_scale == 1 / model.backbone.stride
    assert noc.output_shape.logits == (num_classes(cfg) + 1,)
    assert noc.output_shape.deltas == (4 * (num_classes(cfg) + 1),)
    if conv_noc:  # global average pooling of res5c (2048) / inc5b (1024) feeds the classifier
        assert noc.feature_dim == {"resnet101": 2048, "googlenet": 1024}[b.name]


@pytest.mark.parametrize("path", TWINS, ids=rel)
def test_scene_digits_twins_build_for_real(path):
    cfg = load_experiment(path)
    model = build_e2e_model(cfg, 10, pretrained=False)
    assert model.backbone.stride == {"naive": 32, "atrous": 16, "c4": 16}[cfg.backbone.variant]
    # 7 x 7 RoIs everywhere: the conv NoC keeps res5 at stride 1 on the CPU (configs/e2e/README.md)
    assert model.roi_heads.pooling.size == 7 and cfg.noc.stage_stride == 1


@pytest.mark.parametrize("path", LITE0, ids=rel)
def test_lite0_twins_build_for_real(path):
    cfg = load_experiment(path)
    model = build_e2e_model(cfg, 10, pretrained=False)
    variant = cfg.backbone.variant
    assert model.backbone.stride == {"naive": 32, "atrous": 16, "c4": 16}[variant]
    assert model.backbone.out_channels == {"naive": 1280, "atrous": 1280, "c4": 112}[variant]
    # the conv NoC pools 14 x 14 from stage 6 and eff7a halves it (stage_stride 2, configs/e2e/README.md)
    assert cfg.noc.stage_stride == 2
    assert model.roi_heads.pooling.size == (14 if variant == "c4" else 7)


def beyond_variant_and_noc(cfg: ExperimentConfig) -> dict:
    """A config without what Table 8's rows vary: its name, trunk variant and NoC string."""
    d = to_dict(cfg)
    del d["name"], d["backbone"]["variant"], d["noc"]["spec"]
    return d


def test_lite0_twins_differ_only_in_trunk_variant_and_noc():
    """The four Table 8 rows with the ImageNet EfficientNet-Lite0 trunk: one trunk and one schedule,
    the data, sizes, RPN, sampling and inference of the small-resnet twins."""
    rows = {p.stem: load_experiment(p) for p in LITE0}
    assert {k: (c.backbone.variant, c.noc.spec) for k, c in rows.items()} == {
        "table8_naive_1fc": ("naive", "fcn+1"),
        "table8_atrous_1fc": ("atrous", "fcn+1"),
        "table8_atrous_3fc": ("atrous", "fc512, fc512, fcn+1"),
        "table8_conv_noc": ("c4", "eff7a,7b,7c,7d,8a,9a, fcn+1"),
    }

    first, *others = rows.values()
    assert all(beyond_variant_and_noc(c) == beyond_variant_and_noc(first) for c in others)
    m = first
    assert (m.backbone.name, m.backbone.weights, m.noc.init) == ("efficientnet-lite0", "imagenet", "gaussian")
    assert m.backbone.options["frozen_bn"] is True
    twin = to_dict(load_experiment(E2E / "scene_digits" / "base.yaml"))
    lite = to_dict(first)
    assert lite["data"] == twin["data"]
    for section in ("transform", "rpn", "sampling", "test", "roi"):
        assert lite[section] == twin[section], section
    s = first.solver
    # the twins' lr and step fractions (6000/8000, 7300/8000) on a shorter schedule
    assert [step / s.iterations for step in s.lr_steps] == pytest.approx([0.75, 0.9125], abs=0.005)
    assert (s.lr, s.images_per_batch, s.flip) == (0.01, 2, False)


def test_the_paper_folder_holds_the_rows_of_tables_8_and_9():
    assert sorted(p.stem for p in PAPER) == sorted({**TABLE8, **TABLE9})


@pytest.mark.parametrize("key", sorted({**TABLE8, **TABLE9}))
def test_paper_row_matches_the_paper_and_spec(key):
    cfg = load_experiment(E2E / "paper" / f"{key}.yaml")
    m = cfg
    assert (m.backbone.name, m.backbone.variant, m.noc.spec) == {**TABLE8, **TABLE9}[key]
    assert cfg.setting == "e2e" and cfg.name == "e2e-" + key.replace("_", "-")
    # fc6/fc7 exist only for VGG-16; GoogLeNet's and ResNet's fc layers are random (paper Sec. 4)
    assert m.noc.init == ("finetune" if m.backbone.name == "vgg16" else "gaussian")
    assert m.backbone.weights.startswith("imagenet")
    if key in TABLE8:
        assert cfg.data.format == "coco" and m.rpn.anchor_sizes == [64, 128, 256, 512]
        assert cfg.data.train == ["data/coco/annotations/instances_train2014.json:data/coco/train2014"]
        assert cfg.data.test == "data/coco/annotations/instances_val2014.json:data/coco/val2014"
    else:
        assert cfg.data.format == "voc" and m.rpn.anchor_sizes == [128, 256, 512]
        assert cfg.data.train == ["data/VOCdevkit/VOC2007:trainval", "data/VOCdevkit/VOC2012:trainval"]
        assert (cfg.data.root, cfg.data.test) == ("data/VOCdevkit/VOC2007", "test")
    # SPEC.md 3: the RPN of Faster R-CNN
    r = m.rpn
    assert r.aspect_ratios == [0.5, 1.0, 2.0] and r.nms_iou == 0.7 and (r.fg_iou, r.bg_iou) == (0.7, 0.3)
    assert (r.pre_nms_top_n_train, r.post_nms_top_n_train, r.pre_nms_top_n_test, r.post_nms_top_n_test) == \
        (12000, 2000, 6000, 300)
    assert (r.batch_size_per_image, r.positive_fraction) == (256, 0.5)
    # SPEC.md 4 (end to end) and 6
    s = m.sampling
    assert (s.fg_fraction, s.fg_iou, s.bg_iou_lo, s.bg_iou_hi) == (0.25, 0.5, 0.0, 0.5)
    assert (m.test.score_threshold, m.test.nms_iou, m.test.max_detections) == (0.05, 0.3, 100)
    assert (m.transform.min_size, m.transform.max_size) == ([600], 1000)
    assert m.roi.pool == "max" and m.noc.stage_stride == 2


def test_scene_digits_twins_differ_only_in_trunk_variant_and_noc():
    """Same trunk, data, RPN, sampling and budget; the rows of Table 8's ablation vary the place of
    RoI pooling and the NoC (f4096 -> f512; res5a,5b,5c -> all of small-resnet's res5)."""
    rows = {p.stem: load_experiment(p) for p in TWINS}
    assert {k: (c.backbone.variant, c.noc.spec) for k, c in rows.items()} == {
        "table8_naive_1fc": ("naive", "fcn+1"),
        "table8_atrous_1fc": ("atrous", "fcn+1"),
        "table8_atrous_3fc": ("atrous", "fc512, fc512, fcn+1"),
        "table8_conv_noc": ("c4", "res5a,5b, fcn+1"),
    }

    first, *others = rows.values()
    assert all(beyond_variant_and_noc(c) == beyond_variant_and_noc(first) for c in others)
    m = first
    assert m.backbone.name == "small-resnet" and m.backbone.weights == "runs/pretrain/small-resnet.pt"
    assert first.data.root == "data/scene-digits" and first.solver.flip is False
    assert (m.sampling.bg_iou_lo, m.sampling.bg_iou_hi) == (0.0, 0.5)


def test_frozen_feature_configs_are_not_end_to_end():
    assert load_experiment(CONFIGS / "scene_digits" / "base.yaml").setting == "frozen"
    assert load_experiment(CONFIGS / "paper" / "table6_noc.yaml").setting == "frozen"


def test_run_names_are_unique_and_the_readme_names_every_file():
    names = [load_experiment(p).name for p in EXPERIMENTS]
    assert len(names) == len(set(names))
    readme = (E2E / "README.md").read_text(encoding="utf-8")
    missing = [rel(p) for p in sorted(E2E.rglob("*.yaml")) if rel(p) not in readme]
    assert not missing


def test_overrides_and_their_errors(tmp_path):
    base = E2E / "scene_digits" / "table8_conv_noc.yaml"
    cfg = load_experiment(base, ["sampling.bg_iou_lo=0.1", "solver.iterations=10"])
    assert cfg.sampling.bg_iou_lo == 0.1 and cfg.solver.iterations == 10
    with pytest.raises(ConfigError, match="did you mean 'rpn.nms_iou'"):
        load_experiment(base, ["rpn.nms_iuo=0.5"])
    cases = {
        "setting=both": "setting: 'both' is not one of",
        "noc.spec=c64-mo-c64-fn+1": "maxout",
        "backbone.variant=naive": "use variant 'c4'",
        "backbone.options.upto=res5": "set backbone.variant",
        "noc.init=finetune": "has no fc6/fc7 layers",
        "sampling.bg_iou_lo=0.6": "background band",
        "noc.stage_stride=3": "stage_stride must be 1 or 2",
        "solver.iterations=0": "iterations must be >= 1",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_experiment(base, [override])
    partial = tmp_path / "x.yaml"
    partial.write_text(f"_base_: {base}\nname: x\n", encoding="utf-8")
    assert load_yaml(partial)["setting"] == "e2e"  # the setting is inherited
    assert load_experiment(partial).setting == "e2e"
