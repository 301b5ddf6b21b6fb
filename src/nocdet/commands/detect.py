"""``nocdet detect --checkpoint model.pt IMAGES_OR_FOLDERS --out DIR``: detection on any image.

Writes one PNG per image with the boxes, class names and scores drawn, and ``detections.json``
(COCO-style: file, bbox [x, y, w, h], score, category). Unreadable files do not stop the run:
they are listed at the end and the exit code is 1.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "detect"
HELP = "detect objects in JPEG/PNG images with a trained model.pt; draw and save the results"
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, help="image files or folders of images")
    parser.add_argument("--checkpoint", type=Path, required=True, help="model.pt of a nocdet train run")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--threshold", type=float, default=0.3, help="score from which boxes are drawn")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--no-progress", action="store_true")


def image_files(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.suffix.lower() in EXTENSIONS))
        else:
            files.append(item)
    return files


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from nocdet.data.images import load_image
    from nocdet.detector import load
    from nocdet.errors import NocdetError
    from nocdet.viz.draw import save_detections_png

    detector = load(args.checkpoint, args.device)
    files = image_files(args.inputs)
    args.out.mkdir(parents=True, exist_ok=True)
    records, failed = [], []
    for index, path in enumerate(tqdm(files, desc="detect", unit="img", disable=args.no_progress)):
        try:
            image = load_image(path)
        except (NocdetError, OSError) as err:
            failed.append(f"{path}: {err}")
            continue
        det = detector.detect(image, str(path))
        save_detections_png(args.out / f"{index:05d}_{path.stem}.png", image, det, detector.classes,
                            threshold=args.threshold)
        for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
            records.append({"file": str(path), "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                            "score": score, "category": detector.classes[label - 1]})
    (args.out / "detections.json").write_text(json.dumps(records, indent=1) + "\n")
    print(f"{len(files) - len(failed)} images, {len(records)} detections -> {args.out}")
    if failed:
        print(f"could not read {len(failed)} file(s):\n  " + "\n  ".join(failed))
        return 1
    return 0
