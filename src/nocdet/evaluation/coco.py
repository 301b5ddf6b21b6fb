"""COCO detection metrics through pycocotools' ``COCOeval`` (nothing re-implemented).

AP is averaged over IoU 0.50:0.05:0.95 and 101 recall points, with at most 100 detections per
image; area ranges small < 32² < medium < 96² < large; crowd ground truth is ignored
(docs/reference.md §8). The twelve summary numbers are pycocotools' ``stats`` as fractions; where
pycocotools writes -1 ("no ground truth in that area range") they are None. Per-class AP is
read from the accumulated precision array the way ``summarize`` reads the overall AP.

In-memory evaluation (:func:`evaluate_coco`) converts a :class:`DetectionDataset` back to COCO
dictionaries the way :func:`nocdet.data.coco.write_coco_instances` writes them, keeping the
data set's meaning of ``difficult``: for data read from COCO, difficult *is* iscrowd and goes
back as ``iscrowd = 1`` (an ignored crowd region); for other data (VOC) difficult objects are
ordinary objects to COCOeval, as in the written file (use the VOC metric for VOC data).
Ground-truth ``area`` is the box area ``w * h``: the sample format keeps no mask areas, so the
small/medium/large numbers can differ from evaluating an original instances file whose areas
are mask areas.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from nocdet.data.sample import DetectionDataset, Detections
from nocdet.errors import DataError

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_GT_ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")


def _quiet(verbose: bool):
    """Silence pycocotools' progress prints unless ``verbose``."""
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def _coco_from_dict(dataset: dict, verbose: bool) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with _quiet(verbose):
        coco.createIndex()
    return coco


