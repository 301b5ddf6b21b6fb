"""End-to-end Faster R-CNN with a NoC (paper Sec. 4): the torchvision-style data contract, the
RoI sampling band, the box encoding, the trunk variants' geometry, which parameters learn,
the eval-mode validation loss, and a tiny overfit. All on a quarter-width small-resnet."""
from __future__ import annotations

import math

import pytest
import torch

from nocdet.config import merge
from nocdet.e2e.model import LOSS_NAMES, build_e2e_model
from nocdet.e2e.roi_heads import NoCRoIHeads, RoIPooling, RoISampling
from nocdet.postprocess import PostprocessConfig
from nocdet.e2e.trunk import build_trunk
from nocdet.errors import ConfigError, DataError
from nocdet.experiment import BackboneConfig, ExperimentConfig, config_from_dict
from nocdet.features.registry import build_backbone
from nocdet.noc.head import NoCHead

K = 3  # object classes


def tiny_config(variant: str = "c4", spec: str = "res5a,5b, fcn+1", **sections) -> ExperimentConfig:
    data = {
        "setting": "e2e",
        "backbone": {"name": "small-resnet", "variant": variant, "options": {"width": 0.25, "frozen_bn": True}},
        "transform": {"min_size": [96], "max_size": 160},
        "rpn": {"anchor_sizes": [16, 32, 64], "pre_nms_top_n_train": 300, "post_nms_top_n_train": 60,
                "pre_nms_top_n_test": 200, "post_nms_top_n_test": 40, "batch_size_per_image": 64},
        "noc": {"spec": spec},
        "sampling": {"rois_per_image": 32},
    }
    return config_from_dict(merge(data, sections))


def scene(seed: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images of different sizes with bright rectangles (the objects) on dark noise."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for (h, w), boxes, labels in (((96, 128), [[10, 12, 50, 70], [70, 30, 118, 90]], [1, 3]),
                                  ((80, 120), [[20, 10, 60, 60]], [2])):
        image = torch.rand(3, h, w, generator=g) * 0.2
        for (x1, y1, x2, y2), label in zip(boxes, labels):
            image[label - 1, y1:y2, x1:x2] = 0.9
        images.append(image)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, targets


@pytest.fixture(scope="module")
def c4_model():
    torch.manual_seed(0)
    return build_e2e_model(tiny_config(), K)


def test_training_returns_the_four_losses_finite_and_positive(c4_model):
    images, targets = scene()
    c4_model.train()
    losses = c4_model(images, targets)
    assert set(losses) == set(LOSS_NAMES)
    for name, value in losses.items():
        assert value.dim() == 0 and math.isfinite(value.item()) and value.item() > 0, name
    # a random (K + 1)-way softmax starts near the uniform loss log(K + 1)
    assert losses["loss_classifier"].item() == pytest.approx(math.log(K + 1), rel=0.5)


def test_eval_returns_detections_in_the_input_images_pixels():
    torch.manual_seed(0)
    model = build_e2e_model(tiny_config(test={"score_threshold": 0.0, "max_detections": 7}), K).eval()
    images = [torch.rand(3, 70, 110), torch.rand(3, 120, 90)]
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for det, image in zip(detections, images):
        h, w = image.shape[-2:]
        boxes, labels, scores = det["boxes"], det["labels"], det["scores"]
        assert 0 < len(boxes) <= 7 and boxes.shape == (len(boxes), 4)
        assert labels.shape == scores.shape == (len(boxes),) and labels.dtype == torch.int64
        assert ((labels >= 1) & (labels <= K)).all()
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert ((scores >= 0) & (scores <= 1)).all() and (scores[:-1] >= scores[1:]).all()


# Hand-made proposals against the GT box [0, 0, 100, 100]: IoU = width / 100.
GT = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
P_005 = [0.0, 0.0, 5.0, 100.0]  # IoU 0.05
P_030 = [0.0, 0.0, 30.0, 100.0]  # IoU 0.30
P_060 = [0.0, 0.0, 60.0, 100.0]  # IoU 0.60
P_000 = [200.0, 200.0, 300.0, 300.0]  # IoU 0


