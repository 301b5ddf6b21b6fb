"""The RoI feature cache of the frozen-feature setting (paper Sec. 3, SPPnet style).

The pre-trained conv layers are frozen, so the RoI-pooled features of every proposal are
computed once over the image pyramid and stored on disk; every NoC design then trains and is
evaluated on the cache (a design-space study costs one extraction).

For each region the cache stores its pooled features at the two adjacent pyramid levels that
bracket its ideal scale (:func:`nocdet.features.pyramid.select_adjacent_pair`) and which of the
two is the single best level (:func:`nocdet.features.pyramid.select_scale`), so one cache serves
single-scale NoCs (the best level; or a random one of the two while training, narrower than
SPPnet's random level of the whole pyramid, which needs the "maps" store) and maxout NoCs (both).
With one pyramid level only one slot is stored.

Two stores (``ExtractionSettings.store``): "pooled" keeps those pooled features, N x P x C x m x m
float16 values per shard (ZF on VOC, 2,000 regions x 2 x 256 x 6 x 6: ~74 MB per image); "maps"
keeps each image's conv maps at every pyramid level instead (SPPnet's cache; ZF, 5 scales
480..1200 of a 500 x 375 image: ~9 MB) and pools the requested regions when they are read
(:mod:`nocdet.features.map_store`, same pooling function: identical features for max pooling).
Either way ``CacheShard.features`` reads as an ``[N, P, C, m, m]`` float16 array.

Key: a cache folder ``<root>/<key>/`` is named by a hash of everything that determines its
content and of nothing else: the backbone and its weights, the settings, the class names and,
per image, an *image record* (:func:`image_records`): the BLAKE2b hash of the image file's bytes
(the proposal cache's :func:`~nocdet.proposals.selective_search.image_fingerprint`), its size,
its boxes, labels and difficult flags and its proposals, in canonical dtypes. Image ids, paths
and the order of the images are not in the key, so two readings of the same images (a VOC folder
and its COCO JSON, whose ids are "000005" and 5) find one cache. The shards store each entry's
record; :func:`open_cache` given a data set and its proposals names the entries by that data
set's image ids, matched by record. Caches of format 1 (keyed by ids, paths and modification
times, before this key) are never found by :func:`build_cache`; :func:`open_cache` refuses to
match them to a data set, and ``nocdet cache ls`` lists them as such, to be removed.

Layout of a cache folder::

    shard-<k>-of-<n>/features.npy    float16 [N, P, C, m, m]   (memory-mapped; store "pooled")
                     maps.npy        float16 [M], every image's pyramid maps, flat (store "maps")
                     maps-index.npz  per image and level: offset, C, H, W, resize factor (store "maps")
                     regions.npz     boxes [N,4], image [N], levels [N,P], best [N], is_gt [N],
                                     overlap [N], label [N], target [N,4]
                     images.json     the shard's image ids (of the reading that built it), flip
                                     flags and image records
    shard-<k>-of-<n>.done.json       written atomically last: a shard without it is rebuilt
    last-used                        empty, touched when the cache is built or opened (nocdet cache ls)

Before extracting, rank 0 logs the cache's estimated size (:func:`estimate_bytes`).

The maps of the "maps" store do not depend on the regions: its ``settings.json`` also records a
second key, :func:`maps_key`, of what the maps depend on (backbone, pyramid, pooling, flips and
the images' bytes and sizes in data set order, not the proposals or annotations). A maps shard
whose maps key matches a finished shard of another cache under the same root takes that shard's
maps files as hard links (:func:`nocdet.features.map_store.link_maps`) and computes its region
tables only: new Selective Search settings do not run the backbone again. ``nocdet cache ls``
counts shared files in each cache that holds them; removing either cache leaves the other whole.

A shard is built in a private temporary folder (``shard-<k>-of-<n>.<host>-<pid>.<random>.tmp``),
its files written and fsync'ed, and only then renamed to ``shard-<k>-of-<n>/`` and marked done:
two processes extracting the same cache at once never write into the same files (the second
to finish keeps the first one's identical shard), a killed extraction leaves only a temporary
folder (removed by the next extraction once its process is gone), and a full disk is a
:class:`~nocdet.errors.NocdetError` naming the file, with the temporary folder removed and any
earlier cache untouched. Features (or maps) are written image by image, so memory stays bounded
whatever the cache size.

Regions per image: the ground-truth boxes first when ``include_gt`` (training splits, as in
Fast R-CNN), then the proposals. ``overlap``/``label``/``target`` are each region's best IoU with
a non-difficult ground-truth box, that box's label and coordinates (Fast R-CNN excludes
difficult objects from training).

Shape shorthand: N = regions, P = pathways (2, or 1 for a single level), C = channels, m = RoI size.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou
from tqdm import tqdm

from nocdet.caches import format_bytes
from nocdet.data.images import load_image, unit_tensor
from nocdet.data.sample import DetectionDataset, Sample
from nocdet.errors import ConfigError, DataError, NocdetError
from nocdet.features.float16 import to_float16
from nocdet.features.map_store import INDEX_FILE, MAPS_FILE, MapFeatures, MapWriter, link_maps, map_bytes, open_maps
from nocdet.features.pyramid import pool_slots, pyramid_scale_factors, resize_to_scales, select_adjacent_pair, \
    select_scale
from nocdet.io import atomic_write_bytes, atomic_write_json, owner_tag, remove_orphans
from nocdet.proposals.selective_search import image_fingerprint

CACHE_FORMAT = 2  # 1: keyed by image ids, paths and modification times (module doc)
STORES = ("pooled", "maps")
LAST_USED = "last-used"  # empty file in a cache folder, touched whenever the cache is built or opened
# regions.npz bytes per region besides its levels: boxes 16, image 4, best 1, is_gt 1, overlap 4, label 8, target 16
_REGION_BYTES = 50

logger = logging.getLogger(__name__)


@dataclass
class ExtractionSettings:
    """Everything besides the data that determines the cached features."""

    scales: list[int]
    max_size: int | None = None
    pool_mode: str = "max"
    include_gt: bool = True
    flip: bool = False
    target_area: float = 224.0 * 224.0
    store: str = "pooled"  # "pooled" (region features) or "maps" (pyramid conv maps; module doc)

    def __post_init__(self) -> None:
        if self.store not in STORES:
            raise ConfigError(f"the RoI feature cache store must be one of {', '.join(STORES)}, got {self.store!r}")


@dataclass
class CacheShard:
    """One shard of a finished cache, memory-mapped read-only."""

    features: np.ndarray | MapFeatures  # [N, P, C, m, m] float16
    boxes: np.ndarray
    image: np.ndarray
    levels: np.ndarray
    best: np.ndarray
    is_gt: np.ndarray
    overlap: np.ndarray
    label: np.ndarray
    target: np.ndarray
    image_ids: list[str]
    flipped: list[bool]
    offsets: np.ndarray  # [images + 1]: regions of image i are offsets[i]:offsets[i+1]


@dataclass
class RoIFeatureCache:
    """A finished cache: all shards of one key."""

    path: Path
    shards: list[CacheShard] = field(default_factory=list)

    @property
    def num_pathways(self) -> int:
        return self.shards[0].features.shape[1]

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """``(C, m, m)`` of one pooled region."""
        return tuple(self.shards[0].features.shape[2:])

    @property
    def num_regions(self) -> int:
        return sum(len(s.boxes) for s in self.shards)

    def images(self) -> Iterator[tuple[CacheShard, int]]:
        """Every cached image as ``(shard, index within the shard)``."""
        for shard in self.shards:
            for i in range(len(shard.image_ids)):
                yield shard, i

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


def region_slice(shard: CacheShard, index: int) -> slice:
    return slice(int(shard.offsets[index]), int(shard.offsets[index + 1]))


def image_records(dataset: DetectionDataset, proposals: Mapping[str, np.ndarray],
                  fingerprints: Sequence[str] | None = None) -> list[str]:
    """The image record of every sample of ``dataset`` (module doc): a hash of the image's bytes
    and size, its boxes (float32), labels (int64), difficult flags and proposals (float32 [N, 4]).
    ``fingerprints``: the samples' :func:`image_fingerprint` values, when already computed."""
    if fingerprints is None:
        fingerprints = [image_fingerprint(s.path) for s in dataset.samples]
    records = []
    for sample, fingerprint in zip(dataset.samples, fingerprints):
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{fingerprint}|{sample.width}x{sample.height}".encode())
        for array, dtype in ((sample.boxes, "<f4"), (sample.labels, "<i8"), (sample.difficult, "|b1"),
                             (np.asarray(proposals[sample.image_id]).reshape(-1, 4), "<f4")):
            canonical = np.ascontiguousarray(array, dtype)
            h.update(f"|{canonical.shape}|".encode())
            h.update(canonical.tobytes())
        records.append(h.hexdigest())
    return records


