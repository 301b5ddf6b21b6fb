"""SGD training of a NoC on the RoI feature cache (frozen-feature setting, paper Sec. 3).

Mini-batches come from :class:`~nocdet.training.roi_sampler.RoISampler`; the loss is the
(n+1)-way softmax cross-entropy. SGD with momentum, weight decay and a step schedule; a held-out
validation loss every ``val_every`` iterations; JSON-lines logs; checkpoints every
``checkpoint_every`` iterations and on SIGINT/SIGTERM, written atomically; a resumed run continues
exactly (model, optimizer, sampler and RNG state). A non-finite loss stops training with a
message naming the iteration, keeping the last good checkpoint.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nocdet.config import bounded
from nocdet.errors import TrainingError
from nocdet.features.roi_cache import RoIFeatureCache
from nocdet.training.checkpoint import StopSignals, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nocdet.training.roi_sampler import Pathways, RoIBatch, RoISampler, SamplingConfig
from nocdet.training.run_log import RunLog
from nocdet.training.schedules import step_lr


@dataclass
class SolverConfig:
    iterations: int = bounded(4000, ge=0)  # 0: no SGD (SVMs on the RoI features, Table 1)
    lr: float = bounded(0.01, gt=0)
    lr_steps: list[int] = bounded(default_factory=lambda: [3000], gt=0)
    lr_gamma: float = bounded(0.1, gt=0, le=1)
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(5e-4, ge=0)
    checkpoint_every: int = bounded(1000, ge=1)
    val_every: int = bounded(500, ge=1)
    val_batches: int = bounded(20, ge=1)
    log_every: int = bounded(50, ge=1)


@dataclass
class TrainResult:
    iterations: int
    train_loss: float
    val_loss: float | None
    seconds: float
    interrupted: str | None = None


def learning_rate(config: SolverConfig, iteration: int) -> float:
    """Step schedule: ``lr * gamma^(number of steps passed)``."""
    return step_lr(config.lr, iteration, config.lr_steps, config.lr_gamma)


def _forward_loss(head: torch.nn.Module, batch: RoIBatch) -> torch.Tensor:
    device = next(head.parameters()).device
    inputs = [x.to(device, non_blocking=True) for x in batch.inputs]
    return F.cross_entropy(head(inputs if len(inputs) == 2 else inputs[0]).logits, batch.labels.to(device))


@torch.no_grad()
def validation_loss(head: torch.nn.Module, cache: RoIFeatureCache, sampling: SamplingConfig, pathways: Pathways,
                    batches: int, seed: int = 12345) -> float:
    """Mean loss over a fixed set of validation batches (same sampling as training)."""
    was_training = head.training
    head.eval()
    state = torch.get_rng_state()
    sampler = RoISampler(cache, sampling, seed, Pathways.BEST if pathways == Pathways.RANDOM else pathways)
    losses = [float(_forward_loss(head, sampler.next())) for _ in range(batches)]
    torch.set_rng_state(state)
    head.train(was_training)
    return float(np.mean(losses))


def train_noc(head: torch.nn.Module, train_cache: RoIFeatureCache, out_dir: str | Path, *,
              sampling: SamplingConfig, solver: SolverConfig, pathways: Pathways, seed: int,
              val_cache: RoIFeatureCache | None = None, resume: bool = False,
              progress: bool = True) -> TrainResult:
    """Train ``head`` in place; checkpoints and ``log.jsonl`` go to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    torch.manual_seed(seed)
    sampler = RoISampler(train_cache, sampling, seed, pathways)
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=solver.lr, momentum=solver.momentum, weight_decay=solver.weight_decay)
    start = 0
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        head.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        start = int(state["iteration"])

    def checkpoint(iteration: int) -> None:
        save_checkpoint(ckpt_path, {"model": head.state_dict(), "optimizer": optimizer.state_dict(),
                                    "sampler": sampler.state_dict(), "rng": rng_state(), "iteration": iteration,
                                    "solver": asdict(solver), "sampling": asdict(sampling)})

    head.train()
    log = RunLog(out_dir / "log.jsonl", start)
    t0 = time.perf_counter()
    recent: list[float] = []
    last_logged = float("nan")
    val_loss = None
    interrupted = None
    iteration = start
    bar = tqdm(range(start, solver.iterations), desc="train NoC", unit="it", disable=not progress,
               initial=start, total=solver.iterations)
    with StopSignals() as stop:
        for iteration in bar:
            lr = learning_rate(solver, iteration)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = _forward_loss(head, sampler.next())
            value = float(loss.detach())
            if not math.isfinite(value):
                log.close()
                kept = f"the last good checkpoint {ckpt_path} is kept" if ckpt_path.exists() else "no checkpoint was written yet"
                raise TrainingError(f"iteration {iteration + 1}: loss is {value} (non-finite); "
                                    f"training stopped, {kept}; try a lower learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            recent.append(value)
            done = iteration + 1
            record = None
            if done % solver.log_every == 0 or done == solver.iterations:
                record = {"iteration": done, "loss": float(np.mean(recent)), "lr": lr,
                          "seconds": round(time.perf_counter() - t0, 3)}
                bar.set_postfix(loss=f"{record['loss']:.3f}")
            if val_cache is not None and (done % solver.val_every == 0 or done == solver.iterations):
                val_loss = validation_loss(head, val_cache, sampling, pathways, solver.val_batches)
                record = {**(record or {"iteration": done}), "val_loss": val_loss}
            if record is not None:
                log.write(record)
            if "loss" in (record or {}):
                last_logged, recent = record["loss"], []
            if done % solver.checkpoint_every == 0 or done == solver.iterations:
                checkpoint(done)
            if stop.requested:
                checkpoint(done)
                interrupted = stop.requested
                iteration = done
                break
        else:
            iteration = solver.iterations
    log.close()
    last = float(np.mean(recent)) if recent else last_logged
    return TrainResult(iteration, last, val_loss, time.perf_counter() - t0, interrupted)
