"""benchmarks/bench_e2e.py: its torchvision twin computes what our detector computes, its staged
iteration is the model's own, its iteration budget is right; a smoke run. No timings asserted."""
import importlib
import sys
from pathlib import Path

import pytest
import torch

from nocdet.e2e.model import build_e2e_model
from nocdet.experiment import config_from_dict

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
K = 3


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("bench_e2e")
    finally:
        sys.path.remove(str(BENCHMARKS))


def tiny_model(spec: str = "fc32, fc32, fcn+1", variant: str = "atrous", pool: str = "align"):
    cfg = config_from_dict({
        "setting": "e2e",
        "backbone": {"name": "small-resnet", "variant": variant, "options": {"width": 0.25, "frozen_bn": True}},
        "transform": {"min_size": [96], "max_size": 160},
        "rpn": {"anchor_sizes": [16, 32, 64], "pre_nms_top_n_train": 300, "post_nms_top_n_train": 60,
                "pre_nms_top_n_test": 200, "post_nms_top_n_test": 40, "batch_size_per_image": 64},
        "roi": {"pool": pool, "sampling_ratio": 2},
        "noc": {"spec": spec},
        "sampling": {"rois_per_image": 32},
        "test": {"score_threshold": 0.0},
    })
    torch.manual_seed(0)
    return build_e2e_model(cfg, K, pretrained=False)


def batch(bench):
    return bench.synthetic_batch(2, (128, 96), K, torch.Generator().manual_seed(0), torch.device("cpu"))


def test_budget_iterations_by_hand(bench):
    assert bench.budget_iterations(100, 1.0, 0.0, 20) == 100  # no validation
    assert bench.budget_iterations(100, 1.0, 10.0, 0) == 90  # one validation at the end
    # every 20 iterations: 60 its + 3 validations = 90 s; 61 its + 4 validations = 101 s
    assert bench.budget_iterations(100, 1.0, 10.0, 20) == 60
    assert bench.budget_iterations(5, 10.0, 0.0, 0) == 0


def test_synthetic_batch_is_a_valid_target_set(bench):
    images, targets = batch(bench)
    for image, target in zip(images, targets):
        assert image.shape == (3, 96, 128)
        b = target["boxes"]
        assert 1 <= len(b) <= 6 and (b[:, 2:] > b[:, :2]).all()
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= 128).all() and (b[:, 3] <= 96).all()
        assert target["labels"].min() >= 1 and target["labels"].max() <= K


@pytest.mark.slow
def test_torchvision_twin_detects_and_trains_like_ours(bench):
    ours = tiny_model()
    tv = bench.torchvision_twin(ours)
    images, targets = batch(bench)
    ours_det, tv_det = bench.detect(ours, images), bench.detect(tv, images)
    assert sum(len(d["boxes"]) for d in ours_det) > 0
    boxes, scores = bench.detection_gap(ours_det, tv_det)
    assert boxes < 1e-3 and scores < 1e-5
    assert bench.same_detections(ours_det, tv_det).startswith("yes")
    moved = [{**d, "boxes": d["boxes"] + 0.2} for d in tv_det]  # 0.2 px is past rounding: not the same
    assert bench.same_detections(ours_det, moved).startswith("no (max |diff| boxes 2.0e-01 px")
    assert bench.same_detections(ours_det, [{**d, "labels": d["labels"] % K + 1} for d in tv_det]) \
        == "no (labels or counts differ)"
    ours.train(), tv.train()
    torch.manual_seed(5)
    ours_losses = ours(images, targets)
    torch.manual_seed(5)
    tv_losses = tv(images, targets)
    assert set(ours_losses) == set(tv_losses)
    for name in ours_losses:
        assert torch.allclose(ours_losses[name], tv_losses[name], atol=1e-6), name


def test_torchvision_twin_refuses_what_it_cannot_mirror(bench):
    with pytest.raises(ValueError, match="TwoMLPHead"):
        bench.torchvision_twin(tiny_model(spec="fcn+1"))
    with pytest.raises(ValueError, match="RoIAlign"):
        bench.torchvision_twin(tiny_model(pool="max"))


@pytest.mark.slow
@pytest.mark.parametrize("spec,variant", [("fc32, fc32, fcn+1", "atrous"), ("res5a,5b, fcn+1", "c4")])
def test_staged_iteration_is_the_models_iteration(bench, spec, variant):
    model = tiny_model(spec, variant, pool="max")
    images, targets = batch(bench)
    model.train()
    torch.manual_seed(3)
    expected = {k: v.detach() for k, v in model(images, targets).items()}
    optimizer = bench.zero_lr_sgd(model)
    before = [p.detach().clone() for p in model.parameters()]
    seconds, losses = bench.staged_iteration(model, optimizer, (images, targets), 3, lambda: None)
    assert list(seconds) == list(bench.STAGES)
    assert set(losses) == set(expected)
    for name in expected:
        assert torch.allclose(losses[name].detach(), expected[name], atol=1e-6), name
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # learning rate 0


@pytest.mark.slow
def test_twins_part_runs(bench, capsys):
    code = bench.main(["--quick", "--threads", "1", "--warmup", "0", "--rounds", "1", "--only", "twins",
                       "--set", "sampling.rois_per_image=8", "--set", "transform.min_size=[96]",
                       "--set", "transform.max_size=160"])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("atrous_1fc", "atrous_3fc", "conv_noc", "naive_1fc"):
        assert name in out
    assert "its in 15 min" in out and "backward" in out
