"""The vectorised RoI max pooling against torchvision's kernel and hand-computed cases."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_pool

from nocdet.features import pyramid
from nocdet.features.roi_pooling import roi_max_pool


def random_rois(generator: torch.Generator, count: int, batch: int, height: int, width: int,
                stride: int) -> torch.Tensor:
    """Boxes anywhere from well outside to inside the map, of 0 to ~1.3 map sizes, some empty."""
    extent = torch.tensor([width, height]) * stride
    corner = torch.rand(count, 2, generator=generator) * extent * 1.6 - 0.3 * extent
    sides = torch.rand(count, 2, generator=generator) * extent * 1.3 * torch.rand(count, 1, generator=generator)
    images = torch.randint(0, batch, (count, 1), generator=generator).float()
    return torch.cat([images, corner, corner + sides], 1)


def test_hand_computed_whole_map():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    rois = torch.tensor([[0.0, 0, 0, 3, 3]])  # cells 0..3: bins of 2 x 2 cells
    assert roi_max_pool(x, rois, 2, 1.0).tolist() == [[[[5.0, 7.0], [13.0, 15.0]]]]
    # one cell, at the last row and column: every bin is that cell
    assert roi_max_pool(x, torch.tensor([[0.0, 3, 3, 3, 3]]), 2, 1.0).flatten().tolist() == [15.0] * 4


def test_box_outside_the_map_gives_zeros():
    x = torch.full((1, 2, 4, 4), -5.0)
    out = roi_max_pool(x, torch.tensor([[0.0, 10, 10, 12, 12]]), 3, 1.0)
    assert torch.equal(out, torch.zeros(1, 2, 3, 3))  # torchvision's empty bins are 0, not -5


def test_c_rounding_of_halves():
    # 1.5 * 1 rounds to 2 in C (away from zero), not to 2 by chance of evenness: take 2.5 -> 3
    x = torch.arange(8.0).view(1, 1, 1, 8)
    out = roi_max_pool(x, torch.tensor([[0.0, 2.5, 0, 2.5, 0]]), 1, 1.0)
    assert out.item() == 3.0 == roi_pool(x, torch.tensor([[0.0, 2.5, 0, 2.5, 0]]), 1, 1.0).item()


@pytest.mark.parametrize("size", [1, 2, 6, 7])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_torchvision_on_random_maps(size, channels_last, dtype):
    generator = torch.Generator().manual_seed(size)
    for trial in range(12):
        height, width = (int(v) for v in torch.randint(1, 40, (2,), generator=generator))
        x = torch.randn(2, 5, height, width, generator=generator, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        rois = random_rois(generator, 60, 2, height, width, 16).to(dtype)
        rois[:4, 1:] = torch.tensor([[0.0, 0, 0, 0], [0, 0, width * 16 - 1, height * 16 - 1],  # borders
                                     [width * 16 - 8, height * 16 - 8, width * 16 - 8, height * 16 - 8],  # one pixel
                                     [-50, -50, 40, 30]], dtype=dtype)  # partly outside
        expected = roi_pool(x, rois, size, 1 / 16)
        got = roi_max_pool(x, rois, size, 1 / 16)
        assert torch.equal(got, expected), f"trial {trial}: max error {(got - expected).abs().max()}"
        assert got.is_contiguous(memory_format=torch.channels_last)


def test_writes_into_given_rows():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 9, 11, generator=generator)
    rois = random_rois(generator, 5, 1, 9, 11, 1)
    out = torch.full((8, 4, 3, 3), 7.0).contiguous(memory_format=torch.channels_last)
    roi_max_pool(x, rois, 3, 1.0, out, torch.tensor([6, 0, 2, 3, 5]))
    assert torch.equal(out[[6, 0, 2, 3, 5]], roi_pool(x, rois, 3, 1.0))
    assert (out[[1, 4, 7]] == 7.0).all()
    with pytest.raises(ValueError, match="channels-last"):
        roi_max_pool(x, rois, 3, 1.0, torch.zeros(8, 4, 3, 3), torch.arange(5))


def test_no_rois_and_bad_shapes():
    x = torch.randn(1, 3, 5, 5)
    assert roi_max_pool(x, torch.zeros(0, 5), 6, 1.0).shape == (0, 3, 6, 6)
    with pytest.raises(ValueError, match=r"\[K, 5\]"):
        roi_max_pool(x, torch.zeros(2, 4), 6, 1.0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        roi_max_pool(x[0], torch.zeros(2, 5), 6, 1.0)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pyramid_case(generator: torch.Generator, requires_grad: bool = False):
    factors = [0.5, 1.0, 1.5]
    maps = [torch.randn(1, 4, int(20 * f), int(30 * f), generator=generator).requires_grad_(requires_grad)
            for f in factors]
    boxes = random_rois(generator, 40, 1, 20, 30, 16)[:, 1:].clamp(0, 470)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2])
    levels = torch.randint(0, 3, (40,), generator=generator)
    return maps, factors, boxes, levels


def reference_pool(maps, factors, boxes, levels) -> torch.Tensor:
    rows = []
    for box, level in zip(boxes.double(), levels.tolist()):
        scaled = (box * factors[level]).float()
        rows.append(roi_pool(maps[level], torch.cat([torch.zeros(1), scaled])[None], 6, 1 / 16))
    return torch.cat(rows)


def test_pool_pyramid_uses_the_vectorised_kernel_with_equal_results(one_thread, monkeypatch):
    maps, factors, boxes, levels = pyramid_case(torch.Generator().manual_seed(5))
    calls = []
    monkeypatch.setattr(pyramid, "roi_max_pool", lambda *a: calls.append(1) or roi_max_pool(*a))
    with torch.no_grad():
        out = pyramid.pool_pyramid(maps, [boxes], [levels], [factors], 1 / 16, 6)
    assert calls and torch.equal(out, reference_pool(maps, factors, boxes, levels))
    assert out.is_contiguous()  # the maps' memory format
    cl = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    with torch.no_grad():
        out_cl = pyramid.pool_pyramid(cl, [boxes], [levels], [factors], 1 / 16, 6)
    assert out_cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(out_cl, out)


def test_pool_pyramid_gradient_is_torchvisions(one_thread, monkeypatch):
    maps, factors, boxes, levels = pyramid_case(torch.Generator().manual_seed(6), requires_grad=True)
    monkeypatch.setattr(pyramid, "roi_max_pool", lambda *a: pytest.fail("used without torchvision's gradient"))
    weights = torch.randn(40, 4, 6, 6, generator=torch.Generator().manual_seed(7))
    (pyramid.pool_pyramid(maps, [boxes], [levels], [factors], 1 / 16, 6) * weights).sum().backward()
    ours = [m.grad.clone() for m in maps]
    for m in maps:
        m.grad = None
    (reference_pool(maps, factors, boxes, levels) * weights).sum().backward()
    for got, m in zip(ours, maps):  # the same op: equal up to the order of summing overlaps
        torch.testing.assert_close(got, m.grad, rtol=1e-5, atol=1e-5)
