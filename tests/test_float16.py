"""The cache's float16 conversions through torch are bit-identical to numpy's (round to nearest even)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nocdet.features.float16 import to_float16, to_float32

# edge values: zero signs, the smallest subnormal, the largest float16, overflow, ties to even,
# values that round into and out of the subnormal range, inf and nan
EDGES = np.array([0.0, -0.0, 5.96e-8, 2.98e-8, 6.1e-5, 65504.0, 65519.0, 65520.0, 1e6, -1e6,
                  1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11, 2049.0, 2051.0, np.inf, -np.inf, np.nan], np.float32)


def test_to_float16_rounds_as_numpy():
    rng = np.random.default_rng(0)
    values = np.concatenate([EDGES, rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(-8, 6, 10000)])
    with np.errstate(over="ignore"):  # 1e6 overflows to inf, as it should
        theirs = values.astype(np.float16)
    ours = to_float16(torch.from_numpy(values))
    assert ours.dtype == np.float16
    assert np.array_equal(ours.view(np.uint16), theirs.view(np.uint16))


def test_to_float32_is_exact_on_every_float16():
    every = np.arange(2 ** 16, dtype=np.uint16).view(np.float16)  # all 65,536 bit patterns
    ours = to_float32(every).numpy()
    theirs = every.astype(np.float32)
    assert np.array_equal(np.isnan(ours), np.isnan(theirs))
    finite = ~np.isnan(theirs)
    assert np.array_equal(ours[finite].view(np.uint32), theirs[finite].view(np.uint32))


def test_to_float32_reads_a_read_only_memory_map_and_keeps_its_shape(tmp_path):
    path = tmp_path / "maps.bin"
    np.arange(24, dtype=np.float16).tofile(path)
    maps = np.memmap(path, np.float16, mode="r").reshape(2, 3, 4)
    x = to_float32(maps)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 4) and x[1, 2, 3] == 23.0
    x[0, 0, 0] = 7  # a copy: the map is untouched
    assert maps[0, 0, 0] == 0
    with pytest.raises(TypeError, match="float16"):
        to_float32(np.zeros(3, np.float32))
