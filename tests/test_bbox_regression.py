"""Post-hoc box regression: example selection on a hand case, and ridge fits on synthetic
features that are a known linear function of the (constructed) box deltas."""
import math

import numpy as np
import pytest
import torch

from nocdet.boxes import box_iou
from nocdet.errors import ConfigError
from nocdet.training.bbox_regression import (
    BoxRegressionConfig,
    BoxRegressor,
    regression_examples,
    ridge_solve,
    train_box_regressor,
)
from nocdet.training.svm import RegionFeatures

D = 24
K = 2


def _record(image_id, features, boxes, gt_boxes, gt_labels, gt_difficult=None):
    gt_difficult = torch.zeros(len(gt_boxes), dtype=torch.bool) if gt_difficult is None else gt_difficult
    return RegionFeatures(image_id, features, boxes, gt_boxes, gt_labels, gt_difficult)


def test_examples_by_hand():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [40.0, 0.0, 50.0, 10.0],
                       [60.0, 0.0, 70.0, 10.0], [61.0, 0.0, 71.0, 10.0]])
    labels = torch.tensor([1, 2, 1, 2, 1])
    difficult = torch.tensor([False, False, True, False, False])
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 9.0],    # IoU 0.9 with GT 0 -> example of GT 0
        [0.0, 0.0, 10.0, 5.0],    # IoU 0.5 -> not an example
        [20.0, 0.0, 30.0, 8.0],   # IoU 0.8 with GT 1
        [40.0, 0.0, 50.0, 9.0],   # IoU 0.9 with the difficult GT 2
        [5.0, 0.0, 25.0, 10.0],   # IoU 0.2 with GT 0 and 1
        [60.0, 0.0, 70.0, 10.0],  # IoU 1 with GT 3 (class 2), 9/11 with GT 4 (class 1): best is GT 3
    ])
    record = _record("hand", torch.zeros(6, 3), boxes, gt, labels, difficult)
    rows, gt_index = regression_examples(record, min_iou=0.6, use_difficult=False)
    assert rows.tolist() == [0, 2, 5] and gt_index.tolist() == [0, 1, 3]
    rows, gt_index = regression_examples(record, min_iou=0.6, use_difficult=True)
    assert rows.tolist() == [0, 2, 3, 5] and gt_index.tolist() == [0, 1, 2, 3]
    rows, _ = regression_examples(record, min_iou=0.45, use_difficult=False)
    assert rows.tolist() == [0, 1, 2, 5]


