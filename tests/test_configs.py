"""The shipped experiment configs: every file loads, its NoC fits its data set, the paper-table
files carry the NoC strings of the paper, each has a scene-digits twin that follows the twin rule,
and configs/README.md names every file. No data or weights are needed."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nocdet.config import load_yaml
from nocdet.experiment import ExperimentConfig, load_experiment
from nocdet.features.registry import backbone_options
from nocdet.features.small_nets import small_zf
from nocdet.noc.spec import parse_noc

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(p for p in CONFIGS.rglob("*.yaml") if "e2e" not in p.relative_to(CONFIGS).parts)  # e2e: tests/test_e2e_configs.py
# Files that set a few keys only and are listed after a base in ``_base_`` (configs/README.md).
FRAGMENTS = {"base/voc0712.yaml", "base/voc07pp12_test12.yaml", "scene_digits/data_0712.yaml",
             "scene_digits/data_07pp12.yaml", "scene_digits/as_vgg16.yaml", "scene_digits/as_vgg19.yaml"}

# The NoC of each paper-table row, typed from the paper (/work/shared/paper/noc-paper.txt):
# Tables 1-3 print the strings; "SVM on RoI" is the 1-fc structure and the 2fc row is
# "2 to 4 fc layers, the others 4096-d" ("Using MLP as NoC"); "maxout 2conv3fc" is Fig. 2's
# c256-mo-c256-...; VGG NoCs use 512 conv filters ("Using ConvNet as NoC"); Tables 6-7 use the best VGG-16 NoC.
ZF_MO = "c256-mo-c256-f4096-f4096-f21"
VGG_MO = "c512-mo-c512-f4096-f4096-f21"
PAPER_NOC = {
    "table1_svm_on_roi": "f21",
    "table1_2fc": "f4096-f21",
    "table1_3fc": "f4096-f4096-f21",
    "table1_4fc": "f4096-f4096-f4096-f21",
    **{f"table2_{name}_{col}": spec for col in ("07", "0712") for name, spec in (
        ("3fc", "f4096-f4096-f21"),
        ("1conv3fc", "c256-f4096-f4096-f21"),
        ("2conv3fc", "c256-c256-f4096-f4096-f21"),
        ("3conv3fc", "c256-c256-c256-f4096-f4096-f21"))},
    "table3_2conv3fc": "c256-c256-f4096-f4096-f21",
    "table3_mo_roi": "mo-c256-c256-f4096-f4096-f21",
    "table3_mo_c1": "c256-mo-c256-f4096-f4096-f21",
    "table3_mo_f1": "c256-c256-f4096-mo-f4096-f21",
    "table3_mo_cls": "c256-c256-f4096-f4096-f21-mo",
    **{f"table4_{name}_{col}": spec for col in ("07", "0712") for name, spec in (
        ("zf_svm_on_roi", "f21"),
        ("zf_3fc_random", "f4096-f4096-f21"),
        ("zf_3fc_finetune", "f4096-f4096-f21"),
        ("zf_maxout_2conv3fc_random", ZF_MO),
        ("zf_maxout_2conv3fc_finetune", ZF_MO),
        ("vgg16_maxout_2conv3fc_random", VGG_MO),
        ("vgg16_maxout_2conv3fc_finetune", VGG_MO))},
    "table5_vgg16_3fc": "f4096-f4096-f21",
    "table5_vgg19_3fc": "f4096-f4096-f21",
    "table5_vgg16_2conv3fc": "c512-c512-f4096-f4096-f21",
    "table5_vgg16_maxout_2conv3fc": VGG_MO,
    "table6_noc": VGG_MO,
    "table6_noc_bb": VGG_MO,
    "table7_noc": VGG_MO,
    "table7_noc_bb": VGG_MO,
}
# Backbone, training set and initialisation of each row, from the table captions and row labels.
VOC07 = ["trainval"]
VOC0712 = ["data/VOCdevkit/VOC2007:trainval", "data/VOCdevkit/VOC2012:trainval"]
VOC07PP12 = ["data/VOCdevkit/VOC2007:trainval", "data/VOCdevkit/VOC2007:test", "data/VOCdevkit/VOC2012:trainval"]
FINETUNED = {k for k in PAPER_NOC if "finetune" in k or k.startswith(("table5_", "table6_", "table7_"))}
SVM_ON_ROI = {k for k in PAPER_NOC if "svm_on_roi" in k}
WITH_BB = {"table6_noc_bb", "table7_noc_bb"}


def paper_backbone(key: str) -> str:
    return "vgg19" if "vgg19" in key else "vgg16" if "vgg16" in key or key.startswith(("table6", "table7")) else "zf"


def paper_train(key: str) -> list[str]:
    if key.startswith("table7"):
        return VOC07PP12
    if key.startswith(("table3", "table5", "table6")) or key.endswith("_0712"):
        return VOC0712
    return VOC07


def num_classes(cfg: ExperimentConfig) -> int:
    """20 for PASCAL VOC and scene-glyphs, 10 for scene-digits (the digits 0-9), read off the data root."""
    if "VOCdevkit" in cfg.data.root or "scene-glyphs" in cfg.data.root:
        return 20
    assert "scene-digits" in cfg.data.root, cfg.data.root
    return 10


def twin_noc(paper: str, conv5_width: int) -> str:
    """The twin rule of configs/README.md: f4096 -> f512 (the small nets' fc6/fc7), c256/c512 (the
    backbone's conv5 width) -> the twin backbone's conv5 width, f21 -> f11 (10 digits + background)."""
    swap = {"f4096": "f512", "f21": "f11", "c256": f"c{conv5_width}", "c512": f"c{conv5_width}"}
    return "-".join(swap.get(token, token) for token in paper.split("-"))


def small_conv5_width(cfg: ExperimentConfig) -> int:
    return small_zf(**cfg.backbone.options).out_channels


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_loads_and_its_noc_fits_the_data(path):
    cfg = load_experiment(path)
    spec = parse_noc(cfg.noc.spec)
    assert str(spec) == cfg.noc.spec  # written in the paper's canonical notation
    resolved = spec.resolve(num_classes(cfg))
    assert resolved.num_outputs == num_classes(cfg) + 1
    unknown = set(cfg.backbone.options) - set(backbone_options(cfg.backbone.name))
    assert not unknown, f"{path}: backbone {cfg.backbone.name} has no options {unknown}"


def test_the_paper_folder_holds_exactly_the_expected_rows():
    assert sorted(p.stem for p in (CONFIGS / "paper").glob("*.yaml")) == sorted(PAPER_NOC)


@pytest.mark.parametrize("key", sorted(PAPER_NOC))
def test_paper_row_matches_the_paper(key):
    cfg = load_experiment(CONFIGS / "paper" / f"{key}.yaml")
    assert cfg.noc.spec == PAPER_NOC[key]
    assert cfg.backbone.name == paper_backbone(key)
    assert cfg.backbone.weights == ("data/weights/zf.pt" if cfg.backbone.name == "zf" else "imagenet")
    assert cfg.data.root == "data/VOCdevkit/VOC2007" and cfg.data.train == paper_train(key)
    assert cfg.data.test == ("data/VOCdevkit/VOC2012:test" if key.startswith("table7") else "test")
    assert cfg.noc.init == ("finetune" if key in FINETUNED else "gaussian")
    assert cfg.bbox.enabled == (key in WITH_BB)
    # Sec. 3: every row ends with post-hoc SVMs that score the regions
    assert cfg.svm.enabled and cfg.test.score == "svm" and cfg.test.score_threshold == -1.5
    assert (cfg.solver.iterations == 0) == (key in SVM_ON_ROI)
    # the SPPnet setting of docs/reference.md §1, §3, §4, §6
    assert cfg.pyramid.scales == [480, 576, 688, 864, 1200] and cfg.pyramid.flip and cfg.pyramid.pool == "max"
    assert cfg.pyramid.target_area == 224 * 224
    assert (cfg.proposals.method, cfg.proposals.min_size, cfg.proposals.max_boxes) == ("selective_search", 20, 2000)
    s = cfg.sampling
    assert (s.images_per_batch, s.rois_per_image, s.fg_fraction, s.fg_iou, s.bg_iou_lo, s.bg_iou_hi) == \
        (2, 64, 0.25, 0.5, 0.1, 0.5)
    assert (cfg.test.nms_iou, cfg.test.max_detections) == (0.3, 100)
    if key not in SVM_ON_ROI:
        assert (cfg.solver.lr, cfg.solver.lr_steps, cfg.solver.lr_gamma, cfg.solver.iterations) == \
            (0.001, [30000, 60000], 0.1, 90000)


def test_paper_conv_widths_follow_the_paper():
    """256 conv filters in ZF NoCs, 512 in VGG NoCs: the conv5 width, as identity init needs."""
    for key, spec in PAPER_NOC.items():
        widths = {int(t[1:]) for t in spec.split("-") if re.fullmatch(r"c\d+", t)}
        assert widths <= ({256} if paper_backbone(key) == "zf" else {512}), key


@pytest.mark.parametrize("key", sorted(PAPER_NOC))
def test_each_paper_row_has_a_scene_digits_twin(key):
    paper = load_experiment(CONFIGS / "paper" / f"{key}.yaml")
    twin = load_experiment(CONFIGS / "scene_digits" / f"{key}.yaml")
    assert twin.backbone.name == "small-zf" and twin.backbone.weights.startswith("runs/pretrain/")
    assert twin.noc.spec == twin_noc(PAPER_NOC[key], small_conv5_width(twin))
    assert (twin.noc.init, twin.bbox.enabled, twin.svm.enabled, twin.test.score) == \
        (paper.noc.init, paper.bbox.enabled, paper.svm.enabled, paper.test.score)
    assert (twin.solver.iterations == 0) == (key in SVM_ON_ROI)
    assert twin.pyramid.flip is False  # mirrored digits are not digits
    assert twin.sampling == paper.sampling
    # the training-set role: 07 -> the default set, 07+12 -> the 3.3x larger set, 07++12 -> all of it
    train = {tuple(VOC07): ("data/scene-digits", ["train"]),
             tuple(VOC0712): ("data/scene-digits-large", ["train"]),
             tuple(VOC07PP12): ("data/scene-digits-large", ["trainval"])}[tuple(paper.data.train)]
    assert (twin.data.root, twin.data.train) == train
    # the feature role: ZF -> small-zf, VGG-16 -> twice as wide, VGG-19 -> 2.25x
    width = {"zf": 1.0, "vgg16": 2.0, "vgg19": 2.25}[paper.backbone.name]
    assert twin.backbone.options["width"] == width
    assert twin.backbone.weights == f"runs/pretrain/small-zf{'' if width == 1.0 else f'-w{width:g}'}.pt"


def test_twins_of_one_row_test_on_the_same_images():
    """07 and 07+12 twins differ in the training set only (VOC: both test on VOC 2007 test)."""
    small = load_experiment(CONFIGS / "scene_digits" / "table2_3fc_07.yaml")
    large = load_experiment(CONFIGS / "scene_digits" / "table2_3fc_0712.yaml")
    assert small.data.test == "test" and large.data.test == "data/scene-digits:test"
    assert small.data.val == "val" and large.data.val == "data/scene-digits:val"


def test_finetuned_nocs_match_the_pretrained_fc_layers():
    """A fine-tuned NoC copies fc6/fc7 and starts its conv layers as identities (paper, "Fine-tuning NoC"):
    its hidden fc widths are the backbone's fc6/fc7 width and its conv widths the conv5 width."""
    for path in ALL:
        cfg = load_experiment(path)
        if cfg.noc.init != "finetune":
            continue
        if cfg.backbone.name == "small-zf":
            conv5, fc = small_conv5_width(cfg), cfg.backbone.options["fc_dim"]
        else:
            conv5, fc = {"zf": 256, "vgg16": 512, "vgg19": 512}[cfg.backbone.name], 4096
        layers = parse_noc(cfg.noc.spec).resolve(num_classes(cfg)).layers
        hidden_fc = [layer.params["out"] for layer in layers if layer.kind == "fc"][:-1]
        convs = [layer.params["out"] for layer in layers if layer.kind == "conv"]
        assert hidden_fc == [fc, fc] and set(convs) <= {conv5}, path


def test_run_names_are_unique_and_fragments_rename_nothing():
    """Each experiment gets its own run folder (runs/<name>); a fragment, listed after a base,
    must not override the name of the file that lists it."""
    experiments = [p for p in ALL if str(p.relative_to(CONFIGS)) not in FRAGMENTS]
    assert len(experiments) == len(ALL) - len(FRAGMENTS)
    names = [load_experiment(p).name for p in experiments]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    for fragment in FRAGMENTS:
        assert "name" not in load_yaml(CONFIGS / fragment), fragment


def test_demo_config_is_the_scene_digits_setting_on_imagenet_features():
    demo = load_experiment(CONFIGS / "demo.yaml")
    base = load_experiment(CONFIGS / "scene_digits" / "base.yaml")
    lite0 = load_experiment(CONFIGS / "scene_digits" / "imagenet_lite0.yaml")
    assert demo.data == base.data == lite0.data and demo.sampling == base.sampling
    assert demo.backbone.name == "efficientnet-lite0" and demo.backbone.weights == "imagenet"
    assert parse_noc(demo.noc.spec).has_maxout


def test_readme_mentions_every_config_file():
    readme = (CONFIGS / "README.md").read_text(encoding="utf-8")
    missing = [str(p.relative_to(CONFIGS)) for p in ALL if str(p.relative_to(CONFIGS)) not in readme
               and p.name not in readme]
    assert not missing, f"configs/README.md does not mention {missing}"