def cache_key(dataset: DetectionDataset, proposals: Mapping[str, np.ndarray], backbone_id: str,
              roi_size: int, settings: ExtractionSettings, records: Sequence[str] | None = None) -> str:
    """A hash of the backbone (name + weights digest), settings, class names and the multiset of
    the images' records (:func:`image_records`, computed unless given): no ids, paths nor order."""
    records = records if records is not None else image_records(dataset, proposals)
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "backbone": backbone_id, "roi_size": roi_size,
                         "settings": asdict(settings), "classes": dataset.classes}, sort_keys=True).encode())
    for record in sorted(records):
        h.update(record.encode())
    return h.hexdigest()[:20]


def maps_key(dataset: DetectionDataset, backbone_id: str, roi_size: int, settings: ExtractionSettings,
             fingerprints: Sequence[str] | None = None) -> str:
    """A hash of what the "maps" store's conv maps and their index depend on: the backbone, the
    pyramid (scales, ``max_size``, flips), the pooling the index records and the images' bytes
    (``fingerprints``, computed unless given) and sizes in data set order (the maps' order); not
    the proposals, the annotations nor the settings of the regions alone."""
    if fingerprints is None:
        fingerprints = [image_fingerprint(s.path) for s in dataset.samples]
    keyed = {"scales": settings.scales, "max_size": settings.max_size, "pool_mode": settings.pool_mode,
             "flip": settings.flip}
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "backbone": backbone_id, "roi_size": roi_size,
                         "settings": keyed}, sort_keys=True).encode())
    for sample, fingerprint in zip(dataset.samples, fingerprints):
        h.update(f"{fingerprint}|{sample.width}x{sample.height}|".encode())
    return h.hexdigest()[:20]


