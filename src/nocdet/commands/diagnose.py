"""``nocdet diagnose``: the error diagnosis of the paper's Fig. 3 (Hoiem et al.) for one or more
sets of detection results on the same test set.

VOC: ``--voc-root ROOT --split test --results DIR [--results DIR2 ...]`` (devkit result files
``comp4_det_<split>_<class>.txt``, as ``nocdet evaluate`` reads them). COCO: ``--coco-gt
instances.json --coco-results results.json [...]``. ``--name`` labels each result set (default:
the run folder the results lie in, else the folder or file name). Similarity groups:
``--similarity groups.json``, else the data set's
own (``similarity_groups.json`` in the VOC root; for COCO beside the instances file or one
folder up, as scene-digits ships it), else VOC's for the VOC classes. COCO crowd regions play
the part of VOC's difficult objects.

Writes ``OUT/diagnosis.json`` (per experiment: overall and per-class shares and counts, and the
false-positive trend), ``OUT/diagnosis_pies.png`` (one pie per experiment) and
``OUT/fp_curve_<name>.png``; prints the Cor/Loc/Sim/Oth/BG table.
"""
from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path

import numpy as np

from nocdet.errors import ConfigError, DataError
from nocdet.io import atomic_write_json, output_folder

NAME = "diagnose"
HELP = ("error diagnosis of top-ranked detections (Cor/Loc/Sim/Oth/BG, Hoiem et al.; paper Fig. 3): "
        "table, JSON, pies and false-positive trends")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    voc = parser.add_argument_group("PASCAL VOC")
    voc.add_argument("--voc-root", metavar="ROOT",
                     help="VOC folder (Annotations/, ImageSets/Main/, JPEGImages/), VOC<year> or VOCdevkit")
    voc.add_argument("--split", default="test", help="split name in ImageSets/Main (default: test)")
    voc.add_argument("--year", help="pick VOC<year> inside a VOCdevkit folder holding several")
    voc.add_argument("--results", action="append", metavar="DIR", default=[],
                     help="folder of comp4_det_<split>_<class>.txt files; repeat to compare experiments")
    coco = parser.add_argument_group("COCO")
    coco.add_argument("--coco-gt", metavar="JSON", help="COCO instances JSON (ground truth)")
    coco.add_argument("--coco-results", action="append", metavar="JSON", default=[],
                      help="COCO results JSON; repeat to compare experiments")
    parser.add_argument("--name", action="append", metavar="NAME", default=[],
                        help="label of each result set, in order (default: the run folder holding it, else the folder or file name)")
    parser.add_argument("--similarity", metavar="JSON",
                        help="similarity groups: a JSON list of lists of class names")
    parser.add_argument("--top-factor", type=float, default=1.0, metavar="F",
                        help="diagnose the top F x N_c detections of each class (default 1: N_c = "
                             "its number of non-difficult objects, as the paper's Fig. 3)")
    parser.add_argument("--out", default="diagnosis", metavar="OUTDIR",
                        help="folder for diagnosis.json and the pictures (default: ./diagnosis)")


def run_folder_of(path: Path) -> Path | None:
    """The training run folder (one holding ``run.json``) that ``path`` lies in: the path itself,
    or its parent or grandparent (``RUN/results``, ``RUN/results/coco_results.json``)."""
    resolved = path.resolve()
    for folder in (resolved, *list(resolved.parents)[:2]):
        if (folder / "run.json").is_file():
            return folder
    return None


def _experiment_names(paths: list[str], names: list[str]) -> list[str]:
    if names:
        if len(names) != len(paths):
            raise ConfigError(f"{len(names)} --name for {len(paths)} result sets; give one per result set")
        if any(not n.strip() for n in names):
            raise ConfigError("--name must not be empty")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"--name {', '.join(duplicates)} given more than once")
        return list(names)
    result: list[str] = []
    for p in paths:
        path = Path(p)
        run = run_folder_of(path)
        base = run.name if run is not None else (path.name if path.is_dir() else path.stem) or str(path)
        name, k = base, 2
        while name in result:
            name, k = f"{base}-{k}", k + 1
        result.append(name)
    return result


def _load_voc(args: argparse.Namespace):
    from nocdet.data.voc import read_voc, read_voc_results
    from nocdet.evaluation.diagnosis import ClassDetections

    if args.voc_root is None:
        raise ConfigError("--results needs --voc-root (the ground truth)")
    dataset = read_voc(args.voc_root, args.split, year=args.year)
    known = {s.image_id for s in dataset.samples}
    experiments = []
    for folder in args.results:
        if not Path(folder).is_dir():
            raise DataError("results folder does not exist", path=folder)
        results = read_voc_results(folder, args.split, dataset.classes, known_ids=known)
        experiments.append({name: ClassDetections.from_devkit(r.image_ids, r.scores, r.boxes)
                            for name, r in results.items()})
    return dataset, experiments, None


