"""The "maps" store of the RoI feature cache: pyramid conv maps on disk, RoI-pooled when read.

SPPnet cached the conv5 maps of each image's pyramid and pooled regions on the fly; the "pooled"
store of :mod:`nocdet.features.roi_cache` keeps every region's pooled features instead, which for
ZF on VOC (2,000 regions x 2 levels x 256 x 6 x 6, float16) is ~74 MB per image against ~9 MB of
maps. A maps shard stores, per image, its conv maps at every pyramid level in float16 and an
index; :class:`MapFeatures` is a read-only view of the shard's regions ``[N, P, C, m, m]`` that
pools the requested rows from those maps with :func:`nocdet.features.pyramid.pool_slots`, the
function the pooled store extracts with. RoI max pooling commutes with the (monotonic) rounding to float16, so both stores
give bit-identical features for pool "max"; for "align" (bilinear) they agree to float16 precision.

Files of a maps shard, besides ``regions.npz`` and ``images.json``::

    maps.npy         float16 [M]  the maps of image 0 (level 0, 1, ...), then image 1, ...; each
                                  map [C, H, W] in C order; written image by image
    maps-index.npz   offset [I, S] (first element of each map), shape [I, S, 3] (C, H, W),
                     factor [I, S] (resize factor of the level), and the pooling: stride,
                     roi_size, pool_mode, channels

The maps of an image do not depend on its regions: a maps shard whose images, backbone and
pyramid match another cache's (same maps key, :func:`nocdet.features.roi_cache.maps_key`) takes
that cache's two files as hard links (:func:`link_maps`) and computes only its region tables.

Shape shorthand: I = images, S = pyramid levels, N = regions, P = pathways, C = channels,
m = RoI size.
"""
from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
import torch
from torch import Tensor

from nocdet.errors import DataError, NocdetError
from nocdet.features.float16 import to_float16, to_float32
from nocdet.features.pyramid import pool_slots
from nocdet.io import atomic_write_bytes

MAPS_FILE = "maps.npy"
INDEX_FILE = "maps-index.npz"
_HEADER = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False}


@dataclass(frozen=True)
class MapIndex:
    """Where each image's map of each level lies in ``maps.npy``, and how regions are pooled."""

    offset: np.ndarray  # [I, S] int64, in elements
    shape: np.ndarray  # [I, S, 3] int64: C, H, W
    factor: np.ndarray  # [I, S] float64
    stride: int
    roi_size: int
    pool_mode: str
    channels: int

    @property
    def elements(self) -> int:
        """Values in ``maps.npy``: the sum of C x H x W over images and levels."""
        return int(self.shape.prod(axis=-1).sum())

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, offset=self.offset, shape=self.shape, factor=self.factor, stride=self.stride,
                 roi_size=self.roi_size, pool_mode=self.pool_mode, channels=self.channels)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> MapIndex:
        with np.load(path) as z:
            return cls(offset=z["offset"], shape=z["shape"], factor=z["factor"], stride=int(z["stride"]),
                       roi_size=int(z["roi_size"]), pool_mode=str(z["pool_mode"]), channels=int(z["channels"]))