def _maps_donor(root: Path, key: str, mkey: str, shard: str) -> Path | None:
    """A finished shard folder named ``shard`` of another cache under ``root`` with maps key ``mkey``."""
    if not root.is_dir():
        return None
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != key):
        try:
            same = json.loads((folder / "settings.json").read_text()).get("maps_key") == mkey
        except (OSError, ValueError, AttributeError):
            continue
        if same and (folder / f"{shard}.done.json").exists() and (folder / shard / MAPS_FILE).exists():
            return folder / shard
    return None


def estimate_bytes(dataset: DetectionDataset, proposals: Mapping[str, np.ndarray], settings: ExtractionSettings,
                   channels: int, stride: int, roi_size: int) -> tuple[int, int]:
    """``(images, bytes)`` of the cache of ``dataset`` before it is built: the images (twice each
    with flips) and the bytes of their features (pooled: regions x P x C x m x m float16, exact;
    maps: :func:`~nocdet.features.map_store.map_bytes`, about) and of ``regions.npz``."""
    copies = 2 if settings.flip else 1
    pathways = 1 if len(settings.scales) == 1 else 2
    total = 0
    for sample in dataset.samples:
        regions = len(np.asarray(proposals[sample.image_id]).reshape(-1, 4))
        if settings.include_gt:
            regions += int((~np.asarray(sample.difficult, bool)).sum())
        if settings.store == "maps":
            factors = pyramid_scale_factors(sample.width, sample.height, settings.scales, settings.max_size)
            features = map_bytes(sample.width, sample.height, factors, stride, channels)
        else:
            features = 2 * regions * pathways * channels * roi_size * roi_size
        total += copies * (features + regions * (_REGION_BYTES + pathways))
    return copies * len(dataset.samples), total


