"""``nocdet proposals``: Selective Search proposals for the frozen-feature detector.

* ``nocdet proposals compute --voc-root ROOT --split trainval [--out proposals.npz] [--recall]``
  runs Selective Search "fast" (docs/reference.md §3) on every image of the split, in worker processes,
  caching each image's boxes (default cache: ``$XDG_CACHE_HOME/nocdet/proposals``, i.e.
  ``~/.cache/nocdet/proposals``), and prints the boxes per image and, with ``--recall``, the
  recall at IoU 0.5 and 0.7.
* ``nocdet proposals convert-mat voc_2007_test.mat --out ss_test.npz`` converts R-CNN's
  precomputed ``selective_search_data`` file (see :mod:`nocdet.proposals.files`).
* ``nocdet proposals recall FILE --voc-root ROOT --split test`` measures a proposal file.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from nocdet.errors import ConfigError

NAME = "proposals"
HELP = "region proposals: Selective Search (cached), R-CNN .mat conversion, proposal recall"

_THRESHOLDS = (0.5, 0.7)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/nocdet/proposals`` (``~/.cache/nocdet/proposals`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nocdet" / "proposals"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    compute = actions.add_parser("compute", help="run Selective Search on a VOC split (cached)",
                                 description="Run Selective Search 'fast' on every image of a split.")
    _add_voc_arguments(compute, required=True)
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

    convert = actions.add_parser("convert-mat", help="convert R-CNN's selective_search_data .mat file",
                                 description="Convert an R-CNN / Fast R-CNN selective_search_data .mat "
                                             "file (1-based [y1 x1 y2 x2] boxes) to a proposal file.")
    convert.add_argument("mat", type=Path, help="e.g. selective_search_data/voc_2007_test.mat")
    convert.add_argument("--out", type=Path, required=True, metavar="FILE",
                         help="proposal file (.npz or .json)")
    _add_voc_arguments(convert, required=False,
                       note="with it, only the split's images are written, checked against their sizes")
    convert.add_argument("--recall", action="store_true", help="print recall (needs --voc-root)")

    recall = actions.add_parser("recall", help="recall of a proposal file on a VOC split",
                                description="Print proposal recall at IoU 0.5 and 0.7 and boxes per image.")
    recall.add_argument("file", type=Path, help="proposal file (.npz or .json)")
    _add_voc_arguments(recall, required=True)


def _add_voc_arguments(parser: argparse.ArgumentParser, required: bool, note: str = "") -> None:
    group = parser.add_argument_group("PASCAL VOC", note or None)
    group.add_argument("--voc-root", required=required, metavar="ROOT",
                       help="VOC folder (Annotations/, ImageSets/Main/, JPEGImages/), VOC<year> or VOCdevkit")
    if required:
        group.add_argument("--split", required=True, help="split name in ImageSets/Main, e.g. trainval")
    else:
        group.add_argument("--split", default="test", help="split name in ImageSets/Main (default: test)")
    group.add_argument("--year", help="pick VOC<year> inside a VOCdevkit folder holding several")


def run(args: argparse.Namespace) -> int:
    return {"compute": _compute, "convert-mat": _convert, "recall": _recall}[args.action](args)


def _compute(args: argparse.Namespace) -> int:
    from nocdet.data.voc import read_voc
    from nocdet.proposals.files import save_proposals
    from nocdet.proposals.selective_search import compute_proposals

    if args.no_cache and args.cache is not None:
        raise ConfigError("--cache and --no-cache contradict each other")
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    if args.max_boxes < 0:
        raise ConfigError(f"--max-boxes must be >= 0, got {args.max_boxes}")
    settings = {"min_size": args.min_size, "max_boxes": args.max_boxes or None, "max_side": args.max_side}
    dataset = read_voc(args.voc_root, args.split, year=args.year)
    cache = None if args.no_cache else (args.cache or default_cache_dir())
    proposals = compute_proposals(dataset, cache, settings, workers=args.workers)
    if args.out is not None:
        save_proposals(args.out, proposals)
        print(f"wrote proposals of {len(proposals)} images to {args.out}")
    _report(dataset, proposals, with_recall=args.recall)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from nocdet.data.voc import read_voc
    from nocdet.proposals.files import convert_rcnn_mat, load_proposals

    if args.recall and args.voc_root is None:
        raise ConfigError("--recall needs --voc-root (the ground truth)")
    dataset = None
    if args.voc_root is not None:
        dataset = read_voc(args.voc_root, args.split, year=args.year)
    ids = None if dataset is None else [s.image_id for s in dataset.samples]
    proposals = convert_rcnn_mat(args.mat, args.out, ids)
    print(f"wrote proposals of {len(proposals)} images to {args.out}")
    if dataset is not None:
        proposals = load_proposals(args.out, dataset)  # checks the boxes against the image sizes
        _report(dataset, proposals, with_recall=args.recall)
    return 0


def _recall(args: argparse.Namespace) -> int:
    from nocdet.data.voc import read_voc
    from nocdet.proposals.files import load_proposals

    dataset = read_voc(args.voc_root, args.split, year=args.year)
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
