"""Pre-training a backbone as a region classifier: our stand-in for ImageNet pre-training.

The paper's frozen-feature setting (Sec. 3) uses conv layers pre-trained on ImageNet and keeps
them fixed; its fine-tuned NoC (Sec. 3.4) starts its two fc layers from the pre-trained fc6/fc7.
ImageNet and its weights cannot be had here, so nocdet pre-trains the small CPU backbones on a
classification set it cuts, offline, from the TRAIN split of the detection data (the caller
passes that split; the test split must never be used):

- object crops: each non-difficult ground-truth box, jittered ``per_object`` times (random
  shift and rescaling, IoU >= 0.7 with the box), labelled with its class ``1..K``;
- background crops: ``backgrounds_per_image`` random boxes per image with IoU < 0.3 to every
  ground-truth box (half of them drawn near an object: digit fragments, neighbours), label 0.

A crop is the square around its box, enlarged by a random context factor, resized to
``crop_size``; the box is the region of interest inside it. The classifier then sees what the NoC
sees at detection time: trunk -> RoI max pooling of the box to m x m -> fc6 -> fc7 (the
backbone's own ``classifier``) -> fc (K+1 classes). A ResNet-like backbone without fc6/fc7 ends
with its res5 stage blocks (those a conv NoC reuses), global average pooling and the fc.

The weights file is a nocdet pre-training checkpoint, ``{"backbone": state_dict, "fc": ...,
"backbone_name": ..., "backbone_options": ..., "optimizer": ..., "epoch": ..., "iteration": ...}``:
exactly what ``build_backbone(name, weights=path, **options)`` loads (trunk, fc6/fc7, res5 blocks;
then ``fc67()`` gives the trained fc6/fc7), and what ``backbone.weights`` in an experiment config
points to. Training is a step function on :mod:`nocdet.training.engine` (one iteration: one
batch): the file is rewritten atomically after every epoch and when SIGINT/SIGTERM stops the run
inside an epoch (then with that epoch's batch order, random streams and losses), so an
interrupted run resumes bit for bit as a straight run with the same number of torch threads.

Defaults, measured on scene-digits (875 train images: 12.9k training crops, 1.45k held out, 11
classes) with ``small-zf``: 5 epochs, about 2 minutes on 2 idle CPU cores, about 87% held-out
accuracy. Longer runs gain little (~88-89% after 2-4x the steps): many of the remaining errors
are crops that are ambiguous by construction (digits half hidden or overlapping, background
boxes around a much smaller digit).
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, roi_pool
from tqdm import tqdm

from nocdet.data.images import load_image
from nocdet.data.sample import DetectionDataset
from nocdet.errors import ConfigError, DataError, NocdetError, TrainingError
from nocdet.features.backbones import Backbone
from nocdet.features.registry import build_backbone
from nocdet.training import engine
from nocdet.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nocdet.training.pretrain_settings import PretrainSettings
from nocdet.training.schedules import cosine_lr

CHECKPOINT_FORMAT = "nocdet-pretrain"
BACKGROUND = "__background__"
FG_IOU = 0.7  # an object crop's box overlaps its ground truth at least this much
BG_IOU = 0.3  # a background box overlaps every ground-truth box less than this
JITTER_SHIFT = 0.15  # object boxes move by up to this fraction of their width / height
JITTER_SCALE = 0.2  # ... and are rescaled by up to exp(+-0.2) in each direction
#: Out-of-image pixels: the ImageNet mean, zero after the small backbones' normalisation.
FILL = (124, 116, 104)
ROTATION, SCALING, SHIFT = 10.0, 1.1, 0.05  # augmentation: degrees, factor, fraction of the crop
_CANDIDATES = 64  # random boxes drawn per wanted box before giving up
_BAR_EVERY = 20  # batches between updates of the progress bar's loss


@dataclass
class ClassificationSet:
    """Crops with their class and their region of interest.

    Shapes: N crops of S x S pixels. ``labels`` are 0 (background) or the data set's ``1..K``;
    ``classes[label]`` is the name. ``boxes`` are the sampled boxes in image pixels, ``rois`` the
    same boxes in crop pixels, ``image_index`` the sample each crop comes from.
    """

    images: np.ndarray  # [N, S, S, 3] uint8 RGB
    labels: np.ndarray  # [N] int64
    rois: np.ndarray  # [N, 4] float32, crop pixels
    boxes: np.ndarray  # [N, 4] float32, image pixels
    image_index: np.ndarray  # [N] int64
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: np.ndarray) -> ClassificationSet:
        """The crops selected by a boolean mask or an index array."""
        return ClassificationSet(self.images[keep], self.labels[keep], self.rois[keep], self.boxes[keep],
                                 self.image_index[keep], list(self.classes))

    def fingerprint(self) -> str:
        """A digest of the content: a resumed run must train on the same crops."""
        digest = hashlib.sha1()
        for array in (self.images, self.labels, self.rois, self.boxes, self.image_index):
            digest.update(np.ascontiguousarray(array))
        digest.update("\n".join(self.classes).encode())
        return digest.hexdigest()


def make_classification_set(dataset: DetectionDataset, crop_size: int = 64, per_object: int = 4,
                            backgrounds_per_image: int = 4, seed: int = 0,
                            context: tuple[float, float] = (1.15, 1.5)) -> ClassificationSet:
    """Cut object and background crops from the images of ``dataset`` (module doc).

    ``context``: range of the factor by which a box's longer side is enlarged to the crop's side.
    Each image draws from its own generator seeded by ``(seed, index)``: the same seed gives the
    same crops. Difficult objects give no object crops but still count for the background IoU.
    """
    if crop_size < 16:
        raise ConfigError(f"crop_size must be at least 16 pixels, got {crop_size}")
    if per_object < 1 or backgrounds_per_image < 0:
        raise ConfigError(f"per_object must be >= 1 and backgrounds_per_image >= 0, "
                          f"got {per_object} and {backgrounds_per_image}")
    if not 1.0 <= context[0] <= context[1]:
        raise ConfigError(f"context must be a range (low, high) with 1 <= low <= high, got {context}")
    sizes = [s.boxes[~s.difficult, 2:] - s.boxes[~s.difficult, :2] for s in dataset.samples]
    sizes = np.concatenate(sizes) if sizes else np.zeros((0, 2), np.float32)
    if len(sizes) == 0:
        raise DataError(f"data set {dataset.name!r} has no non-difficult objects to pre-train on")
    parts: list[tuple[np.ndarray, ...]] = []
    for index, sample in enumerate(dataset.samples):
        rng = np.random.default_rng([seed, index])
        gt = sample.boxes.astype(np.float64)
        objects = _jittered(gt[~sample.difficult], per_object, rng, sample.width, sample.height)
        background = _background(gt, backgrounds_per_image, rng, sample.width, sample.height, sizes)
        boxes = np.concatenate([objects, background])
        if len(boxes) == 0:
            continue
        labels = np.concatenate([np.repeat(sample.labels[~sample.difficult], per_object),
                                 np.zeros(len(background), np.int64)])
        image = load_image(sample.path)
        if image.shape[:2] != (sample.height, sample.width):
            raise DataError(f"image is {image.shape[1]} x {image.shape[0]} pixels but its annotation says "
                            f"{sample.width} x {sample.height}", path=sample.path, record=f"image {sample.image_id}")
        crops, rois = _crops(image, boxes, rng.uniform(context[0], context[1], len(boxes)), crop_size)
        parts.append((crops, labels, rois, boxes, np.full(len(boxes), index, np.int64)))
    if not parts:
        raise DataError(f"data set {dataset.name!r} gives no crops")
    images, labels, rois, boxes, image_index = (np.concatenate(column) for column in zip(*parts))
    return ClassificationSet(images, labels, rois.astype(np.float32), boxes.astype(np.float32), image_index,
                             [BACKGROUND, *dataset.classes])


def _jittered(gt: np.ndarray, count: int, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """``count`` boxes near each box of ``gt`` [G, 4] with IoU >= FG_IOU to it, grouped by box.

    The box itself fills up the rare shortfalls.
    """
    if len(gt) == 0:
        return np.zeros((0, 4))
    n = _CANDIDATES * count
    size = gt[:, None, 2:] - gt[:, None, :2]  # [G, 1, 2]
    centre = (gt[:, None, :2] + gt[:, None, 2:]) / 2 + rng.uniform(-JITTER_SHIFT, JITTER_SHIFT, (len(gt), n, 2)) * size
    half = np.exp(rng.uniform(-JITTER_SCALE, JITTER_SCALE, (len(gt), n, 2))) * size / 2
    boxes = _clip(np.concatenate([centre - half, centre + half], 2), width, height)  # [G, n, 4]
    iou = box_iou(torch.from_numpy(boxes.reshape(-1, 4)), torch.from_numpy(gt)).numpy().reshape(len(gt), n, len(gt))
    chosen = []
    for g in range(len(gt)):
        good = boxes[g][iou[g, :, g] >= FG_IOU][:count]
        chosen.append(np.concatenate([good, np.repeat(gt[g:g + 1], count - len(good), 0)]))
    return np.concatenate(chosen)


def _background(gt: np.ndarray, count: int, rng: np.random.Generator, width: int, height: int,
                sizes: np.ndarray) -> np.ndarray:
    """Up to ``count`` boxes with IoU < BG_IOU to every box of ``gt``, sized like the objects."""
    n = _CANDIDATES * count
    size = sizes[rng.integers(len(sizes), size=n)] * np.exp(rng.uniform(-0.3, 0.3, (n, 1)))
    size = np.minimum(np.maximum(size, 4.0), (width, height))
    centre = rng.uniform(size / 2, (width, height) - size / 2)
    if len(gt):  # half of them next to an object: fragments and neighbours are the hard negatives
        near = rng.random(n) < 0.5
        anchor = gt[rng.integers(len(gt), size=n)]
        offset = rng.uniform(-1.2, 1.2, (n, 2)) * (anchor[:, 2:] - anchor[:, :2])
        centre = np.where(near[:, None], (anchor[:, :2] + anchor[:, 2:]) / 2 + offset, centre)
    boxes = _clip(np.concatenate([centre - size / 2, centre + size / 2], 1), width, height)
    keep = np.all(boxes[:, 2:] - boxes[:, :2] >= 2.0, axis=1)
    if len(gt):
        keep &= box_iou(torch.from_numpy(boxes), torch.from_numpy(gt)).amax(1).numpy() < BG_IOU
    return boxes[keep][:count]


def _clip(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.clip(boxes, 0.0, np.array([width, height, width, height], np.float64))


def _crops(image: np.ndarray, boxes: np.ndarray, context: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """For each box, the square of side ``context * longer side`` centred on it, resized to ``size``,
    and the box in that crop's pixels. Parts outside the image are FILL."""
    sides = np.maximum(2, np.round(context * (boxes[:, 2:] - boxes[:, :2]).max(1))).astype(int)
    corners = np.round((boxes[:, :2] + boxes[:, 2:]) / 2 - sides[:, None] / 2).astype(int)  # x0, y0
    margin = max(0, int(sides.max()))
    padded = cv2.copyMakeBorder(image, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=FILL)
    crops = np.empty((len(boxes), size, size, 3), np.uint8)
    for k, ((x0, y0), side) in enumerate(zip(corners, sides)):
        window = padded[y0 + margin:y0 + margin + side, x0 + margin:x0 + margin + side]
        crops[k] = cv2.resize(window, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)
    rois = (boxes - np.tile(corners, 2)) * (size / sides[:, None])
    return crops, rois


