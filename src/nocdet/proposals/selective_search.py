"""Selective Search region proposals (Uijlings et al., IJCV 2013), "fast" mode, cached per image.

The frozen-feature detector (SPPnet setting, paper Sec. 3) classifies Selective Search boxes.
docs/reference.md §3 asks for the "fast" mode of the original code as R-CNN ran it: colour spaces HSV and Lab,
Felzenszwalb-Huttenlocher segmentations with k in {50, 100} and sigma 0.8, two similarity
strategies (colour+texture+size+fill and texture+size+fill), then boxes narrower or lower than
20 px removed and duplicates removed: about 2,000 boxes per PASCAL image.

We run OpenCV's implementation (``cv2.ximgproc.segmentation``) through its strategy API rather
than ``switchToSelectiveSearchFast()``, whose defaults differ (k in {150, 300, 450}):

* images: ``RGB2HSV_FULL`` (all three channels span 0..255, as MATLAB's ``rgb2hsv`` spans 0..1
  in the original code) and ``RGB2Lab``;
* segmentations: one per k, ``sigma = 0.8`` and minimum segment size ``k`` (as the original);
* strategies: ``Multiple(Color, Texture, Size, Fill)`` and ``Multiple(Texture, Size, Fill)``.

OpenCV ranks the merged regions by ``level * rand()`` (the pseudo-random ranking of the paper),
using the C library's global ``rand()``. We reseed it (``srand(seed)``) before every image, so an
image's boxes and their order depend only on the image and the settings, whichever process or
worker computes them; ``max_boxes`` keeps the first boxes of that order. Only one Selective
Search may run per process at a time (workers are processes, never threads).

Speed (one core of a shared 2-core machine, so upper bounds): about 1.2 s per 320 px
scene-digits image, 1.5-4.6 s per 500 x 375 photograph; ``max_side=320`` makes the latter
3-5x faster at the price of fewer (about 900-1,300 instead of 1,300-2,000) boxes.

Boxes are internal ``(x1, y1, x2, y2)`` float32 (N = proposals of one image): OpenCV's pixel
rectangle ``(x, y, w, h)`` covers columns ``x .. x + w - 1``, hence ``x2 = x + w``.

Cache: one ``.npz`` file per image content, under a folder named by a hash of the settings
that change the boxes (everything but ``max_boxes``, plus :data:`CACHE_VERSION` and the OpenCV
version). A file is named by the BLAKE2b hash of the image file's bytes, not by the image id:
two splits whose image ids coincide (COCO files that both number their images from 1) share
no entry unless their images are the same bytes, and an image whose bytes changed simply has
no entry yet (size and mtime alone miss a same-size rewrite; hashing a JPEG costs well under
1 % of running Selective Search on it). A file stores the boxes before the ``max_boxes`` cut,
so changing the cut reuses the cache. Files are written atomically and validated on load
(readable, ``[N, 4]`` float32, finite, the same hash inside); a bad file is recomputed and
overwritten. Two processes filling one cache write identical files, each by an atomic rename,
so the cache stays consistent.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import io
import json
import logging
import multiprocessing
import re
import zipfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from nocdet.data.images import load_image
from nocdet.data.sample import DetectionDataset
from nocdet.errors import ConfigError, DataError, NocdetError
from nocdet.io import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when a code change alters the boxes computed for the same settings

DEFAULT_SETTINGS: dict[str, Any] = {
    "color_spaces": ["hsv", "lab"],
    "ks": [50, 100],
    "sigma": 0.8,
    "min_size": 20,     # px; boxes with width or height below are dropped (docs/reference.md §3)
    "max_side": None,   # px; larger images are shrunk for Selective Search, boxes scaled back
    "max_boxes": 2000,  # keep the first boxes of Selective Search's ranking; None keeps all
    "seed": 0,          # seed of the pseudo-random ranking
}

_COLOR_CONVERSIONS = {"hsv": cv2.COLOR_RGB2HSV_FULL, "lab": cv2.COLOR_RGB2Lab, "rgb": None}
_SEGMENTATION = cv2.ximgproc.segmentation


# ------------------------------------------------------------------------------ one image

def selective_search(image: np.ndarray, *, min_size: int = 20, max_boxes: int | None = 2000,
                     max_side: int | None = None, ks: tuple[float, ...] | list[float] = (50, 100),
                     sigma: float = 0.8, color_spaces: tuple[str, ...] | list[str] = ("hsv", "lab"),
                     seed: int = 0) -> np.ndarray:
    """Selective Search boxes ``[N, 4]`` float32 of an ``H x W x 3`` uint8 RGB image.

    Boxes are in Selective Search's ranking order, without duplicates, each at least
    ``min_size`` px wide and high (in the original image's pixels), at most ``max_boxes``.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"selective_search needs an H x W x 3 uint8 RGB image, got {image.dtype} "
                         f"array of shape {image.shape}")
    height, width = image.shape[:2]
    small = _shrink(image, max_side)
    rects = _run_opencv(small, ks, sigma, color_spaces, seed)
    boxes = rects.astype(np.float64)
    boxes[:, 2:] += boxes[:, :2]  # (x, y, w, h) -> (x1, y1, x2, y2)
    if small is not image:
        boxes *= np.array([width / small.shape[1], height / small.shape[0]] * 2)
        boxes = np.round(boxes)  # back on the pixel grid of the original image
        np.clip(boxes, 0, [width, height, width, height], out=boxes)
    keep = (boxes[:, 2] - boxes[:, 0] >= min_size) & (boxes[:, 3] - boxes[:, 1] >= min_size)
    boxes = _unique_rows(boxes[keep].astype(np.float32))
    return boxes if max_boxes is None else boxes[:max_boxes]


