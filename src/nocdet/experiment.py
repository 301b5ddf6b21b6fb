"""The experiment configuration: one YAML file (with ``_base_`` inheritance) fully determines a run,
in either setting of the paper: ``setting: frozen`` (Sec. 3, a NoC on cached features of a fixed
backbone, the default) or ``setting: e2e`` (Sec. 4, Faster R-CNN with a NoC, trained end to end).

One schema serves both: the shared sections (``data``, ``backbone``, ``noc``, ``sampling``,
``test``, ``solver``) are defined once and checked one way (:meth:`ExperimentConfig.check`); the
sections only one setting has sit beside them (frozen: ``proposals``, ``pyramid``, ``svm``,
``bbox``; end to end: ``transform``, ``rpn``, ``roi``, :mod:`nocdet.e2e.config`). A field or
section one setting alone reads is declared ``only_in(setting, ...)``: it is None in the other
setting, and a config that sets it there is refused. Where the settings' defaults differ
(:data:`E2E_DEFAULTS`), the setting's table goes under the file's values at load.

Everything the paper's tables vary (backbone, scales, NoC string, initialisation, maxout, SVM vs
softmax scoring, box regression, training set, variant) is a field here, so a table row is a
small config file and a table is a folder of them (see ``configs/README.md``).

Data splits are written ``SPLIT`` (a split of ``data.root``), ``ROOT:SPLIT`` (another VOC root,
for "07+12"), or for COCO ``INSTANCES_JSON:IMAGE_DIR``.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from nocdet.config import (apply_overrides, bounded, check_bounds, clear_foreign, foreign_keys, from_dict,
                           load_yaml, merge, missing_own, only_in)
from nocdet.data.sample import DetectionDataset, concat
from nocdet.devices import check_device_name
from nocdet.e2e.config import RoIConfig, RPNConfig, TransformConfig, check_e2e_sections
from nocdet.errors import ConfigError, NocdetError
from nocdet.features.registry import REGISTRY, check_finetune_init, entry
from nocdet.noc.spec import parse_noc
from nocdet.postprocess import PostprocessConfig
from nocdet.training.bbox_regression import BoxRegressionConfig
from nocdet.training.roi_sampler import SamplingConfig
from nocdet.training.solver_config import SolverConfig, autocast_dtype
from nocdet.training.svm import SVMConfig

SETTINGS = ("frozen", "e2e")


@dataclass
class DataConfig:
    format: Literal["voc", "coco"] = "voc"
    root: str = "data/scene-digits"
    train: list[str] = field(default_factory=lambda: ["train"])
    val: str | None = "val"
    test: str = "test"
    classes: list[str] | None = None


@dataclass
class BackboneConfig:
    """The backbone (frozen: the feature extractor; end to end: the shared trunk). ``variant``
    (end to end, paper Table 8): ``c4`` pools RoIs from the stride-16 map before the last stage
    (res4 / inc4d / EfficientNet-Lite stage 6) so that the last stage can be the NoC; ``naive``
    pools after the last conv layer (res5c / inc5b / the EfficientNet head conv: stride 32;
    conv5_3 for VGG: stride 16); ``atrous`` pools after the last stage with its stride removed and
    its convs dilated (stride 16)."""

    name: str = "small-zf"
    weights: str | None = None  # None/"random", "imagenet[:ENUM]" (features/weights.py), or a checkpoint path
    options: dict[str, Any] = field(default_factory=dict)
    variant: Literal["c4", "naive", "atrous"] = only_in("e2e", "c4")


@dataclass
class ProposalConfig:
    method: Literal["selective_search", "file"] = "selective_search"
    files: dict = field(default_factory=dict)  # split -> proposals file (method "file")
    min_size: int = 20
    max_boxes: int = 2000
    max_side: int | None = None
    color_spaces: list[str] = field(default_factory=lambda: ["hsv", "lab"])
    ks: list[float] = field(default_factory=lambda: [50.0, 100.0])
    sigma: float = 0.8
    workers: int = 2


@dataclass
class PyramidConfig:
    scales: list[int] = field(default_factory=lambda: [480, 576, 688, 864, 1200])
    max_size: int | None = None
    pool: Literal["max", "align"] = "max"
    target_area: float = 224.0 * 224.0
    flip: bool = True
    # RoI feature cache store: "pooled" (every region's pooled features) or "maps" (the pyramid's
    # conv maps, regions pooled when read: ~8x less disk for ZF on VOC; configs/README.md)
    cache: Literal["pooled", "maps"] = "pooled"


@dataclass
class NoCConfig:
    """The NoC string (paper notation) and its initialisation. ``stage_stride`` (end to end) 2:
    res5a (eff7a) halves the pooled map (pool 14 x 14, work at 7 x 7); 1: no stride in the stage
    (pool 7 x 7); ResNets and EfficientNet-Lite only."""

    spec: str = "f4096-f4096-fn+1"
    init: Literal["gaussian", "finetune"] = "gaussian"
    fc_std: float = 0.01
    cls_std: float = 0.01
    dropout: float = bounded(0.0, ge=0, lt=1)  # after each hidden fc layer (SPPnet, Fast R-CNN's VGG-16: 0.5)
    # training-scale jitter: "all" pyramid levels (SPPnet; maxout: a random adjacent pair; needs
    # pyramid.cache maps), "random" of the two cached levels, or "best" (none); configs/README.md
    train_scale: Literal["all", "random", "best"] = only_in("frozen", "random")
    bbox_std: float = only_in("e2e", 0.001)  # init of the class-specific box deltas
    stage_stride: int = only_in("e2e", 2)


@dataclass
class SVMStageConfig(SVMConfig):
    """Post-hoc SVMs (paper Sec. 3.2): off unless ``enabled``."""

    enabled: bool = False


@dataclass
class BBoxStageConfig(BoxRegressionConfig):
    """Post-hoc ridge box regression ("+bb"): off unless ``enabled``."""

    enabled: bool = False


@dataclass
class TestConfig(PostprocessConfig):
    score: Literal["softmax", "svm"] = only_in("frozen", "softmax")


#: the end-to-end setting's defaults where they differ from the fields' (the frozen setting's):
#: the Faster R-CNN numbers (docs/reference.md §3, 4, 6) and schedule on MS COCO (solver_config.py)
E2E_DEFAULTS: dict[str, Any] = {
    "name": "e2e",
    "backbone": {"name": "small-resnet"},
    "noc": {"spec": "res5a,5b,5c, fcn+1"},
    "sampling": {"rois_per_image": 512, "bg_iou_lo": 0.0},  # Detectron's C4 count; the end-to-end band [0, 0.5)
    "solver": {"iterations": 320000, "lr": 0.003, "lr_steps": [240000], "weight_decay": 1e-4,
               "checkpoint_every": 5000, "log_every": 20, "val_every": 0},
}
SETTING_DEFAULTS: dict[str, dict[str, Any]] = {"frozen": {}, "e2e": E2E_DEFAULTS}


@dataclass
class ExperimentConfig:
    """One experiment of either setting; build it with :func:`load_experiment` or
    :func:`config_from_dict` (they apply the setting's defaults, refuse the other setting's fields
    and :meth:`check` it)."""

    name: str = "experiment"
    setting: Literal["frozen", "e2e"] = "frozen"
    seed: int = 0
    device: str = "cpu"
    cache_dir: str = only_in("frozen", ".cache/nocdet")
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    noc: NoCConfig = field(default_factory=NoCConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    proposals: ProposalConfig | None = only_in("frozen", default_factory=ProposalConfig)
    pyramid: PyramidConfig | None = only_in("frozen", default_factory=PyramidConfig)
    svm: SVMStageConfig | None = only_in("frozen", default_factory=SVMStageConfig)
    bbox: BBoxStageConfig | None = only_in("frozen", default_factory=BBoxStageConfig)
    transform: TransformConfig | None = only_in("e2e", default_factory=TransformConfig)
    rpn: RPNConfig | None = only_in("e2e", default_factory=RPNConfig)
    roi: RoIConfig | None = only_in("e2e", default_factory=RoIConfig)

    def __post_init__(self) -> None:
        clear_foreign(self, self.setting)  # the other setting's fields are None

    def check(self) -> ExperimentConfig:
        """Every rule a type check cannot do: the fields' bounds, then the rules between fields,
        shared ones first, then the setting's own."""
        check_bounds(self)
        missing = missing_own(self, self.setting)
        if missing:
            raise ConfigError(f"{', '.join(missing)}: null, but the {self.setting} setting needs a value")
        if not self.data.train:
            raise ConfigError("data.train lists no split")
        check_device_name(self.device)
        autocast_dtype(self.solver.amp, self.device)
        s = self.sampling
        if not s.bg_iou_lo < s.bg_iou_hi <= s.fg_iou:
            raise ConfigError(f"sampling: the background band [bg_iou_lo, bg_iou_hi) = [{s.bg_iou_lo}, "
                              f"{s.bg_iou_hi}) must be non-empty and below fg_iou {s.fg_iou}")
        steps = self.solver.lr_steps
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ConfigError(f"solver.lr_steps must increase strictly, got {steps}")
        if self.noc.init == "finetune":
            check_finetune_init(self.backbone.name)
        if self.setting == "e2e":
            self._check_e2e()
        else:
            self._check_frozen()
        return self

    def _check_frozen(self) -> None:
        if self.noc.train_scale == "all" and self.pyramid.cache != "maps":
            raise ConfigError("noc.train_scale 'all' pools each training region at a random level of the whole "
                              "pyramid, but pyramid.cache 'pooled' keeps only the two levels bracketing its "
                              "ideal scale: set pyramid.cache: maps (SPPnet's cache) or noc.train_scale: random")
        if self.test.score == "svm" and not self.svm.enabled:
            raise ConfigError("test.score is 'svm' but svm.enabled is false; enable the SVM stage")
        scales = self.pyramid.scales
        if sorted(scales) != list(scales) or len(set(scales)) != len(scales):
            raise ConfigError(f"pyramid.scales must be strictly increasing, got {scales}")
        if self.solver.iterations == 0 and self.test.score != "svm":
            raise ConfigError("solver.iterations is 0 (no NoC training): only the post-hoc SVMs can then score "
                              "(SVM on RoI features, test.score: svm); otherwise give iterations >= 1")
        if self.solver.val_every < 1:
            raise ConfigError(f"solver.val_every must be >= 1 in the frozen setting, got {self.solver.val_every}")

    def _check_e2e(self) -> None:
        check_e2e_sections(self.transform, self.rpn)
        if self.solver.iterations < 1:
            raise ConfigError(f"solver.iterations must be >= 1 in the e2e setting, got {self.solver.iterations}")
        b, noc = self.backbone, self.noc
        set_by_variant = sorted({"upto", "atrous"} & set(b.options))
        if set_by_variant:
            raise ConfigError(f"backbone.options {set_by_variant}: set backbone.variant (c4, naive, atrous) instead")
        if b.variant not in entry(b.name).variants:
            with_variants = [n for n, e in REGISTRY.items() if b.variant in e.variants]
            raise ConfigError(f"backbone.variant {b.variant!r}: backbone {b.name!r} has one trunk, its last "
                              f"conv layer; use variant 'naive' (variants c4/atrous: {', '.join(with_variants)})")
        spec = parse_noc(noc.spec)
        if spec.has_maxout:
            raise ConfigError(f"noc.spec {noc.spec!r}: a maxout NoC takes two pyramid scales per region; the "
                              "end-to-end setting pools one feature map")
        if any(layer.kind == "stage" for layer in spec.layers) and b.variant != "c4":
            raise ConfigError(f"noc.spec {noc.spec!r} reuses the last stage of the trunk, which variant "
                              f"{b.variant!r} already runs on the whole image: use variant 'c4'")
        if noc.stage_stride not in (1, 2):
            raise ConfigError(f"noc.stage_stride must be 1 or 2, got {noc.stage_stride}")
        if noc.stage_stride == 1 and b.name == "googlenet":
            raise ConfigError("noc.stage_stride 1 is for ResNets and EfficientNet-Lite; GoogLeNet's inc5a "
                              "keeps maxpool4")


