"""``nocdet detect --checkpoint model.pt IMAGES_OR_FOLDERS --out DIR``: detection on any image.

Writes one PNG per image with the boxes, class names and scores drawn, and ``detections.json``
(COCO-style: file, image_id, bbox [x, y, w, h], score, category and category_id, the training data
set's own id of the class: its COCO category id, or the label 1..K for VOC data), both holding the
detections scoring at least ``--threshold``; and ``coco_results.json``, every detection in COCO's
results format (image_id, category_id, bbox, score; image ids from ``--coco-gt`` or the file
names, see :func:`coco_image_ids_of`) for ``nocdet evaluate --metric coco``. Boxes are always
in the original image's pixels; the PNG of an image whose longer side is under 480 pixels is
drawn enlarged by a whole factor so that its labels stay readable (said at the end; ``--keep-size``
draws every PNG at its image's size). Folders are searched recursively for
image extensions (other files are skipped and counted). Any image format and mode Pillow reads
works (grayscale, palette, RGBA, 16-bit, CMYK; see :mod:`nocdet.data.images`). An image larger
than the model's largest resize of it (its finest pyramid level, or the end-to-end transform's
size) is decoded at that size (JPEGs by libjpeg's DCT scaling), since the model sees no finer
detail: a 20000 x 20000 photo never occupies its full size in memory, and its PNG is drawn at
the decoded size (boxes in ``detections.json`` are still in its own pixels).

A file that cannot be used (empty, truncated, not an image, missing) does not stop the run: it
is reported at the end, after all other images are done, with its reason, the count of such
files among all image files, and ``failed.json`` in the output folder (``[{"file", "error"}]``,
empty when all went well). The exit status is then 1 (0 when every image was processed).

Several images with a frozen-feature model are detected pipelined (:mod:`nocdet.batch_detection`):
Selective Search in ``--workers`` processes runs ahead of the features and the NoC, which run on
as many images at a time as ``--threads`` (with one thread, images go one at a time); the
detections are those of ``--workers 0``, one image at a time in this process.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nocdet.threads import add_threads_argument

if TYPE_CHECKING:
    from nocdet.detector import Detector

NAME = "detect"
HELP = "detect objects in JPEG/PNG images with a trained model.pt; draw and save the results"
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, help="image files or folders of images")
    parser.add_argument("--checkpoint", type=Path, required=True, help="model.pt of a nocdet train run")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--threshold", type=float, default=0.3,
                        help="score from which boxes are drawn and written to detections.json (default 0.3; "
                             "coco_results.json keeps every detection, as AP needs the whole ranking)")
    parser.add_argument("--coco-gt", type=Path, metavar="JSON",
                        help="COCO instances JSON of these images: coco_results.json then uses its image ids "
                             "(matched by file name), so `nocdet evaluate --metric coco --gt JSON` scores it")
    parser.add_argument("--keep-size", action="store_true",
                        help="draw each PNG at its image's size (default: images under 480 px are enlarged "
                             "so that the labels stay readable)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--no-progress", action="store_true")
    add_threads_argument(parser)
    parser.add_argument("--workers", type=int, metavar="N",
                        help="Selective Search processes running ahead of the features and NoC over several "
                             "images (frozen-feature models; default: half of --threads); 0: one image at a time "
                             "in this process (the default with --threads 1)")


def image_files(inputs: list[Path]) -> tuple[list[Path], int]:
    """The files to detect on (named files as given, folders searched recursively for image
    extensions) and the number of folder entries skipped for their extension."""
    files: list[Path] = []
    skipped = 0
    for item in inputs:
        if item.is_dir():
            for path in sorted(item.rglob("*")):
                if path.suffix.lower() in EXTENSIONS:
                    files.append(path)
                elif path.is_file():
                    skipped += 1
        else:
            files.append(item)
    return files, skipped


def largest_side(detector: Detector, width: int, height: int) -> int:
    """The longer side of the largest resize ``detector`` makes of a ``width x height`` image: its
    finest pyramid level (frozen features), or the transform's size (end to end)."""
    from nocdet.features.pyramid import pyramid_scale_factors
    from nocdet.frozen_detector import FrozenNoCDetector

    long, short = max(width, height), min(width, height)
    if isinstance(detector, FrozenNoCDetector):
        pyramid = detector.settings
        factor = max(pyramid_scale_factors(width, height, pyramid.scales, pyramid.max_size))
    else:
        transform = detector.config.transform
        factor = min(max(transform.min_size) / short, transform.max_size / long)
    return math.ceil(long * factor)


