"""PASCAL VOC: devkit annotation XML, split files and detection result files.

Coordinates: VOC files are 1-based and inclusive (``xmin = 1`` is the first pixel column,
``xmax = W`` the last). Internally boxes are continuous (see :mod:`nocdet.data.sample`), so
reading converts ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax`` and writing does the
inverse. Result files (``comp4_det_<split>_<class>.txt``) are read back in *devkit* coordinates,
because the VOC evaluator works in them.

Repairs, all reported through ``warnings.warn`` (one summary per split in :func:`read_voc`):

* a box partly outside the image is clipped to it (VOC2012 has boxes with ``xmin = 0``);
  a box wholly outside is an error;
* two identical objects (same class, box and difficult flag) are both kept, as the devkit
  keeps them: each counts as a ground-truth object, so the evaluation stays devkit-exact.
"""
from __future__ import annotations

import codecs
import math
import os
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from tqdm import tqdm

from nocdet.data.images import image_size
from nocdet.data.sample import DetectionDataset, Detections, Sample, read_similarity_groups
from nocdet.errors import DataError
from nocdet.io import atomic_write_text

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
"""The 20 PASCAL VOC classes in devkit order (label ``i + 1`` is ``VOC_CLASSES[i]``)."""

VOC_SIMILARITY_GROUPS: tuple[tuple[str, ...], ...] = (
    ("bird", "cat", "cow", "dog", "horse", "person", "sheep"),
    ("aeroplane", "bicycle", "boat", "bus", "car", "motorbike", "train"),
    ("bicycle", "motorbike"),
    ("chair", "diningtable", "sofa"),
    ("aeroplane", "bird"),
)
"""Groups of *similar* VOC classes for the error diagnosis of Hoiem et al. (docs/reference.md §8)."""

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
_PROGRESS_MIN = 1000  # splits with at least this many images show a progress bar


# ----------------------------------------------------------------------------------- writers

def write_voc_annotation(path: str | Path, sample: Sample, classes: Sequence[str],
                         folder: str = "VOC") -> None:
    """Write ``sample`` as a devkit-style annotation XML.

    Boxes are written as 1-based inclusive integers: ``xmin = round(x1) + 1``,
    ``ymin = round(y1) + 1``, ``xmax = round(x2)``, ``ymax = round(y2)`` (Python's round, half to
    even), so integral boxes round-trip exactly through :func:`parse_voc_annotation`. A box
    narrower than one pixel after rounding, a non-finite box or a label outside ``1..K`` is a
    :class:`DataError`.
    """
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = sample.path.name
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(int(sample.width))
    ET.SubElement(size, "height").text = str(int(sample.height))
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    for k, (box, label, difficult) in enumerate(zip(sample.boxes, sample.labels, sample.difficult)):
        record = f"image {sample.image_id}, object {k + 1}"
        if not 1 <= int(label) <= len(classes):
            raise DataError(f"label {int(label)} is outside 1..{len(classes)}", path=path, record=record)
        if not np.all(np.isfinite(box)):
            raise DataError(f"box {box.tolist()} is not finite", path=path, record=record)
        xmin, ymin = round(float(box[0])) + 1, round(float(box[1])) + 1
        xmax, ymax = round(float(box[2])), round(float(box[3]))
        if xmax < xmin or ymax < ymin:
            raise DataError(f"box {box.tolist()} is less than one pixel wide or high after rounding "
                            "to integer VOC coordinates", path=path, record=record)
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[int(label) - 1]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "1" if difficult else "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (xmin, ymin, xmax, ymax)):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(root, space="\t")
    atomic_write_text(path, ET.tostring(root, encoding="unicode") + "\n")


def write_voc_split(root: str | Path, split: str, image_ids: Sequence[str]) -> None:
    """Write ``<root>/ImageSets/Main/<split>.txt``, one image id per line."""
    path = Path(root) / "ImageSets" / "Main" / f"{split}.txt"
    for k, image_id in enumerate(image_ids):
        if not image_id or image_id != image_id.strip() or any(c.isspace() for c in image_id):
            raise DataError(f"image id {image_id!r} is empty or contains white space", path=path,
                            record=f"id {k + 1}")
    atomic_write_text(path, "".join(f"{image_id}\n" for image_id in image_ids))