#: the old end-to-end file layout: ``detector: faster-rcnn`` and the model's sections under ``model:``
LEGACY_DETECTOR = "faster-rcnn"


def translate_legacy(data: Mapping, source: str | None = None) -> dict:
    """A config mapping in the current schema. The old end-to-end layout (``detector:
    faster-rcnn``, the backbone, transform, rpn, roi, noc, sampling and test sections under
    ``model:``) becomes ``setting: e2e`` with those sections at the top level; ``source`` (a file
    name) gets a one-line deprecation note. Anything else is returned unchanged."""
    if "detector" not in data and "model" not in data:
        return dict(data)
    out = {k: v for k, v in data.items() if k not in ("detector", "model")}
    detector = data.get("detector", LEGACY_DETECTOR)
    if detector != LEGACY_DETECTOR:
        raise ConfigError(f"detector {detector!r}: the end-to-end setting is {LEGACY_DETECTOR!r}")
    if out.get("setting", "e2e") != "e2e":
        raise ConfigError(f"setting {out['setting']!r} with the old end-to-end keys 'detector'/'model'")
    model = data.get("model") or {}
    if not isinstance(model, Mapping):
        raise ConfigError(f"model: expected a mapping, got {model!r}")
    for key, value in model.items():
        both = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = merge(out[key], value) if both else value
    out["setting"] = "e2e"
    if source is not None:
        warnings.warn(f"{source}: old end-to-end layout (detector: faster-rcnn, sections under model:), read as "
                      "setting: e2e with model's sections at the top level; see configs/e2e/README.md",
                      FutureWarning, stacklevel=3)
    return out