class RegionClassifier(nn.Module):
    """``(images [B, 3, S, S] normalised, rois [B, 4]) -> logits [B, K+1]``, one RoI per image.

    trunk -> RoI max pooling to ``roi_size`` (at 1/stride) -> fc6/fc7 (``backbone.classifier``)
    -> fc; without fc6/fc7: -> the backbone's stage blocks (res5) if any -> global average
    pooling -> fc. The fc6/fc7 and stage modules are the backbone's own, so training them trains
    what the checkpoint's backbone state holds.
    """

    def __init__(self, backbone: Backbone, num_outputs: int):
        super().__init__()
        self.backbone = backbone
        self.stage: nn.Module | None = None
        if backbone.classifier is not None:
            features = backbone.classifier[3].out_features
        elif backbone.stage_names():
            self.stage, features = backbone.stage(backbone.stage_names(), backbone.out_channels)
        else:
            features = backbone.out_channels
        self.fc = nn.Linear(features, num_outputs)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, images: Tensor, rois: Tensor) -> Tensor:
        features = self.backbone(images)
        index = torch.arange(len(rois), dtype=rois.dtype, device=rois.device)[:, None]
        pooled = roi_pool(features, torch.cat([index, rois], 1), self.backbone.roi_size, 1.0 / self.backbone.stride)
        if self.backbone.classifier is not None:
            return self.fc(self.backbone.classifier(pooled.flatten(1)))
        if self.stage is not None:
            pooled = self.stage(pooled)
        return self.fc(pooled.mean((2, 3)))


