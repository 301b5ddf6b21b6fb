"""Box utilities shared by proposals, training and post-processing.

Boxes are ``(x1, y1, x2, y2)`` in continuous pixel coordinates (see :mod:`nocdet.data.sample`):
width ``w = x2 - x1``, centre ``cx = x1 + w / 2``; no "+1". Every function takes a torch tensor
or a numpy array and returns the same kind, so readers (numpy) and models (torch) share them.

Box deltas ``(tx, ty, tw, th)`` are the R-CNN parameterisation of a box ``G`` relative to a
proposal ``P``::

    tx = (Gx - Px) / Pw    ty = (Gy - Py) / Ph    tw = log(Gw / Pw)    th = log(Gh / Ph)

optionally normalised as ``(t - means) / stds`` (the end-to-end setting uses stds
``(0.1, 0.1, 0.2, 0.2)``, :data:`END_TO_END_STDS`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor
from torchvision import ops

BoxArray = TypeVar("BoxArray", Tensor, np.ndarray)

END_TO_END_STDS = (0.1, 0.1, 0.2, 0.2)
"""Delta normalisation of the end-to-end (Fast/Faster R-CNN) setting."""

DELTA_CLAMP = math.log(1000.0 / 16)
"""Largest ``tw``/``th`` decoded (as torchvision): keeps ``exp`` finite for wild predictions."""


def _tensor(x: Tensor | np.ndarray) -> Tensor:
    return x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))


def _like(result: Tensor, template: Tensor | np.ndarray) -> Tensor | np.ndarray:
    return result if isinstance(template, Tensor) else result.numpy()


def _float(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.float()


def box_iou(boxes1: BoxArray, boxes2: BoxArray) -> BoxArray:
    """IoU matrix ``[N, M]`` of two box sets (``torchvision.ops.box_iou``, continuous widths)."""
    b1, b2 = _float(_tensor(boxes1)), _float(_tensor(boxes2))
    dtype = torch.promote_types(b1.dtype, b2.dtype)
    iou = ops.box_iou(b1.reshape(-1, 4).to(dtype), b2.reshape(-1, 4).to(dtype))
    return _like(iou, boxes1)


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def _norm_params(values: Sequence[float] | Tensor | None, default: float, like: Tensor) -> Tensor:
    if values is None:
        return torch.full((4,), default, dtype=like.dtype, device=like.device)
    params = torch.as_tensor(values, dtype=like.dtype, device=like.device).reshape(-1)
    if params.numel() != 4:
        raise ValueError(f"box delta means/stds need 4 values, got {params.numel()}")
    return params


def encode_deltas(
    proposals: BoxArray,
    targets: BoxArray,
    means: Sequence[float] | None = None,
    stds: Sequence[float] | None = None,
) -> BoxArray:
    """Deltas ``[N, 4]`` that move each proposal onto its target box, ``(t - means) / stds``.

    Proposals must have positive width and height (degenerate proposals have no defined deltas).
    """
    p, g = _float(_tensor(proposals)).reshape(-1, 4), _float(_tensor(targets)).reshape(-1, 4)
    if p.shape != g.shape:
        raise ValueError(f"encode_deltas: {len(p)} proposals but {len(g)} targets")
    px, py, pw, ph = _centre_size(p)
    gx, gy, gw, gh = _centre_size(g.to(p.dtype))
    if bool((pw <= 0).any() or (ph <= 0).any()):
        raise ValueError("encode_deltas: proposals must have positive width and height")
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], 1)
    deltas = (deltas - _norm_params(means, 0.0, deltas)) / _norm_params(stds, 1.0, deltas)
    return _like(deltas, proposals)


def decode_deltas(
    deltas: BoxArray,
    proposals: BoxArray,
    means: Sequence[float] | None = None,
    stds: Sequence[float] | None = None,
) -> BoxArray:
    """Apply deltas ``[N, 4]`` (normalised by ``means``/``stds``) to proposals ``[N, 4]``.

    ``tw``/``th`` are clamped to :data:`DELTA_CLAMP` after de-normalising, so a wild prediction
    gives a large but finite box. Inverse of :func:`encode_deltas` within the clamp.
    """
    d, p = _float(_tensor(deltas)).reshape(-1, 4), _float(_tensor(proposals)).reshape(-1, 4)
    if d.shape != p.shape:
        raise ValueError(f"decode_deltas: {len(d)} deltas but {len(p)} proposals")
    p = p.to(d.dtype)
    d = d * _norm_params(stds, 1.0, d) + _norm_params(means, 0.0, d)
    px, py, pw, ph = _centre_size(p)
    cx = d[:, 0] * pw + px
    cy = d[:, 1] * ph + py
    w = torch.exp(d[:, 2].clamp(max=DELTA_CLAMP)) * pw
    h = torch.exp(d[:, 3].clamp(max=DELTA_CLAMP)) * ph
    boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], 1)
    return _like(boxes, deltas)


def clip_boxes(boxes: BoxArray, width: float, height: float) -> BoxArray:
    """Clip boxes to the image ``[0, width] x [0, height]`` (``torchvision.ops.clip_boxes_to_image``;
    a resized image may have a fractional size, which it accepts)."""
    clipped = ops.clip_boxes_to_image(_tensor(boxes).reshape(-1, 4), (height, width))
    return _like(clipped, boxes)


def remove_small_boxes(boxes: BoxArray, min_size: float) -> BoxArray:
    """Indices of the boxes whose width and height are both at least ``min_size``."""
    keep = ops.remove_small_boxes(_float(_tensor(boxes)).reshape(-1, 4), float(min_size))
    return _like(keep, boxes)


def flip_boxes(boxes: BoxArray, width: float) -> BoxArray:
    """Mirror boxes horizontally in an image of the given width: ``x1' = W - x2``, ``x2' = W - x1``."""
    b = _tensor(boxes).reshape(-1, 4)
    flipped = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], 1).to(b.dtype)
    return _like(flipped, boxes)
