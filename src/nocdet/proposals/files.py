"""Proposal files: precomputed boxes per image, read and written in two formats, plus the
conversion of the community's R-CNN / Fast R-CNN Selective Search ``.mat`` files.

Formats (chosen by the file extension), boxes in internal ``(x1, y1, x2, y2)`` coordinates
(continuous pixels, see :mod:`nocdet.data.sample`):

* ``.npz``: one array per image, named by the image id, ``[N, 4]`` float32;
* ``.json``: ``{"format": "nocdet-proposals", "version": 1, "coords": "x1y1x2y2",
  "proposals": {image id: [[x1, y1, x2, y2], ...]}}``.

The precomputed Selective Search boxes of PASCAL VOC that R-CNN and Fast R-CNN distribute
(``data/selective_search_data/voc_2007_{trainval,test}.mat``, fetched by Fast R-CNN's
``data/scripts/fetch_selective_search_data.sh``) hold two MATLAB cell arrays: ``images``, the
image ids, and ``boxes``, one ``[N, 4]`` array per image in MATLAB's 1-based, inclusive
``[row1, col1, row2, col2]`` = ``[y1 x1 y2 x2]`` order. Pixel column ``c`` (1-based) spans the
continuous interval ``[c - 1, c]``, so::

    x1 = col1 - 1,  y1 = row1 - 1,  x2 = col2,  y2 = row2

(Fast R-CNN itself reads them as 0-based inclusive ``[col1, row1, col2, row2] - 1``; ours is
the same box with an exclusive right/bottom edge.) Convert once, then use the result::

    nocdet proposals convert-mat selective_search_data/voc_2007_test.mat --out ss_voc07_test.npz
"""
from __future__ import annotations

import io
import json
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nocdet.data.sample import DetectionDataset
from nocdet.errors import DataError
from nocdet.io import atomic_write_bytes, atomic_write_text

FORMAT_NAME = "nocdet-proposals"
FORMAT_VERSION = 1
_BOUNDS_SLACK = 1.0  # px a proposal may stick out of its image before it is taken for an error
_LISTED = 10  # how many offending image ids an error message lists


# ------------------------------------------------------------------------------ write

def save_proposals(path: str | Path, proposals: Mapping[str, np.ndarray]) -> None:
    """Write ``{image id: [N, 4] boxes}`` to a ``.npz`` or ``.json`` file, atomically."""
    path = Path(path)
    checked = {str(image_id): _checked_boxes(boxes, path, image_id)
               for image_id, boxes in proposals.items()}
    kind = _kind(path)
    if kind == "npz":
        atomic_write_bytes(path, _npz_bytes(checked))
    else:
        document = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "coords": "x1y1x2y2",
                    "proposals": {i: b.tolist() for i, b in checked.items()}}
        atomic_write_text(path, json.dumps(document, separators=(",", ":")) + "\n")


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An ``.npz`` archive of named arrays; built directly so that any id is a valid name
    (``np.savez(**arrays)`` refuses ids such as ``"file"``)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buffer.getvalue()


# ------------------------------------------------------------------------------ read