@dataclass
class PretrainResult:
    """``accuracy``: on the held-out crops after the last finished epoch; ``backbone``: the trained
    backbone (what ``path`` holds); ``epochs``: the finished epochs; ``interrupted``: the signal
    that stopped the run early (the checkpoint then holds the batches done so far)."""

    accuracy: float
    seconds: float
    epochs: int
    path: Path
    backbone: Backbone
    num_train: int
    num_heldout: int
    history: list[dict] = field(default_factory=list)
    interrupted: str | None = None


def pretrain(backbone_name: str, options: Mapping[str, object], dataset: DetectionDataset,
             out_path: str | Path, epochs: int = PretrainSettings.epochs,
             batch_size: int = PretrainSettings.batch_size, lr: float = PretrainSettings.lr,
             seed: int = PretrainSettings.seed, crop_size: int = PretrainSettings.crop_size, progress: bool = True,
             resume: bool = False, threads: int | None = None, **settings: object) -> PretrainResult:
    """Pre-train ``backbone_name`` (with ``options``) on crops of ``dataset``; write ``out_path``.

    ``dataset`` must be the train split. The images are split ``holdout`` / rest (by image, so
    no object is on both sides); training is SGD with momentum and a cosine learning rate after a
    short linear warm-up, with light augmentation; after every epoch the held-out accuracy is
    measured (printed when ``progress``; always in ``PretrainResult.history``) and the checkpoint
    rewritten atomically. ``resume=True`` continues from ``out_path``
    when it holds an unfinished run with the same settings. ``threads``: torch threads (default:
    the CPUs this process may use). ``settings``: the other fields of :class:`PretrainSettings`.
    SIGINT/SIGTERM stop the run after the current batch, which the checkpoint then holds.
    """
    unknown = sorted(set(settings) - set(PretrainSettings.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"unknown pre-training setting(s) {unknown}")
    config = PretrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, crop_size=crop_size,
                              **settings)  # type: ignore[arg-type]
    config.validate()
    _check_not_foreign(Path(out_path))
    if len(dataset) < 2:
        raise DataError(f"data set {dataset.name!r} has {len(dataset)} image(s); pre-training needs at least 2 "
                        "(some are held out to measure accuracy)")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or _available_cpus())
    try:
        return _train(backbone_name, dict(options), dataset, Path(out_path), config, progress, resume)
    finally:
        torch.set_num_threads(previous_threads)


