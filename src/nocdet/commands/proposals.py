"""``nocdet proposals``: Selective Search proposals for the frozen-feature detector.

* ``nocdet proposals compute --voc-root ROOT --split trainval [--out proposals.npz] [--recall]``
  runs Selective Search "fast" (docs/reference.md §3) on every image of the split, in worker processes,
  caching each image's boxes (default cache: ``$XDG_CACHE_HOME/nocdet/proposals``, i.e.
  ``~/.cache/nocdet/proposals``), and prints the boxes per image and, with ``--recall``, the
  recall at IoU 0.5 and 0.7.
* ``nocdet proposals convert-mat voc_2007_test.mat --out ss_test.npz`` converts R-CNN's
  precomputed ``selective_search_data`` file (see :mod:`nocdet.proposals.files`).
* ``nocdet proposals recall FILE --voc-root ROOT --split test`` measures a proposal file.

Wherever ``--voc-root ROOT --split SPLIT`` names the images, ``--coco INSTANCES_JSON:IMAGE_DIR``
names a COCO-format split instead.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from nocdet.errors import ConfigError
from nocdet.threads import add_threads_argument

if TYPE_CHECKING:
    from nocdet.data.sample import DetectionDataset

NAME = "proposals"
HELP = "region proposals: Selective Search (cached), R-CNN .mat conversion, proposal recall"

_THRESHOLDS = (0.5, 0.7)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/nocdet/proposals`` (``~/.cache/nocdet/proposals`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nocdet" / "proposals"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    compute = actions.add_parser("compute", help="run Selective Search on a VOC or COCO split (cached)",
                                 description="Run Selective Search 'fast' on every image of a split.")
    _add_data_arguments(compute, required=True)
    compute.add_argument("--cache", type=Path, metavar="DIR",
                         help=f"per-image cache folder (default: {default_cache_dir()})")
    compute.add_argument("--no-cache", action="store_true", help="compute everything, cache nothing")
    compute.add_argument("--workers", type=int, default=2,
                         help="worker processes (0: run in this process; default 2)")
    compute.add_argument("--min-size", type=int, default=20,
                         help="drop boxes narrower or lower than this many pixels (default 20, as "
                              "R-CNN on VOC; use about 8 for small images such as scene-digits)")
    compute.add_argument("--max-boxes", type=int, default=2000,
                         help="keep the first boxes of Selective Search's ranking "
                              "(default 2000; 0 keeps all)")
    compute.add_argument("--max-side", type=int,
                         help="shrink larger images to this longer side for speed; boxes are scaled back")
    compute.add_argument("--out", type=Path, metavar="FILE", help="write the proposals (.npz or .json)")
    compute.add_argument("--recall", action="store_true", help="print recall at IoU 0.5 and 0.7")
    add_threads_argument(compute)

    convert = actions.add_parser("convert-mat", help="convert R-CNN's selective_search_data .mat file",
                                 description="Convert an R-CNN / Fast R-CNN selective_search_data .mat "
                                             "file (1-based [y1 x1 y2 x2] boxes) to a proposal file.")
    convert.add_argument("mat", type=Path, help="e.g. selective_search_data/voc_2007_test.mat")
    convert.add_argument("--out", type=Path, required=True, metavar="FILE",
                         help="proposal file (.npz or .json)")
    _add_data_arguments(convert, required=False,
                        note="with it, only the split's images are written, checked against their sizes")
    convert.add_argument("--recall", action="store_true", help="print recall (needs --voc-root or --coco)")

    recall = actions.add_parser("recall", help="recall of a proposal file on a VOC or COCO split",
                                description="Print proposal recall at IoU 0.5 and 0.7 and boxes per image.")
    recall.add_argument("file", type=Path, help="proposal file (.npz or .json)")
    _add_data_arguments(recall, required=True)


def _add_data_arguments(parser: argparse.ArgumentParser, required: bool, note: str = "") -> None:
    group = parser.add_argument_group("data: a VOC split or a COCO one", note or None)
    source = group.add_mutually_exclusive_group(required=required)
    source.add_argument("--voc-root", metavar="ROOT",
                        help="VOC folder (Annotations/, ImageSets/Main/, JPEGImages/), VOC<year> or VOCdevkit")
    source.add_argument("--coco", metavar="INSTANCES_JSON:IMAGE_DIR", help="a COCO instances JSON and its images")
    group.add_argument("--split", default=None,
                       help="with --voc-root: split name in ImageSets/Main, e.g. trainval"
                            + ("" if required else " (default: test)"))
    group.add_argument("--year", help="pick VOC<year> inside a VOCdevkit folder holding several")


def _dataset(args: argparse.Namespace, default_split: str | None = None) -> DetectionDataset | None:
    """The split that ``--voc-root``/``--split`` or ``--coco`` names (None if neither is given)."""
    from nocdet.data.voc import read_voc
    from nocdet.experiment import DataConfig, load_split

    if args.coco is not None:
        if args.split is not None or args.year is not None:
            raise ConfigError("--split and --year are for --voc-root; --coco names its split itself")
        return load_split(DataConfig(format="coco"), args.coco)
    if args.voc_root is None:
        return None
    split = args.split or default_split
    if split is None:
        raise ConfigError("--voc-root needs --split, e.g. --split trainval")
    return read_voc(args.voc_root, split, year=args.year)


def run(args: argparse.Namespace) -> int:
    return {"compute": _compute, "convert-mat": _convert, "recall": _recall}[args.action](args)


def _compute(args: argparse.Namespace) -> int:
    from nocdet.proposals.files import save_proposals
    from nocdet.proposals.selective_search import compute_proposals
    from nocdet.threads import use_threads

    use_threads(args.threads)

    if args.no_cache and args.cache is not None:
        raise ConfigError("--cache and --no-cache contradict each other")
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    if args.max_boxes < 0:
        raise ConfigError(f"--max-boxes must be >= 0, got {args.max_boxes}")
    settings = {"min_size": args.min_size, "max_boxes": args.max_boxes or None, "max_side": args.max_side}
    dataset = _dataset(args)
    cache = None if args.no_cache else (args.cache or default_cache_dir())
    proposals = compute_proposals(dataset, cache, settings, workers=args.workers)
    if args.out is not None:
        save_proposals(args.out, proposals)
        print(f"wrote proposals of {len(proposals)} images to {args.out}")
    _report(dataset, proposals, with_recall=args.recall)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from nocdet.proposals.files import convert_rcnn_mat, load_proposals

    if args.recall and args.voc_root is None and args.coco is None:
        raise ConfigError("--recall needs the ground truth: --voc-root or --coco")
    dataset = _dataset(args, default_split="test")
    ids = None if dataset is None else [s.image_id for s in dataset.samples]
    proposals = convert_rcnn_mat(args.mat, args.out, ids)
    print(f"wrote proposals of {len(proposals)} images to {args.out}")
    if dataset is not None:
        proposals = load_proposals(args.out, dataset)  # checks the boxes against the image sizes
        _report(dataset, proposals, with_recall=args.recall)
    return 0


def _recall(args: argparse.Namespace) -> int:
    from nocdet.proposals.files import load_proposals

    dataset = _dataset(args)
    _report(dataset, load_proposals(args.file, dataset), with_recall=True)
    return 0


def _report(dataset, proposals, with_recall: bool) -> None:
    from nocdet.proposals.recall import proposal_recall

    result = proposal_recall(dataset, proposals, _THRESHOLDS)
    sizes = result["boxes_per_image"]
    print(f"{result['num_images']} images; boxes per image: mean {sizes['mean']:.1f}, "
          f"median {sizes['median']:.0f}, min {sizes['min']}, max {sizes['max']}")
    if not with_recall:
        return
    header = "".join(f"  IoU>={t:<4}" for t in _THRESHOLDS)
    print(f"recall over {result['num_gt']} objects (difficult ones ignored)")
    print(f"{'class':<16}{'objects':>8}{header}")
    rows = [(name, result["num_gt_per_class"][name], result["per_class"][name]) for name in dataset.classes]
    rows.append(("all", result["num_gt"], result["recall"]))
    for name, count, recalls in rows:
        cells = "".join(f"  {_fmt(recalls[t]):>9}" for t in _THRESHOLDS)
        print(f"{name:<16}{count:>8}{cells}")
    mabo = result["mean_best_iou"]
    print(f"mean best overlap (MABO): {_fmt(mabo)}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
