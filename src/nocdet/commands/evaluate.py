"""``nocdet evaluate``: score detections with the PASCAL VOC devkit metric or COCO's.

Result files: VOC ``--metric voc07|voc --voc-root ROOT --split test --results DIR`` where DIR
holds the devkit result files ``comp4_det_<split>_<class>.txt`` (only the annotations are read,
not the images); COCO ``--metric coco --gt instances.json --results results.json``, and the VOC
metrics of a COCO results file with ``--metric voc07|voc --gt instances.json --results
results.json``. Prints a table; ``--out`` writes the numbers as JSON
(fractions in [0, 1]; null where undefined).

A trained model: ``--checkpoint model.pt`` with ``--voc-root ROOT --split test`` or ``--gt
instances.json --images DIR`` runs the detector over the split (Selective Search, features,
NoC, NMS: ``detector.detect``; pipelined over the images for a frozen-feature model, see
``--workers`` and :mod:`nocdet.batch_detection`) and evaluates it, ``--metric all`` (default:
voc07, voc and coco) or one; ``--out DIR`` receives ``metrics.json`` and ``results/`` (the
devkit files and ``coco_results.json``), as a training run writes them.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from nocdet.errors import ConfigError
from nocdet.io import atomic_write_json, output_file, output_folder
from nocdet.threads import add_threads_argument

if TYPE_CHECKING:
    from nocdet.data.sample import DetectionDataset

NAME = "evaluate"
HELP = "score detections: PASCAL VOC (devkit-exact, voc07 11-point or voc area AP) or COCO (pycocotools)"

_VOC_ONLY = ("voc_root", "classes", "year")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metric", choices=["voc07", "voc", "coco", "all"],
                        help="voc07: VOC2007 11-point AP; voc: VOC2010+ area AP; coco: COCO AP@[.5:.95]; "
                             "all: the three (--checkpoint only, its default)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--results", metavar="PATH",
                        help="VOC: folder of comp4_det_<split>_<class>.txt files; COCO: results JSON")
    source.add_argument("--checkpoint", type=Path, metavar="MODEL",
                        help="model.pt of a nocdet train run: detect on the split, then evaluate")
    parser.add_argument("--out", metavar="PATH",
                        help="with --results: write the metrics to this JSON file; with --checkpoint: "
                             "a folder for metrics.json and results/")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="with --checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="with --checkpoint: no progress bar")
    add_threads_argument(parser)
    parser.add_argument("--workers", type=int, metavar="N",
                        help="with --checkpoint of a frozen-feature model: Selective Search processes running "
                             "ahead of the features and NoC (default: half of --threads); 0: one image at a "
                             "time in this process (the default with --threads 1)")
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
    coco.add_argument("--images", metavar="DIR", help="with --checkpoint: the folder of the --gt images")


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

    if args.gt is not None and args.voc_root is not None:
        raise ConfigError("give --voc-root (VOC result files) or --gt (a COCO results JSON), not both")
    if args.gt is not None:
        return _run_voc_on_coco(args)
    if args.voc_root is None:
        raise ConfigError(f"--metric {args.metric} needs --voc-root ROOT (devkit result files) or --gt "
                          "instances.json (a COCO results JSON)")
    result = evaluate_voc_results_dir(args.voc_root, args.split, args.results, args.metric,
                                      _classes(args.classes), year=args.year,
                                      strict_threshold=args.strict_threshold)
    print(result.format_table())
    return result.to_json()


def _run_voc_on_coco(args: argparse.Namespace) -> dict:
    """The VOC metric of a COCO results JSON against a COCO ground truth (no images needed)."""
    from nocdet.data.coco import coco_results_as_detections, read_coco, read_coco_results
    from nocdet.evaluation.voc import evaluate_voc

    given = [f"--{name.replace('_', '-')}" for name in ("classes", "year") if getattr(args, name) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} apply to VOC ground truth (--voc-root) only")
    dataset = read_coco(args.gt, Path(args.gt).parent)
    detections = coco_results_as_detections(read_coco_results(args.results), dataset, args.results)
    result = evaluate_voc(dataset, detections, metric=args.metric, strict_threshold=args.strict_threshold)
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


def _checkpoint_data(args: argparse.Namespace, classes: list[str]) -> tuple[DetectionDataset, str]:
    """The split a model is run on, with the model's classes; and its name for the result files."""
    from nocdet.data.coco import read_coco
    from nocdet.data.voc import read_voc

    if args.voc_root is not None and args.gt is not None:
        raise ConfigError("give --voc-root (VOC data) or --gt with --images (COCO data), not both")
    if args.gt is not None:
        if args.images is None:
            raise ConfigError("--gt with --checkpoint needs --images, the folder of its images")
        dataset = read_coco(args.gt, args.images)
        if dataset.classes != classes:
            raise ConfigError(f"the model's classes {classes} are not the categories of {args.gt}: "
                              f"{dataset.classes}")
        return dataset, Path(args.gt).stem
    if args.voc_root is None:
        raise ConfigError("--checkpoint needs the data: --voc-root ROOT [--split SPLIT] or --gt JSON --images DIR")
    if args.classes is not None:
        raise ConfigError("--classes does not apply to --checkpoint: the model's classes are evaluated")
    return read_voc(args.voc_root, args.split, classes, year=args.year), args.split


