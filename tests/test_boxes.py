"""Box utilities against hand computations and their defining identities."""
import math

import numpy as np
import pytest
import torch

from nocdet.boxes import (
    DELTA_CLAMP,
    END_TO_END_STDS,
    box_iou,
    clip_boxes,
    decode_deltas,
    encode_deltas,
    flip_boxes,
    remove_small_boxes,
)
from nocdet.data.sample import Sample


def random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 500
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 280 + 20  # size ratios < 1000/16
    return torch.cat([xy, xy + wh], 1)


def test_iou_by_hand():
    a = [[0.0, 0.0, 10.0, 10.0]]
    b = [[5.0, 5.0, 15.0, 15.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]]
    # overlap 5x5 = 25, union 100 + 100 - 25 = 175
    expected = [[25 / 175, 0.0, 1.0, 0.5]]
    iou = box_iou(np.array(a), np.array(b))
    assert isinstance(iou, np.ndarray)
    np.testing.assert_allclose(iou, expected, rtol=1e-6)
    iou_t = box_iou(torch.tensor(a), torch.tensor(b))
    assert isinstance(iou_t, torch.Tensor) and iou_t.shape == (1, 4)
    np.testing.assert_allclose(iou_t.numpy(), expected, rtol=1e-6)


def test_deltas_by_hand():
    proposal = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size 10 x 20
    target = torch.tensor([[2.0, 4.0, 22.0, 24.0]])  # centre (12, 14), size 20 x 20
    expected = [0.7, 0.2, math.log(2.0), 0.0]
    np.testing.assert_allclose(encode_deltas(proposal, target)[0].numpy(), expected, atol=1e-6)
    normalised = encode_deltas(proposal, target, stds=END_TO_END_STDS)
    np.testing.assert_allclose(normalised[0].numpy(), [7.0, 2.0, math.log(2.0) / 0.2, 0.0], atol=1e-5)
    shifted = encode_deltas(proposal, target, means=[0.1, 0.2, 0.3, 0.4], stds=[1, 2, 3, 4])
    np.testing.assert_allclose(shifted[0].numpy(), [(0.7 - 0.1) / 1, (0.2 - 0.2) / 2,
                                                    (math.log(2) - 0.3) / 3, (0.0 - 0.4) / 4], atol=1e-6)


@pytest.mark.parametrize("means,stds", [(None, None), ((0.0, 0.0, 0.0, 0.0), END_TO_END_STDS),
                                        ((0.05, -0.1, 0.2, 0.1), (0.3, 0.2, 0.5, 0.4))])
def test_encode_decode_inverse(means, stds):
    proposals, targets = random_boxes(200, 1), random_boxes(200, 2)
    deltas = encode_deltas(proposals, targets, means, stds)
    decoded = decode_deltas(deltas, proposals, means, stds)
    np.testing.assert_allclose(decoded.numpy(), targets.numpy(), rtol=1e-9, atol=1e-9)
    # numpy in, numpy out
    decoded_np = decode_deltas(deltas.numpy(), proposals.numpy(), means, stds)
    assert isinstance(decoded_np, np.ndarray)
    np.testing.assert_allclose(decoded_np, targets.numpy(), atol=1e-9)


def test_zero_deltas_keep_box_and_decode_is_clamped():
    proposals = torch.tensor([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 16.0, 16.0]])
    np.testing.assert_allclose(decode_deltas(torch.zeros(2, 4), proposals).numpy(), proposals.numpy())
    huge = torch.tensor([[0.0, 0.0, 100.0, 100.0]] * 2)
    boxes = decode_deltas(huge, proposals)
    assert torch.isfinite(boxes).all()
    widths = boxes[:, 2] - boxes[:, 0]
    np.testing.assert_allclose(widths.numpy(), (proposals[:, 2] - proposals[:, 0]).numpy() * 1000 / 16,
                               rtol=1e-5)
    assert DELTA_CLAMP == pytest.approx(math.log(62.5))


def test_encode_rejects_degenerate_proposal():
    with pytest.raises(ValueError, match="positive width"):
        encode_deltas(torch.tensor([[5.0, 5.0, 5.0, 9.0]]), torch.tensor([[0.0, 0.0, 4.0, 4.0]]))


def test_clip():
    boxes = np.array([[-5.0, 3.0, 120.5, 90.0], [10.0, -1.0, 20.0, 30.0]], np.float32)
    clipped = clip_boxes(boxes, width=100, height=80)
    assert isinstance(clipped, np.ndarray)
    np.testing.assert_array_equal(clipped, [[0, 3, 100, 80], [10, 0, 20, 30]])
    fractional = clip_boxes(torch.tensor([[0.0, 0.0, 300.0, 300.0]]), width=200.5, height=99.25)
    np.testing.assert_allclose(fractional.numpy(), [[0, 0, 200.5, 99.25]])


def test_remove_small_boxes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 2.0, 10.0], [0.0, 0.0, 10.0, 3.0], [1, 1, 6, 6]])
    assert remove_small_boxes(boxes, 5).tolist() == [0, 3]


def test_flip_by_hand_twice_and_like_sample():
    boxes = np.array([[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 100.0, 50.0]], np.float32)
    flipped = flip_boxes(boxes, width=100)
    np.testing.assert_array_equal(flipped, [[70, 5, 90, 25], [0, 0, 100, 50]])
    np.testing.assert_array_equal(flip_boxes(flipped, width=100), boxes)
    sample = Sample("a", "a.jpg", 100, 60, boxes, [1, 2], [False, False])
    np.testing.assert_array_equal(sample.flipped().boxes, flipped)
    random = random_boxes(50, 3)
    np.testing.assert_allclose(flip_boxes(flip_boxes(random, 640.0), 640.0).numpy(), random.numpy(), atol=1e-12)