def _train(backbone_name: str, options: dict, dataset: DetectionDataset, out_path: Path, config: PretrainSettings,
           progress: bool, resume: bool) -> PretrainResult:
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    backbone = build_backbone(backbone_name, **options)  # bad options fail before the crops are cut
    model = RegionClassifier(backbone, dataset.num_classes + 1)
    crops = make_classification_set(dataset, config.crop_size, config.per_object, config.backgrounds_per_image,
                                    config.seed, config.context)
    run = {"backbone": backbone_name, "options": options, **asdict(config), "data": crops.fingerprint()}
    classes = crops.classes
    num_heldout_images = max(1, round(config.holdout * len(dataset)))
    heldout_images = np.random.default_rng(config.seed).permutation(len(dataset))[:num_heldout_images]
    is_heldout = np.isin(crops.image_index, heldout_images)
    train, heldout = crops.subset(~is_heldout), crops.subset(is_heldout)
    del crops
    if len(train) == 0 or len(heldout) == 0:
        raise DataError(f"data set {dataset.name!r} gives {len(train)} training and {len(heldout)} held-out crops; "
                        "it needs more annotated images")

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    images = torch.from_numpy(train.images)  # [N, S, S, 3] uint8
    rois, labels = torch.from_numpy(train.rois), torch.from_numpy(train.labels)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = config.epochs * steps_per_epoch
    warmup = min(steps_per_epoch, max(1, total // 20))
    history: list[dict] = []
    epoch: _Epoch | None = None  # made at each epoch's first step, or by restore() inside an epoch

    def step(iteration: int) -> dict[str, float]:
        nonlocal epoch
        index, position = divmod(iteration, steps_per_epoch)
        if position == 0:
            epoch = _Epoch.start(config, len(train), index)
        assert epoch is not None
        batch = epoch.batches[position]
        x, boxes = _augment(_as_float(images[batch]), rois[batch], epoch.generator)
        loss = F.cross_entropy(model(backbone.normalize(x), boxes), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        epoch.losses.append(float(loss.detach()))
        return {"loss": epoch.losses[-1]}

    def validate() -> dict[str, float]:
        accuracy = evaluate_accuracy(model, heldout, batch_size=4 * config.batch_size)
        history.append({"epoch": epoch.index + 1, "loss": float(np.mean(epoch.losses)), "heldout_accuracy": accuracy})
        if progress:
            tqdm.write(f"epoch {epoch.index + 1}/{config.epochs}: loss {history[-1]['loss']:.3f}, "
                       f"held-out accuracy {accuracy:.2%} ({len(heldout)} crops)")
        return {"heldout_accuracy": accuracy}

    def save(done: int) -> None:
        inside = {"generator": epoch.generator.get_state(), "rng": rng_state(), "epoch_losses": epoch.losses} \
            if done % steps_per_epoch else {}
        save_checkpoint(out_path, {
            "format": CHECKPOINT_FORMAT, "backbone": backbone.state_dict(), "fc": model.fc.state_dict(),
            "backbone_name": backbone_name, "backbone_options": options, "classes": classes,
            "optimizer": optimizer.state_dict(), "epoch": len(history), "iteration": done, "config": run,
            "history": history, "accuracy": history[-1]["heldout_accuracy"] if history else None, **inside})

    def restore() -> int:
        nonlocal epoch
        if not out_path.exists():
            return 0
        state = load_checkpoint(out_path)
        _check_resumable(state, run, out_path)
        backbone.load_state_dict(state["backbone"])
        model.fc.load_state_dict(state["fc"])
        optimizer.load_state_dict(state["optimizer"])
        history[:] = state["history"]
        done = int(state.get("iteration", state["epoch"] * steps_per_epoch))
        index, position = divmod(done, steps_per_epoch)
        if position:  # stopped inside an epoch: continue its batch order and random streams
            epoch = _Epoch.start(config, len(train), index)
            epoch.generator.set_state(state["generator"])
            epoch.losses = list(state["epoch_losses"])
            set_rng_state(state["rng"])
        return done

    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    kept_p = [m.p for m in dropouts]
    for m in dropouts:
        m.p = config.dropout
    model.train()
    try:
        state = engine.train(step, iterations=total, optimizer=optimizer,
                             lr=lambda iteration: cosine_lr(config.lr, iteration, total, warmup),
                             checkpoints=engine.Checkpoints(out_path, save, restore, steps_per_epoch),
                             resume=resume, log_every=min(_BAR_EVERY, steps_per_epoch), validate=validate,
                             val_every=steps_per_epoch, progress=f"pretrain {backbone_name}" if progress else None)
    finally:
        for m, p in zip(dropouts, kept_p):
            m.p = p
    accuracy = history[-1]["heldout_accuracy"] if history else float("nan")
    return PretrainResult(accuracy, time.perf_counter() - t0, len(history), out_path, backbone, len(train),
                          len(heldout), history, state.stop)


@dataclass
class _Epoch:
    """One pass over the training crops: its batch order, the generator of its augmentation
    (both seeded by the epoch, so an epoch never depends on the ones before) and its losses."""

    index: int
    batches: list[Tensor]
    generator: torch.Generator
    losses: list[float] = field(default_factory=list)

    @staticmethod
    def start(config: PretrainSettings, size: int, index: int) -> _Epoch:
        """Epoch ``index`` of ``size`` crops; also seeds torch's global stream (dropout)."""
        generator = torch.Generator().manual_seed(_epoch_seed(config.seed, index))
        torch.manual_seed(_epoch_seed(config.seed, index))
        return _Epoch(index, list(torch.randperm(size, generator=generator).split(config.batch_size)), generator)


@torch.no_grad()
def evaluate_accuracy(model: RegionClassifier, crops: ClassificationSet, batch_size: int = 256) -> float:
    """Fraction of ``crops`` whose most likely class is their label (model in eval mode)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(crops), batch_size):
        images = _as_float(torch.from_numpy(crops.images[start:start + batch_size]))
        logits = model(model.backbone.normalize(images), torch.from_numpy(crops.rois[start:start + batch_size]))
        correct += int((logits.argmax(1) == torch.from_numpy(crops.labels[start:start + batch_size])).sum())
    model.train(was_training)
    return correct / len(crops)


def _as_float(images: Tensor) -> Tensor:
    """uint8 ``[B, S, S, 3]`` -> float ``[B, 3, S, S]`` in [0, 1]."""
    return images.permute(0, 3, 1, 2).contiguous().float().div_(255)


def _augment(images: Tensor, rois: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Light augmentation of RGB crops in [0, 1] ``[B, 3, S, S]`` and their RoIs ``[B, 4]``.

    A small random rotation, scaling and shift (the RoI follows: the box around its moved
    corners), then contrast, brightness and channel-order jitter. No flips: a mirrored digit is
    another digit, or none.
    """
    n, size = len(images), images.shape[-1]
    angle = torch.empty(n).uniform_(-ROTATION, ROTATION, generator=generator) * math.pi / 180
    scale = torch.empty(n).uniform_(1 / SCALING, SCALING, generator=generator)
    shift = torch.empty(n, 2).uniform_(-SHIFT, SHIFT, generator=generator) * 2  # of the normalised [-1, 1] side
    # affine_grid maps output to input points: p_in = A p_out + t (normalised coordinates)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    matrix = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # [B, 2, 2]
    theta = torch.cat([matrix, shift[:, :, None]], 2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    corners = rois[:, [[0, 1], [2, 1], [0, 3], [2, 3]]] / size * 2 - 1  # [B, 4 corners, 2]
    moved = torch.linalg.solve(matrix, (corners - shift[:, None]).transpose(1, 2)).transpose(1, 2)
    moved = ((moved + 1) / 2 * size).clamp(0, size)
    rois = torch.cat([moved.amin(1), moved.amax(1)], 1)

    contrast = torch.empty(n, 1, 1, 1).uniform_(0.7, 1.3, generator=generator)
    brightness = torch.empty(n, 1, 1, 1).uniform_(-0.1, 0.1, generator=generator)
    mean = images.mean((1, 2, 3), keepdim=True)
    images = ((images - mean) * contrast + mean + brightness).clamp_(0, 1)
    permute = torch.rand(n, generator=generator) < 0.5
    order = torch.stack([torch.randperm(3, generator=generator) for _ in range(n)])
    shuffled = images.gather(1, order[:, :, None, None].expand_as(images))
    return torch.where(permute[:, None, None, None], shuffled, images), rois


def _available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2 ** 63)


def _check_not_foreign(path: Path) -> None:
    """Refuse to write over a file that is not a pre-training checkpoint (a detector's model.pt, a
    backbone's weights, anything else): the run would destroy it without asking."""
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; --out names the weights file to write")
    if not path.exists():
        return
    try:
        state = load_checkpoint(path)
    except NocdetError:
        state = None
    if not isinstance(state, Mapping) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} exists and is not a nocdet pre-training checkpoint: pre-training would "
                          f"overwrite it; give another --out")


def _check_resumable(state: Mapping, config: dict, path: Path) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not a nocdet pre-training checkpoint; cannot resume from it")
    saved = state["config"]
    differ = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
    if differ:
        details = ", ".join(f"{k}: {saved.get(k)!r} in the checkpoint vs {config.get(k)!r} now"
                            for k in differ if k != "data")
        if "data" in differ:
            details = ", ".join(filter(None, [details, "the crops (data set or crop settings) differ"]))
        raise ConfigError(f"cannot resume from {path}: {details}; run without resume to start over")
