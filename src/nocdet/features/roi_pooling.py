"""Vectorised RoI max pooling on the CPU, equal to ``torchvision.ops.roi_pool``.

torchvision's CPU kernel loops over RoIs, bins, channels and cells one scalar at a time on one
thread. :func:`roi_max_pool` computes the same result with whole-tensor PyTorch ops (no build
step): the bin edges exactly as the kernel does (float arithmetic of the map's dtype, C
``round``, floor/ceil, clipping to the map), and the max over each bin's rectangle of cells
from a 2-D sparse table of the map in channels-last layout: ``T[a][b][h, w]`` is the max over
the ``2^a x 2^b`` cells from ``(h, w)``, so the max over a ``kh x kw`` rectangle is the max of
a few overlapping table entries (four when ``2^a <= kh < 2^(a+1)``). Max is exact, so the
result equals torchvision's bit for bit (empty bins give 0 as there; only maps holding NaN or
-inf differ). It records no gradient equal to torchvision's (overlapping entries share ties):
callers keep torchvision's op where gradients flow (see :mod:`nocdet.features.pyramid`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

#: RoI max pooling: table entries gathered at once (1 KiB each at 256 float channels).
CHUNK_ENTRIES = 8192


def _check(features: Tensor, rois: Tensor, output_size: int) -> None:
    if features.dim() != 4:
        raise ValueError(f"features must be [B, C, H, W], got shape {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be [K, 5] (image index, x1, y1, x2, y2), got shape {tuple(rois.shape)}")
    if output_size < 1:
        raise ValueError(f"output_size must be >= 1, got {output_size}")


def _c_round(v: Tensor) -> Tensor:
    """C's ``round``: halves away from zero (``torch.round`` rounds them to even)."""
    whole = torch.trunc(v)
    frac = v - whole  # exact in floating point
    return whole + torch.sign(frac) * (frac.abs() >= 0.5)


