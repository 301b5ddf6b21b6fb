"""Image pyramid, per-region scale choice and RoI pooling over the pyramid (SPPnet setting).

The shared conv layers run on an image resized to several scales (shorter side 480 ... 1200);
each region is then RoI-pooled from one level (the level where its area is closest to 224 x 224,
as in Fast R-CNN's multi-scale test), or, for a maxout NoC (paper Sec. 3.5), from two adjacent
levels whose pathways the NoC merges by element-wise max.

Shape shorthand: B = images, S = pyramid levels (scales), R = regions, C = channels,
m = RoI output size. Boxes are ``(x1, y1, x2, y2)`` in ORIGINAL image pixels; the resize factor
of a level maps them onto the resized image, and ``spatial_scale`` (1/16) onto its feature map.
"""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align, roi_pool

from nocdet.errors import ConfigError
from nocdet.features.roi_pooling import roi_max_pool

#: Fast R-CNN / SPPnet ideal pooled area: the 224 x 224 input of the pre-trained net.
TARGET_AREA = 224 * 224

FeatureLevel = Tensor | Sequence[Tensor]
#: RoIs per pooling call on the CPU: small enough to balance the threads (see _pool_jobs).
CPU_CHUNK = 256
#: Pooling modes with a vectorised CPU kernel (see _vectorised).
VECTORISED_MODES = ("max",)


#: a pyramid level's longer side is at most this many times the largest scale: the pyramid of an
#: image of extreme aspect ratio (a 100:1 strip would be resized to 100 times the largest scale) is
#: shrunk as a whole to fit, bounding its memory; images up to 4:1 are not affected
MAX_ASPECT = 4


def pyramid_scale_factors(width: int, height: int, scales: Sequence[int],
                          max_size: int | None = None) -> list[float]:
    """The resize factor of each scale: shorter side to ``s``, aspect kept.

    With ``max_size`` the factor is lowered so that the longer side does not exceed it
    (Fast R-CNN's cap; SPPnet uses none, the default). Where the largest level's longer side would
    still exceed ``MAX_ASPECT`` x the largest scale, every factor is shrunk by the same ratio.
    """
    if width <= 0 or height <= 0:
        raise ConfigError(f"image size must be positive, got {width}x{height}")
    if not scales or any(s <= 0 for s in scales):
        raise ConfigError(f"pyramid scales must be a non-empty list of positive sizes, got {list(scales)}")
    if max_size is not None and max_size <= 0:
        raise ConfigError(f"max_size must be positive, got {max_size}")
    short, long = min(width, height), max(width, height)
    factors = []
    for s in scales:
        f = s / short
        if max_size is not None and round(f * long) > max_size:
            f = max_size / long
        factors.append(f)
    longest, cap = max(factors) * long, MAX_ASPECT * max(scales)
    return [f * cap / longest for f in factors] if longest > cap else factors


def resize_to_scales(image: Tensor, factors: Sequence[float]) -> list[Tensor]:
    """The image ``[3, H, W]`` resized by each factor (bilinear; antialiased when shrinking).

    Sizes are ``round(H * f) x round(W * f)``; boxes keep being scaled by ``f`` itself, as in
    Fast R-CNN, so the rounding shifts a box by less than half a pixel.
    """
    if image.dim() != 3:
        raise ValueError(f"image must be [C, H, W], got shape {tuple(image.shape)}")
    height, width = image.shape[-2:]
    batch = image.unsqueeze(0)
    if not batch.is_floating_point():
        batch = batch.float()
    levels = []
    for f in factors:
        if f <= 0:
            raise ValueError(f"resize factors must be positive, got {f}")
        size = (max(1, round(height * f)), max(1, round(width * f)))
        levels.append(F.interpolate(batch, size=size, mode="bilinear", align_corners=False,
                                    antialias=f < 1.0)[0])
    return levels