def heads(bg_lo: float, fg_iou: float = 0.5, rois: int = 100, fg_fraction: float = 0.25) -> NoCRoIHeads:
    noc = NoCHead("fn+1", in_channels=4, roi_size=2, num_classes=K, box_regression=True)
    return NoCRoIHeads(noc, RoIPooling("max", 2, 1.0), RoISampling(rois, fg_fraction, fg_iou, bg_lo, 0.5),
                       PostprocessConfig())


def sampled(h: NoCRoIHeads, seed: int = 0) -> dict[tuple[float, ...], int]:
    torch.manual_seed(seed)
    proposals = torch.tensor([P_005, P_030, P_060, P_000])
    boxes, labels, _ = h.sample([proposals], [{"boxes": GT, "labels": torch.tensor([2])}])
    return {tuple(b.tolist()): int(lab) for b, lab in zip(boxes[0], labels[0])}


def test_fast_rcnn_background_band_never_samples_iou_below_its_low_end():
    got = sampled(heads(bg_lo=0.1))
    # GT added as a proposal (foreground), IoU 0.6 foreground, IoU 0.3 background; 0.05 and 0 ignored
    assert got == {tuple(GT[0].tolist()): 2, tuple(P_060): 2, tuple(P_030): 0}
    for seed in range(20):  # one foreground and one background per draw: always the IoU-0.3 box
        small = sampled(heads(bg_lo=0.1, rois=2, fg_fraction=0.5), seed)
        assert tuple(P_005) not in small and tuple(P_000) not in small
        assert small[tuple(P_030)] == 0


def test_end_to_end_background_band_starts_at_zero():
    got = sampled(heads(bg_lo=0.0))
    assert got[tuple(P_005)] == 0 and got[tuple(P_000)] == 0 and got[tuple(P_030)] == 0


def test_iou_between_background_and_foreground_is_ignored():
    got = sampled(heads(bg_lo=0.0, fg_iou=0.7))
    assert tuple(P_060) not in got and got[tuple(GT[0].tolist())] == 2


def test_regression_targets_are_the_hand_computed_deltas_over_the_stds():
    h = heads(bg_lo=0.1)
    torch.manual_seed(0)
    boxes, labels, targets = h.sample([torch.tensor([P_060])], [{"boxes": GT, "labels": torch.tensor([2])}])
    by_box = {tuple(b.tolist()): t for b, t in zip(boxes[0], targets[0])}
    # P = [0, 0, 60, 100]: centre (30, 50), size 60 x 100; G: centre (50, 50), size 100 x 100
    expected = torch.tensor([(50 - 30) / 60 / 0.1, 0.0, math.log(100 / 60) / 0.2, 0.0])
    torch.testing.assert_close(by_box[tuple(P_060)], expected)
    torch.testing.assert_close(by_box[tuple(GT[0].tolist())], torch.zeros(4))
    # another hand case: P centre (30, 60) size 40 x 80, G centre (50, 90) size 60 x 160
    p, g = torch.tensor([[10.0, 20.0, 50.0, 100.0]]), torch.tensor([[20.0, 10.0, 80.0, 170.0]])
    deltas = h.box_coder.encode_single(g, p)
    torch.testing.assert_close(deltas, torch.tensor([[5.0, 3.75, 5 * math.log(1.5), 5 * math.log(2.0)]]))
    torch.testing.assert_close(h.box_coder.decode_single(deltas, p), g)


def test_c4_pools_14x14_and_res5_halves_it_to_7x7(c4_model):
    pooling, noc = c4_model.roi_heads.pooling, c4_model.roi_heads.noc
    assert (pooling.size, pooling.spatial_scale, c4_model.backbone.stride) == (14, 1 / 16, 16)
    stage = noc.layers[0].module[0]  # res5a, res5b before global average pooling
    c4 = c4_model.backbone.out_channels
    assert stage(torch.zeros(2, c4, 14, 14)).shape[-2:] == (7, 7)
    assert stage[0] is c4_model.backbone.layer4[0]  # the trunk's own res5 blocks, shared
    assert c4_model.backbone(torch.zeros(1, 3, 96, 128)).shape[-2:] == (6, 8)