def weights_digest(module: torch.nn.Module) -> str:
    """A digest of a module's parameters and buffers (identifies the frozen weights)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _regions(sample_boxes: np.ndarray, labels: np.ndarray, difficult: np.ndarray, proposals: np.ndarray,
             include_gt: bool) -> dict[str, np.ndarray]:
    """Regions of one image with their best ground-truth match."""
    keep = ~difficult
    gt, gt_labels = sample_boxes[keep], labels[keep]
    boxes = np.concatenate([gt, proposals]) if include_gt else proposals
    is_gt = np.zeros(len(boxes), bool)
    if include_gt:
        is_gt[: len(gt)] = True
    overlap = np.zeros(len(boxes), np.float32)
    label = np.zeros(len(boxes), np.int64)
    target = np.zeros((len(boxes), 4), np.float32)
    if len(gt) and len(boxes):
        iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(gt)).numpy()
        best = iou.argmax(axis=1)
        overlap = iou[np.arange(len(boxes)), best].astype(np.float32)
        label = gt_labels[best]
        target = gt[best]
    return {"boxes": boxes.astype(np.float32), "is_gt": is_gt, "overlap": overlap, "label": label,
            "target": target.astype(np.float32)}


def _flip(boxes: np.ndarray, width: int) -> np.ndarray:
    out = boxes.copy()
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return out


def image_tensor(path: Path, mean: Sequence[float], std: Sequence[float], flip: bool = False) -> Tensor:
    """An image file as a normalised ``[3, H, W]`` float tensor."""
    array = load_image(path)
    if flip:
        array = array[:, ::-1]
    x = unit_tensor(array)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


@torch.inference_mode()
def pyramid_features(backbone: torch.nn.Module, image: Tensor,
                     settings: ExtractionSettings) -> tuple[list[Tensor], list[float]]:
    """The conv maps of one image at each pyramid scale, smallest first, and the scale factors."""
    height, width = image.shape[1:]
    factors = sorted(pyramid_scale_factors(width, height, settings.scales, settings.max_size))
    return [backbone(level[None]) for level in resize_to_scales(image, factors)], factors


def select_levels(boxes: Tensor, factors: list[float], settings: ExtractionSettings) -> tuple[Tensor, Tensor]:
    """The cached levels of ``boxes``: ``(levels [R, P], best [R])``, ``best`` the slot of the single
    best level; two adjacent levels (P = 2), or level 0 alone for a one-level pyramid."""
    best = select_scale(boxes, factors, settings.target_area)
    if len(factors) == 1:
        zeros = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
        return zeros[:, None], zeros
    pairs = select_adjacent_pair(boxes, factors, settings.target_area)
    return pairs, (pairs[:, 1] == best).long()


def pool_at_scales(feats: list[Tensor], factors: list[float], boxes: Tensor, settings: ExtractionSettings,
                   roi_size: int, stride: int) -> tuple[Tensor, Tensor, Tensor]:
    """Scale selection and pooling of ``boxes`` on the maps of :func:`pyramid_features`.

    Returns ``(pooled [R, P, C, m, m], levels [R, P], best [R])`` (see :func:`select_levels`).
    """
    levels, best = select_levels(boxes, factors, settings)
    pooled = pool_slots(feats, [boxes], [levels], [factors], 1.0 / stride, roi_size, settings.pool_mode)
    return pooled, levels, best


def pool_regions(backbone: torch.nn.Module, image: Tensor, boxes: Tensor, settings: ExtractionSettings,
                 roi_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pyramid features of one image and its regions pooled at their scale pair (see :func:`pool_at_scales`)."""
    feats, factors = pyramid_features(backbone, image, settings)
    return pool_at_scales(feats, factors, boxes, settings, roi_size, getattr(backbone, "stride", 16))