def write_voc_results(out_dir: str | Path, split: str, detections: Sequence[Detections],
                      classes: Sequence[str], prefix: str = "comp4") -> list[Path]:
    """Write devkit result files ``<prefix>_det_<split>_<class>.txt``, one per class.

    Each line is ``image_id score xmin ymin xmax ymax`` in devkit coordinates
    (``xmin = x1 + 1, ymin = y1 + 1, xmax = x2, ymax = y2``). Numbers are written in their
    shortest exact form, so :func:`read_voc_results` gives back the same float32 scores and
    boxes (score ties, and thus the devkit ranking, survive the round trip). A class without
    detections gets an empty file. Returns the paths in class order.
    """
    lines: list[list[str]] = [[] for _ in classes]
    for dets in detections:
        if not dets.image_id or any(c.isspace() for c in dets.image_id):
            raise DataError(f"image id {dets.image_id!r} is empty or contains white space",
                            record=f"detections of {dets.image_id!r}")
        for k, (box, score, label) in enumerate(zip(dets.boxes, dets.scores, dets.labels)):
            record = f"detections of {dets.image_id}, detection {k}"
            if not 1 <= int(label) <= len(classes):
                raise DataError(f"label {int(label)} is outside 1..{len(classes)}", record=record)
            if not (np.all(np.isfinite(box)) and np.isfinite(score)):
                raise DataError(f"non-finite score {score} or box {box.tolist()}", record=record)
            devkit = (float(box[0]) + 1.0, float(box[1]) + 1.0, float(box[2]), float(box[3]))
            score_text = np.format_float_positional(np.float32(score), unique=True, trim="-")
            lines[int(label) - 1].append(
                f"{dets.image_id} {score_text} " + " ".join(repr(v) for v in devkit) + "\n")
    paths = []
    for name, class_lines in zip(classes, lines):
        path = Path(out_dir) / f"{prefix}_det_{split}_{name}.txt"
        atomic_write_text(path, "".join(class_lines))
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------ annotations

class VOCAnnotation(NamedTuple):
    """The content of one annotation XML, boxes already in internal coordinates.

    ``names`` are the class names of the objects (labels need a class list, see
    :meth:`to_sample`); ``clipped`` and ``duplicates`` count the repairs made (module doc).
    """

    filename: str
    width: int
    height: int
    boxes: np.ndarray  # [N, 4] float32, clipped to the image
    names: list[str]
    difficult: np.ndarray  # [N] bool
    clipped: int
    duplicates: int

    def to_sample(self, image_id: str, path: str | Path, classes: Sequence[str]) -> Sample:
        """The :class:`Sample` with labels ``classes.index(name) + 1``."""
        index = {name: i + 1 for i, name in enumerate(classes)}
        unknown = sorted(set(self.names) - set(index))
        if unknown:
            raise DataError(f"class(es) {', '.join(map(repr, unknown))} not in the class list "
                            f"{', '.join(classes)}", record=f"image {image_id}")
        labels = np.array([index[n] for n in self.names], np.int64)
        return Sample(image_id, Path(path), self.width, self.height, self.boxes, labels, self.difficult)