def _check_gt(dataset: Any, path: str | Path | None) -> None:
    """The fields COCOeval reads, with the record that lacks one."""
    if not isinstance(dataset, dict):
        raise DataError("ground truth is not a JSON object", path=path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise DataError(f"ground truth has no {key!r} list", path=path)
    for i, image in enumerate(dataset["images"]):
        if not isinstance(image, dict) or "id" not in image:
            raise DataError("image has no id", path=path, record=f"images[{i}]")
    names = []
    for i, cat in enumerate(dataset["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise DataError("category needs an id and a name", path=path, record=f"categories[{i}]")
        if cat["name"] in names:
            raise DataError(f"duplicate category name {cat['name']!r}", path=path, record=f"categories[{i}]")
        names.append(cat["name"])
    for i, ann in enumerate(dataset["annotations"]):
        missing = list(_GT_ANNOTATION_KEYS) if not isinstance(ann, dict) else [
            k for k in _GT_ANNOTATION_KEYS if k not in ann]
        if missing:
            raise DataError(f"annotation lacks {', '.join(missing)}", path=path, record=f"annotations[{i}]")


def _check_results(results: list[dict], coco_gt: COCO, path: str | Path | None) -> None:
    """Every result names a ground-truth image and category (pycocotools would assert or
    silently drop the detection)."""
    images, categories = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    for i, r in enumerate(results):
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in r]
        if missing:
            raise DataError(f"result lacks {', '.join(missing)}", path=path, record=f"result {i}")
        if r["image_id"] not in images:
            raise DataError(f"image_id {r['image_id']!r} is not in the ground truth", path=path,
                            record=f"result {i}")
        if r["category_id"] not in categories:
            raise DataError(f"category_id {r['category_id']!r} is not in the ground truth", path=path,
                            record=f"result {i}")


def _load_results(coco_gt: COCO, results: list[dict], verbose: bool) -> COCO:
    """``coco_gt.loadRes(results)``; an empty list (on which loadRes fails) gives an empty set."""
    if results:
        with _quiet(verbose):
            return coco_gt.loadRes([dict(r) for r in results])  # loadRes writes into the dicts
    return _coco_from_dict({"images": list(coco_gt.dataset["images"]),
                            "categories": copy.deepcopy(coco_gt.dataset["categories"]),
                            "annotations": []}, verbose)


def _run(coco_gt: COCO, results: list[dict], verbose: bool) -> dict:
    coco_dt = _load_results(coco_gt, results, verbose)
    ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
    with _quiet(verbose):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics: dict[str, Any] = {name: (None if s == -1 else float(s))
                               for name, s in zip(STAT_NAMES, ev.stats)}
    # precision: [T IoUs, R recall points, K classes, A areas, M maxDets]; -1 = no ground truth.
    precision = ev.eval["precision"][:, :, :, ev.params.areaRngLbl.index("all"),
                                     ev.params.maxDets.index(100)]
    names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        valid = precision[:, :, k][precision[:, :, k] > -1]
        per_class[names[cat_id]] = float(valid.mean()) if valid.size else None
    metrics["per_class"] = per_class
    return metrics


def evaluate_coco_files(gt_json: str | Path, results_json: str | Path, *, verbose: bool = False) -> dict:
    """COCO metrics of a results file (``[{image_id, category_id, bbox, score}]``) against an
    instances file: the 12 summary numbers (fractions, None where undefined) and ``per_class``."""
    from nocdet.data.coco import read_coco, read_coco_results

    read_coco(gt_json, Path(gt_json).parent)  # the reader's checks, as for training: bad records named
    try:
        gt = json.loads(Path(gt_json).read_text())
    except OSError as err:
        raise DataError(f"cannot read ground truth: {err.strerror or err}", path=gt_json) from err
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON ({err.msg})", path=gt_json, record=f"line {err.lineno}") from err
    _check_gt(gt, gt_json)
    coco_gt = _coco_from_dict(gt, verbose)
    results = read_coco_results(results_json)
    _check_results(results, coco_gt, results_json)
    return _run(coco_gt, results, verbose)


def evaluate_coco(
    dataset: DetectionDataset,
    detections: Sequence[Detections],
    category_ids: Sequence[int] | None = None,
    *,
    difficult_as_crowd: bool | None = None,
    verbose: bool = False,
) -> dict:
    """COCO metrics of in-memory detections (internal coordinates) on a data set.

    ``category_ids[label - 1]`` is the COCO id of a label; by default the data set's own
    (when read from COCO) or ``1..K``. Image ids are those of :func:`nocdet.data.coco.coco_image_ids`.
    ``difficult_as_crowd`` (default: whether the data set came from COCO, i.e. has
    ``category_ids``) makes difficult objects crowd regions; otherwise they are ordinary objects.
    """
    from nocdet.data.coco import coco_image_ids

    if category_ids is None:
        category_ids = dataset.category_ids or range(1, dataset.num_classes + 1)
    cat_ids = [int(c) for c in category_ids]
    if difficult_as_crowd is None:
        difficult_as_crowd = dataset.category_ids is not None
    if len(cat_ids) != dataset.num_classes or len(set(cat_ids)) != len(cat_ids):
        raise DataError(f"need {dataset.num_classes} distinct category ids, got {cat_ids}")
    image_ids = coco_image_ids(dataset)
    images, annotations = [], []
    for sample in dataset.samples:
        images.append({"id": image_ids[sample.image_id], "width": sample.width, "height": sample.height,
                       "file_name": sample.path.name})
        for box, label, difficult in zip(sample.boxes.tolist(), sample.labels.tolist(),
                                         sample.difficult.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_ids[sample.image_id],
                                "category_id": cat_ids[label - 1], "bbox": [box[0], box[1], w, h],
                                "area": w * h, "iscrowd": int(difficult and difficult_as_crowd)})
    categories = [{"id": c, "name": n} for c, n in zip(cat_ids, dataset.classes)]
    coco_gt = _coco_from_dict({"images": images, "annotations": annotations, "categories": categories},
                              verbose)
    results = []
    for det in detections:
        if det.image_id not in image_ids:
            raise DataError(f"detections on image {det.image_id!r}, which is not in {dataset.name or 'the data set'}")
        if not (np.isfinite(det.boxes).all() and np.isfinite(det.scores).all()):
            raise DataError("non-finite score or box", record=f"image {det.image_id}")
        for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
            if not 1 <= label <= dataset.num_classes:
                raise DataError(f"label {label} outside 1..{dataset.num_classes}", record=f"image {det.image_id}")
            results.append({"image_id": image_ids[det.image_id], "category_id": cat_ids[label - 1],
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score})
    return _run(coco_gt, results, verbose)


def format_coco_table(metrics: dict) -> str:
    """The 12 summary numbers, then per-class AP (fractions; '-' where undefined)."""
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    lines = [f"{name:<6} {fmt(metrics[name]):>7}" for name in STAT_NAMES]
    per_class = metrics.get("per_class", {})
    if per_class:
        width = max(len("class"), *(len(n) for n in per_class))
        lines += ["", f"{'class':<{width}}  {'AP':>7}"]
        lines += [f"{name:<{width}}  {fmt(ap):>7}" for name, ap in per_class.items()]
    return "\n".join(lines)