def load_proposals(path: str | Path, dataset: DetectionDataset | None = None) -> dict[str, np.ndarray]:
    """Read a proposal file: ``{image id: [N, 4] float32}``.

    Every record is validated (shape, finite values, ``x2 >= x1`` and ``y2 >= y1``); errors
    name the file and the image. With ``dataset``, every image of it must be in the file and
    its boxes inside the image (1 px slack; boxes far outside usually mean swapped
    coordinates), and the result holds the data set's images only, in its order. Images with
    no boxes are allowed, with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("proposal file does not exist", path=path)
    raw = _read_npz(path) if _kind(path) == "npz" else _read_json(path)
    proposals = {image_id: _checked_boxes(boxes, path, image_id) for image_id, boxes in raw.items()}
    if dataset is not None:
        proposals = _match_dataset(proposals, dataset, path)
    empty = [i for i, boxes in proposals.items() if len(boxes) == 0]
    if empty:
        warnings.warn(f"{path}: {len(empty)} of {len(proposals)} images have no proposals "
                      f"(e.g. {', '.join(empty[:_LISTED])})", stacklevel=2)
    return proposals


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".json"):
        raise DataError(f"unknown proposal file type {suffix or '(none)'!r}: use .npz or .json", path=path)
    return suffix[1:]


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError("not an .npz archive of arrays named by image id", path=path)
        with archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"unreadable .npz proposal file: {err}", path=path) from err


def _read_json(path: Path) -> dict[str, object]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"unreadable proposal file: {err}", path=path) from err
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON: {err.msg}", path=path, record=f"line {err.lineno}") from err
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise DataError(f"not a proposal file: expected an object with \"format\": \"{FORMAT_NAME}\"",
                        path=path)
    if document.get("version") != FORMAT_VERSION:
        raise DataError(f"unsupported version {document.get('version')!r} (this nocdet reads "
                        f"version {FORMAT_VERSION})", path=path)
    if document.get("coords") != "x1y1x2y2":
        raise DataError(f"unsupported coords {document.get('coords')!r}: expected \"x1y1x2y2\"", path=path)
    proposals = document.get("proposals")
    if not isinstance(proposals, dict):
        raise DataError("\"proposals\" must be an object {image id: [[x1, y1, x2, y2], ...]}", path=path)
    return proposals


def _checked_boxes(boxes: object, path: Path, image_id: object) -> np.ndarray:
    """``boxes`` as a valid ``[N, 4]`` float32 array, or a DataError naming file and image."""
    record = f"image {image_id!s}"
    try:
        array = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError("boxes must be numbers [[x1, y1, x2, y2], ...]", path=path, record=record) from err
    if array.size == 0:
        return np.zeros((0, 4), np.float32)
    if array.ndim != 2 or array.shape[1] != 4:
        raise DataError(f"boxes must have shape [N, 4], got {list(array.shape)}", path=path, record=record)
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(bad):
        raise DataError(f"non-finite coordinates {array[bad[0]].tolist()}", path=path,
                        record=f"{record}, box {bad[0]}")
    bad = np.flatnonzero((array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1]))
    if len(bad):
        raise DataError(f"box {array[bad[0]].tolist()} has x2 < x1 or y2 < y1 (expected x1 y1 x2 y2)",
                        path=path, record=f"{record}, box {bad[0]}")
    return array.astype(np.float32)


def _match_dataset(proposals: dict[str, np.ndarray], dataset: DetectionDataset,
                   path: Path) -> dict[str, np.ndarray]:
    """The data set's images' proposals in data set order, checked against the image sizes."""
    missing = [s.image_id for s in dataset.samples if s.image_id not in proposals]
    if missing:
        raise DataError(f"{len(missing)} of {len(dataset)} images of {dataset.name or 'the data set'} "
                        f"have no entry: {', '.join(missing[:_LISTED])}"
                        f"{', ...' if len(missing) > _LISTED else ''}", path=path)
    matched = {}
    for sample in dataset.samples:
        boxes = proposals[sample.image_id]
        limits = np.array([0, 0, sample.width, sample.height], np.float32)
        outside = (boxes[:, :2] < -_BOUNDS_SLACK).any(axis=1) \
            | (boxes[:, 2:] > limits[2:] + _BOUNDS_SLACK).any(axis=1)
        if outside.any():
            first = int(np.flatnonzero(outside)[0])
            raise DataError(f"box {boxes[first].tolist()} lies outside the {sample.width} x {sample.height} "
                            "image (are the coordinates x1 y1 x2 y2?)", path=path,
                            record=f"image {sample.image_id}, box {first}")
        matched[sample.image_id] = boxes
    return matched


# ------------------------------------------------------------------------------ R-CNN .mat

def convert_rcnn_mat(mat_path: str | Path, out_path: str | Path,
                     image_ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Convert an R-CNN ``selective_search_data`` ``.mat`` file to a proposal file.

    ``image_ids`` (optional) selects and orders the images to write; each must be in the file.
    Returns what was written, ``{image id: [N, 4] float32}`` in internal coordinates.
    """
    import scipy.io

    mat_path = Path(mat_path)
    if not mat_path.is_file():
        raise DataError("MATLAB file does not exist", path=mat_path)
    try:
        data = scipy.io.loadmat(mat_path)
    except NotImplementedError as err:  # MATLAB v7.3 files are HDF5
        raise DataError("MATLAB v7.3 (HDF5) file: re-save it in MATLAB with save(..., '-v7')",
                        path=mat_path) from err
    except (scipy.io.matlab.MatReadError, OSError, ValueError, TypeError) as err:
        raise DataError(f"unreadable MATLAB file: {err}", path=mat_path) from err
    for key in ("boxes", "images"):
        if key not in data:
            found = sorted(k for k in data if not k.startswith("__"))
            raise DataError(f"no {key!r} variable (found: {', '.join(found) or 'none'}); expected "
                            "R-CNN's selective_search_data layout", path=mat_path)
    cells, names = data["boxes"].ravel(), data["images"].ravel()
    if len(cells) != len(names):
        raise DataError(f"{len(cells)} box arrays but {len(names)} image ids", path=mat_path)
    proposals: dict[str, np.ndarray] = {}
    for index, (cell, name) in enumerate(zip(cells, names)):
        image_id = _mat_string(name, mat_path, index)
        proposals[image_id] = _from_matlab_boxes(cell, mat_path, f"image {image_id} (cell {index + 1})")
    if image_ids is not None:
        missing = [i for i in image_ids if i not in proposals]
        if missing:
            raise DataError(f"{len(missing)} requested images are not in the file: "
                            f"{', '.join(missing[:_LISTED])}", path=mat_path)
        proposals = {i: proposals[i] for i in image_ids}
    save_proposals(out_path, proposals)
    return proposals