def test_c4_without_res5_stride_pools_7x7():
    model = build_e2e_model(tiny_config(noc={"spec": "res5a,5b, fcn+1", "stage_stride": 1}), K)
    assert model.roi_heads.pooling.size == 7
    stage = model.roi_heads.noc.layers[0].module[0]
    assert stage(torch.zeros(1, model.backbone.out_channels, 7, 7)).shape[-2:] == (7, 7)


@pytest.mark.parametrize("variant, stride, grid", [("naive", 32, (3, 4)), ("atrous", 16, (6, 8))])
def test_naive_is_stride_32_and_atrous_keeps_stride_16(variant, stride, grid):
    model = build_e2e_model(tiny_config(variant, "fcn+1"), K)
    assert model.backbone.stride == stride and model.roi_heads.pooling.spatial_scale == 1 / stride
    assert model.roi_heads.pooling.size == 7
    assert model.backbone(torch.zeros(1, 3, 96, 128)).shape[-2:] == grid


def test_googlenet_atrous_has_the_stride_16_grid_of_inc4d():
    """inc5b at stride 16: 64 x 96 -> 4 x 6 (the naive inc5b gives 2 x 3, tests/test_backbones.py)."""
    atrous = build_trunk(BackboneConfig(name="googlenet", variant="atrous"), pretrained=False).eval()
    with torch.no_grad():
        assert atrous(torch.rand(1, 3, 64, 96)).shape == (1, 1024, 4, 6) and atrous.stride == 16


