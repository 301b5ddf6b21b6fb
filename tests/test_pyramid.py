"""Image pyramid, scale choice, maxout pairs and RoI pooling over the pyramid."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align, roi_pool

from nocdet.errors import ConfigError
from nocdet.features.pyramid import (
    pool_pyramid,
    pool_pyramid_pair,
    pyramid_scale_factors,
    random_scale,
    resize_to_scales,
    select_adjacent_pair,
    select_scale,
)


def square(side: float, x: float = 0.0, y: float = 0.0) -> list[float]:
    return [x, y, x + side, y + side]


# ---------------------------------------------------------------- pyramid

def test_scale_factors_shorter_side_and_cap():
    assert pyramid_scale_factors(500, 375, [480, 600]) == pytest.approx([480 / 375, 600 / 375])
    assert pyramid_scale_factors(375, 500, [375]) == pytest.approx([1.0])
    # 600 / 375 = 1.6 would make the long side 800 > 700: capped to 700 / 500
    assert pyramid_scale_factors(500, 375, [480, 600], max_size=700) == pytest.approx([1.28, 1.4])


def test_extreme_aspect_shrinks_the_whole_pyramid_by_one_ratio():
    # 2000 x 100, scales 100 and 200: factors 1 and 2, the largest level 4000 px long > 4 x 200,
    # so both shrink by 800 / 4000 (hand-computed)
    assert pyramid_scale_factors(2000, 100, [100, 200]) == pytest.approx([0.2, 0.4])
    assert pyramid_scale_factors(800, 200, [200]) == [1.0]  # 4:1 exactly: untouched
    # max_size first (3000 -> 1000), then the cap (1000 -> 400 = 4 x 100)
    assert pyramid_scale_factors(3000, 100, [100], max_size=1000) == pytest.approx([400 / 3000])


@pytest.mark.parametrize("scales", [[], [480, 0], [-1]])
def test_scale_factors_reject_bad_scales(scales):
    with pytest.raises(ConfigError):
        pyramid_scale_factors(500, 375, scales)


def test_resize_sizes_and_constant_image():
    image = torch.full((3, 375, 500), 0.7)
    levels = resize_to_scales(image, [480 / 375, 0.5])
    assert [tuple(x.shape) for x in levels] == [(3, 480, 640), (3, 188, 250)]
    for x in levels:
        assert torch.allclose(x, torch.full_like(x, 0.7), atol=1e-6)


def test_resize_antialiases_when_shrinking():
    # Column stripes 1,0,0,0: a 4x antialiased (triangle filter) shrink averages them to 1/4,
    # where plain bilinear sampling would only see the two zero columns in the middle.
    image = torch.zeros(3, 8, 64)
    image[:, :, ::4] = 1.0
    (small,) = resize_to_scales(image, [0.25])
    assert small.shape == (3, 2, 16)
    assert torch.allclose(small[:, :, 2:-2], torch.full_like(small[:, :, 2:-2], 0.25), atol=1e-5)


# ---------------------------------------------------------------- scale choice

def test_select_scale_by_hand():
    boxes = torch.tensor([square(224), square(100, 10, 20), square(500), [0, 0, 448, 112]])
    # areas at factors 0.5/1/2: 224^2 -> exact at 1; 100^2 -> 40000 at 2 (closest to 50176);
    # 500^2 -> 62500 at 0.5; 448x112 = 224^2 -> level 1
    assert select_scale(boxes, [0.5, 1.0, 2.0]).tolist() == [1, 2, 0, 1]


def test_select_scale_tie_goes_to_lower_level():
    # a 1x1 box: area 1 at factor 1 and 9 at factor 3, both 4 away from the target 5
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert select_scale(boxes, [1.0, 3.0], target_area=5.0).tolist() == [0]


def test_select_scale_rejects_bad_boxes():
    with pytest.raises(ValueError, match="x2 < x1"):
        select_scale(torch.tensor([[10.0, 0, 5, 5]]), [1.0])
    with pytest.raises(ValueError, match="box 1 is not finite"):
        select_adjacent_pair(torch.tensor([[0.0, 0, 5, 5], [0, 0, float("nan"), 5]]), [1.0, 2.0])
    with pytest.raises(ValueError, match=r"\[R, 4\]"):
        select_scale(torch.zeros(3, 5), [1.0])


def test_random_scale_range_and_seed():
    boxes = torch.tensor([square(50)] * 300)
    a = random_scale(boxes, 5, torch.Generator().manual_seed(0))
    b = random_scale(boxes, 5, torch.Generator().manual_seed(0))
    c = random_scale(boxes, 5, torch.Generator().manual_seed(1))
    assert a.dtype == torch.int64 and a.shape == (300,)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.tolist()) == {0, 1, 2, 3, 4}


def test_adjacent_pair_brackets_ideal_scale():
    factors = [0.5, 1.0, 2.0, 4.0]
    boxes = torch.tensor([
        square(300),   # ideal 224/300 = 0.75 -> between 0.5 and 1
        square(224),   # ideal exactly 1 -> f_1 <= 1 < f_2
        square(150),   # ideal 1.49
        square(100),   # ideal 2.24
        square(20),    # ideal 11.2, above the largest -> two largest
        square(1000),  # ideal 0.224, below the smallest -> two smallest
    ])
    pairs = select_adjacent_pair(boxes, factors)
    assert pairs.tolist() == [[0, 1], [1, 2], [1, 2], [2, 3], [2, 3], [0, 1]]


def test_adjacent_pair_requires_ascending_factors():
    with pytest.raises(ValueError, match="ascending"):
        select_adjacent_pair(torch.tensor([square(10)]), [1.0, 0.5, 2.0])
    with pytest.raises(ValueError, match="two pyramid levels"):
        select_adjacent_pair(torch.tensor([square(10)]), [1.0])


def test_adjacent_pair_training_is_random_and_seeded():
    boxes = torch.tensor([square(224)] * 200)
    factors = [0.5, 1.0, 2.0, 4.0]
    a = select_adjacent_pair(boxes, factors, training=True, generator=torch.Generator().manual_seed(3))
    b = select_adjacent_pair(boxes, factors, training=True, generator=torch.Generator().manual_seed(3))
    c = select_adjacent_pair(boxes, factors, training=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, 1], a[:, 0] + 1)
    assert set(a[:, 0].tolist()) == {0, 1, 2}


# ---------------------------------------------------------------- pooling

SCALE = 1 / 16


def random_boxes(n: int, width: float, height: float, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * torch.tensor([width * 0.8, height * 0.8])
    wh = 8 + torch.rand(n, 2, generator=generator) * torch.tensor([width * 0.5, height * 0.5])
    far = torch.minimum(xy + wh, torch.tensor([width, height]))
    return torch.cat([xy, far], dim=1)


def reference_pool(features, boxes, levels, factors, size, op=roi_pool, **kw):
    """Slow truth: one roi op per box, on that image's map at that box's level."""
    out = []
    for b, (bx, lv) in enumerate(zip(boxes, levels)):
        for box, level in zip(bx, lv.tolist()):
            level_maps = features[level]
            fmap = level_maps[b:b + 1] if isinstance(level_maps, torch.Tensor) else level_maps[b]
            roi = torch.cat([torch.zeros(1), box * factors[b][level]])[None]
            out.append(op(fmap, roi, size, SCALE, **kw))
    return torch.cat(out)


def test_pool_hand_case_applies_level_factor():
    # one 8x8 map with values 0..63 at a level of factor 2: the box (0,0,32,32) becomes (0,0,64,64),
    # feature cells 0..4 (roi_pool rounds 64/16 = 4 and includes it), whose max is cell (4,4) = 36
    fmap = torch.arange(64.0).reshape(1, 1, 8, 8)
    out = pool_pyramid([fmap], [torch.tensor([square(32)])], [torch.tensor([0])], [[2.0]], SCALE, 1)
    assert out.shape == (1, 1, 1, 1) and out.item() == 36.0


def test_pool_matches_per_box_loop_with_several_images():
    g = torch.Generator().manual_seed(0)
    sizes = [(40, 30), (20, 15), (60, 45)]  # (W, H) of each level's map, same for both images
    features = [torch.randn(3, 4, h, w, generator=g) for w, h in sizes]
    factors = [[0.5, 0.25, 0.75], [0.6, 0.3, 0.9], [0.4, 0.2, 0.6]]
    boxes = [random_boxes(n, 500, 375, g) for n in (7, 0, 11)]
    levels = [torch.randint(3, (len(bx),), generator=g) for bx in boxes]
    out = pool_pyramid(features, boxes, levels, factors, SCALE, 6)
    assert out.shape == (18, 4, 6, 6)
    assert torch.equal(out, reference_pool(features, boxes, levels, factors, 6))


def test_pool_many_boxes_in_chunks_and_threads_matches_loop():
    # more boxes per level than one CPU chunk: sorted, split and pooled on several threads
    g = torch.Generator().manual_seed(5)
    features = [torch.randn(2, 8, 24, 32, generator=g), torch.randn(2, 8, 12, 16, generator=g)]
    factors = [[1.0, 0.5], [0.9, 0.45]]
    boxes = [random_boxes(450, 512, 384, g), random_boxes(350, 512, 384, g)]
    levels = [torch.randint(2, (len(bx),), generator=g) for bx in boxes]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = pool_pyramid(features, boxes, levels, factors, SCALE, 4)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out, reference_pool(features, boxes, levels, factors, 4))


def test_pool_single_level_equals_roi_pool():
    g = torch.Generator().manual_seed(1)
    fmap = torch.randn(2, 8, 24, 32, generator=g)
    boxes = [random_boxes(5, 512, 384, g), random_boxes(3, 512, 384, g)]
    out = pool_pyramid([fmap], boxes, [torch.zeros(5, dtype=torch.long), torch.zeros(3, dtype=torch.long)],
                       [[1.0], [1.0]], SCALE, 7)
    assert torch.equal(out, roi_pool(fmap, boxes, 7, SCALE))


def test_pool_list_maps_of_different_sizes():
    g = torch.Generator().manual_seed(2)
    features = [[torch.randn(1, 4, 30, 40, generator=g), torch.randn(1, 4, 40, 30, generator=g)],
                [torch.randn(1, 4, 15, 20, generator=g), torch.randn(1, 4, 20, 15, generator=g)]]
    factors = [[1.0, 0.5], [1.0, 0.5]]
    boxes = [random_boxes(6, 640, 480, g), random_boxes(4, 480, 640, g)]
    levels = [torch.tensor([0, 1, 1, 0, 1, 0]), torch.tensor([1, 1, 0, 0])]
    out = pool_pyramid(features, boxes, levels, factors, SCALE, 3)
    assert torch.equal(out, reference_pool(features, boxes, levels, factors, 3))


def test_pool_align_mode_matches_roi_align_loop():
    g = torch.Generator().manual_seed(3)
    features = [torch.randn(2, 4, 30, 40, generator=g), torch.randn(2, 4, 15, 20, generator=g)]
    factors = [[1.0, 0.5], [1.0, 0.5]]
    boxes = [random_boxes(5, 640, 480, g), random_boxes(5, 640, 480, g)]
    levels = [torch.tensor([0, 1, 0, 1, 1]), torch.tensor([1, 0, 0, 0, 1])]
    out = pool_pyramid(features, boxes, levels, factors, SCALE, 7, mode="align", sampling_ratio=2, aligned=True)
    ref = reference_pool(features, boxes, levels, factors, 7, op=roi_align, sampling_ratio=2, aligned=True)
    assert torch.allclose(out, ref, atol=1e-6)


def test_pool_pair_matches_two_loops_and_backpropagates():
    g = torch.Generator().manual_seed(4)
    features = [torch.randn(2, 4, 8 * (k + 1), 10 * (k + 1), generator=g, requires_grad=True) for k in range(3)]
    factors = [[0.5, 1.0, 1.5], [0.5, 1.0, 1.5]]
    boxes = [random_boxes(6, 160, 128, g), random_boxes(3, 160, 128, g)]
    pairs = [select_adjacent_pair(bx, factors[0], target_area=48 * 48) for bx in boxes]
    first, second = pool_pyramid_pair(features, boxes, pairs, factors, SCALE, 2)
    assert torch.equal(first, reference_pool(features, boxes, [p[:, 0] for p in pairs], factors, 2))
    assert torch.equal(second, reference_pool(features, boxes, [p[:, 1] for p in pairs], factors, 2))
    torch.maximum(first, second).sum().backward()
    assert all(f.grad is not None for f in features) and sum(f.grad.abs().sum() for f in features) > 0


def test_pool_without_boxes_is_empty():
    out = pool_pyramid([torch.randn(1, 4, 5, 5)], [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)],
                       [[1.0]], SCALE, 6)
    assert out.shape == (0, 4, 6, 6)


def test_pool_rejects_bad_input():
    fmap = [torch.randn(1, 4, 5, 5)]
    box = [torch.tensor([square(10)])]
    with pytest.raises(ValueError, match="levels must lie"):
        pool_pyramid(fmap, box, [torch.tensor([1])], [[1.0]], SCALE, 2)
    with pytest.raises(ValueError, match=r"\[B, S\]"):
        pool_pyramid(fmap, box, [torch.tensor([0])], [[1.0, 2.0]], SCALE, 2)
    with pytest.raises(ValueError, match="mode"):
        pool_pyramid(fmap, box, [torch.tensor([0])], [[1.0]], SCALE, 2, mode="avg")