def _mat_string(value: object, path: Path, index: int) -> str:
    """An image id from a MATLAB cell: a char array (``array(['000005'])``) or a number."""
    item = np.asarray(value)
    while item.dtype == object and item.size == 1:
        item = np.asarray(item.ravel()[0])
    if item.dtype.kind == "U" and item.size == 1:
        return str(item.ravel()[0])
    if item.dtype.kind in "iuf" and item.size == 1 and float(item.ravel()[0]).is_integer():
        return str(int(item.ravel()[0]))
    raise DataError(f"image id is not a string: {value!r}", path=path, record=f"images cell {index + 1}")


def _from_matlab_boxes(cell: object, path: Path, record: str) -> np.ndarray:
    """MATLAB 1-based ``[y1 x1 y2 x2]`` rows -> internal ``(x1, y1, x2, y2)`` float32."""
    try:
        rows = np.asarray(cell, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError("boxes are not numeric", path=path, record=record) from err
    if rows.size == 0:
        return np.zeros((0, 4), np.float32)
    if rows.ndim != 2 or rows.shape[1] != 4:
        raise DataError(f"boxes must have shape [N, 4], got {list(rows.shape)}", path=path, record=record)
    if not np.isfinite(rows).all() or (rows < 1).any() or (rows != np.round(rows)).any():
        raise DataError("boxes must be whole 1-based pixel indices (>= 1); are they already 0-based?",
                        path=path, record=record)
    if ((rows[:, 2] < rows[:, 0]) | (rows[:, 3] < rows[:, 1])).any():
        raise DataError("a box has row2 < row1 or col2 < col1 (expected [y1 x1 y2 x2])", path=path,
                        record=record)
    row1, col1, row2, col2 = rows.T
    return np.stack([col1 - 1, row1 - 1, col2, row2], axis=1).astype(np.float32)