def config_from_dict(data: Mapping, source: str | None = None) -> ExperimentConfig:
    """The checked config of a mapping (a merged YAML file, a dict, a checkpoint's ``config``):
    old end-to-end layout translated, the other setting's fields refused, the setting's default
    table under the given values."""
    data = translate_legacy(data, source)
    setting = data.get("setting", "frozen")
    if setting not in SETTINGS:
        raise ConfigError(f"setting: {setting!r} is not one of {', '.join(map(repr, SETTINGS))}")
    foreign = foreign_keys(ExperimentConfig, data, setting)
    if foreign:
        raise ConfigError(f"{', '.join(foreign)}: not read in the {setting} setting (setting: {setting}); "
                          "remove them or change the setting")
    return from_dict(ExperimentConfig, merge(SETTING_DEFAULTS[setting], data)).check()


def load_experiment(path: str | Path | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load ``path`` (``_base_`` inheritance), apply ``key.path=value`` overrides, check."""
    data = load_yaml(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides), None if path is None else str(path))


def load_split(data: DataConfig, split: str, classes: Sequence[str] | None = None,
               category_ids: Sequence[int] | None = None) -> DetectionDataset:
    """One data split named as described in the module docstring. With ``classes`` (those of
    the training split; for COCO with their ``category_ids``) the split is read onto them, and
    a COCO split whose categories differ by name or id is a DataError."""
    if data.format == "coco":
        from nocdet.data.coco import check_categories, read_coco

        if ":" not in split:
            raise ConfigError(f"a COCO split is written INSTANCES_JSON:IMAGE_DIR, got {split!r}")
        json_path, image_dir = split.rsplit(":", 1)
        dataset = read_coco(json_path, image_dir)
        if classes is not None:
            check_categories(dataset, classes, category_ids, json_path)
        return dataset
    from nocdet.data.voc import read_voc

    root, name = split.rsplit(":", 1) if ":" in split else (data.root, split)
    return read_voc(root, name, classes if classes is not None else data.classes)


@dataclass
class ExperimentData:
    """The splits of an experiment, every one on the training split's classes."""

    train: DetectionDataset
    val: DetectionDataset | None
    test: DetectionDataset


def load_experiment_data(data: DataConfig, noc_spec: str) -> ExperimentData:
    """Read the train, val and test splits and check, before any work, that they share the
    training classes and that the NoC's classifier ``noc_spec`` has classes + 1 outputs."""
    train = load_splits(data, data.train)
    spec = parse_noc(noc_spec)
    try:
        spec.check_classes(train.num_classes)
    except NocdetError as err:
        raise ConfigError(f"NoC {noc_spec!r}: {err}") from err
    test = load_split(data, data.test, train.classes, train.category_ids)
    val = load_split(data, data.val, train.classes, train.category_ids) if data.val else None
    return ExperimentData(train, val, test)


def split_name(data: DataConfig, split: str) -> str:
    """The short name of a split, used in result file names and reports: the VOC split's name
    (``ROOT:test`` -> ``test``), or a COCO JSON's stem without ``instances_`` (-> ``test``)."""
    if data.format == "coco":
        stem = Path(split.rsplit(":", 1)[0]).stem
        return stem.removeprefix("instances_") or stem
    return split.rsplit(":", 1)[-1]


def split_record(data: DataConfig, split: str) -> dict[str, str]:
    """Where a split's annotations are, as ``run.json`` records the test split for the report."""
    if data.format == "coco":
        json_path, image_dir = split.rsplit(":", 1)
        return {"format": "coco", "root": str(Path(json_path).resolve()), "images": str(Path(image_dir).resolve()),
                "test_split": split_name(data, split)}
    root = split.rsplit(":", 1)[0] if ":" in split else data.root
    return {"format": data.format, "root": str(Path(root).resolve()), "test_split": split_name(data, split)}


def load_splits(data: DataConfig, splits: Sequence[str], classes: Sequence[str] | None = None) -> DetectionDataset:
    """Several splits concatenated ("07+12"); the first one fixes the class list."""
    first = load_split(data, splits[0], classes)
    rest = [load_split(data, s, first.classes, first.category_ids) for s in splits[1:]]
    return concat([first, *rest]) if rest else first
