"""``nocdet pretrain``: pre-train a small backbone on crops of the train split (our ImageNet stand-in).

The weights file it writes is what ``backbone.weights`` in an experiment config points to: the
frozen-feature setting uses its conv layers, a fine-tuned NoC its fc6/fc7 (paper Sec. 3.4).
"""
from __future__ import annotations

import argparse

from nocdet.errors import ConfigError
from nocdet.training.pretrain_settings import PretrainSettings

NAME = "pretrain"
HELP = ("pre-train a backbone (conv layers + fc6/fc7) as a classifier of object and background crops "
        "of the train split, standing in for ImageNet pre-training")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--voc-root", required=True, metavar="DIR", help="data set in the PASCAL VOC layout")
    parser.add_argument("--split", default="train",
                        help="split to cut the crops from (default: train); never a test split")
    parser.add_argument("--backbone", default="small-zf", help="backbone name (default: small-zf)")
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
    parser.add_argument("--threads", type=int, help="torch threads (default: the CPUs available)")
    parser.add_argument("--out", help="weights file to write (default: pretrained-<backbone>.pt)")
    parser.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from nocdet.config import apply_overrides, dump_yaml
    from nocdet.data.voc import read_voc
    from nocdet.training.pretrain import pretrain

    if "test" in args.split.lower():
        raise ConfigError(f"--split {args.split!r}: pre-training on test images would leak them into the "
                          "features the detector is evaluated with; use the train split")
    options = apply_overrides({}, args.option)
    out = args.out or f"pretrained-{args.backbone}.pt"
    dataset = read_voc(args.voc_root, args.split)
    result = pretrain(args.backbone, options, dataset, out, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, seed=args.seed, crop_size=args.crop_size, progress=not args.no_progress,
                      resume=args.resume, threads=args.threads)
    if result.interrupted:
        print(f"interrupted ({result.interrupted}) after {result.epochs} finished epoch(s); "
              f"{out} holds them: rerun with --resume to continue")
        return 130
    print(f"held-out accuracy {result.accuracy:.2%} ({result.num_heldout} crops; {result.num_train} trained on) "
          f"after {result.epochs} epochs, {result.seconds:.0f} s")
    print(f"weights: {out}\nuse them in an experiment config as\n"
          + dump_yaml({"backbone": {"name": args.backbone, "weights": str(out), "options": options}}).rstrip())
    return 0