def _bin_edges(start: Tensor, end: Tensor, length: int, m: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """RoIPool's bin edges along one axis: ``[K, m]`` first and past-last cells, clipped to the map."""
    extent = (end - start + 1).clamp(min=1).to(dtype)
    size = extent / m
    p = torch.arange(m, dtype=dtype, device=start.device)
    lo = torch.floor(p * size[:, None]).long() + start[:, None]
    hi = torch.ceil((p + 1) * size[:, None]).long() + start[:, None]
    return lo.clamp(0, length), hi.clamp(0, length)


def _floor_log2(n: Tensor) -> Tensor:
    """``floor(log2 n)`` of positive integers, exactly."""
    bits = torch.zeros_like(n)
    for k in range(1, 63):
        more = n >= (1 << k)
        if not more.any():
            break
        bits += more
    return bits


class _SparseTable:
    """Maxima of ``2^a x 2^b`` cell blocks of a channels-last map ``[B, H, W, C]``, built on demand."""

    def __init__(self, hwc: Tensor):
        self.tables: dict[tuple[int, int], Tensor] = {(0, 0): hwc}

    def get(self, a: int, b: int) -> Tensor:
        if (a, b) not in self.tables:
            if b > 0:
                prev, s = self.get(a, b - 1), 1 << (b - 1)
                self.tables[a, b] = torch.maximum(prev[:, :, :-s], prev[:, :, s:])
            else:
                prev, s = self.get(a - 1, 0), 1 << (a - 1)
                self.tables[a, b] = torch.maximum(prev[:, :-s], prev[:, s:])
        return self.tables[a, b]


def _table_choice(kh: Tensor, kw: Tensor, cells: int) -> tuple[int, int]:
    """The largest table ``(A, B)`` worth building for bins of extents ``kh``, ``kw`` (non-empty).

    A bin of ``kh`` rows read from blocks of ``2^a`` rows takes ``ceil(kh / 2^a)`` lookups per
    column; building a table costs about as much as ``cells`` lookups. Tables are capped at the
    ``(A, B)`` with the least building plus lookups, so that a few large bins do not make every
    level build big tables.
    """
    span = int(kw.max()) + 1
    codes, counts = torch.unique(kh * span + kw, return_counts=True)
    groups = [(h, w, n) for (h, w), n in zip(((c // span, c % span) for c in codes.tolist()), counts.tolist())]
    top_a, top_b = (max(int(k).bit_length() - 1 for k in ks) for ks in zip(*((h, w) for h, w, _ in groups)))
    best, choice = math.inf, (0, 0)
    for cap_a in range(top_a + 1):
        for cap_b in range(top_b + 1):
            blocks = [(min(h.bit_length() - 1, cap_a), min(w.bit_length() - 1, cap_b), h, w, n)
                      for h, w, n in groups]
            used = {(ga, gb) for ga, gb, *_ in blocks}
            tables = {(r, 0) for r in range(max(u for u, _ in used) + 1)}
            tables |= {(u, c) for u, v in used for c in range(v + 1)}
            lookups = sum(n * -(-h // (1 << ga)) * -(-w // (1 << gb)) for ga, gb, h, w, n in blocks)
            cost = (len(tables) - 1) * cells + lookups
            if cost < best:
                best, choice = cost, (cap_a, cap_b)
    return choice


def _block_starts(lo: Tensor, extent: Tensor, block: int, count: int) -> list[Tensor]:
    """``count`` block starts covering ``[lo, lo + extent)`` with blocks of ``block`` cells:
    ``lo + i * block``, the last ones clamped to end at the bin's edge (repeats do not change a max)."""
    last = lo + extent - block
    return [torch.minimum(lo + i * block, last) for i in range(count)]


def roi_max_pool(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float,
                 out: Tensor | None = None, index: Tensor | None = None) -> Tensor:
    """``torchvision.ops.roi_pool(features, rois, output_size, spatial_scale)``, vectorised.

    ``features`` ``[B, C, H, W]`` (either memory format), ``rois`` ``[K, 5]`` (image index and
    box in input pixels). Returns ``[K, C, m, m]``, channels-last; or, given ``out``
    (channels-last ``[N, C, m, m]``) and ``index`` ``[K]``, writes RoI ``k`` into
    ``out[index[k]]`` and returns ``out``.
    """
    _check(features, rois, output_size)
    batch, channels, height, width = features.shape
    m = output_size
    hwc = features.permute(0, 2, 3, 1).contiguous()  # a view when features are channels-last
    if out is None:
        out, index = torch.empty(len(rois), channels, m, m, dtype=hwc.dtype, device=hwc.device, memory_format=torch.channels_last), None
    elif index is None or len(index) != len(rois) or not out.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("out must be channels-last [N, C, m, m], given with an index of one row per RoI")
    if len(rois) == 0:
        return out
    rows_out = out.permute(0, 2, 3, 1).view(-1, channels)  # one row per bin
    rois = rois.to(features.dtype)
    scale = torch.tensor(spatial_scale, dtype=features.dtype)
    corners = _c_round(rois[:, 1:] * scale).long()
    y0, y1 = _bin_edges(corners[:, 1], corners[:, 3], height, m, features.dtype)
    x0, x1 = _bin_edges(corners[:, 0], corners[:, 2], width, m, features.dtype)
    kh = (y1 - y0)[:, :, None].expand(-1, m, m).reshape(-1)  # per bin, rows ph then columns pw
    kw = (x1 - x0)[:, None, :].expand(-1, m, m).reshape(-1)
    top, left = y0[:, :, None].expand(-1, m, m).reshape(-1), x0[:, None, :].expand(-1, m, m).reshape(-1)
    image = rois[:, 0].long().repeat_interleave(m * m)
    first_bin = (index if index is not None else torch.arange(len(rois))) * (m * m)
    destination = (first_bin[:, None] + torch.arange(m * m)).reshape(-1)
    full = (kh > 0) & (kw > 0)
    rows_out.index_fill_(0, destination[~full], 0)  # empty bins are 0, as in torchvision
    if not full.any():
        return out
    kh, kw, top, left, image, destination = (v[full] for v in (kh, kw, top, left, image, destination))
    cap_a, cap_b = _table_choice(kh, kw, batch * height * width)
    a, b = _floor_log2(kh).clamp(max=cap_a), _floor_log2(kw).clamp(max=cap_b)
    key = a * 64 + b
    order = torch.argsort(key, stable=True)
    keys, counts = torch.unique_consecutive(key[order], return_counts=True)
    table = _SparseTable(hwc)
    for k, group in zip(keys.tolist(), order.split(counts.tolist())):
        block_h, block_w = 1 << (k // 64), 1 << (k % 64)
        t = table.get(k // 64, k % 64)
        rows, cols = t.shape[1], t.shape[2]
        t = t.reshape(-1, channels)
        g_kh, g_kw = kh[group], kw[group]
        starts_h = _block_starts(top[group], g_kh, block_h, -(-int(g_kh.max()) // block_h))
        starts_w = _block_starts(left[group], g_kw, block_w, -(-int(g_kw.max()) // block_w))
        base = image[group] * rows
        entries = torch.stack([(base + h) * cols + w for h in starts_h for w in starts_w], 1)
        per_bin = entries.shape[1]
        step = max(1, CHUNK_ENTRIES // per_bin)
        for s in range(0, len(group), step):  # a chunk's gathered rows stay in cache
            values = t.index_select(0, entries[s:s + step].flatten())
            rows_out.index_copy_(0, destination[group[s:s + step]], values.view(-1, per_bin, channels).amax(1))
    return out