def parse_voc_annotation(xml_path: str | Path, classes: Sequence[str] | None,
                         image_path: str | Path | None = None, warn: bool = True) -> VOCAnnotation:
    """Read one devkit annotation XML (see the module doc for conventions and repairs).

    ``classes``: when given, an object of another class is a :class:`DataError`. ``image_path``
    supplies the size when ``<size>`` is missing or zero. ``warn=False`` leaves reporting of
    repairs to the caller (read_voc sums them up). Objects are numbered from 1 in errors.
    """
    xml_path = Path(xml_path)
    root = _parse_xml(xml_path)
    if root.tag != "annotation":
        raise DataError(f"root element is <{root.tag}>, expected <annotation>", path=xml_path)
    width, height = _read_size(root, xml_path, image_path)
    boxes, names, difficult = [], [], []
    for k, obj in enumerate(root.findall("object")):
        record = f"object {k + 1}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError("object has no <name>", path=xml_path, record=record)
        record = f"object {k + 1} ({name})"
        if classes is not None and name not in classes:
            raise DataError(f"unknown class {name!r}; known classes: {', '.join(classes)}",
                            path=xml_path, record=record)
        difficult.append(_read_flag(obj, "difficult", xml_path, record))
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataError("object has no <bndbox>", path=xml_path, record=record)
        xmin, ymin, xmax, ymax = (_read_number(bndbox, tag, xml_path, record)
                                  for tag in ("xmin", "ymin", "xmax", "ymax"))
        if xmax < xmin or ymax < ymin:
            raise DataError(f"inverted box: xmin {xmin:g}, ymin {ymin:g}, xmax {xmax:g}, ymax {ymax:g}",
                            path=xml_path, record=record)
        boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))
        names.append(name)
    box_array = np.array(boxes, np.float64).reshape(-1, 4)
    clipped = _clip_boxes(box_array, width, height, xml_path)
    keys = [(n, d, *b) for n, d, b in zip(names, difficult, box_array.tolist())]
    duplicates = len(keys) - len(set(keys))
    if warn and (clipped or duplicates):
        warnings.warn(f"{xml_path}: {_repair_text(clipped, duplicates)}", stacklevel=2)
    return VOCAnnotation(root.findtext("filename", "").strip(), width, height,
                         box_array.astype(np.float32), names, np.array(difficult, bool), clipped,
                         duplicates)


def _parse_xml(xml_path: Path) -> ET.Element:
    """Decode per the BOM / XML declaration (UTF-8 by default) and parse, naming bad lines."""
    try:
        data = xml_path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read annotation: {err.strerror or err}", path=xml_path) from err
    encoding = _declared_encoding(data, xml_path)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"not valid {encoding} text (byte {err.start}); declare the file's encoding "
                        "in its <?xml ... encoding=...?> line", path=xml_path,
                        record=f"line {line}") from err
    try:
        return ET.fromstring(text.lstrip("\ufeff"))
    except ET.ParseError as err:
        line, column = err.position
        reason = re.sub(r": line \d+, column \d+$", "", str(err))  # the position goes in the record
        raise DataError(f"malformed XML: {reason}", path=xml_path,
                        record=f"line {line}, column {column + 1}") from err


def _declared_encoding(data: bytes, xml_path: Path) -> str:
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    match = re.match(rb"""\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""", data)
    if match is None:
        return "utf-8"
    name = match.group(1).decode("ascii")
    try:
        return codecs.lookup(name).name
    except LookupError as err:
        raise DataError(f"unknown encoding {name!r} in the XML declaration", path=xml_path,
                        record="line 1") from err


def _read_size(root: ET.Element, xml_path: Path, image_path: str | Path | None) -> tuple[int, int]:
    size = root.find("size")
    width = height = 0
    if size is not None:
        width = _read_number(size, "width", xml_path, "size", optional=True)
        height = _read_number(size, "height", xml_path, "size", optional=True)
        if width < 0 or height < 0 or width != int(width) or height != int(height):
            raise DataError(f"image size {width:g} x {height:g} is not a pair of non-negative integers",
                            path=xml_path, record="size")
    if width > 0 and height > 0:
        return int(width), int(height)
    if image_path is None or not Path(image_path).is_file():
        raise DataError("no <size> (or a zero size) and no image to read the size from"
                        + (f" ({image_path} does not exist)" if image_path is not None else ""),
                        path=xml_path, record="size")
    return image_size(image_path)


def _read_number(parent: ET.Element, tag: str, xml_path: Path, record: str,
                 optional: bool = False) -> float:
    text = parent.findtext(tag)
    if text is None or not text.strip():
        if optional:
            return 0.0
        raise DataError(f"missing <{tag}>", path=xml_path, record=record)
    try:
        value = float(text.strip())
    except ValueError:
        raise DataError(f"<{tag}> is not a number: {text.strip()!r}", path=xml_path, record=record) from None
    if not math.isfinite(value):
        raise DataError(f"<{tag}> is not finite: {text.strip()!r}", path=xml_path, record=record)
    return value


