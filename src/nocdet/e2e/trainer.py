"""End-to-end training of a Faster R-CNN style detector (paper Sec. 4), on one or many processes.

The model follows torchvision's GeneralizedRCNN contract: ``model(images, targets)`` returns a
dict of losses in train mode, ``model(images)`` a list of ``{"boxes", "labels", "scores"}`` in
eval mode. SGD with warm-up and steps (:mod:`nocdet.e2e.solver`); batches from
:class:`~nocdet.e2e.data.GroupedBatchSampler`. The loop is :mod:`nocdet.training.engine`'s; this
module is its step function (DDP included) and the state a checkpoint holds. Everything goes to
``run_dir/train/``:

* ``log.jsonl``: every ``log_every`` iterations the window means of each loss and of their sum
  (``loss``), ``lr``, ``seconds`` and ``seconds_per_iteration``; at validation points ``val_loss``,
  ``val_<loss name>`` and ``val_<metric>`` (e.g. ``val_voc07_mAP``);
* ``checkpoint.pt``: every ``checkpoint_every`` iterations, at the end and on SIGINT/SIGTERM,
  written atomically: model, optimizer, gradient scaler, iteration, sampler state, the RNG
  states (torch, CUDA, numpy, python) of every process and ``extra_state``. ``resume=True``
  continues exactly: the same batches, flips and random RoI samples as an uninterrupted run
  (same number of processes needed for the RNG streams to match);
* ``final.pt``: ``{"model": state_dict, "iteration", "extra_state"}`` when training completes;
* ``log.csv``, ``tb/`` (with the ``tensorboard`` package) and ``best.pt`` (as ``final.pt``, at
  the highest validation mAP, or the lowest validation loss without a metric):
  :mod:`nocdet.training.tracking`.

A non-finite loss stops training with a :class:`TrainingError` naming the iteration and the loss
term; the last good checkpoint is kept.

Validation loss: ``model.compute_losses(images, targets)`` in eval mode when the model has it;
otherwise the model is called in train mode under ``no_grad`` with BatchNorm and Dropout layers
in eval mode (their statistics untouched). Either way it runs under a forked, fixed-seed RNG, so
validating neither perturbs training nor makes successive val losses incomparable.

Several processes (``torchrun``): when ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` are set, the
process group is initialised (NCCL on CUDA, gloo on CPU), the model is wrapped in
DistributedDataParallel, each process trains on its ``images_per_batch / WORLD_SIZE`` images of
every global batch, logged losses are averaged over processes, and only rank 0 writes logs,
checkpoints and final weights (the others wait at a barrier). Rank 0 reads a checkpoint on
resume and broadcasts it, so no shared file system is needed. Validation loss is computed on
all processes (images sharded), the validation metric on rank 0 alone. Exact resume needs the
same number of processes (each keeps its own random streams). One machine with 8 GPUs::

    torchrun --standalone --nproc_per_node 8 -m nocdet train CONFIG --device cuda

Two machines with 8 GPUs each: run on both, with ``--node_rank 0`` on the machine called MASTER
and ``--node_rank 1`` on the other (the run folder holds rank 0's files)::

    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr MASTER --master_port 29500 \\
             -m nocdet train CONFIG --device cuda

``images_per_batch`` and ``lr`` are global: the same config gives the same training on 1 or 16
processes (as long as ``images_per_batch`` is a multiple of the number of processes).
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import os
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from nocdet.data.sample import DetectionDataset, Detections
from nocdet.e2e.data import DetectionImages, GroupedBatchSampler, aspect_groups, collate
from nocdet.e2e.solver import build_optimizer, learning_rate
from nocdet.errors import ConfigError
from nocdet.training import engine
from nocdet.training.checkpoint import StopSignals, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nocdet.training.solver_config import SolverConfig, autocast_dtype
from nocdet.training.tracking import Best, tracking_hooks

Batch = tuple[list[Tensor], list[dict[str, Tensor]]]


@dataclass
class TrainResult:
    """How training ended: ``losses`` are the means over the last loss window (``loss`` = their
    sum; when a signal stopped the run, over the iterations since the last log point)."""

    iterations: int
    losses: dict[str, float]
    val_losses: dict[str, float] | None
    val_metrics: dict[str, Any] | None
    seconds: float
    interrupted: str | None = None
    final: Path | None = None
    best: Best | None = None


@dataclass
class _World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_world(device: str) -> tuple[_World, torch.device]:
    """Join the torchrun process group when launched by torchrun; pick this process's device.

    The group is created once per process and kept for later calls (a second training, an
    evaluation), then destroyed at exit: destroying and re-creating it would reuse the launcher's
    store under the same key prefix, where the other process may still read the old group's keys.
    """
    dev = torch.device(device)
    if not all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")) and not dist.is_initialized():
        return _World(), dev
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        atexit.register(_leave_group)
    return _World(dist.get_rank(), dist.get_world_size(), local_rank), dev


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _to_device(batch: Batch, device: torch.device) -> Batch:
    images, targets = batch
    return ([im.to(device, non_blocking=True) for im in images],
            [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets])


def _subset(dataset: DetectionDataset, cap: int) -> DetectionDataset:
    if cap <= 0 or cap >= len(dataset):
        return dataset
    return dataclasses.replace(dataset, samples=dataset.samples[:cap])


def _batches(dataset: DetectionDataset, indices: list[int], batch_size: int, drop_difficult: bool):
    items = DetectionImages(dataset, drop_difficult=drop_difficult)
    for start in range(0, len(indices), batch_size):
        yield collate([items[i] for i in indices[start:start + batch_size]])


@torch.no_grad()
def validation_loss(model: nn.Module, dataset: DetectionDataset, *, batch_size: int = 2, seed: int = 0,
                    rank: int = 0, world_size: int = 1) -> dict[str, float]:
    """Image-weighted mean of each loss term (and their sum, ``loss``) over ``dataset``.

    With several processes each takes images ``rank::world_size`` and the sums are gathered.
    Uses ``model.compute_losses`` (eval mode) when present, otherwise train mode with BatchNorm
    and Dropout in eval mode; the global RNG is forked and seeded, so the result is repeatable.
    """
    device = next(model.parameters()).device
    was_training = model.training
    if hasattr(model, "compute_losses"):
        model.eval()
        losses_of = model.compute_losses
    else:
        model.train()
        for module in model.modules():
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
                module.eval()
        losses_of = model
    sums: dict[str, float] = {}
    count = 0
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            indices = list(range(rank, len(dataset), world_size))
            for batch in _batches(dataset, indices, batch_size, drop_difficult=True):
                images, targets = _to_device(batch, device)
                for name, value in losses_of(images, targets).items():
                    sums[name] = sums.get(name, 0.0) + float(value) * len(images)
                count += len(images)
    finally:
        model.train(was_training)
    if world_size > 1:
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, (sums, count))
        sums, count = {}, 0
        for part, n in gathered:
            for name, value in part.items():
                sums[name] = sums.get(name, 0.0) + value
            count += n
    if count == 0:
        return {}
    means = {name: value / count for name, value in sums.items()}
    return {"loss": sum(means.values()), **means}


@torch.no_grad()
def evaluate_detector(model: nn.Module, dataset: DetectionDataset, metric: str = "voc07", *,
                      batch_size: int = 2, progress: bool = False) -> dict[str, Any]:
    """Detect on every image of ``dataset`` in eval mode and score with nocdet's evaluators.

    ``metric``: ``"voc07"`` (11-point) or ``"voc"`` (area) -> ``{"<metric>_mAP": ...}``;
    ``"coco"`` -> ``{"coco_AP": ..., "coco_AP50": ..., "coco_AP75": ...}``.
    """
    from nocdet.evaluation.coco import evaluate_coco
    from nocdet.evaluation.voc import METRICS, evaluate_voc

    if metric not in (*METRICS, "coco"):
        raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join((*METRICS, 'coco'))}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    detections = []
    try:
        indices = list(range(len(dataset)))
        batches = _batches(dataset, indices, batch_size, drop_difficult=False)
        for start, (images, _) in zip(tqdm(range(0, len(indices), batch_size), desc="evaluate",
                                           unit="batch", disable=not progress), batches):
            outputs = model([im.to(device) for im in images])
            for sample, out in zip(dataset.samples[start:start + batch_size], outputs):
                detections.append(Detections(sample.image_id, out["boxes"].float().cpu().numpy(),
                                             out["scores"].float().cpu().numpy(), out["labels"].cpu().numpy()))
    finally:
        model.train(was_training)
    if metric == "coco":
        stats = evaluate_coco(dataset, detections)
        return {f"coco_{k}": stats[k] for k in ("AP", "AP50", "AP75")}
    return {f"{metric}_mAP": evaluate_voc(dataset, detections, metric).mAP}


def train_detector(model: nn.Module, train: DetectionDataset, run_dir: str | Path, solver: SolverConfig, *,
                   val: DetectionDataset | None = None,
                   evaluate: Callable[[nn.Module, DetectionDataset], dict[str, Any]] | None = evaluate_detector,
                   resume: bool = False, device: str = "cpu", seed: int = 0, progress: bool = True,
                   extra_state: dict[str, Any] | None = None,
                   stop_signals: StopSignals | None = None) -> TrainResult:
    """Train ``model`` in place on ``train``; see the module docstring for files and semantics.

    ``val``: validation loss and ``evaluate(model, val)`` metrics every ``solver.val_every``
    iterations and at the end, on at most ``solver.val_images`` images (``evaluate=None``: loss
    only). ``stop_signals``: an active :class:`StopSignals` of the caller (default: one of our own).
    """
    if solver.images_per_batch is None:
        raise ConfigError("train_detector needs the solver section of an end-to-end config (setting: e2e)")
    world, dev = _init_world(device)
    with contextlib.nullcontext(stop_signals) if stop_signals is not None else StopSignals() as stop:
        return _train(model, train, Path(run_dir), solver, val, evaluate, resume, dev, seed, progress,
                      extra_state or {}, stop, world)


def _train(model: nn.Module, train: DetectionDataset, run_dir: Path, solver: SolverConfig,
           val: DetectionDataset | None, evaluate: Callable | None, resume: bool, dev: torch.device, seed: int,
           progress: bool, extra_state: dict[str, Any], stop: StopSignals, world: _World) -> TrainResult:
    autocast_to = autocast_dtype(solver.amp, str(dev))
    out = run_dir / "train"
    ckpt_path, final_path = out / "checkpoint.pt", out / "final.pt"
    if world.main:
        out.mkdir(parents=True, exist_ok=True)
    _seed_all(seed + world.rank)
    model.to(dev)
    optimizer = build_optimizer(model, solver)
    scaler = torch.amp.GradScaler(dev.type, enabled=solver.amp == "float16")
    sampler = GroupedBatchSampler(len(train), solver.images_per_batch, seed=seed, flip=solver.flip,
                                  groups=aspect_groups(train) if solver.aspect_ratio_grouping else None,
                                  rank=world.rank, world_size=world.size)
    net = model
    if world.size > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=solver.ddp_find_unused_parameters)
    loader = torch.utils.data.DataLoader(
        DetectionImages(train), batch_sampler=sampler, collate_fn=collate, num_workers=solver.workers,
        pin_memory=dev.type == "cuda", generator=torch.Generator().manual_seed(seed))  # keeps global RNG untouched
    batches: Iterator[Batch] | None = None  # opened at the first step, after a resume restored the sampler
    stopping: str | None = None  # the stop agreed by all processes at the latest step

    def step(_iteration: int) -> dict[str, float]:
        nonlocal batches, stopping
        if batches is None:
            batches = iter(loader)
        images, targets = _to_device(next(batches), dev)
        with torch.autocast(dev.type, dtype=autocast_to, enabled=autocast_to is not None):
            losses = net(images, targets)
        # one reduction per iteration: the losses for the log and the NaN check, and the stop
        # flag, so that every process stops at the same iteration
        values = torch.stack([v.detach().float() for v in losses.values()]
                             + [torch.tensor(float(stop.requested is not None), device=dev)])
        if world.size > 1:
            dist.all_reduce(values)
            values /= world.size
        *terms, flag = values.tolist()
        # a signal arriving later in this iteration is seen at the next one
        stopping = (stop.requested or "signal on another process") if flag > 0 else None
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(sum(losses.values())).backward()
        if solver.clip_grad_norm is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                     solver.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        return dict(zip(losses, terms))

    def save(done: int) -> None:
        rng = [rng_state(dev)]
        if world.size > 1:
            rng = [None] * world.size
            dist.all_gather_object(rng, rng_state(dev))
        if world.main:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "iteration": done, "sampler": sampler.state_dict(done), "rng": rng, "world_size": world.size,
                "seed": seed, "solver": dataclasses.asdict(solver), "extra_state": extra_state})
        if world.size > 1:
            dist.barrier()

    def restore() -> int:
        state = load_checkpoint(ckpt_path) if world.main and ckpt_path.exists() else None
        if world.size > 1:
            box = [state]
            dist.broadcast_object_list(box, src=0)
            state = box[0]
        if state is None:
            return 0
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when saved without float16 AMP
            scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        start = int(state["iteration"])
        if state["world_size"] == world.size:
            set_rng_state(state["rng"][world.rank], dev)
        else:
            warnings.warn(f"resuming on {world.size} processes a run checkpointed on {state['world_size']}: "
                          "random streams are re-seeded, the continuation is not bit-exact", stacklevel=2)
            _seed_all(seed + world.rank + 7919 * start)
        return start

    validated: dict[str, Any] = {}

    def validate(dataset: DetectionDataset) -> dict[str, Any]:
        subset = _subset(dataset, solver.val_images)
        validated["losses"] = validation_loss(model, subset, batch_size=max(1, solver.images_per_batch // world.size),
                                              seed=seed, rank=world.rank, world_size=world.size)
        validated["metrics"] = dict(evaluate(model, subset)) if evaluate is not None and world.main else {}
        if world.size > 1:
            dist.barrier()
        model.train()
        return {**validated["losses"], **validated["metrics"]}

    tracking, best = tracking_hooks(out, out / "log.jsonl", lambda: {
        "model": model.state_dict(), "extra_state": extra_state}) if world.main else ([], None)
    model.train()
    state = engine.train(step, iterations=solver.iterations, optimizer=optimizer,
                         lr=functools.partial(learning_rate, solver),
                         checkpoints=engine.Checkpoints(ckpt_path, save, restore, solver.checkpoint_every),
                         resume=resume, log=out / "log.jsonl" if world.main else None, log_every=solver.log_every,
                         validate=None if val is None else functools.partial(validate, val),
                         val_every=solver.val_every, progress="train detector" if progress and world.main else None,
                         signals=stop, stop_requested=lambda: stopping,
                         advice="try a lower learning rate or gradient clipping", hooks=tracking)
    final = None
    if state.stop is None:
        if world.main:
            save_checkpoint(final_path, {"model": model.state_dict(), "iteration": state.iteration,
                                         "extra_state": extra_state})
            final = final_path
        if world.size > 1:
            dist.barrier()
    return TrainResult(state.iteration, state.mean_losses, validated.get("losses"), validated.get("metrics"),
                       state.seconds, state.stop, final, best.best if best else None)
