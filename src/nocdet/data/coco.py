"""COCO: instances JSON (ground truth) and detection result JSON.

Conventions:

* category ids (any integers, not necessarily contiguous) map to labels ``1..K`` in increasing
  id order; ``dataset.category_ids[i]`` is the COCO id of label ``i + 1``;
* ``Sample.image_id`` is ``str(COCO image id)``; ``bbox [x, y, w, h]`` becomes
  ``x1 = x, y1 = y, x2 = x + w, y2 = y + h``;
* ``iscrowd`` objects are carried as ``difficult`` (COCO evaluation via pycocotools handles
  crowd regions itself; training ignores difficult objects). A ``"difficult": 1`` field, which
  :func:`write_coco_instances` writes for VOC-origin data, marks an object difficult too;
* repairs, reported by one ``warnings.warn`` per file: zero-area boxes are dropped, boxes
  partly outside their image are clipped to it. A box wholly outside its image is an error.

Images without annotations are valid. A file without an ``"annotations"`` key (a COCO
image-info file such as test-dev) reads as images without annotations.

Similarity groups (the error diagnosis's "similar classes"): the categories sharing a
``supercategory`` (two or more of them; ``"none"`` is no group), unless a
``similarity_groups.json`` (a JSON list of lists of class names) lies next to the instances
JSON, which then replaces them.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nocdet.data.sample import DetectionDataset, Detections, Sample, read_similarity_groups
from nocdet.errors import DataError
from nocdet.io import atomic_write_json


# ----------------------------------------------------------------------------------- writers

def coco_image_ids(dataset: DetectionDataset) -> dict[str, int]:
    """The COCO image id of each ``Sample.image_id``, as :func:`write_coco_instances` writes them.

    If every image id is a string of digits and their integer values are distinct, the id is
    ``int(image_id)`` (VOC's "000005" becomes 5); otherwise every image gets its position + 1
    (all-or-nothing, so ids can never collide).
    """
    ids = [s.image_id for s in dataset.samples]
    numeric = [int(i) for i in ids if i.isascii() and i.isdigit()]
    if len(numeric) == len(ids) and len(set(numeric)) == len(ids):
        return dict(zip(ids, numeric))
    return {image_id: k + 1 for k, image_id in enumerate(ids)}


def write_coco_instances(path: str | Path, dataset: DetectionDataset,
                         category_ids: Sequence[int] | None = None,
                         difficult_as_crowd: bool = False) -> None:
    """Write ``dataset`` as a COCO instances JSON that pycocotools can load.

    Image ids follow :func:`coco_image_ids`; ``file_name`` is the image file's name (relative
    to the image folder given to :func:`read_coco`). Category ids: ``category_ids``, else
    ``dataset.category_ids``, else ``1..K``. A class's ``supercategory`` is its similarity group
    (the group's names joined by ``+``), else its own name. Difficult objects are written as ``"iscrowd": 0``
    with ``"difficult": 1`` (pycocotools then counts them as ordinary objects; use the VOC
    metric for VOC data), or as ``"iscrowd": 1`` when ``difficult_as_crowd`` (data read from
    COCO, whose difficult objects are its crowd regions).
    """
    cat_ids = _category_ids(dataset, category_ids)
    image_ids = coco_image_ids(dataset)
    images, annotations = [], []
    for sample in dataset.samples:
        images.append({"id": image_ids[sample.image_id], "file_name": sample.path.name,
                       "width": int(sample.width), "height": int(sample.height)})
        for k, (box, label, difficult) in enumerate(zip(sample.boxes, sample.labels, sample.difficult)):
            record = f"image {sample.image_id}, object {k}"
            if not 1 <= int(label) <= len(cat_ids):
                raise DataError(f"label {int(label)} is outside 1..{len(cat_ids)}", path=path, record=record)
            if not np.all(np.isfinite(box)):
                raise DataError(f"box {box.tolist()} is not finite", path=path, record=record)
            x1, y1, x2, y2 = (float(v) for v in box)
            w, h = x2 - x1, y2 - y1
            crowd = bool(difficult) and difficult_as_crowd
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_ids[sample.image_id],
                "category_id": cat_ids[int(label) - 1], "bbox": [x1, y1, w, h], "area": w * h,
                "iscrowd": int(crowd), "difficult": int(bool(difficult) and not crowd),
            })
    group_of = {name: "+".join(group) for group in dataset.similarity_groups for name in group}
    categories = [{"id": cid, "name": name, "supercategory": group_of.get(name, name)}
                  for cid, name in zip(cat_ids, dataset.classes)]
    atomic_write_json(path, {"info": {"description": dataset.name}, "images": images,
                             "annotations": annotations, "categories": categories}, indent=None)


def write_coco_results(path: str | Path, detections: Sequence[Detections], category_ids: Sequence[int],
                       image_ids: dict[str, int]) -> None:
    """Write detections as a COCO result JSON: ``[{"image_id", "category_id", "bbox", "score"}]``
    with ``bbox = [x, y, w, h]``; ``image_ids`` is the mapping from :func:`coco_image_ids`."""
    results = []
    for dets in detections:
        if dets.image_id not in image_ids:
            raise DataError(f"image {dets.image_id!r} has no COCO image id", path=path)
        for k, (box, score, label) in enumerate(zip(dets.boxes, dets.scores, dets.labels)):
            record = f"detections of {dets.image_id}, detection {k}"
            if not 1 <= int(label) <= len(category_ids):
                raise DataError(f"label {int(label)} is outside 1..{len(category_ids)}", path=path,
                                record=record)
            if not (np.all(np.isfinite(box)) and np.isfinite(score)):
                raise DataError(f"non-finite score {score} or box {box.tolist()}", path=path, record=record)
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append({"image_id": image_ids[dets.image_id],
                            "category_id": int(category_ids[int(label) - 1]),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    atomic_write_json(path, results, indent=None)


def _category_ids(dataset: DetectionDataset, category_ids: Sequence[int] | None) -> list[int]:
    ids = list(category_ids if category_ids is not None
               else dataset.category_ids if dataset.category_ids is not None
               else range(1, dataset.num_classes + 1))
    if len(ids) != dataset.num_classes:
        raise DataError(f"{len(ids)} category ids for {dataset.num_classes} classes")
    if len(set(ids)) != len(ids) or not all(_is_int(i) for i in ids):
        raise DataError(f"category ids must be distinct integers: {ids}")
    return [int(i) for i in ids]


# ----------------------------------------------------------------------------------- readers

def read_coco(json_path: str | Path, image_dir: str | Path) -> DetectionDataset:
    """Read a COCO instances JSON; image paths are ``image_dir / file_name``."""
    json_path = Path(json_path)
    data = _load_json(json_path)
    if not isinstance(data, dict):
        raise DataError(f"top level is a JSON {type(data).__name__}, expected an object", path=json_path)
    for key in ("images", "categories"):
        if key not in data:
            raise DataError(f"missing top-level key {key!r}", path=json_path)
    tables = {key: data.get(key, []) for key in ("images", "annotations", "categories")}
    for key, table in tables.items():
        if not isinstance(table, list):
            raise DataError(f"{key!r} must be a list", path=json_path)

    categories: dict[int, str] = {}
    supercategories: dict[str, str] = {}
    for k, cat in enumerate(tables["categories"]):
        record = _record("categories", k, cat)
        _require(cat, ("id", "name"), json_path, record)
        if not _is_int(cat["id"]) or not isinstance(cat["name"], str):
            raise DataError("category id must be an integer and name a string", path=json_path, record=record)
        if cat["id"] in categories:
            raise DataError(f"duplicate category id {cat['id']}", path=json_path, record=record)
        if cat["name"] in categories.values():
            raise DataError(f"duplicate category name {cat['name']!r}", path=json_path, record=record)
        categories[cat["id"]] = cat["name"]
        if isinstance(cat.get("supercategory"), str) and cat["supercategory"] not in ("", "none"):
            supercategories[cat["name"]] = cat["supercategory"]
    category_ids = sorted(categories)
    label_of = {cid: i + 1 for i, cid in enumerate(category_ids)}

    images: dict[int, dict] = {}
    for k, img in enumerate(tables["images"]):
        record = _record("images", k, img)
        _require(img, ("id", "file_name", "width", "height"), json_path, record)
        if not _is_int(img["id"]):
            raise DataError(f"image id {img['id']!r} is not an integer", path=json_path, record=record)
        if img["id"] in images:
            raise DataError(f"duplicate image id {img['id']}", path=json_path, record=record)
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise DataError("file_name must be a non-empty string", path=json_path, record=record)
        if not all(_is_int(img[key]) and img[key] > 0 for key in ("width", "height")):
            raise DataError(f"size {img['width']!r} x {img['height']!r} is not two positive integers",
                            path=json_path, record=record)
        images[img["id"]] = img

    objects: dict[int, list[tuple[list[float], int, bool]]] = {i: [] for i in images}
    seen_ids: set = set()
    zero_area = clipped = 0
    for k, ann in enumerate(tables["annotations"]):
        record = _record("annotations", k, ann)
        _require(ann, ("id", "image_id", "category_id", "bbox"), json_path, record)
        if not _is_int(ann["id"]):
            raise DataError(f"annotation id {ann['id']!r} is not an integer", path=json_path, record=record)
        if ann["id"] in seen_ids:
            raise DataError(f"duplicate annotation id {ann['id']}", path=json_path, record=record)
        seen_ids.add(ann["id"])
        image = images.get(ann["image_id"]) if _is_int(ann["image_id"]) else None
        if image is None:
            raise DataError(f"image_id {ann['image_id']!r} is not in 'images'", path=json_path, record=record)
        if not _is_int(ann["category_id"]) or ann["category_id"] not in categories:
            raise DataError(f"category_id {ann['category_id']!r} is not in 'categories'", path=json_path,
                            record=record)
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite_number(v) for v in bbox)):
            raise DataError(f"bbox {bbox!r} is not four finite numbers [x, y, w, h]", path=json_path,
                            record=record)
        x, y, w, h = (float(v) for v in bbox)
        if w < 0 or h < 0:
            raise DataError(f"bbox {bbox!r} has a negative width or height", path=json_path, record=record)
        if w == 0 or h == 0:
            zero_area += 1
            continue
        box = [x, y, x + w, y + h]
        inside = [min(max(box[0], 0.0), image["width"]), min(max(box[1], 0.0), image["height"]),
                  min(max(box[2], 0.0), image["width"]), min(max(box[3], 0.0), image["height"])]
        if inside[2] <= inside[0] or inside[3] <= inside[1]:
            raise DataError(f"bbox {bbox!r} lies wholly outside the {image['width']} x {image['height']} "
                            "image", path=json_path, record=record)
        clipped += inside != box
        crowd = _flag(ann, "iscrowd", json_path, record) or _flag(ann, "difficult", json_path, record)
        objects[image["id"]].append((inside, label_of[ann["category_id"]], crowd))

    if zero_area or clipped:
        warnings.warn(f"{json_path}: dropped {zero_area} zero-area box(es); clipped {clipped} box(es) "
                      "partly outside their image", stacklevel=2)
    samples = []
    for image_id, img in images.items():
        objs = objects[image_id]
        samples.append(Sample(str(image_id), Path(image_dir) / img["file_name"], img["width"], img["height"],
                              np.array([o[0] for o in objs], np.float64).reshape(-1, 4),
                              [o[1] for o in objs], [o[2] for o in objs]))
    classes = [categories[c] for c in category_ids]
    return DetectionDataset(classes, samples, json_path.stem,
                            _similarity_groups(json_path, classes, supercategories), category_ids)


def _similarity_groups(json_path: Path, classes: list[str], supercategories: dict[str, str]) -> list[list[str]]:
    """``similarity_groups.json`` next to the file, else the supercategories of two or more classes."""
    override = json_path.parent / "similarity_groups.json"
    if override.is_file():
        return read_similarity_groups(override, classes)
    members: dict[str, list[str]] = {}
    for name in classes:
        if name in supercategories:
            members.setdefault(supercategories[name], []).append(name)
    return [group for group in members.values() if len(group) >= 2]


def check_categories(dataset: DetectionDataset, classes: Sequence[str], category_ids: Sequence[int] | None,
                     path: str | Path) -> None:
    """Refuse a split (read from ``path``) whose categories are not ``classes`` with ids
    ``category_ids`` (the training split's): a renamed, missing, extra or renumbered category
    would score every detection of it against another class."""
    ids = dict(zip(classes, category_ids)) if category_ids is not None else None
    found = dict(zip(dataset.classes, dataset.category_ids or range(1, dataset.num_classes + 1)))
    missing = [n for n in classes if n not in found]
    extra = [n for n in found if n not in classes]
    if missing or extra:
        raise DataError(f"its categories are not the training categories {list(classes)}: "
                        + "; ".join(part for part in (f"missing {missing}" if missing else "",
                                                      f"not in training {extra}" if extra else "") if part),
                        path=path, record="categories")
    if ids is not None:
        moved = [f"{n!r} has id {found[n]} here but {ids[n]} in training" for n in classes if found[n] != ids[n]]
        if moved:
            raise DataError("category ids differ from the training split's: " + "; ".join(moved),
                            path=path, record="categories")


def read_coco_results(path: str | Path) -> list[dict]:
    """Read and validate a COCO result JSON (a list of ``{"image_id", "category_id", "bbox",
    "score"}``); ids are integers, bbox four finite numbers, score finite."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, list):
        raise DataError(f"top level is a JSON {type(data).__name__}, expected a list of detections", path=path)
    results = []
    for k, det in enumerate(data):
        record = f"[{k}]"
        _require(det, ("image_id", "category_id", "bbox", "score"), path, record)
        if not (_is_int(det["image_id"]) and _is_int(det["category_id"])):
            raise DataError("image_id and category_id must be integers", path=path, record=record)
        bbox = det["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite_number(v) for v in bbox)):
            raise DataError(f"bbox {bbox!r} is not four finite numbers [x, y, w, h]", path=path, record=record)
        if not _is_finite_number(det["score"]):
            raise DataError(f"score {det['score']!r} is not a finite number", path=path, record=record)
        results.append({**det, "bbox": [float(v) for v in bbox], "score": float(det["score"])})
    return results


def coco_results_as_detections(results: Sequence[dict], dataset: DetectionDataset,
                               path: str | Path) -> list[Detections]:
    """The records of :func:`read_coco_results` (``path``) as one :class:`Detections` per image
    of ``dataset`` (read by :func:`read_coco`): ids mapped back to image ids and labels. A record
    of an image or category the data set does not have is a DataError naming it."""
    label_of = {cid: k for k, cid in enumerate(dataset.category_ids or [], start=1)}
    per_image: dict[str, list[tuple[list[float], float, int]]] = {s.image_id: [] for s in dataset.samples}
    for k, det in enumerate(results):
        image_id = str(det["image_id"])
        if image_id not in per_image:
            raise DataError(f"image_id {det['image_id']} is not in the ground truth's images", path=path,
                            record=f"[{k}]")
        if det["category_id"] not in label_of:
            raise DataError(f"category_id {det['category_id']} is not in the ground truth's categories",
                            path=path, record=f"[{k}]")
        x, y, w, h = det["bbox"]
        per_image[image_id].append(([x, y, x + w, y + h], det["score"], label_of[det["category_id"]]))
    return [Detections(image_id, [d[0] for d in dets], [d[1] for d in dets], [d[2] for d in dets])
            for image_id, dets in per_image.items()]


def _load_json(path: Path) -> Any:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as err:
        raise DataError(f"cannot read file: {err.strerror or err}", path=path) from err
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text (byte {err.start})", path=path) from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"malformed JSON: {err.msg}", path=path,
                        record=f"line {err.lineno}, column {err.colno}") from err
    except RecursionError as err:
        raise DataError("JSON nested too deeply", path=path) from err


def _record(table: str, index: int, item: Any) -> str:
    item_id = item.get("id") if isinstance(item, dict) else None
    return f"{table}[{index}]" + (f" (id {item_id})" if item_id is not None else "")


def _require(item: Any, keys: Sequence[str], path: Path, record: str) -> None:
    if not isinstance(item, dict):
        raise DataError(f"expected a JSON object, got {type(item).__name__}", path=path, record=record)
    missing = [key for key in keys if key not in item]
    if missing:
        raise DataError(f"missing key(s) {', '.join(map(repr, missing))}", path=path, record=record)


def _flag(item: dict, key: str, path: Path, record: str) -> bool:
    value = item.get(key, 0)
    if value not in (0, 1) or isinstance(value, float):
        raise DataError(f"{key} must be 0 or 1, not {value!r}", path=path, record=record)
    return bool(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
