"""``nocdet pretrain``: pre-train a small backbone on crops of the train split (our ImageNet stand-in).

The weights file it writes is what ``backbone.weights`` in an experiment config points to: the
frozen-feature setting uses its conv layers, a fine-tuned NoC its fc6/fc7 (paper Sec. 3.4).

The crops come from ``--voc-root ROOT [--split train]``, ``--coco INSTANCES_JSON:IMAGE_DIR``, or
``--config EXPERIMENT.yaml`` (its ``data.train`` splits, either format; its backbone too unless
``--backbone`` is given).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from nocdet.errors import ConfigError
from nocdet.threads import add_threads_argument
from nocdet.training.pretrain_settings import PretrainSettings

if TYPE_CHECKING:
    from nocdet.data.sample import DetectionDataset

NAME = "pretrain"
HELP = ("pre-train a backbone (conv layers + fc6/fc7) as a classifier of object and background crops "
        "of the train split, standing in for ImageNet pre-training")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--voc-root", metavar="DIR", help="data set in the PASCAL VOC layout")
    source.add_argument("--coco", metavar="INSTANCES_JSON:IMAGE_DIR", help="a COCO-format train split")
    source.add_argument("--config", type=Path, metavar="YAML",
                        help="an experiment config: its data.train splits (VOC or COCO) and backbone")
    parser.add_argument("--split", default="train",
                        help="with --voc-root: split to cut the crops from (default: train); never a test split")
    parser.add_argument("--backbone", default=None,
                        help="backbone name (default: the --config's, else small-zf)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="backbone option, repeatable, value parsed as YAML (e.g. width=1.0, stride=8)")
    defaults = PretrainSettings()
    parser.add_argument("--epochs", type=int, default=defaults.epochs,
                        help=f"passes over the crops (default: {defaults.epochs})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"crops per SGD step (default: {defaults.batch_size})")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"peak learning rate (default: {defaults.lr})")
    parser.add_argument("--crop-size", type=int, default=defaults.crop_size,
                        help=f"crop side in pixels (default: {defaults.crop_size})")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help=f"seed of the crops, initialisation and order (default: {defaults.seed})")
    add_threads_argument(parser)
    parser.add_argument("--out", help="weights file to write (default: pretrained-<backbone>.pt)")
    parser.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train_split(args: argparse.Namespace) -> tuple[DetectionDataset, str, dict]:
    """The data set to cut crops from, and the backbone name and options to pre-train."""
    from nocdet.config import apply_overrides
    from nocdet.experiment import DataConfig, load_splits, split_name
    from nocdet.experiment import load_experiment

    backbone, options = args.backbone or "small-zf", {}
    if args.config is not None:
        cfg = load_experiment(args.config)
        data = cfg.data
        splits = list(data.train)
        if args.backbone is None and cfg.setting == "frozen":  # frozen setting: its small backbone
            backbone, options = cfg.backbone.name, dict(cfg.backbone.options)
    elif args.coco is not None:
        data, splits = DataConfig(format="coco"), [args.coco]
    else:
        data, splits = DataConfig(format="voc", root=args.voc_root), [args.split]
    for split in splits:
        if "test" in split_name(data, split).lower():
            raise ConfigError(f"split {split!r}: pre-training on test images would leak them into the "
                              "features the detector is evaluated with; use the train split")
    return load_splits(data, splits), backbone, apply_overrides(options, args.option)


def run(args: argparse.Namespace) -> int:
    from nocdet.config import dump_yaml
    from nocdet.threads import use_threads
    from nocdet.training.pretrain import pretrain

    threads = use_threads(args.threads)
    dataset, backbone, options = _train_split(args)
    out = args.out or f"pretrained-{backbone}.pt"
    result = pretrain(backbone, options, dataset, out, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, seed=args.seed, crop_size=args.crop_size, progress=not args.no_progress,
                      resume=args.resume, threads=threads)
    if result.interrupted:
        print(f"interrupted ({result.interrupted}) after {result.epochs} finished epoch(s); "
              f"{out} holds them: rerun with --resume to continue")
        return 130
    print(f"held-out accuracy {result.accuracy:.2%} ({result.num_heldout} crops; {result.num_train} trained on) "
          f"after {result.epochs} epochs, {result.seconds:.0f} s")
    print(f"weights: {out}\nuse them in an experiment config as\n"
          + dump_yaml({"backbone": {"name": backbone, "weights": str(out), "options": options}}).rstrip())
    return 0