def _read_flag(obj: ET.Element, tag: str, xml_path: Path, record: str) -> bool:
    text = (obj.findtext(tag) or "0").strip()
    if text not in ("0", "1"):
        raise DataError(f"<{tag}> must be 0 or 1, not {text!r}", path=xml_path, record=record)
    return text == "1"


def _clip_boxes(boxes: np.ndarray, width: int, height: int, xml_path: Path) -> int:
    """Clip ``boxes`` in place to the image; count those changed; error on boxes wholly outside."""
    if len(boxes) == 0:
        return 0
    limits = np.array([width, height, width, height], np.float64)
    clipped = np.clip(boxes, 0.0, limits)
    outside = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if outside.any():
        k = int(np.flatnonzero(outside)[0])
        b = boxes[k]
        raise DataError(f"box (xmin {b[0] + 1:g}, ymin {b[1] + 1:g}, xmax {b[2]:g}, ymax {b[3]:g}) lies "
                        f"wholly outside the {width} x {height} image", path=xml_path,
                        record=f"object {k + 1}")
    changed = int(np.any(clipped != boxes, axis=1).sum())
    boxes[:] = clipped
    return changed


def _repair_text(clipped: int, duplicates: int) -> str:
    parts = []
    if clipped:
        parts.append(f"{clipped} box(es) partly outside the image clipped to it")
    if duplicates:
        parts.append(f"{duplicates} duplicate object(s) kept (they count as ground truth, as in the devkit)")
    return "; ".join(parts)


# -------------------------------------------------------------------------------- data sets