def _shrink(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """The image with its longer side at most ``max_side`` (the input itself when it fits)."""
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _run_opencv(image: np.ndarray, ks, sigma: float, color_spaces, seed: int) -> np.ndarray:
    """OpenCV's Selective Search with the "fast" strategies; ``[M, 4]`` int ``(x, y, w, h)``."""
    search = _SEGMENTATION.createSelectiveSearchSegmentation()
    for name in color_spaces:
        code = _COLOR_CONVERSIONS[name]
        search.addImage(np.ascontiguousarray(image) if code is None else cv2.cvtColor(image, code))
    for k in ks:
        search.addGraphSegmentation(
            _SEGMENTATION.createGraphSegmentation(sigma=float(sigma), k=float(k), min_size=int(k)))
    color = _SEGMENTATION.createSelectiveSearchSegmentationStrategyColor
    texture = _SEGMENTATION.createSelectiveSearchSegmentationStrategyTexture
    size = _SEGMENTATION.createSelectiveSearchSegmentationStrategySize
    fill = _SEGMENTATION.createSelectiveSearchSegmentationStrategyFill
    multiple = _SEGMENTATION.createSelectiveSearchSegmentationStrategyMultiple
    search.addStrategy(multiple(color(), texture(), size(), fill()))
    search.addStrategy(multiple(texture(), size(), fill()))
    _seed_c_rand(seed)
    rects = search.process()
    return np.asarray(rects, dtype=np.int64).reshape(-1, 4)


@functools.lru_cache(maxsize=1)
def _c_library() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        logger.warning("C library not found: Selective Search's ranking (and the max_boxes cut) "
                       "is not reproducible across runs")
        return None
    return ctypes.CDLL(name)


def _seed_c_rand(seed: int) -> None:
    """Seed the C ``rand()`` that OpenCV's Selective Search ranks regions with."""
    libc = _c_library()
    if libc is not None:
        libc.srand(ctypes.c_uint(seed & 0xFFFFFFFF))


def _unique_rows(boxes: np.ndarray) -> np.ndarray:
    """Rows of ``boxes`` without repeats, first occurrences in their original order."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4)
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)]


# ------------------------------------------------------------------------------ settings

def resolve_settings(settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:data:`DEFAULT_SETTINGS` updated by ``settings``, validated (:class:`ConfigError`)."""
    unknown = sorted(set(settings or {}) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ConfigError(f"unknown Selective Search setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(DEFAULT_SETTINGS)}")
    merged = {**DEFAULT_SETTINGS, **(settings or {})}
    spaces = merged["color_spaces"]
    if isinstance(spaces, str) or not spaces or any(s not in _COLOR_CONVERSIONS for s in spaces):
        raise ConfigError(f"color_spaces must be a non-empty list of {sorted(_COLOR_CONVERSIONS)}, "
                          f"got {spaces!r}")
    ks = merged["ks"]
    if isinstance(ks, (str, int, float)) or not ks or not all(_is_number(k) and k > 0 for k in ks):
        raise ConfigError(f"ks must be a non-empty list of positive numbers, got {ks!r}")
    if not (_is_number(merged["sigma"]) and merged["sigma"] > 0):
        raise ConfigError(f"sigma must be a positive number, got {merged['sigma']!r}")
    _check_int(merged, "min_size", 0, optional=False)
    _check_int(merged, "max_side", 1, optional=True)
    _check_int(merged, "max_boxes", 1, optional=True)
    _check_int(merged, "seed", 0, optional=False)
    merged["color_spaces"] = list(spaces)
    merged["ks"] = [float(k) for k in ks]
    merged["sigma"] = float(merged["sigma"])
    return merged


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _check_int(settings: dict, key: str, minimum: int, optional: bool) -> None:
    value = settings[key]
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        allowed = " or null" if optional else ""
        raise ConfigError(f"{key} must be an integer >= {minimum}{allowed}, got {value!r}")
    settings[key] = int(value)


def _search_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """Arguments of :func:`selective_search` for a cached (uncut) run."""
    return {key: settings[key] for key in ("min_size", "max_side", "ks", "sigma", "color_spaces", "seed")}


# ------------------------------------------------------------------------------ cache

def image_fingerprint(path: str | Path) -> str:
    """BLAKE2b hash of the image file's bytes (what the cache checks an image against)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"cannot read image: {err.strerror or err}", path=path) from err
    return "blake2b:" + hashlib.blake2b(data, digest_size=16).hexdigest()


class ProposalCache:
    """Per-image Selective Search boxes under ``root/selective_search-<settings hash>/``."""

    def __init__(self, root: str | Path, settings: Mapping[str, Any] | None = None):
        self.settings = resolve_settings(settings)
        self.key = {**_search_kwargs(self.settings), "strategies": "fast", "cache_version": CACHE_VERSION,
                    "opencv": cv2.__version__}  # what the boxes depend on; max_boxes is cut on read
        digest = hashlib.sha1(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:12]
        self.folder = Path(root) / f"selective_search-{digest}"

    def file_for(self, fingerprint: str) -> Path:
        """Cache file of an image whose bytes hash to ``fingerprint`` (from :func:`image_fingerprint`)."""
        digest = fingerprint.split(":", 1)[-1]
        if not re.fullmatch(r"[0-9a-f]+", digest):
            raise ValueError(f"not an image fingerprint: {fingerprint!r}")
        return self.folder / f"{digest}.npz"

    def load(self, fingerprint: str) -> np.ndarray | None:
        """The cached boxes (before the ``max_boxes`` cut) of an image's content, or None if
        missing or corrupt."""
        path = self.file_for(fingerprint)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                boxes, stored_fp = data["boxes"], str(data["fingerprint"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            logger.warning("unreadable proposal cache file %s (%s): recomputing", path, err)
            return None
        if boxes.dtype != np.float32 or boxes.ndim != 2 or boxes.shape[1] != 4 \
                or not np.isfinite(boxes).all() or stored_fp != fingerprint:
            logger.warning("invalid proposal cache file %s: recomputing", path)
            return None
        return boxes

    def store(self, fingerprint: str, boxes: np.ndarray) -> None:
        """Write the boxes of an image's content atomically (and the settings file on first use)."""
        settings_file = self.folder / "settings.json"
        if not settings_file.is_file():
            atomic_write_json(settings_file, self.key)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                            fingerprint=np.array(fingerprint))
        atomic_write_bytes(self.file_for(fingerprint), buffer.getvalue())


# ------------------------------------------------------------------------------ data sets

_EXPECTED_FAILURES = (NocdetError, OSError, cv2.error)
_Outcome = tuple[str, str | None, np.ndarray | None, str | None]  # id, fingerprint, boxes, error


def _compute_one(image_id: str, path: str, kwargs: dict[str, Any]) -> _Outcome:
    """Worker task: ``(image id, image fingerprint, boxes, error message)``; never raises on bad data."""
    try:
        fingerprint = image_fingerprint(path)
        boxes = selective_search(load_image(path), max_boxes=None, **kwargs)
    except _EXPECTED_FAILURES as err:
        return image_id, None, None, err.reason if isinstance(err, DataError) else str(err).strip()
    return image_id, fingerprint, boxes, None


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _compute_all(jobs: list[tuple[str, str]], kwargs: dict[str, Any], workers: int) -> Iterator[_Outcome]:
    """Results of :func:`_compute_one` for ``(image id, path)`` jobs, in completion order."""
    if workers == 0 or not jobs:
        for image_id, path in jobs:
            yield _compute_one(image_id, path, kwargs)
        return
    # 'spawn': fresh interpreters, safe when the parent holds torch threads or CUDA
    executor = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), initializer=_init_worker,
                                   mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = [executor.submit(_compute_one, image_id, path, kwargs) for image_id, path in jobs]
        for future in as_completed(futures):
            yield future.result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def compute_proposals(dataset: DetectionDataset, cache_dir: str | Path | None,
                      settings: Mapping[str, Any] | None = None, workers: int = 2,
                      progress: bool = True) -> dict[str, np.ndarray]:
    """Selective Search boxes of every image of ``dataset``: ``{image id: [N, 4] float32}``.

    Cached images are read from ``cache_dir`` (None: no cache); the others are computed by
    ``workers`` processes (0: in this process) and cached. Images that fail (unreadable,
    corrupt) do not stop the others: a :class:`DataError` listing all of them is raised at the
    end, after the rest is computed and cached.
    """
    settings = resolve_settings(settings)
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    paths = _image_paths(dataset)
    cache = ProposalCache(cache_dir, settings) if cache_dir is not None else None
    found: dict[str, np.ndarray] = {}
    failures: dict[str, str] = {}
    jobs: list[tuple[str, str]] = []
    with tqdm(total=len(paths), desc="selective search", unit="img", disable=not progress) as bar:
        for image_id, path in paths.items():
            boxes = None
            if cache is not None:
                try:
                    boxes = cache.load(image_fingerprint(path))
                except DataError as err:
                    failures[image_id] = err.reason
                    bar.update()
                    continue
            if boxes is None:
                jobs.append((image_id, path))
            else:
                found[image_id] = boxes
                bar.update()
        bar.set_postfix(cached=len(found))
        for image_id, fingerprint, boxes, error in _compute_all(jobs, _search_kwargs(settings), workers):
            if error is not None:
                failures[image_id] = error
            else:
                if cache is not None:
                    cache.store(fingerprint, boxes)
                found[image_id] = boxes
            bar.update()
    if failures:
        listed = "\n".join(f"  {paths[i]}: {failures[i]}" for i in paths if i in failures)
        raise DataError(f"Selective Search failed on {len(failures)} of {len(paths)} images "
                        f"(the others were computed{' and cached' if cache else ''}):\n{listed}")
    cut = settings["max_boxes"]
    return {image_id: found[image_id][:cut] for image_id in paths}


def _image_paths(dataset: DetectionDataset) -> dict[str, str]:
    """``{image id: path}`` in data set order; one id with two different files is an error."""
    paths: dict[str, str] = {}
    for sample in dataset.samples:
        path = str(sample.path)
        if paths.setdefault(sample.image_id, path) != path:
            raise DataError(f"image id {sample.image_id!r} names two files: {paths[sample.image_id]} "
                            f"and {path}", record=dataset.name or None)
    return paths
