"""End-to-end trainer: solver schedule, batch order, exact resume, signals, NaN stop, validation.

The helpers ``make_dataset``, ``TinyDetector`` and ``small_faster_rcnn`` are also used by
tests/test_e2e_ddp.py and by the subprocess scripts below.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.ops import roi_align

from nocdet.data.sample import DetectionDataset, Sample
from nocdet.e2e.data import DetectionImages, GroupedBatchSampler, aspect_groups
from nocdet.e2e.solver import build_optimizer, learning_rate, parameter_groups
from nocdet.e2e.trainer import evaluate_detector, train_detector
from nocdet.errors import ConfigError, DataError, TrainingError
from nocdet.experiment import config_from_dict
from nocdet.training.checkpoint import StopSignals, load_checkpoint
from nocdet.training.solver_config import SolverConfig

TESTS = Path(__file__).parent
# (width, height) of the generated images: unique sizes, wide and tall ones
SIZES = [(64, 48), (48, 64), (72, 48), (56, 40), (40, 56), (64, 64), (48, 72), (80, 56)]


def make_dataset(root: Path, sizes=SIZES, seed: int = 0) -> DetectionDataset:
    """PNG images of noise with a red (class 1) and/or green (class 2) rectangle each.

    Image 0's second object is difficult; the last image has no object.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for k, (w, h) in enumerate(sizes):
        pixels = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        boxes, labels = [], []
        if k != len(sizes) - 1:
            for label in ([1, 2] if k % 2 == 0 else [1 + k % 3 // 2]):
                bw, bh = int(rng.integers(12, w // 2)), int(rng.integers(12, h // 2))
                x1, y1 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                pixels[y1:y1 + bh, x1:x1 + bw] = (220, 30, 30) if label == 1 else (30, 220, 30)
                boxes.append([x1, y1, x1 + bw, y1 + bh])
                labels.append(label)
        path = root / f"img{k}.png"
        Image.fromarray(pixels).save(path)
        difficult = [k == 0 and i == 1 for i in range(len(labels))]
        samples.append(Sample(f"img{k}", path, w, h, np.array(boxes, np.float32).reshape(-1, 4), labels, difficult))
    return DetectionDataset(["red", "green"], samples, "tiny")


class TinyDetector(nn.Module):
    """A deterministic detector with the GeneralizedRCNN contract (no random sampling).

    Losses per image: RoIAlign features of the ground-truth boxes and of four fixed background
    corners -> cross-entropy (``loss_classifier``) and box regression (``loss_box_reg``), and a
    per-pixel objectness BCE (``loss_objectness``); each is averaged over the images of the batch.
    """

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.objectness = nn.Conv2d(8, 1, 1)
        self.cls = nn.Linear(8 * 4, num_classes + 1)
        self.reg = nn.Linear(8 * 4, 4)

    def _features(self, image: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(image[None]))))

    def _pool(self, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return roi_align(features, [boxes], output_size=2, spatial_scale=0.5, sampling_ratio=2).flatten(1)

    @staticmethod
    def _corners(h: int, w: int) -> torch.Tensor:
        return torch.tensor([[0, 0, 8, 8], [w - 8, 0, w, 8], [0, h - 8, 8, h], [w - 8, h - 8, w, h]], dtype=torch.float32)

    def compute_losses(self, images, targets):
        total = {"loss_classifier": 0.0, "loss_box_reg": 0.0, "loss_objectness": 0.0}
        for image, target in zip(images, targets):
            h, w = image.shape[1:]
            feats = self._features(image)
            rois = torch.cat([target["boxes"], self._corners(h, w).to(image.device)])
            labels = torch.cat([target["labels"], torch.zeros(4, dtype=torch.int64, device=image.device)])
            pooled = self._pool(feats, rois)
            n = len(target["boxes"])
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=image.device)
            mask = torch.zeros(feats.shape[2:], device=image.device)
            for x1, y1, x2, y2 in (target["boxes"] / 2).round().long().tolist():
                mask[y1:y2, x1:x2] = 1
            total["loss_classifier"] = total["loss_classifier"] + F.cross_entropy(self.cls(pooled), labels)
            total["loss_box_reg"] = total["loss_box_reg"] + F.smooth_l1_loss(
                self.reg(pooled[:n]), target["boxes"] / scale, reduction="sum") / max(1, n)
            total["loss_objectness"] = total["loss_objectness"] + F.binary_cross_entropy_with_logits(
                self.objectness(feats)[0, 0], mask)
        return {name: value / len(images) for name, value in total.items()}

    def forward(self, images, targets=None):
        if self.training:
            return self.compute_losses(images, targets)
        outputs = []
        for image in images:
            h, w = image.shape[1:]
            boxes = torch.tensor([[x, y, x + 16, y + 16] for y in range(0, h - 15, 8) for x in range(0, w - 15, 8)],
                                 dtype=torch.float32, device=image.device)
            probs = self.cls(self._pool(self._features(image), boxes)).softmax(1)
            scores, labels = probs[:, 1:].max(1)
            outputs.append({"boxes": boxes, "scores": scores, "labels": labels + 1})
        return outputs


def small_faster_rcnn(num_classes: int = 2) -> nn.Module:
    """A real torchvision FasterRCNN, tiny: 2-layer conv trunk, 64-px images, small heads."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
    backbone.out_channels = 16
    return FasterRCNN(backbone, min_size=64, max_size=96,
                      rpn_anchor_generator=AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),)),
                      box_roi_pool=MultiScaleRoIAlign(["0"], 4, 2),
                      box_head=TwoMLPHead(16 * 16, 32), box_predictor=FastRCNNPredictor(32, num_classes + 1),
                      rpn_batch_size_per_image=32, box_batch_size_per_image=16,
                      rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
                      rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50)


def e2e_solver(**fields) -> SolverConfig:
    """The checked solver section of an end-to-end config with these fields."""
    return config_from_dict({"setting": "e2e", "solver": fields}).solver


def quick_solver(**overrides) -> SolverConfig:
    settings = dict(iterations=4, images_per_batch=2, lr=0.01, warmup_iterations=2, warmup_factor=0.5,
                    lr_steps=[3], checkpoint_every=2, log_every=1, val_every=0, val_images=0, workers=0)
    return e2e_solver(**{**settings, **overrides})


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train" / "log.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared machine; also keeps CPU kernels' reduction order fixed
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> DetectionDataset:
    return make_dataset(tmp_path_factory.mktemp("e2e") / "images")


# ---------------------------------------------------------------------------------- solver

def test_learning_rate_warmup_then_steps():
    cfg = e2e_solver(iterations=10, lr=0.1, warmup_iterations=4, warmup_factor=0.5, lr_steps=[6, 8],
                     lr_gamma=0.1)
    expected = [0.05, 0.0625, 0.075, 0.0875, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    assert [learning_rate(cfg, i) for i in range(10)] == pytest.approx(expected, rel=1e-12)
    no_warmup = e2e_solver(iterations=10, lr=0.02, warmup_iterations=0, lr_steps=[5], lr_gamma=0.5)
    assert [learning_rate(no_warmup, i) for i in (0, 4, 5, 9)] == pytest.approx([0.02, 0.02, 0.01, 0.01])


@pytest.mark.parametrize("bad", [dict(iterations=0), dict(images_per_batch=0), dict(lr=0), dict(momentum=1.0),
                                 dict(weight_decay=-1), dict(warmup_factor=0), dict(lr_steps=[5, 5]),
                                 dict(lr_steps=[0]), dict(lr_gamma=2), dict(clip_grad_norm=0), dict(amp="fp8"),
                                 dict(log_every=0), dict(val_every=-1), dict(workers=-1)])
def test_solver_validate_rejects_nonsense(bad):
    with pytest.raises(ConfigError):
        e2e_solver(**bad)


def test_parameter_groups_no_decay_on_bias_and_norm():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))
    shared = nn.Linear(2, 2)
    model.append(shared)
    model.append(shared)  # a shared module's parameters are optimised once
    model[0].weight.requires_grad_(False)
    decay, no_decay = parameter_groups(model, e2e_solver(weight_decay=1e-4, weight_decay_norm=0.0))
    ids = lambda ps: {id(p) for p in ps}
    assert ids(decay["params"]) == ids([model[3].weight, shared.weight])
    assert ids(no_decay["params"]) == ids([model[0].bias, model[1].weight, model[1].bias, model[3].bias, shared.bias])
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (1e-4, 0.0)
    assert build_optimizer(model, e2e_solver(lr=0.5, warmup_iterations=0)).param_groups[0]["lr"] == 0.5


# ---------------------------------------------------------------------------------- data

def test_images_targets_flip_and_difficult(data):
    items = DetectionImages(data)
    image, target = items[(0, False)]
    s = data.samples[0]
    assert image.shape == (3, s.height, s.width) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert target["boxes"].tolist() == s.boxes[:1].tolist() and target["labels"].tolist() == [1]  # difficult dropped
    flipped, ftarget = items[(0, True)]
    assert torch.equal(flipped, image.flip(-1))
    x1, y1, x2, y2 = s.boxes[0].tolist()
    assert ftarget["boxes"].tolist() == [[s.width - x2, y1, s.width - x1, y2]]
    assert DetectionImages(data, drop_difficult=False)[0][1]["labels"].tolist() == [1, 2]
    empty = items[len(data) - 1][1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert aspect_groups(data).tolist() == [0, 1, 0, 0, 1, 0, 1, 0]  # SIZES: tall when h > w


def test_bad_images_and_boxes_are_data_errors(data, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(data.samples[0].path.read_bytes()[:60])
    s = data.samples[0]
    cases = [(Sample("b", broken, s.width, s.height, s.boxes, s.labels, s.difficult), "broken.png"),
             (Sample("w", s.path, s.width + 1, s.height, s.boxes, s.labels, s.difficult), "annotated as"),
             (Sample("z", s.path, s.width, s.height, [[5, 5, 5, 9]], [1], [False]), "object 0")]
    for sample, words in cases:
        with pytest.raises(DataError, match=words):
            DetectionImages(DetectionDataset(data.classes, [sample]))[0]


def take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_groups_aspect_ratios_and_is_deterministic():
    groups = np.array([0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1])
    a = take(GroupedBatchSampler(11, 3, seed=5, flip=True, groups=groups), 30)
    assert all(len({groups[i] for i, _ in batch}) == 1 for batch in a)
    assert a == take(GroupedBatchSampler(11, 3, seed=5, flip=True, groups=groups), 30)
    assert a != take(GroupedBatchSampler(11, 3, seed=6, flip=True, groups=groups), 30)
    # over a long stream every image is used about equally often (leftovers carry over)
    counts = np.bincount([i for batch in a for i, _ in batch], minlength=11)
    assert counts.max() - counts.min() <= 3 and counts.sum() == 90


def test_sampler_epochs_are_seeded_permutations_with_per_image_flips():
    sampler = GroupedBatchSampler(8, 2, seed=3, flip=True)
    batches = take(sampler, 8)  # two epochs of four batches
    for epoch in (0, 1):
        rng = np.random.default_rng([3, epoch])
        order, flips = rng.permutation(8), rng.random(8) < 0.5
        keys = [k for batch in batches[4 * epoch:4 * epoch + 4] for k in batch]
        assert keys == [(int(i), bool(flips[i])) for i in order]
    assert not any(f for batch in take(GroupedBatchSampler(8, 2, seed=3, flip=False), 8) for _, f in batch)


def test_sampler_ranks_split_each_global_batch_exactly_once():
    groups = np.array([0, 1] * 7)
    whole = take(GroupedBatchSampler(14, 4, seed=1, flip=True, groups=groups), 12)
    parts = [take(GroupedBatchSampler(14, 4, seed=1, flip=True, groups=groups, rank=r, world_size=2), 12)
             for r in range(2)]
    assert all(len(p) == 2 for rank in parts for p in rank)
    assert [p0 + p1 for p0, p1 in zip(*parts)] == whole
    with pytest.raises(ConfigError, match="multiple"):
        GroupedBatchSampler(14, 3, seed=1, flip=True, world_size=2)


def test_sampler_resumes_mid_epoch_even_when_read_ahead():
    groups = np.array([0, 0, 1, 0, 1, 1, 0])
    straight = take(GroupedBatchSampler(7, 2, seed=9, flip=True, groups=groups), 15)
    first = GroupedBatchSampler(7, 2, seed=9, flip=True, groups=groups)
    take(first, 9)  # a DataLoader drew 9 batches, training consumed 5
    second = GroupedBatchSampler(7, 2, seed=9, flip=True, groups=groups)
    second.load_state_dict(first.state_dict(5))
    assert take(second, 10) == straight[5:]
    with pytest.raises(ConfigError, match="seed"):
        GroupedBatchSampler(7, 2, seed=8, flip=True).load_state_dict(first.state_dict())


# ---------------------------------------------------------------------------------- evaluation

class Oracle(nn.Module):
    """Returns the annotated boxes of the image with the input's size (sizes are unique)."""

    def __init__(self, dataset: DetectionDataset, drop_label: int | None = None):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.by_size = {(s.height, s.width): s for s in dataset.samples}
        self.drop_label = drop_label

    def forward(self, images, targets=None):
        outs = []
        for image in images:
            s = self.by_size[tuple(image.shape[1:])]
            keep = s.labels != self.drop_label
            outs.append({"boxes": torch.from_numpy(s.boxes[keep]), "labels": torch.from_numpy(s.labels[keep]),
                         "scores": torch.ones(int(keep.sum()))})
        return outs


def test_evaluate_detector_scores_perfect_and_half_right_detectors(data):
    assert evaluate_detector(Oracle(data), data) == {"voc07_mAP": pytest.approx(1.0)}
    assert evaluate_detector(Oracle(data), data, "voc") == {"voc_mAP": pytest.approx(1.0)}
    assert evaluate_detector(Oracle(data, drop_label=2), data)["voc07_mAP"] == pytest.approx(0.5)
    assert evaluate_detector(Oracle(data), data, "coco")["coco_AP"] == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        evaluate_detector(Oracle(data), data, "ap")


# ---------------------------------------------------------------------------------- training

class StopAfter(nn.Module):
    """Wraps a model; sets ``stop.requested`` during its ``n``-th training forward pass."""

    def __init__(self, model: nn.Module, n: int, stop: StopSignals):
        super().__init__()
        self.model, self.n, self.stop, self.calls = model, n, stop, 0

    def forward(self, images, targets=None):
        if self.training:
            self.calls += 1
            if self.calls == self.n:
                self.stop.requested = "SIGTERM"
        return self.model(images, targets)


def test_exact_resume_with_torchvision_faster_rcnn(data, tmp_path):
    solver = quick_solver(iterations=6, lr_steps=[4], checkpoint_every=100, flip=True)
    torch.manual_seed(0)
    straight = small_faster_rcnn()
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    train_detector(straight, data, tmp_path / "a", solver, seed=4, progress=False)

    stop = StopSignals()
    part = small_faster_rcnn()
    part.load_state_dict(init)
    result = train_detector(StopAfter(part, 3, stop), data, tmp_path / "b", solver, seed=4, progress=False,
                            stop_signals=stop)
    assert result.interrupted == "SIGTERM" and result.iterations == 3 and result.final is None
    assert load_checkpoint(tmp_path / "b/train/checkpoint.pt")["iteration"] == 3
    resumed = StopAfter(small_faster_rcnn(), 0, StopSignals())  # fresh weights, as in a new process
    train_detector(resumed, data, tmp_path / "b", solver, seed=4, progress=False, resume=True)
    resumed = resumed.model

    changed = False
    for name, value in straight.state_dict().items():
        assert torch.allclose(resumed.state_dict()[name], value, rtol=0, atol=1e-6), name
        changed |= not torch.equal(value, init[name])
    assert changed
    assert [r["iteration"] for r in read_log(tmp_path / "b")] == list(range(1, 7))
    assert [r["loss"] for r in read_log(tmp_path / "b")] == pytest.approx([r["loss"] for r in read_log(tmp_path / "a")])
    final = torch.load(tmp_path / "b/train/final.pt", weights_only=False)
    assert final["iteration"] == 6


def test_extending_a_finished_run_equals_a_longer_run(data, tmp_path):
    torch.manual_seed(1)
    init = TinyDetector().state_dict()
    longer, shorter = TinyDetector(), TinyDetector()
    longer.load_state_dict(init)
    shorter.load_state_dict(init)
    train_detector(longer, data, tmp_path / "a", quick_solver(iterations=6, lr_steps=[5]), seed=2, progress=False,
                   extra_state={"classes": data.classes})
    # a loader worker reads batches ahead of training: the checkpoint still records the consumed ones
    train_detector(shorter, data, tmp_path / "b", quick_solver(iterations=3, lr_steps=[5], workers=1), seed=2,
                   progress=False)
    result = train_detector(shorter, data, tmp_path / "b", quick_solver(iterations=6, lr_steps=[5], workers=1),
                            seed=2, progress=False, resume=True)
    assert result.iterations == 6
    for name, value in longer.state_dict().items():
        assert torch.allclose(shorter.state_dict()[name], value, rtol=0, atol=1e-6), name
    assert load_checkpoint(tmp_path / "a/train/checkpoint.pt")["extra_state"] == {"classes": ["red", "green"]}


class NaNAt(TinyDetector):
    """TinyDetector whose ``term`` loss is NaN at training call ``k``."""

    def __init__(self, k: int, term: str):
        super().__init__()
        self.k, self.term, self.calls = k, term, 0

    def forward(self, images, targets=None):
        losses = super().forward(images, targets)
        if self.training:
            self.calls += 1
            if self.calls == self.k:
                losses[self.term] = losses[self.term] * float("nan")
        return losses


def test_nan_loss_stops_naming_iteration_and_term(data, tmp_path):
    with pytest.raises(TrainingError, match=r"iteration 3: loss_box_reg is nan.*checkpoint.*kept"):
        train_detector(NaNAt(3, "loss_box_reg"), data, tmp_path, quick_solver(iterations=5), progress=False)
    assert load_checkpoint(tmp_path / "train/checkpoint.pt")["iteration"] == 2
    assert [r["iteration"] for r in read_log(tmp_path)] == [1, 2]


def test_validation_loss_and_metric_are_logged_when_due(data, tmp_path):
    torch.manual_seed(0)
    model = TinyDetector()
    result = train_detector(model, data, tmp_path / "a", quick_solver(iterations=4, val_every=2, val_images=3),
                            val=data, seed=1, progress=False)
    log = read_log(tmp_path / "a")
    val_keys = {"val_loss", "val_loss_classifier", "val_loss_box_reg", "val_loss_objectness", "val_voc07_mAP"}
    assert [r["iteration"] for r in log if val_keys <= r.keys()] == [2, 4]
    assert not any("val_loss" in r for r in log if r["iteration"] in (1, 3))
    # the last validation loss is the image-weighted mean over the first 3 images, difficult dropped
    model.eval()
    with torch.no_grad():
        items = DetectionImages(data)
        per_image = [model.compute_losses([im], [t]) for im, t in (items[i] for i in range(3))]
    expected = {name: float(np.mean([float(p[name]) for p in per_image])) for name in per_image[0]}
    for name, value in expected.items():
        assert log[-1][f"val_{name}"] == pytest.approx(value, rel=1e-5)
    assert log[-1]["val_loss"] == pytest.approx(sum(expected.values()), rel=1e-5)
    assert 0.0 <= log[-1]["val_voc07_mAP"] <= 1.0 and result.val_metrics == {"voc07_mAP": log[-1]["val_voc07_mAP"]}
    for r in log:
        assert {"loss", "loss_classifier", "lr", "seconds_per_iteration"} <= r.keys()
        assert r["loss"] == pytest.approx(r["loss_classifier"] + r["loss_box_reg"] + r["loss_objectness"])
    assert [r["lr"] for r in log] == pytest.approx([0.005, 0.0075, 0.01, 0.001])

    train_detector(TinyDetector(), data, tmp_path / "b", quick_solver(iterations=3, lr_steps=[]), val=data,
                   evaluate=None, progress=False)
    assert [("val_loss" in r, "val_voc07_mAP" in r) for r in read_log(tmp_path / "b")] == [
        (False, False), (False, False), (True, False)]


def test_validation_loss_of_a_model_without_compute_losses(data, tmp_path):
    torch.manual_seed(0)
    model = small_faster_rcnn()
    train_detector(model, data, tmp_path, quick_solver(iterations=2, lr_steps=[]), val=data, evaluate=None,
                   progress=False)
    last = read_log(tmp_path)[-1]
    assert {"val_loss_classifier", "val_loss_box_reg", "val_loss_objectness", "val_loss_rpn_box_reg"} <= last.keys()
    assert all(math.isfinite(last[k]) for k in last if k.startswith("val_"))


SIGTERM_SCRIPT = """
import json, sys, time
sys.path.insert(0, {tests!r})
import torch
from pathlib import Path
from test_e2e_trainer import TinyDetector, make_dataset, quick_solver
from nocdet.e2e.trainer import train_detector

class Slow(TinyDetector):
    def forward(self, images, targets=None):
        time.sleep(0.1)
        return super().forward(images, targets)

torch.set_num_threads(1)
data = make_dataset(Path({root!r}) / "images")
result = train_detector(Slow(), data, {root!r}, quick_solver(iterations=10000, checkpoint_every=10000),
                        progress=False)
print(json.dumps({{"interrupted": result.interrupted, "iterations": result.iterations}}))
"""


@pytest.mark.slow  # a subprocess importing torch: 10-20 s on a busy machine
def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path):
    script = SIGTERM_SCRIPT.format(tests=str(TESTS), root=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = tmp_path / "train" / "log.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["interrupted"] == "SIGTERM" and 2 <= result["iterations"] < 10000
    state = load_checkpoint(tmp_path / "train" / "checkpoint.pt")
    assert state["iteration"] == result["iterations"] == read_log(tmp_path)[-1]["iteration"]
    assert not (tmp_path / "train" / "final.pt").exists()


def test_float16_amp_needs_cuda(data, tmp_path):
    with pytest.raises(ConfigError, match="CUDA"):
        train_detector(TinyDetector(), data, tmp_path, quick_solver(amp="float16"), progress=False)