def _load_coco(args: argparse.Namespace):
    from nocdet.data.coco import read_coco

    if args.coco_gt is None:
        raise ConfigError("--coco-results needs --coco-gt (the ground truth)")
    gt = Path(args.coco_gt)
    dataset = read_coco(gt, gt.parent)
    experiments = [_coco_class_detections(dataset, Path(p)) for p in args.coco_results]
    shipped = [p for p in (gt.parent / "similarity_groups.json", gt.parent.parent / "similarity_groups.json")
               if p.is_file()]
    return dataset, experiments, shipped[0] if shipped else None


def _coco_class_detections(dataset, path: Path) -> dict:
    """A COCO results file as per-class detections (internal boxes ``x1 = x, x2 = x + w``)."""
    from nocdet.data.coco import read_coco_results
    from nocdet.evaluation.diagnosis import ClassDetections

    class_of = {cid: name for cid, name in zip(dataset.category_ids or [], dataset.classes)}
    known = {s.image_id for s in dataset.samples}
    grouped: dict[str, tuple[list[str], list[float], list[list[float]]]] = {
        name: ([], [], []) for name in dataset.classes}
    for k, det in enumerate(read_coco_results(path)):
        name = class_of.get(det["category_id"])
        if name is None:
            raise DataError(f"category_id {det['category_id']} is not in the ground truth's categories",
                            path=path, record=f"[{k}]")
        image_id = str(det["image_id"])
        if image_id not in known:
            raise DataError(f"image_id {det['image_id']} is not in the ground truth", path=path,
                            record=f"[{k}]")
        x, y, w, h = det["bbox"]
        ids, scores, boxes = grouped[name]
        ids.append(image_id)
        scores.append(det["score"])
        boxes.append([x, y, x + w, y + h])
    return {name: ClassDetections(ids, np.array(scores, np.float64), np.array(boxes, np.float64).reshape(-1, 4))
            for name, (ids, scores, boxes) in grouped.items()}


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


def _run(args: argparse.Namespace) -> int:
    from nocdet.evaluation.diagnosis import (
        diagnose, false_positive_curve, format_diagnosis_table, resolve_similarity_groups,
    )
    from nocdet.viz.plots import plot_diagnosis_pies, plot_fp_curve

    voc, coco = bool(args.results), bool(args.coco_results)
    if voc == coco:
        raise ConfigError("give either --results (VOC result folders, with --voc-root) or "
                          "--coco-results (with --coco-gt), not both or neither")
    if voc and args.coco_gt is not None:
        raise ConfigError("--coco-gt is for --coco-results; VOC ground truth comes from --voc-root")
    if coco and args.voc_root is not None:
        raise ConfigError("--voc-root is for --results; COCO ground truth comes from --coco-gt")
    paths = args.results if voc else args.coco_results
    names = _experiment_names(paths, args.name)
    out = output_folder(args.out)
    dataset, experiments, shipped_groups = _load_voc(args) if voc else _load_coco(args)
    groups = resolve_similarity_groups(dataset, args.similarity or shipped_groups)

    diagnoses, report, files = {}, {}, set()
    for name, path, detections in zip(names, paths, experiments):
        diagnosis = diagnose(dataset, detections, groups, args.top_factor)
        curve = false_positive_curve(dataset, detections, groups)
        diagnoses[name] = diagnosis
        report[name] = {"results": str(path), **diagnosis.to_json(), "fp_curve": curve}
        file_name, k = f"fp_curve_{_file_name(name)}.png", 2
        while file_name in files:  # two names that differ only in unsafe characters
            file_name, k = f"fp_curve_{_file_name(name)}-{k}.png", k + 1
        files.add(file_name)
        plot_fp_curve(curve, out / file_name, title=f"False-positive types: {name}")
    atomic_write_json(out / "diagnosis.json", {"dataset": dataset.name, "experiments": report})
    plot_diagnosis_pies(diagnoses, out / "diagnosis_pies.png")
    print(format_diagnosis_table(diagnoses))
    print(f"diagnosis written to {out / 'diagnosis.json'}, pictures to {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    # Readers report repairs and missing result files as warnings: show them as one line each.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return _run(args)
        finally:
            for w in caught:
                print(f"nocdet diagnose: warning: {w.message}", file=sys.stderr)