def build_cache(root: str | Path, dataset: DetectionDataset, proposals: Mapping[str, np.ndarray],
                backbone: torch.nn.Module, backbone_name: str, settings: ExtractionSettings,
                rank: int = 0, world_size: int = 1, progress: bool = True) -> Path:
    """Extract (or find) the cache of ``dataset``; this process fills shard ``rank`` of ``world_size``.

    Returns the cache folder. A finished shard with the same key is reused; an unfinished one
    (killed run) is rebuilt; the shard is built aside and renamed into place (module doc). Call
    :func:`open_cache` once every rank has finished.
    """
    missing = [s.image_id for s in dataset.samples if s.image_id not in proposals]
    if missing:
        raise DataError(f"no proposals for {len(missing)} images, e.g. {missing[:5]}")
    roi_size = int(backbone.roi_size)
    # the same weights cut at another layer (ResNet res4/res5, EfficientNet eff5/eff6, a-trous) give
    # another map: its stride and channels are part of the key
    identity = f"{backbone_name}:{weights_digest(backbone)}:{int(backbone.stride)}:{int(backbone.out_channels)}"
    fingerprints = [image_fingerprint(s.path) for s in dataset.samples]  # each image's bytes read once
    records = image_records(dataset, proposals, fingerprints)
    key = cache_key(dataset, proposals, identity, roi_size, settings, records)
    folder = Path(root) / key
    name = f"shard-{rank:05d}-of-{world_size:05d}"
    done = folder / f"{name}.done.json"
    if done.exists():
        _touch(folder / LAST_USED)
        return folder
    mkey = maps_key(dataset, identity, roi_size, settings, fingerprints) if settings.store == "maps" else None
    donor = _maps_donor(Path(root), key, mkey, name) if mkey else None
    if donor is not None:
        logger.info("building the region tables of the RoI feature cache of %s in %s; the conv maps are "
                    "those of %s", dataset.name, folder, donor)
    elif rank == 0:
        images, size = estimate_bytes(dataset, proposals, settings, int(backbone.out_channels),
                                      int(getattr(backbone, "stride", 16)), roi_size)
        logger.info("building the RoI feature cache of %s: %d images x %s (%s store) = about %s in %s",
                    dataset.name, images, format_bytes(size / max(images, 1)), settings.store, format_bytes(size),
                    folder)
    shard_dir = folder / name
    if shard_dir.exists() and not (shard_dir / "images.json").exists():
        shutil.rmtree(shard_dir, ignore_errors=True)  # left by a killed run of an older nocdet
    described = {"format": CACHE_FORMAT, "key": key, "backbone": backbone_name, "roi_size": roi_size,
                 "settings": asdict(settings), "dataset": dataset.name}
    atomic_write_json(folder / "settings.json", {**described, "maps_key": mkey} if mkey else described)
    remove_orphans(folder)
    if not shard_dir.exists():
        tmp = None
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f"{name}.{owner_tag()}.", suffix=".tmp", dir=folder))
            _write_shard(tmp, dataset, proposals, records, backbone, settings, roi_size, rank, world_size, progress,
                         donor)
            os.rename(tmp, shard_dir)
        except OSError as err:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not (shard_dir / "images.json").exists():
                raise NocdetError(f"could not write the RoI feature cache shard {shard_dir}: "
                                  f"{err.strerror or err} (unfinished shard removed)") from err
            # another process finished the same shard first: its content is the same, keep it
        except BaseException:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    image_ids = json.loads((shard_dir / "images.json").read_text())["image_ids"]
    with np.load(shard_dir / "regions.npz") as regions:
        total = len(regions["boxes"])
    atomic_write_json(done, {"key": key, "regions": total, "images": len(image_ids)})
    _touch(folder / LAST_USED)
    return folder


def _touch(path: Path) -> None:
    """Mark a cache as used now (``nocdet cache ls``); a read-only cache stays unmarked."""
    try:
        path.touch()
    except OSError:
        pass