def _proposal_from_deltas(gt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The proposal P whose R-CNN deltas to ``gt`` are ``t`` (inverting the definitions by hand:
    Pw = Gw / exp(tw), Px = Gx - tx Pw)."""
    gw, gh = gt[2] - gt[0], gt[3] - gt[1]
    gx, gy = gt[0] + gw / 2, gt[1] + gh / 2
    pw, ph = gw / math.exp(t[2]), gh / math.exp(t[3])
    px, py = gx - t[0] * pw, gy - t[1] * ph
    return torch.stack([px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2])


def _synthetic(num_images: int, seed: int, mixing: torch.Tensor, noise: float = 1e-4,
               bad_per_image: int = 0, delta_offset=(0.0, 0.0, 0.0, 0.0)):
    """Images with one object each (class alternates) and 8 proposals at known deltas
    (``|t| <= 0.08`` around ``delta_offset``, IoU > 0.6); class-k features are
    ``mixing[k] @ [t, 1]`` plus noise. ``bad_per_image`` proposals at IoU < 0.5 carry garbage
    features that would wreck the fit if they were used. Returns records and the true deltas."""
    g = torch.Generator().manual_seed(seed)
    records, deltas = [], []
    offset = torch.tensor(delta_offset, dtype=torch.float64)
    for i in range(num_images):
        label = 1 + i % K
        xy = torch.rand(2, generator=g, dtype=torch.float64) * 200 + 50
        wh = torch.rand(2, generator=g, dtype=torch.float64) * 100 + 60
        gt = torch.cat([xy, xy + wh])
        t = offset + (torch.rand(8, 4, generator=g, dtype=torch.float64) * 2 - 1) * 0.08
        boxes = torch.stack([_proposal_from_deltas(gt, d) for d in t])
        assert (box_iou(boxes, gt[None]) > 0.6).all()
        features = torch.cat([t, torch.ones(8, 1, dtype=torch.float64)], 1) @ mixing[label - 1].T
        features = features + noise * torch.randn(features.shape, generator=g, dtype=torch.float64)
        if bad_per_image:
            far = torch.tensor([[0.6, 0.0, 0.0, 0.0]], dtype=torch.float64).expand(bad_per_image, 4)
            bad_boxes = torch.stack([_proposal_from_deltas(gt, d) for d in far])
            assert (box_iou(bad_boxes, gt[None]) < 0.5).all()
            boxes = torch.cat([boxes, bad_boxes])
            features = torch.cat([features, 50 * torch.randn(bad_per_image, D, generator=g, dtype=torch.float64)])
        records.append(_record(f"img{i}", features.float(), boxes.float(), gt[None].float(), torch.tensor([label])))
        deltas.append(t)
    return records, deltas


def _mixing(seed: int) -> torch.Tensor:
    return torch.randn(K, D, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_ridge_recovers_ground_truth_of_held_out_proposals():
    mixing = _mixing(0)
    train, _ = _synthetic(40, seed=1, mixing=mixing, bad_per_image=3)
    test, _ = _synthetic(10, seed=2, mixing=mixing)
    config = BoxRegressionConfig(ridge_lambda=1e-6, norm_boxes_per_image=1000)
    model = train_box_regressor(train, K, config, progress=False)
    for r in test:
        labels = r.gt_labels.expand(len(r.boxes))
        refined = model.predict(r.features, r.boxes, labels)
        np.testing.assert_allclose(refined.numpy(), r.gt_boxes.expand(len(r.boxes), 4).numpy(), atol=0.05)
        # class-specific: the other class's regressor does not know these features
        wrong = model.predict(r.features, r.boxes, 3 - labels)
        assert (wrong - r.gt_boxes).abs().max() > 1.0


def test_large_lambda_shrinks_to_mean_delta_or_to_identity():
    offset = (0.05, -0.03, 0.04, 0.02)
    train, deltas = _synthetic(20, seed=3, mixing=_mixing(4), delta_offset=offset, bad_per_image=2)
    r = train[0]
    labels = r.gt_labels.expand(len(r.boxes))
    # centred targets: an infinitely regularised fit predicts the mean delta of its class (of
    # the examples above the IoU threshold only: the bad proposals' deltas are 0.6 off in x)
    shrunk = train_box_regressor(train, K, BoxRegressionConfig(ridge_lambda=1e12), progress=False)
    mean_class1 = torch.cat([d for i, d in enumerate(deltas) if i % K == 0]).mean(0)
    predicted = shrunk.deltas(r.features, labels)
    np.testing.assert_allclose(predicted.numpy(), mean_class1.expand(len(labels), 4).numpy(), atol=1e-5)
    # raw targets: the fit shrinks to zero deltas, boxes stay where they are
    raw = BoxRegressionConfig(ridge_lambda=1e12, normalize_targets=False)
    identity = train_box_regressor(train, K, raw, progress=False)
    np.testing.assert_allclose(identity.predict(r.features, r.boxes, labels).numpy(), r.boxes.numpy(),
                               atol=1e-3)


def test_ridge_solve_matches_normal_equations_in_both_forms():
    g = torch.Generator().manual_seed(5)
    for n, d in [(50, 8), (8, 50)]:
        a = torch.randn(n, d, generator=g, dtype=torch.float64).numpy()
        y = torch.randn(n, 3, generator=g, dtype=torch.float64).numpy()
        beta = ridge_solve(a, y, 2.5)
        np.testing.assert_allclose(np.linalg.solve(a.T @ a + 2.5 * np.eye(d), a.T @ y), beta, atol=1e-10)


def test_state_dict_round_trip_and_missing_class():
    train, _ = _synthetic(6, seed=6, mixing=_mixing(7))
    with pytest.warns(UserWarning, match="class 3"):
        model = train_box_regressor(train, 3, BoxRegressionConfig(), progress=False)
    r = train[1]
    labels = torch.tensor([1, 2, 3, 3, 2, 1, 3, 2])
    clone = BoxRegressor.from_state_dict(model.state_dict())
    assert torch.equal(clone.predict(r.features, r.boxes, labels), model.predict(r.features, r.boxes, labels))
    third = labels == 3  # class 3 had no examples: boxes unchanged
    assert torch.allclose(model.predict(r.features, r.boxes, labels)[third], r.boxes[third])


def test_bad_config_and_labels():
    with pytest.raises(ConfigError, match="ridge_lambda"):
        BoxRegressionConfig(ridge_lambda=0.0)
    train, _ = _synthetic(2, seed=8, mixing=_mixing(9))
    model = train_box_regressor(iter(train), K, progress=False)  # one pass: an iterator is fine
    with pytest.raises(ValueError, match="labels must be in 1..2"):
        model.predict(train[0].features, train[0].boxes, torch.full((8,), 3))


def test_predict_all_equals_each_class_predicted_alone():
    """The one-product form of every class's boxes agrees with ``predict`` class by class."""
    g = torch.Generator().manual_seed(0)
    num_classes, dim = 3, 5
    unwhiten = torch.eye(4).repeat(num_classes, 1, 1) + 0.1 * torch.randn(num_classes, 4, 4, generator=g)
    regressor = BoxRegressor(torch.randn(num_classes, dim, 4, generator=g) * 0.1,
                             torch.randn(num_classes, 4, generator=g) * 0.1,
                             torch.randn(num_classes, 4, generator=g) * 0.05, unwhiten, feature_scale=0.5)
    features = torch.randn(7, dim, generator=g)
    boxes = torch.tensor([[10.0, 20.0, 50.0, 80.0]]).repeat(7, 1) + torch.rand(7, 4, generator=g) * 5
    every = regressor.predict_all(features, boxes)
    assert every.shape == (7, num_classes, 4)
    for k in range(1, num_classes + 1):
        alone = regressor.predict(features, boxes, torch.full((7,), k))
        torch.testing.assert_close(every[:, k - 1], alone, rtol=1e-5, atol=1e-4)
