"""``nocdet evaluate``: score detection results with the PASCAL VOC devkit metric or COCO's.

VOC: ``--metric voc07|voc --voc-root ROOT --split test --results DIR`` where DIR holds the
devkit result files ``comp4_det_<split>_<class>.txt``. COCO: ``--metric coco --gt
instances.json --results results.json``. Prints a table; ``--out`` writes the numbers as JSON
(fractions in [0, 1]; null where undefined).
"""
from __future__ import annotations

import argparse
import sys
import warnings

from nocdet.errors import ConfigError
from nocdet.io import atomic_write_json

NAME = "evaluate"
HELP = "score detections: PASCAL VOC (devkit-exact, voc07 11-point or voc area AP) or COCO (pycocotools)"

_VOC_ONLY = ("voc_root", "classes", "year")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metric", required=True, choices=["voc07", "voc", "coco"],
                        help="voc07: VOC2007 11-point AP; voc: VOC2010+ area AP; coco: COCO AP@[.5:.95]")
    parser.add_argument("--results", required=True, metavar="PATH",
                        help="VOC: folder of comp4_det_<split>_<class>.txt files; COCO: results JSON")
    parser.add_argument("--out", metavar="JSON", help="also write the metrics to this JSON file")
    voc = parser.add_argument_group("PASCAL VOC")
    voc.add_argument("--voc-root", metavar="ROOT",
                     help="VOC folder (Annotations/, ImageSets/Main/, JPEGImages/), VOC<year> or VOCdevkit")
    voc.add_argument("--split", default="test", help="split name in ImageSets/Main (default: test)")
    voc.add_argument("--year", help="pick VOC<year> inside a VOCdevkit folder holding several")
    voc.add_argument("--classes", metavar="A,B,...",
                     help="classes to evaluate (default: the 20 VOC classes when the annotations use "
                          "only those, else the sorted names found)")
    voc.add_argument("--strict-threshold", action="store_true",
                     help="match at IoU > 0.5 as py-faster-rcnn, instead of the devkit's >= 0.5")
    coco = parser.add_argument_group("COCO")
    coco.add_argument("--gt", metavar="JSON", help="COCO instances JSON (ground truth)")


def _classes(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--classes is empty")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--classes names {', '.join(duplicates)} more than once")
    return names


def _run_voc(args: argparse.Namespace) -> dict:
    from nocdet.evaluation.voc import evaluate_voc_results_dir

    if args.gt is not None:
        raise ConfigError("--gt is for --metric coco; VOC ground truth comes from --voc-root")
    if args.voc_root is None:
        raise ConfigError(f"--metric {args.metric} needs --voc-root")
    result = evaluate_voc_results_dir(args.voc_root, args.split, args.results, args.metric,
                                      _classes(args.classes), year=args.year,
                                      strict_threshold=args.strict_threshold)
    print(result.format_table())
    return result.to_json()


def _run_coco(args: argparse.Namespace) -> dict:
    from nocdet.evaluation.coco import evaluate_coco_files, format_coco_table

    given = [f"--{name.replace('_', '-')}" for name in _VOC_ONLY if getattr(args, name) is not None]
    if args.strict_threshold:
        given.append("--strict-threshold")
    if given:
        raise ConfigError(f"{', '.join(given)} only apply to the VOC metrics")
    if args.gt is None:
        raise ConfigError("--metric coco needs --gt instances.json")
    metrics = evaluate_coco_files(args.gt, args.results, verbose=getattr(args, "verbose", False))
    print(format_coco_table(metrics))
    return metrics


def run(args: argparse.Namespace) -> int:
    # Readers report repairs and missing result files as warnings: show them as one line each.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            metrics = _run_coco(args) if args.metric == "coco" else _run_voc(args)
        finally:
            for w in caught:
                print(f"nocdet evaluate: warning: {w.message}", file=sys.stderr)
    if args.out:
        atomic_write_json(args.out, metrics)
        print(f"metrics written to {args.out}")
    return 0