def load_for(detector: Detector, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The image at ``path``, decoded no larger than :func:`largest_side`, and the factors
    ``[sx, sy, sx, sy]`` that map its pixels back to the file's."""
    from nocdet.data.images import image_size, load_image_bounded

    width, height = image_size(path)
    image, _ = load_image_bounded(path, largest_side(detector, width, height))
    return image, np.array([width / image.shape[1], height / image.shape[0]] * 2)


def coco_image_ids_of(files: list[Path], coco_gt: Path | None) -> dict[Path, int]:
    """The COCO image id of each file: with ``coco_gt``, the id of the image of the same file name
    there (a file it lacks, or a name it holds twice, is a :class:`DataError`); without, the
    number a file is named by when every file's stem is a distinct number (COCO's
    ``000000397133.jpg`` -> 397133, VOC's ``000005.jpg`` -> 5), else the position + 1."""
    from nocdet.errors import DataError

    if coco_gt is None:
        stems = [f.stem for f in files]
        if all(s.isascii() and s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
            return {f: int(f.stem) for f in files}
        return {f: k + 1 for k, f in enumerate(files)}
    import json

    try:
        images = json.loads(Path(coco_gt).read_text(encoding="utf-8"))["images"]
        by_name: dict[str, list[int]] = {}
        for image in images:
            by_name.setdefault(Path(image["file_name"]).name, []).append(int(image["id"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"not a COCO instances file with images[].file_name and id ({err!r})", path=coco_gt) from err
    ids = {}
    for f in files:
        found = by_name.get(f.name, [])
        if len(found) != 1:
            raise DataError(f"{'no image' if not found else f'{len(found)} images'} named {f.name!r} "
                            f"(for {f})", path=coco_gt)
        ids[f] = found[0]
    return ids


def run(args: argparse.Namespace) -> int:
    from nocdet.threads import use_threads

    use_threads(args.threads)
    from contextlib import closing

    import cv2
    from tqdm import tqdm

    from nocdet.batch_detection import detect_images
    from nocdet.detector import load
    from nocdet.errors import DataError, NocdetError
    from nocdet.io import atomic_open, atomic_write_json, output_folder
    from nocdet.viz.draw import draw_detections

    output_folder(args.out)
    detector = load(args.checkpoint, args.device)
    files, skipped = image_files(args.inputs)
    coco_ids = coco_image_ids_of(files, args.coco_gt)
    coco_results = []
    records, failed, enlarged = [], [], 0
    to_file: dict[Path, np.ndarray] = {}  # per file, its pixels over the decoded image's

    def decode(path: Path) -> np.ndarray:
        image, to_file[path] = load_for(detector, path)
        return image

    results = detect_images(detector, [(str(path), path) for path in files], decode, args.workers)
    with closing(results):
        for index, result in enumerate(tqdm(results, total=len(files), desc="detect", unit="img",
                                            disable=args.no_progress)):
            path, image, det, err = result.source, result.image, result.detections, result.error
            if result.stage == "load":
                if not isinstance(err, (NocdetError, OSError)):
                    raise err
                failed.append({"file": str(path), "error": err.reason if isinstance(err, DataError) else str(err)})
                continue
            if result.stage == "detect":  # one bad image must not stop the run
                if not isinstance(err, (NocdetError, ValueError, RuntimeError, cv2.error)):
                    raise err
                failed.append({"file": str(path), "error": f"detection failed ({type(err).__name__}: {err})"})
                continue
            picture = draw_detections(image, det, detector.classes, threshold=args.threshold,
                                      **({"min_side": 0} if args.keep_size else {}))
            enlarged += picture.width != image.shape[1]
            with atomic_open(args.out / f"{index:05d}_{path.stem}.png", "wb") as f:
                picture.save(f, format="PNG")
            for box, score, label in zip((det.boxes * to_file[path]).tolist(), det.scores.tolist(),
                                         det.labels.tolist()):
                bbox = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
                coco_results.append({"image_id": coco_ids[path], "category_id": detector.category_ids[label - 1],
                                     "bbox": bbox, "score": score})
                if score >= args.threshold:
                    records.append({"file": str(path), "image_id": coco_ids[path], "bbox": bbox, "score": score,
                                    "category": detector.classes[label - 1],
                                    "category_id": detector.category_ids[label - 1]})
    atomic_write_json(args.out / "detections.json", records, indent=1)
    atomic_write_json(args.out / "coco_results.json", coco_results)
    atomic_write_json(args.out / "failed.json", failed)
    print(f"{len(files) - len(failed)} images, {len(records)} detections scoring >= {args.threshold} -> "
          f"{args.out} (detections.json and the PNGs; coco_results.json holds all {len(coco_results)})")
    if enlarged:
        print(f"{enlarged} image(s) under 480 px were drawn enlarged for readable labels (boxes in "
              "detections.json are in the original pixels; --keep-size keeps the size)")
    if skipped:
        print(f"skipped {skipped} file(s) without an image extension ({', '.join(sorted(EXTENSIONS))})")
    if failed:
        print(f"could not read {len(failed)} of {len(files)} image files (also in {args.out / 'failed.json'}):\n  "
              + "\n  ".join(f"{f['file']}: {f['error']}" for f in failed))
        return 1
    return 0