def _write_shard(shard_dir: Path, dataset: DetectionDataset, proposals: Mapping[str, np.ndarray],
                 records: Sequence[str], backbone: torch.nn.Module, settings: ExtractionSettings, roi_size: int,
                 rank: int, world_size: int, progress: bool, maps_from: Path | None = None) -> None:
    """Extract the images of shard ``rank`` into ``shard_dir``: features (or maps) streamed, then the
    rest; with ``maps_from`` (a finished maps shard of the same maps key) its maps are linked instead.
    ``records``: the samples' :func:`image_records`."""
    backbone.eval()
    device = next(backbone.parameters()).device
    mine = [i for i in range(len(dataset.samples)) if i % world_size == rank]
    flips = [False, True] if settings.flip else [False]
    todo = [(dataset.samples[i], flip) for i in mine for flip in flips]
    per_image = []
    for sample, flip in todo:
        props = np.asarray(proposals[sample.image_id], np.float32).reshape(-1, 4)
        boxes, gt = (props, sample.boxes) if not flip else (_flip(props, sample.width), _flip(sample.boxes, sample.width))
        per_image.append(_regions(gt, sample.labels, sample.difficult, boxes, settings.include_gt))
    offsets = np.concatenate([[0], np.cumsum([len(r["boxes"]) for r in per_image])]).astype(np.int64)
    total = int(offsets[-1])
    pathways = 1 if len(settings.scales) == 1 else 2
    levels = np.zeros((total, pathways), np.int8)
    best = np.zeros(total, np.int8)
    if maps_from is not None:
        factors = link_maps(maps_from, shard_dir).factor
        if len(factors) != len(todo):
            raise DataError(f"the maps index lists {len(factors)} images, this shard {len(todo)}; delete the "
                            "cache folder", path=maps_from)
        for regions, start, image_factors in zip(per_image, offsets[:-1], factors):
            n = len(regions["boxes"])
            if n:
                lv, bs = select_levels(torch.from_numpy(regions["boxes"]).to(device), image_factors.tolist(),
                                       settings)
                levels[start:start + n] = lv.cpu().numpy()
                best[start:start + n] = bs.cpu().numpy()
    else:
        _write_features(shard_dir, todo, per_image, offsets, levels, best, backbone, settings, roi_size,
                        f"RoI features {dataset.name} [{rank + 1}/{world_size}]", progress)
    arrays = {k: np.concatenate([r[k] for r in per_image]) if per_image else np.zeros((0,))
              for k in ("boxes", "is_gt", "overlap", "label", "target")}
    arrays["image"] = np.repeat(np.arange(len(per_image)), np.diff(offsets)).astype(np.int32)
    buffer = io.BytesIO()
    np.savez(buffer, levels=levels, best=best, offsets=offsets, **arrays)
    atomic_write_bytes(shard_dir / "regions.npz", buffer.getvalue())
    atomic_write_json(shard_dir / "images.json", {"image_ids": [s.image_id for s, _ in todo],
                                                  "flipped": [f for _, f in todo],
                                                  "records": [records[i] for i in mine for _ in flips]})


def _write_features(shard_dir: Path, todo: list[tuple[Sample, bool]], per_image: list[dict[str, np.ndarray]],
                    offsets: np.ndarray, levels: np.ndarray, best: np.ndarray, backbone: torch.nn.Module,
                    settings: ExtractionSettings, roi_size: int, description: str, progress: bool) -> None:
    """Run the backbone over the images ``todo`` and stream their pooled features (or maps) into
    ``shard_dir``, filling the regions' ``levels`` and ``best`` in place."""
    device = next(backbone.parameters()).device
    pathways, total = levels.shape[1], len(levels)
    channels = int(backbone.out_channels)
    stride = getattr(backbone, "stride", 16)
    bar = tqdm(todo, desc=description, unit="img", disable=not progress)
    store_maps = settings.store == "maps"
    with open(shard_dir / (MAPS_FILE if store_maps else "features.npy"), "wb") as out:
        if store_maps:
            writer = MapWriter(out, stride, roi_size, settings.pool_mode, channels)
        else:
            np.lib.format.write_array_header_1_0(out, {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
                "shape": (total, pathways, channels, roi_size, roi_size)})
        for (sample, flip), regions, start in zip(bar, per_image, offsets[:-1]):
            x = image_tensor(sample.path, backbone.mean, backbone.std, flip).to(device)
            if x.shape[1:] != (sample.height, sample.width):
                raise DataError(f"image is {x.shape[2]}x{x.shape[1]} but the annotation says "
                                f"{sample.width}x{sample.height}", path=sample.path, record=sample.image_id)
            n = len(regions["boxes"])
            if store_maps:  # every image's maps, so that the index has one entry per image
                feats, factors = pyramid_features(backbone, x, settings)
                writer.add(feats, factors)
            if n == 0:
                continue
            boxes = torch.from_numpy(regions["boxes"]).to(device)
            if store_maps:
                lv, bs = select_levels(boxes, factors, settings)
            else:
                pooled, lv, bs = pool_regions(backbone, x, boxes, settings, roi_size)
                out.write(to_float16(pooled).tobytes())  # regions in order: contiguous
            levels[start:start + n] = lv.cpu().numpy()
            best[start:start + n] = bs.cpu().numpy()
        if store_maps:
            writer.finish(shard_dir / INDEX_FILE)  # fsyncs the maps first
        else:
            out.flush()
            os.fsync(out.fileno())