def test_gradients_reach_the_trainable_trunk_and_not_the_frozen_stages():
    torch.manual_seed(0)
    cfg = tiny_config(backbone={"options": {"width": 0.25, "frozen_bn": True, "frozen_stages": 2}})
    model = build_e2e_model(cfg, K).train()
    images, targets = scene()
    sum(model(images, targets).values()).backward()
    b = model.backbone
    for frozen in (b.conv1, b.layer1):
        assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())
    for trainable in (b.layer2, b.layer3, b.layer4, model.rpn.head, model.roi_heads.noc.cls_score):
        grads = [p.grad for p in trainable.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_backbone_blocks_the_noc_does_not_use_are_fixed():
    model = build_e2e_model(tiny_config("c4", "fc64, fcn+1"), K)  # an fc NoC on res4: res5 unused
    assert all(not p.requires_grad for p in model.backbone.layer4.parameters())
    assert all(p.requires_grad for p in model.backbone.layer3.parameters())


def test_compute_losses_in_eval_mode_equals_training_mode_losses():
    """With frozen BN and sampling made deterministic (every eligible anchor and region taken:
    training mode draws a random number in the transform that eval mode does not, so seeding
    alone cannot align the two streams), eval-mode losses are the training losses; that also
    shows the RPN keeps its training top-N (the test top-N differ here)."""
    torch.manual_seed(0)
    model = build_e2e_model(tiny_config(rpn={"batch_size_per_image": 100000, "positive_fraction": 1.0},
                                        sampling={"rois_per_image": 100000, "fg_fraction": 1.0}), K)
    images, targets = scene()
    with torch.no_grad():
        train = model.train()(images, targets)
    evaluated = model.eval().compute_losses(images, targets)
    assert not model.training and not model.rpn.training  # modes restored
    assert set(evaluated) == set(LOSS_NAMES)
    for name in LOSS_NAMES:
        torch.testing.assert_close(evaluated[name], train[name], rtol=1e-5, atol=1e-6)
    counts = []  # proposals per image that reach the RoI sampling: post-NMS top-N of training (60)
    sample = model.roi_heads.sample
    model.roi_heads.sample = lambda proposals, t: (counts.append([len(p) for p in proposals]), sample(proposals, t))[1]
    model.compute_losses(images, targets)
    assert max(counts[0]) > 40 and max(counts[0]) <= 60  # the test top-N is 40


def test_compute_losses_in_eval_mode_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = build_e2e_model(tiny_config(backbone={"options": {"width": 0.25, "frozen_bn": False}}), K)
    images, targets = scene()
    before = model.backbone.bn1.running_mean.clone()
    model.eval().compute_losses(images, targets)
    assert torch.equal(model.backbone.bn1.running_mean, before)
    with torch.no_grad():
        model.train()(images, targets)
    assert not torch.equal(model.backbone.bn1.running_mean, before)


def test_images_without_objects_train_on_background():
    torch.manual_seed(0)
    model = build_e2e_model(tiny_config(), K).train()
    images, _ = scene()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = model(images, empty)
    assert all(math.isfinite(v.item()) for v in losses.values())
    assert losses["loss_box_reg"].item() == 0 and losses["loss_classifier"].item() > 0
    fast = build_e2e_model(tiny_config(sampling={"bg_iou_lo": 0.1}), K).train()
    losses = fast(images, empty)  # no region has IoU >= 0.1: nothing sampled, zero NoC losses
    assert losses["loss_classifier"].item() == 0 and losses["loss_objectness"].item() > 0


def test_bad_inputs_are_named(c4_model):
    images, targets = scene()
    c4_model.train()
    with pytest.raises(ValueError, match="needs targets"):
        c4_model(images)
    bad = [dict(targets[0]), targets[1]]
    bad[0]["labels"] = torch.tensor([0, 1])
    with pytest.raises(DataError, match=r"target 0 .*labels must be int64 in 1\.\.3"):
        c4_model(images, bad)
    bad[0] = {"boxes": torch.tensor([[10.0, 10.0, 5.0, 20.0]]), "labels": torch.tensor([1])}
    with pytest.raises(DataError, match="degenerate"):
        c4_model(images, bad)


def test_finetune_init_copies_the_pretrained_fc6_fc7(tmp_path):
    torch.manual_seed(0)
    options = {"width": 0.25, "fc_dim": 32}
    pretrained = build_backbone("small-zf", None, **options)
    path = tmp_path / "small-zf.pt"
    torch.save({"backbone": pretrained.state_dict()}, path)
    cfg = tiny_config("naive", "fc32, fc32, fcn+1",
                      backbone={"name": "small-zf", "weights": str(path)}, noc={"init": "finetune"})
    cfg.backbone.options = options
    model = build_e2e_model(cfg, K)
    hidden = [next(m for m in layer.module.modules() if isinstance(m, torch.nn.Linear))
              for layer in model.roi_heads.noc.layers[:2]]
    torch.testing.assert_close(hidden[0].weight, pretrained.classifier[0].weight)
    torch.testing.assert_close(hidden[1].bias, pretrained.classifier[3].bias)
    assert model.backbone.classifier is None  # the NoC holds fc6/fc7 now
    cfg.backbone.weights = None
    with pytest.raises(ConfigError, match="pre-trained fc6/fc7"):
        build_e2e_model(cfg, K)


def test_state_dict_rebuilds_the_model_without_weights(c4_model):
    copy = build_e2e_model(c4_model.config, K, classes=["a", "b", "c"], pretrained=False)
    copy.load_state_dict(c4_model.state_dict())
    images, _ = scene()
    c4_model.eval(), copy.eval()
    with torch.no_grad():
        a, b = c4_model(images), copy(images)
    assert copy.classes == ["a", "b", "c"] and copy.num_classes == K
    torch.testing.assert_close(a[0]["boxes"], b[0]["boxes"])


def test_a_few_iterations_overfit_one_image():
    """The two classification losses fall fast on one image. (The box loss is no measure here:
    its foreground set grows from the zero-target GT boxes as the RPN learns to hit the objects.)"""
    torch.manual_seed(0)
    model = build_e2e_model(tiny_config(), K).train()
    images, targets = scene()
    images, targets = images[:1], targets[:1]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    history = []
    for _ in range(10):
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    objectness = [h["loss_objectness"] for h in history]
    classification = [h["loss_objectness"] + h["loss_classifier"] for h in history]
    assert objectness[-1] < 0.5 * objectness[0], objectness
    assert sum(classification[-3:]) / 3 < 0.6 * classification[0], classification