def map_bytes(width: int, height: int, factors: Sequence[float], stride: int, channels: int) -> int:
    """About the bytes one image's maps take in ``maps.npy``: per level, C x ceil(H'/stride) x
    ceil(W'/stride) float16 values, H' x W' the resized image (networks that pad differently give
    a cell more or less per side)."""
    cells = sum(-(-max(1, round(height * f)) // stride) * -(-max(1, round(width * f)) // stride) for f in factors)
    return 2 * channels * cells


class MapWriter:
    """Streams images' pyramid maps into an open ``maps.npy`` (float16, 1-D), one image at a time.

    The ``.npy`` header is written first for zero elements and rewritten in place by
    :meth:`finish` (numpy pads headers so that the length can grow without moving the data).
    """

    def __init__(self, file: BinaryIO, stride: int, roi_size: int, pool_mode: str, channels: int):
        self.file = file
        self.settings = {"stride": stride, "roi_size": roi_size, "pool_mode": pool_mode, "channels": channels}
        np.lib.format.write_array_header_1_0(file, {**_HEADER, "shape": (0,)})
        self.data_start = file.tell()
        self.offset: list[list[int]] = []
        self.shape: list[list[tuple[int, int, int]]] = []
        self.factor: list[list[float]] = []
        self.elements = 0

    def add(self, maps: Sequence[Tensor], factors: Sequence[float]) -> None:
        """Append one image's maps ``[1, C, H, W]`` (one per level) and their resize factors."""
        offsets, shapes = [], []
        for fmap in maps:
            array = to_float16(fmap[0])
            self.file.write(array.tobytes())
            offsets.append(self.elements)
            shapes.append(array.shape)
            self.elements += array.size
        self.offset.append(offsets)
        self.shape.append(shapes)
        self.factor.append([float(f) for f in factors])

    def finish(self, index_path: Path) -> MapIndex:
        """Write the final header, fsync the maps, then write the index to ``index_path``."""
        self.file.seek(0)
        np.lib.format.write_array_header_1_0(self.file, {**_HEADER, "shape": (self.elements,)})
        if self.file.tell() != self.data_start:
            raise NocdetError(f"the {MAPS_FILE} header changed length: this numpy does not pad it for growth")
        self.file.seek(0, os.SEEK_END)
        self.file.flush()
        os.fsync(self.file.fileno())
        levels = len(self.offset[0]) if self.offset else 0
        index = MapIndex(offset=np.array(self.offset, np.int64).reshape(-1, levels),
                         shape=np.array(self.shape, np.int64).reshape(-1, levels, 3),
                         factor=np.array(self.factor, np.float64).reshape(-1, levels), **self.settings)
        index.save(index_path)
        return index


class MapFeatures:
    """The pooled features ``[N, P, C, m, m]`` float16 of a maps shard, pooled when indexed.

    Behaves like the pooled store's memory-mapped array for reads: ``shape``, ``dtype``,
    ``len()`` and indexing by an int, a slice or a 1-D integer array (any order, repeats and
    negative indices allowed), each returning a new float16 array. The rows of one request are
    grouped by image and pooled with one :func:`pool_slots` call.
    """

    dtype = np.dtype(np.float16)

    def __init__(self, maps: np.ndarray, index: MapIndex, boxes: np.ndarray, image: np.ndarray,
                 levels: np.ndarray):
        self.maps, self.index = maps, index
        self.boxes, self.image, self.levels = boxes, image, levels

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        m = self.index.roi_size
        return len(self.boxes), self.levels.shape[1], self.index.channels, m, m

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, key: int | np.integer | slice | np.ndarray | Sequence[int]) -> np.ndarray:
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            return self._pool(self._rows(np.array([key])))[0]
        if isinstance(key, slice):
            return self._pool(np.arange(*key.indices(len(self))))
        rows = None if isinstance(key, tuple) else np.asarray(key)
        if rows is None or rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
            raise TypeError("a maps-store feature view is indexed by an int, a slice or a 1-D integer array, "
                            f"got {type(key).__name__} {key!r:.60}")
        return self._pool(self._rows(rows.astype(np.int64)))

    def at_slots(self, rows: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Features ``[n, C, m, m]`` float16 of regions ``rows [n]``, each at one of its pathways
        ``slots [n]``, pooled at that level only (the same values as ``self[rows]`` there)."""
        rows = self._rows(np.asarray(rows, np.int64).reshape(-1))
        chosen = self.levels[rows, np.asarray(slots, np.int64).reshape(-1)]
        return MapFeatures(self.maps, self.index, self.boxes[rows], self.image[rows], chosen[:, None])[:][:, 0]

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        n = len(self)
        bad = (rows < -n) | (rows >= n)
        if bad.any():
            raise IndexError(f"index {int(rows[bad][0])} is out of bounds for axis 0 with size {n}")
        return np.where(rows < 0, rows + n, rows)

    def _map(self, image: int, level: int) -> Tensor:
        start = int(self.index.offset[image, level])
        c, h, w = (int(v) for v in self.index.shape[image, level])
        return to_float32(self.maps[start:start + c * h * w]).reshape(1, c, h, w)

    def _pool(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.shape[1:]), np.float16)
        if len(rows) == 0:
            return out
        order = np.argsort(self.image[rows], kind="stable")
        images, counts = np.unique(self.image[rows[order]], return_counts=True)
        groups = np.split(rows[order], np.cumsum(counts)[:-1])
        features = [[self._map(int(i), level) for i in images] for level in range(self.index.offset.shape[1])]
        with torch.inference_mode():
            pooled = pool_slots(features, [torch.from_numpy(self.boxes[g]) for g in groups],
                                [torch.from_numpy(self.levels[g].astype(np.int64)) for g in groups],
                                self.index.factor[images], 1.0 / self.index.stride, self.index.roi_size,
                                self.index.pool_mode)
        out[order] = to_float16(pooled)
        return out


def link_maps(source: Path, target: Path) -> MapIndex:
    """Give the shard folder ``target`` the maps files of the finished shard folder ``source``:
    hard links (the two caches then share the bytes, and removing one leaves the other whole), or
    copies where the file system has no hard links. Returns the maps index."""
    for name in (MAPS_FILE, INDEX_FILE):
        try:
            os.link(source / name, target / name)
        except FileNotFoundError:
            raise
        except OSError:  # no hard links here (another file system, or none at all)
            shutil.copyfile(source / name, target / name)
    return MapIndex.load(target / INDEX_FILE)


def open_maps(shard_dir: Path, boxes: np.ndarray, image: np.ndarray, levels: np.ndarray,
              num_images: int) -> MapFeatures:
    """The feature view of a maps shard; a truncated or mismatched maps file is a DataError."""
    try:
        index = MapIndex.load(shard_dir / INDEX_FILE)
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"the maps index {INDEX_FILE} is missing or unreadable ({err}); delete the cache folder",
                        path=shard_dir) from err
    if index.offset.shape[0] != num_images:
        raise DataError(f"the maps index lists {index.offset.shape[0]} images but the shard holds {num_images}; "
                        "delete the cache folder", path=shard_dir)
    path = shard_dir / MAPS_FILE
    try:
        with open(path, "rb") as f:
            np.lib.format.read_magic(f)
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            data_start = f.tell()
        size = path.stat().st_size
    except (OSError, ValueError) as err:
        raise DataError(f"{MAPS_FILE} is missing or unreadable ({err}); delete the cache folder",
                        path=shard_dir) from err
    expected = index.elements
    stored = (size - data_start) // dtype.itemsize
    if shape != (expected,) or dtype != np.float16 or size != data_start + 2 * expected:
        raise DataError(f"{MAPS_FILE} holds {stored} float16 values (header: {shape} {dtype}) but its index "
                        f"describes {expected}: the file is truncated or not this shard's; delete the cache folder",
                        path=shard_dir)
    maps = (np.memmap(path, np.float16, mode="r", offset=data_start, shape=(expected,)) if expected
            else np.zeros(0, np.float16))
    return MapFeatures(maps, index, boxes, image, levels)