def find_voc_root(root: str | Path, year: str | None = None, require_images: bool = True) -> Path:
    """The folder holding ``Annotations/``, ``JPEGImages/`` and ``ImageSets/Main/``
    (``JPEGImages/`` may be missing unless ``require_images``).

    Accepts that folder itself, a ``VOC<year>`` folder, or a ``VOCdevkit`` folder (with ``year``
    it picks ``VOC<year>``; without, the only ``VOC*`` folder inside).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("data set folder does not exist", path=root)
    if _is_voc_root(root, require_images):
        return root
    candidates = sorted(p for p in root.iterdir() if p.is_dir() and _is_voc_root(p, require_images))
    if year is not None:
        wanted = root / f"VOC{year}"
        if _is_voc_root(wanted, require_images):
            return wanted
        raise DataError(f"no VOC{year} folder with Annotations/, JPEGImages/ and ImageSets/Main/ here"
                        f"; found: {', '.join(p.name for p in candidates) or 'none'}", path=root)
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise DataError(f"several VOC data sets here ({', '.join(p.name for p in candidates)}); "
                        "choose one with a year", path=root)
    raise DataError("not a VOC folder: expected Annotations/, JPEGImages/ and ImageSets/Main/ in it, "
                    "or a VOCdevkit folder holding VOC<year> folders", path=root)


def _is_voc_root(path: Path, require_images: bool = True) -> bool:
    return ((path / "Annotations").is_dir() and (not require_images or (path / "JPEGImages").is_dir())
            and (path / "ImageSets" / "Main").is_dir())


@dataclass
class _Split:
    """One split read from disk, before the class list is fixed."""

    root: Path
    name: str
    items: list[tuple[str, Path, VOCAnnotation]] = field(default_factory=list)


def read_voc(root: str | Path, split: str, classes: Sequence[str] | None = None,
             year: str | None = None, require_images: bool = True) -> DetectionDataset:
    """Read the ``split`` (``ImageSets/Main/<split>.txt``) of a VOC-layout data set.

    Class list: ``classes`` if given, else ``<root>/classes.txt`` (one name per line) if present,
    else the 20 VOC classes if every name found is one, else the sorted names found. Similarity groups: ``<root>/similarity_groups.json`` (a list of
    lists of class names) if present, else :data:`VOC_SIMILARITY_GROUPS` for the VOC classes,
    else none. ``require_images=False`` reads the annotations alone (evaluation of result
    files): ``JPEGImages/`` may be missing, sizes come from the XML, and an image without a file
    gets the path ``JPEGImages/<id>.jpg``.
    """
    voc_root = find_voc_root(root, year, require_images)
    classes = classes if classes is not None else declared_classes(voc_root)
    return _build_dataset([_load_split(voc_root, split, classes, require_images)], classes)


def declared_classes(voc_root: Path) -> list[str] | None:
    """The class list a data set declares in ``classes.txt`` (one name per line), if any."""
    path = voc_root / "classes.txt"
    if not path.is_file():
        return None
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read the class list: {err}", path=path) from err
    if not names or len(set(names)) != len(names):
        raise DataError("the class list is empty or names a class twice", path=path)
    return names


def read_voc_splits(items: Sequence[tuple], classes: Sequence[str] | None = None) -> DetectionDataset:
    """Read and concatenate several splits, e.g. VOC "07+12": ``[(devkit, "trainval", "2007"),
    (devkit, "trainval", "2012")]``. Items are ``(root, split)`` or ``(root, split, year)``;
    the class list (when not given) is chosen over all of them together."""
    if not items:
        raise DataError("no splits to read")
    splits = []
    for item in items:
        if len(item) not in (2, 3):
            raise DataError(f"split item {item!r} is not (root, split) or (root, split, year)")
        voc_root = find_voc_root(item[0], item[2] if len(item) == 3 else None)
        splits.append(_load_split(voc_root, item[1], classes))
    return _build_dataset(splits, classes)


def _load_split(voc_root: Path, split: str, classes: Sequence[str] | None,
                require_images: bool = True) -> _Split:
    split_file = voc_root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        names = sorted(p.stem for p in split_file.parent.glob("*.txt"))
        main = [n for n in names if "_" not in n] or names
        raise DataError(f"no split {split!r}; available splits: {', '.join(main) or 'none'}",
                        path=split_file)
    ids = _read_split_file(split_file)
    folder = voc_root / "JPEGImages"
    images = _index_images(folder) if require_images or folder.is_dir() else {}
    result = _Split(voc_root, split)
    for image_id, line in tqdm(ids, desc=f"reading {voc_root.name}/{split}", unit="img",
                               disable=len(ids) < _PROGRESS_MIN):
        xml_path = voc_root / "Annotations" / f"{image_id}.xml"
        image_name = images.get(image_id)
        if image_name is None and not require_images:
            image_name = f"{image_id}.jpg"
        if image_name is None:
            raise DataError(f"image {image_id!r} not found in {voc_root / 'JPEGImages'}",
                            path=split_file, record=f"line {line}")
        if not xml_path.is_file():
            raise DataError(f"image {image_id!r} has no annotation {xml_path}", path=split_file,
                            record=f"line {line}")
        image_path = voc_root / "JPEGImages" / image_name
        annotation = parse_voc_annotation(xml_path, classes, image_path, warn=False)
        result.items.append((image_id, image_path, annotation))
    return result


def _read_split_file(split_file: Path) -> list[tuple[str, int]]:
    """``(image id, line number)`` of each non-blank line (first field, as the devkit reads it)."""
    try:
        text = split_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read split file: {err}", path=split_file) from err
    ids, seen = [], {}
    for line_no, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if fields[0] in seen:
            raise DataError(f"image {fields[0]!r} listed twice (first on line {seen[fields[0]]})",
                            path=split_file, record=f"line {line_no}")
        seen[fields[0]] = line_no
        ids.append((fields[0], line_no))
    return ids


def _index_images(folder: Path) -> dict[str, str]:
    """Image id -> file name in ``folder``, preferring ``.jpg`` when several extensions exist."""
    index: dict[str, str] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() not in _IMAGE_EXTENSIONS:
                continue
            if stem not in index or ext == ".jpg":
                index[stem] = entry.name
    return index


def _build_dataset(splits: list[_Split], classes: Sequence[str] | None) -> DetectionDataset:
    found = {n for s in splits for _, _, a in s.items for n in a.names}
    if classes is not None:
        class_list = list(classes)
    elif found <= set(VOC_CLASSES):
        class_list = list(VOC_CLASSES)
    else:
        class_list = sorted(found)
    samples, owner = [], {}
    clipped = duplicates = repaired_files = 0
    for s in splits:
        for image_id, image_path, annotation in s.items:
            if image_id in owner:
                raise DataError(f"image id {image_id!r} is in both {owner[image_id]} and "
                                f"{s.root.name}/{s.name}; concatenated splits need distinct ids",
                                path=s.root / "ImageSets" / "Main" / f"{s.name}.txt")
            owner[image_id] = f"{s.root.name}/{s.name}"
            samples.append(annotation.to_sample(image_id, image_path, class_list))
            clipped += annotation.clipped
            duplicates += annotation.duplicates
            repaired_files += bool(annotation.clipped or annotation.duplicates)
    name = "+".join(f"{s.root.name}/{s.name}" for s in splits)
    if clipped or duplicates:
        warnings.warn(f"{name}: {_repair_text(clipped, duplicates)} in {repaired_files} file(s)",
                      stacklevel=3)
    groups = _similarity_groups(splits[0].root, class_list)
    return DetectionDataset(class_list, samples, name, groups)


def _similarity_groups(voc_root: Path, classes: list[str]) -> list[list[str]]:
    path = voc_root / "similarity_groups.json"
    if not path.is_file():
        return [list(g) for g in VOC_SIMILARITY_GROUPS] if classes == list(VOC_CLASSES) else []
    return read_similarity_groups(path, classes)


# --------------------------------------------------------------------------- result files

@dataclass
class VOCClassResults:
    """The detections of one class as read from a devkit result file (devkit coordinates)."""

    image_ids: list[str]
    scores: np.ndarray  # [N] float64
    boxes: np.ndarray  # [N, 4] float64, xmin ymin xmax ymax, 1-based inclusive


def read_voc_results(results_dir: str | Path, split: str, classes: Sequence[str],
                     known_ids: set[str] | None = None, prefix: str = "comp4") -> dict[str, VOCClassResults]:
    """Read ``<prefix>_det_<split>_<class>.txt`` for each class.

    A missing file gives a warning and no detections for that class. A line that is not
    ``image_id score xmin ymin xmax ymax`` with finite numbers, or (when ``known_ids`` is given)
    names an unknown image, is a :class:`DataError` naming the file and line.
    """
    results = {}
    for name in classes:
        path = Path(results_dir) / f"{prefix}_det_{split}_{name}.txt"
        if not path.is_file():
            warnings.warn(f"{path}: no result file for class {name!r}; taking it as no detections",
                          stacklevel=2)
            results[name] = VOCClassResults([], np.zeros(0), np.zeros((0, 4)))
            continue
        results[name] = _read_result_file(path, known_ids)
    return results


def _read_result_file(path: Path, known_ids: set[str] | None) -> VOCClassResults:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read result file: {err}", path=path) from err
    image_ids, rows = [], []
    for line_no, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        record = f"line {line_no}"
        if len(fields) != 6:
            raise DataError(f"expected 'image_id score xmin ymin xmax ymax', got {len(fields)} fields",
                            path=path, record=record)
        try:
            numbers = [float(f) for f in fields[1:]]
        except ValueError:
            raise DataError(f"non-numeric field in {line.strip()!r}", path=path, record=record) from None
        if not all(math.isfinite(v) for v in numbers):
            raise DataError(f"NaN or infinite number in {line.strip()!r}", path=path, record=record)
        if known_ids is not None and fields[0] not in known_ids:
            raise DataError(f"unknown image id {fields[0]!r}", path=path, record=record)
        image_ids.append(fields[0])
        rows.append(numbers)
    table = np.array(rows, np.float64).reshape(-1, 5)
    return VOCClassResults(image_ids, table[:, 0].copy(), table[:, 1:].copy())
