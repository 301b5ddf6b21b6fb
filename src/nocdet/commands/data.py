"""``nocdet data make scene-digits|scene-glyphs``: generate an embedded data set and summarise it."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

NAME = "data"
HELP = ("make the embedded data sets (scene-digits: real MNIST digits in real photographs; "
        "scene-glyphs: letters and symbols in fonts, in real photographs)")
DATASETS = ("scene-digits", "scene-glyphs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    make = actions.add_parser(
        "make", help="generate a data set in the PASCAL VOC layout plus COCO files",
        description="Generate a data set in the PASCAL VOC layout (JPEGImages/, Annotations/, "
                    "ImageSets/Main/) plus COCO files (annotations/instances_<split>.json). "
                    "scene-digits: 10 classes, MNIST digits (the demo's data); scene-glyphs: 20 "
                    "classes, letters and symbols rendered from matplotlib's fonts, test fonts "
                    "unseen in training (docs/scene_glyphs.md).")
    make.add_argument("dataset", choices=DATASETS, help="which data set")
    make.add_argument("--out", required=True, type=Path,
                      help="output folder: new, empty, or a previous output of the same data set (replaced)")
    make.add_argument("--train", type=int, default=1000, metavar="N",
                      help="train-side images; every 8th is in val (default: %(default)s)")
    make.add_argument("--test", type=int, default=300, metavar="N", help="test images (default: %(default)s)")
    make.add_argument("--seed", type=int, default=0,
                      help="random seed; same seed, same bytes (default: %(default)s)")
    make.add_argument("--image-size", type=int, default=320, metavar="PX",
                      help="long side of the images in pixels (default: %(default)s)")
    make.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), metavar="W",
                      help="processes rendering images; the output does not depend on it "
                           "(default: %(default)s)")
    make.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def run(args: argparse.Namespace) -> int:
    if args.dataset == "scene-glyphs":
        from nocdet.data.scene_glyphs import generate_scene_glyphs as generate
    else:
        from nocdet.data.scene_digits import generate_scene_digits as generate

    start = time.perf_counter()
    out = generate(args.out, num_train=args.train, num_test=args.test, seed=args.seed,
                   image_size=args.image_size, progress=not args.no_progress, workers=args.workers)
    print(summary(out, time.perf_counter() - start))
    return 0


def summary(root: Path, seconds: float) -> str:
    """Images, objects per class and difficult objects of each split, read from ``dataset.json``."""
    description = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    counts = description["counts"]
    classes = description["classes"]
    name = description["generator"].removeprefix("nocdet ")
    widths = {c: max(5, len(c) + 1) for c in classes}
    header = f"{'split':<9}{'images':>7}{'objects':>8}{'difficult':>10}  " + "".join(f"{c:>{widths[c]}}" for c in classes)
    lines = [f"{name} (seed {description['config']['seed']}) written to {root} in {seconds:.1f} s", header]
    for split, c in counts.items():
        lines.append(f"{split:<9}{c['images']:>7}{c['objects']:>8}{c['difficult']:>10}  "
                     + "".join(f"{c['per_class'][name]:>{widths[name]}}" for name in classes))
    return "\n".join(lines)