def _run_checkpoint(args: argparse.Namespace) -> dict:
    """Detect with a trained model over a split, print and return its metrics, write its results."""
    from nocdet.detector import load
    from nocdet.evaluation.coco import evaluate_coco, format_coco_table
    from nocdet.evaluation.voc import evaluate_voc
    from nocdet.frozen_detector import FrozenNoCDetector
    from nocdet.training.frozen_pipeline import write_results

    if args.out:
        output_folder(args.out)
    detector = load(args.checkpoint, args.device)
    dataset, split = _checkpoint_data(args, detector.classes)
    if isinstance(detector, FrozenNoCDetector):
        detections = detector.detect_dataset(dataset, progress=not args.no_progress, workers=args.workers)
    elif args.workers is not None:
        raise ConfigError("--workers runs Selective Search, which an end-to-end model does not use (its RPN "
                          "proposes the regions)")
    else:
        detections = detector.detect_dataset(dataset, progress=not args.no_progress)
    metric = args.metric or "all"
    metrics = {}
    voc_metrics = {"all": ("voc07", "voc"), "voc07": ("voc07",), "voc": ("voc",), "coco": ()}[metric]
    for name in voc_metrics:
        result = evaluate_voc(dataset, detections, metric=name, strict_threshold=args.strict_threshold)
        print(f"== {name} ==\n{result.format_table()}\n")
        metrics[name] = result.to_json()
    if metric in ("coco", "all"):
        metrics["coco"] = evaluate_coco(dataset, detections, verbose=getattr(args, "verbose", False))
        print(f"== coco ==\n{format_coco_table(metrics['coco'])}\n")
    if args.out:
        out = Path(args.out)
        write_results(out, dataset, split, detections)
        atomic_write_json(out / "metrics.json", metrics)
        print(f"metrics and result files written to {out}")
    return metrics


def _run_results(args: argparse.Namespace) -> dict:
    if args.metric is None or args.metric == "all":
        raise ConfigError("--results needs --metric voc07, voc or coco (all is for --checkpoint)")
    if args.images is not None:
        raise ConfigError("--images is for --checkpoint; with --results COCO needs --gt only")
    if args.out:
        output_file(args.out)
    metrics = _run_coco(args) if args.metric == "coco" else _run_voc(args)
    if args.out:
        atomic_write_json(args.out, metrics)
        print(f"metrics written to {args.out}")
    return metrics


def run(args: argparse.Namespace) -> int:
    from nocdet.threads import use_threads

    use_threads(args.threads)
    # Readers report repairs and missing result files as warnings: show them as one line each.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _run_checkpoint(args) if args.checkpoint is not None else _run_results(args)
        finally:
            for w in caught:
                print(f"nocdet evaluate: warning: {w.message}", file=sys.stderr)
    return 0
