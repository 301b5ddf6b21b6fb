"""``nocdet detect --checkpoint model.pt IMAGES_OR_FOLDERS --out DIR``: detection on any image.

Writes one PNG per image with the boxes, class names and scores drawn, and ``detections.json``
(COCO-style: file, bbox [x, y, w, h], score, category and category_id, the training data set's
own id of the class: its COCO category id, or the label 1..K for VOC data). Boxes are always
in the original image's pixels; the PNG of an image whose longer side is under 480 pixels is
drawn enlarged by a whole factor so that its labels stay readable (said at the end; ``--keep-size``
draws every PNG at its image's size). Folders are searched recursively for
image extensions (other files are skipped and counted). Any image format and mode Pillow reads
works (grayscale, palette, RGBA, 16-bit, CMYK; see :mod:`nocdet.data.images`).

A file that cannot be used (empty, truncated, not an image, missing) does not stop the run: it
is reported at the end, after all other images are done, with its reason, the count of such
files among all image files, and ``failed.json`` in the output folder (``[{"file", "error"}]``,
empty when all went well). The exit status is then 1 (0 when every image was processed).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nocdet.threads import add_threads_argument

NAME = "detect"
HELP = "detect objects in JPEG/PNG images with a trained model.pt; draw and save the results"
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, help="image files or folders of images")
    parser.add_argument("--checkpoint", type=Path, required=True, help="model.pt of a nocdet train run")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--threshold", type=float, default=0.3, help="score from which boxes are drawn")
    parser.add_argument("--keep-size", action="store_true",
                        help="draw each PNG at its image's size (default: images under 480 px are enlarged "
                             "so that the labels stay readable)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--no-progress", action="store_true")
    add_threads_argument(parser)


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


def run(args: argparse.Namespace) -> int:
    from nocdet.threads import use_threads

    use_threads(args.threads)
    import cv2
    from tqdm import tqdm

    from nocdet.data.images import load_image
    from nocdet.detector import load
    from nocdet.errors import DataError, NocdetError
    from nocdet.io import atomic_open, atomic_write_json
    from nocdet.viz.draw import draw_detections

    detector = load(args.checkpoint, args.device)
    files, skipped = image_files(args.inputs)
    args.out.mkdir(parents=True, exist_ok=True)
    records, failed, enlarged = [], [], 0
    for index, path in enumerate(tqdm(files, desc="detect", unit="img", disable=args.no_progress)):
        try:
            image = load_image(path)
        except (NocdetError, OSError) as err:
            failed.append({"file": str(path), "error": err.reason if isinstance(err, DataError) else str(err)})
            continue
        try:
            det = detector.detect(image, str(path))
        except (NocdetError, ValueError, RuntimeError, cv2.error) as err:  # one bad image must not stop the run
            failed.append({"file": str(path), "error": f"detection failed ({type(err).__name__}: {err})"})
            continue
        picture = draw_detections(image, det, detector.classes, threshold=args.threshold,
                                  **({"min_side": 0} if args.keep_size else {}))
        enlarged += picture.width != image.shape[1]
        with atomic_open(args.out / f"{index:05d}_{path.stem}.png", "wb") as f:
            picture.save(f, format="PNG")
        for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
            records.append({"file": str(path), "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                            "score": score, "category": detector.classes[label - 1],
                            "category_id": detector.category_ids[label - 1]})
    atomic_write_json(args.out / "detections.json", records, indent=1)
    atomic_write_json(args.out / "failed.json", failed)
    print(f"{len(files) - len(failed)} images, {len(records)} detections -> {args.out}")
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