def _check_boxes(boxes: Tensor) -> Tensor:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [R, 4] (x1, y1, x2, y2), got shape {tuple(boxes.shape)}")
    bad = ~torch.isfinite(boxes).all(dim=1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():  # one check (one device sync) for all boxes
        i = int(bad.nonzero()[0])
        raise ValueError(f"box {i} is not finite or has x2 < x1 or y2 < y1: {boxes[i].tolist()}")
    return boxes


def _box_areas(boxes: Tensor) -> Tensor:
    boxes = _check_boxes(boxes).to(torch.float64)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _as_factors(factors: Tensor | Sequence[float]) -> Tensor:
    f = torch.as_tensor(factors, dtype=torch.float64).reshape(-1)
    if f.numel() == 0 or not (f > 0).all():
        raise ValueError(f"scale factors must be a non-empty list of positive numbers, got {f.tolist()}")
    return f


def select_scale(boxes: Tensor, factors: Tensor | Sequence[float],
                 target_area: float = TARGET_AREA) -> Tensor:
    """The level per box whose scaled area is closest to ``target_area``: ``[R]`` int64.

    Fast R-CNN's rule, compared in plain (not log) area: ``argmin_l |w h f_l^2 - target|``.
    Ties go to the lower level. Box width is ``x2 - x1`` (continuous pixels, no +1).
    """
    areas = _box_areas(boxes)
    f = _as_factors(factors).to(areas.device)
    scaled = areas[:, None] * f[None, :] ** 2
    return (scaled - target_area).abs().argmin(dim=1)


def random_scale(boxes: Tensor, num_levels: int, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random level of all ``num_levels`` per box (SPPnet's training-time choice,
    ``random_scale = 1`` in its released code): ``[R]`` int64."""
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    _check_boxes(boxes)
    return torch.randint(num_levels, (boxes.shape[0],), generator=generator).to(boxes.device)


def random_adjacent_pair(boxes: Tensor, num_levels: int, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random adjacent pair ``(i, i + 1)`` of ``num_levels`` per box: ``[R, 2]`` int64.

    The maxout NoC's training rule (:func:`select_adjacent_pair` with ``training=True``): every
    one of the ``num_levels - 1`` pairs is equally likely, whatever the box's size.
    """
    if num_levels < 2:
        raise ValueError(f"a maxout pair needs at least two pyramid levels, got {num_levels}")
    _check_boxes(boxes)
    first = torch.randint(num_levels - 1, (boxes.shape[0],), generator=generator).to(boxes.device)
    return torch.stack([first, first + 1], dim=1)


def select_adjacent_pair(boxes: Tensor, factors: Tensor | Sequence[float],
                         target_area: float = TARGET_AREA, training: bool = False,
                         generator: torch.Generator | None = None) -> Tensor:
    """Two adjacent levels ``(i, i + 1)`` per box for a maxout NoC: ``[R, 2]`` int64.

    The paper (Sec. 3.5) does not publish the rule; ours: at test time the pair that brackets
    the box's ideal factor ``sqrt(target_area / (w h))`` (the factor that would make its area
    exactly ``target_area``), i.e. ``f_i <= ideal < f_{i+1}``, tested without a square root as
    ``w h f_i^2 <= target_area``. An ideal factor below the smallest or at/above the largest
    takes the two smallest or the two largest levels. During training (``training=True``) a
    uniformly random adjacent pair (:func:`random_adjacent_pair`): the pair counterpart of SPPnet's
    random training scale. ``factors`` must be sorted strictly ascending.
    """
    f = _as_factors(factors)
    if f.numel() < 2:
        raise ValueError(f"a maxout pair needs at least two pyramid levels, got {f.numel()}")
    if not (f[1:] > f[:-1]).all():
        raise ValueError(f"scale factors must be strictly ascending, got {f.tolist()}")
    if training:
        return random_adjacent_pair(boxes, f.numel(), generator)
    areas = _box_areas(boxes)
    f = f.to(areas.device)
    at_most_ideal = areas[:, None] * f[None, :] ** 2 <= target_area  # empty boxes: all levels
    first = (at_most_ideal.sum(dim=1) - 1).clamp(0, f.numel() - 2)
    return torch.stack([first, first + 1], dim=1)


def _per_image_factors(factors: Tensor | Sequence[Sequence[float]], num_images: int,
                       num_levels: int) -> Tensor:
    f = torch.as_tensor(factors, dtype=torch.float64)
    if f.shape != (num_images, num_levels):
        raise ValueError(f"factors must be [B, S] = [{num_images}, {num_levels}], got {tuple(f.shape)}")
    if not (f > 0).all():
        raise ValueError("scale factors must be positive")
    return f


def _level_inputs(level: FeatureLevel, num_images: int) -> tuple[Tensor | None, list[Tensor]]:
    """One batched map ``[B, C, H, W]`` when possible, else the per-image maps ``[1, C, H, W]``."""
    if isinstance(level, Tensor):
        if level.dim() != 4 or level.shape[0] != num_images:
            raise ValueError(f"a feature level must be [B={num_images}, C, H, W], got {tuple(level.shape)}")
        return level, []
    maps = list(level)
    if len(maps) != num_images or any(m.dim() != 4 or m.shape[0] != 1 for m in maps):
        raise ValueError(f"a feature level given as a list needs {num_images} maps of shape [1, C, H, W]")
    if all(m.shape == maps[0].shape for m in maps):
        return torch.cat(maps), []
    return None, maps


def _first_map(features: Sequence[FeatureLevel]) -> Tensor:
    return features[0] if isinstance(features[0], Tensor) else features[0][0]


def _vectorised(fmap: Tensor, mode: str) -> bool:
    """Whether a job runs :func:`nocdet.features.roi_pooling.roi_max_pool` rather than torchvision.

    Only on one torch thread: there it measured 1.5-2.3x faster than torchvision's kernel; with
    more threads on a shared (oversubscribed) machine its many OpenMP regions measured far
    slower than torchvision's single-threaded chunks on Python threads (Dec 3 2026, 2-core VM;
    ``benchmarks/bench_noc.py --threads 1`` prints the pooling ratios).
    It records no gradient equal to torchvision's, so maps that need gradients keep
    torchvision's op, as do GPU maps.
    """
    return (fmap.device.type == "cpu" and mode in VECTORISED_MODES and torch.get_num_threads() == 1
            and not (torch.is_grad_enabled() and fmap.requires_grad))


def _pool_jobs(jobs: list[tuple[Tensor, Tensor, Tensor]], out: Tensor, spatial_scale: float,
               mode: str, sampling_ratio: int, aligned: bool) -> Tensor:
    """Run pooling jobs ``(map [B, C, H, W], rois [N, 5], rows of out [N])`` into ``out``.

    Jobs that pass :func:`_vectorised` run :func:`nocdet.features.roi_pooling.roi_max_pool`, one
    call per job, writing straight into ``out``. The others run torchvision's ops:
    its CPU kernels are single-threaded (and release the GIL), so there each job is cut into
    chunks of ``CPU_CHUNK`` RoIs, pooled on ``torch.get_num_threads()`` threads (1.4-1.8x
    faster than one call per level on 2 cores; benchmarks/RESULTS.md). The caller's grad and
    inference modes hold in the threads; results are copied into ``out`` in the calling thread.
    """
    size = out.shape[-1]
    tasks = []
    for fmap, rois, index in jobs:
        if _vectorised(fmap, mode):
            out = roi_max_pool(fmap, rois.to(fmap.dtype), size, spatial_scale, out, index)
        elif fmap.device.type == "cpu":
            tasks += [(fmap, r, i) for r, i in zip(rois.split(CPU_CHUNK), index.split(CPU_CHUNK))]
        else:
            tasks.append((fmap, rois, index))
    if not tasks:
        return out
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def pool(task: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        fmap, rois, _ = task
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            rois = rois.to(fmap.dtype)
            if mode == "max":
                return roi_pool(fmap, rois, size, spatial_scale)
            return roi_align(fmap, rois, size, spatial_scale, sampling_ratio, aligned)

    threads = min(torch.get_num_threads(), len(tasks))
    executor = ThreadPoolExecutor(threads) if threads > 1 and tasks[0][0].device.type == "cpu" else None
    try:
        results = executor.map(pool, tasks) if executor else map(pool, tasks)
        for (_, _, index), pooled in zip(tasks, results):
            out = out.index_copy_(0, index, pooled)
    finally:
        if executor:
            executor.shutdown(cancel_futures=True)
    return out


def _pool_flat(features: Sequence[FeatureLevel], image_index: Tensor, boxes: Tensor, levels: Tensor,
               factors: Tensor, spatial_scale: float, output_size: int, mode: str,
               sampling_ratio: int, aligned: bool) -> Tensor:
    """Pool regions given as flat arrays (image index, box, level) in their given order."""
    num_images, num_levels = factors.shape
    if mode not in ("max", "align"):
        raise ValueError(f"mode must be 'max' (RoI max pooling) or 'align' (RoIAlign), got {mode!r}")
    if ((levels < 0) | (levels >= num_levels)).any():
        raise ValueError(f"levels must lie in [0, {num_levels - 1}], got {levels.min()}..{levels.max()}")
    counts = torch.bincount(levels, minlength=num_levels).tolist()
    jobs = []
    for level, index in enumerate(torch.argsort(levels, stable=True).split(counts)):
        if index.numel() == 0:
            continue
        images = image_index[index]
        scaled = boxes[index] * factors[images, level][:, None]
        batched, maps = _level_inputs(features[level], num_images)
        if batched is not None:
            rois = torch.cat([images[:, None].to(scaled.dtype), scaled], dim=1)
            jobs.append((batched, rois, index))
            continue
        for b in images.unique().tolist():  # maps of different sizes: one call per image
            mine = (images == b).nonzero().flatten()
            jobs.append((maps[b], F.pad(scaled[mine], (1, 0)), index[mine]))
    first = _first_map(features)
    layout = torch.channels_last if jobs and all(_vectorised(j[0], mode) for j in jobs) else torch.contiguous_format
    out = torch.empty((len(image_index), first.shape[1], output_size, output_size), dtype=first.dtype,
                      device=first.device, memory_format=layout)
    out = _pool_jobs(jobs, out, spatial_scale, mode, sampling_ratio, aligned) if jobs else out
    return out.contiguous(memory_format=_memory_format(first))


def _memory_format(fmap: Tensor) -> torch.memory_format:
    """channels_last for a channels-last map (that is not also plain contiguous), else contiguous."""
    if fmap.is_contiguous() or not fmap.is_contiguous(memory_format=torch.channels_last):
        return torch.contiguous_format
    return torch.channels_last


def _flatten(boxes: Sequence[Tensor], levels: Sequence[Tensor],
             device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Image index, boxes (float64) and levels of all regions, images concatenated, on device."""
    if len(boxes) != len(levels):
        raise ValueError(f"{len(boxes)} box tensors but {len(levels)} level tensors")
    for b, (bx, lv) in enumerate(zip(boxes, levels)):
        _check_boxes(bx)
        if lv.shape[0] != bx.shape[0]:
            raise ValueError(f"image {b}: {bx.shape[0]} boxes but {lv.shape[0]} levels")
    image_index = torch.cat([torch.full((len(bx),), b, dtype=torch.int64, device=device)
                             for b, bx in enumerate(boxes)])
    flat_boxes = torch.cat([bx.detach().to(device, torch.float64) for bx in boxes])
    flat_levels = torch.cat([torch.as_tensor(lv).to(device, torch.int64) for lv in levels])
    return image_index, flat_boxes, flat_levels


def pool_pyramid(features: Sequence[FeatureLevel], boxes: Sequence[Tensor], levels: Sequence[Tensor],
                 factors: Tensor | Sequence[Sequence[float]], spatial_scale: float, output_size: int,
                 mode: str = "max", sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """RoI-pool each box from its pyramid level: ``[R_total, C, m, m]``.

    ``features[l]`` is level ``l`` for all B images: ``[B, C, H_l, W_l]`` (images padded to one
    size), or a list of B maps ``[1, C, H, W]`` of their own sizes (pooled image by image, which
    is exact where padding is not for RoIAlign or negative features). ``boxes[b]`` are
    ``[R_b, 4]`` in original image ``b`` coordinates, ``levels[b]`` ``[R_b]`` their levels, and
    ``factors[b][l]`` image ``b``'s resize factor at level ``l``. ``mode`` "max" is
    ``torchvision.ops.roi_pool`` (the paper's), "align" ``roi_align``. Boxes are pooled in
    batches, never one call per box: on a GPU one call per level (per level and image for
    unequal list maps), on the CPU chunks of each level spread over threads (see _pool_jobs).
    The output follows the order of the boxes, images concatenated.
    """
    device = _first_map(features).device
    f = _per_image_factors(factors, len(boxes), len(features)).to(device)
    image_index, flat_boxes, flat_levels = _flatten(boxes, levels, device)
    return _pool_flat(features, image_index, flat_boxes, flat_levels, f, spatial_scale, output_size,
                      mode, sampling_ratio, aligned)


def pool_slots(features: Sequence[FeatureLevel], boxes: Sequence[Tensor], levels: Sequence[Tensor],
               factors: Tensor | Sequence[Sequence[float]], spatial_scale: float, output_size: int,
               mode: str = "max", sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """Each box pooled at each of its P levels ``levels[b]`` ``[R_b, P]``: ``[R_total, P, C, m, m]``.

    Same conventions as :func:`pool_pyramid`; all pathways are pooled together, level by level.
    """
    pathways = levels[0].shape[1] if len(levels) else 1
    flat = pool_pyramid(features, [torch.as_tensor(b).repeat_interleave(pathways, 0) for b in boxes],
                        [torch.as_tensor(lv).reshape(-1) for lv in levels], factors, spatial_scale, output_size,
                        mode, sampling_ratio, aligned)
    return flat.reshape(-1, pathways, *flat.shape[1:])


def pool_pyramid_pair(features: Sequence[FeatureLevel], boxes: Sequence[Tensor], pairs: Sequence[Tensor],
                      factors: Tensor | Sequence[Sequence[float]], spatial_scale: float, output_size: int,
                      mode: str = "max", sampling_ratio: int = -1,
                      aligned: bool = False) -> tuple[Tensor, Tensor]:
    """The two inputs of a maxout NoC: each box pooled from ``pairs[b][:, 0]`` and ``pairs[b][:, 1]``.

    Same conventions as :func:`pool_pyramid`; both pathways are pooled together, level by level.
    """
    if len(pairs) != len(boxes):
        raise ValueError(f"{len(boxes)} box tensors but {len(pairs)} pair tensors")
    for b, p in enumerate(pairs):
        if p.dim() != 2 or p.shape[1] != 2:
            raise ValueError(f"image {b}: pairs must be [R, 2], got shape {tuple(p.shape)}")
    both = pool_slots(features, boxes, pairs, factors, spatial_scale, output_size, mode, sampling_ratio, aligned)
    return both[:, 0], both[:, 1]