def open_cache(folder: str | Path, dataset: DetectionDataset | None = None,
               proposals: Mapping[str, np.ndarray] | None = None) -> RoIFeatureCache:
    """Open a finished cache read-only; an incomplete one is an error naming the missing shards.

    With ``dataset`` and its ``proposals`` (those the cache was built for, in any reading of the
    same images) the cache's entries carry that data set's image ids, matched by image record
    (module doc); without, the ids of the reading that built it."""
    folder = Path(folder)
    done = sorted(folder.glob("shard-*-of-*.done.json"))
    if not done:
        raise DataError("no finished shard: the extraction did not complete", path=folder)
    world = int(done[0].name.split("-of-")[1].split(".")[0])
    names = {d.name.removesuffix(".done.json") for d in done}
    expected = [f"shard-{r:05d}-of-{world:05d}" for r in range(world)]
    absent = [n for n in expected if n not in names]
    if absent:
        raise DataError(f"the cache is incomplete: shards {absent} have not finished", path=folder)
    metas = [json.loads((folder / name / "images.json").read_text()) for name in expected]
    if dataset is not None:
        if proposals is None:
            raise ValueError("open_cache: a data set needs its proposals to be matched to the cache")
        for meta, ids in zip(metas, _ids_by_record(folder, metas, dataset, proposals)):
            meta["image_ids"] = ids
    _touch(folder / LAST_USED)
    cache = RoIFeatureCache(folder)
    for name, meta in zip(expected, metas):
        shard_dir = folder / name
        with np.load(shard_dir / "regions.npz") as stored:
            regions = dict(stored)
        if (shard_dir / MAPS_FILE).exists():
            features = open_maps(shard_dir, regions["boxes"], regions["image"], regions["levels"],
                                 len(meta["image_ids"]))
        else:
            features = np.load(shard_dir / "features.npy", mmap_mode="r")
        if len(features) != len(regions["boxes"]):
            raise DataError("features and regions disagree in length; delete the cache folder", path=shard_dir)
        cache.shards.append(CacheShard(features=features, boxes=regions["boxes"], image=regions["image"],
                                       levels=regions["levels"], best=regions["best"], is_gt=regions["is_gt"],
                                       overlap=regions["overlap"], label=regions["label"],
                                       target=regions["target"], image_ids=meta["image_ids"],
                                       flipped=meta["flipped"], offsets=regions["offsets"]))
    return cache


def _ids_by_record(folder: Path, metas: Sequence[dict], dataset: DetectionDataset,
                   proposals: Mapping[str, np.ndarray]) -> list[list[str]]:
    """For each shard's ``images.json``, the image id in ``dataset`` of each stored entry: the sample
    with the entry's record (samples with one record share their features: taken in order)."""
    ids_of: dict[str, list[str]] = {}
    for sample, record in zip(dataset.samples, image_records(dataset, proposals)):
        ids_of.setdefault(record, []).append(sample.image_id)
    taken: Counter[tuple[str, bool]] = Counter()
    named = []
    for meta in metas:
        if "records" not in meta:
            raise DataError(f"this RoI feature cache was written by an older nocdet (format 1, keyed by image ids "
                            f"and paths) and cannot be matched to {dataset.name or 'a data set'} by content; "
                            "remove it (nocdet cache clean KEY) and it is rebuilt", path=folder)
        ids = []
        for record, flipped in zip(meta["records"], meta["flipped"]):
            candidates = ids_of.get(record, [])
            if taken[record, flipped] >= len(candidates):
                raise DataError(f"the cache holds an image that {dataset.name or 'the data set'} has not (or has "
                                "fewer times): it was built for other images, annotations or proposals", path=folder)
            ids.append(candidates[taken[record, flipped]])
            taken[record, flipped] += 1
        named.append(ids)
    missing = [i for record, ids in ids_of.items() for i in ids[taken[record, False]:]]
    if missing:
        raise DataError(f"the cache lacks {len(missing)} images of {dataset.name or 'the data set'} (e.g. "
                        f"{', '.join(missing[:5])}); remove it and it is rebuilt", path=folder)
    return named
