"""SGD training of a NoC on the RoI feature cache (frozen-feature setting, paper Sec. 3).

Mini-batches come from :class:`~nocdet.training.roi_sampler.RoISampler`; the loss is the
(n+1)-way softmax cross-entropy. SGD with momentum, weight decay and a step schedule; a held-out
validation loss every ``val_every`` iterations. The loop is :mod:`nocdet.training.engine`'s (log,
checkpoints every ``checkpoint_every`` iterations and on SIGINT/SIGTERM, NaN guard, progress)
with :mod:`nocdet.training.tracking`'s ``log.csv``, TensorBoard events and ``best.pt`` (the head at
the lowest validation loss); this module is its step function and the state a checkpoint holds (model, optimizer, sampler and
RNG state), so a resumed run continues exactly.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nocdet.features.roi_cache import RoIFeatureCache
from nocdet.training import engine
from nocdet.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nocdet.training.roi_sampler import Pathways, RoIBatch, RoISampler, SamplingConfig
from nocdet.training.schedules import step_lr
from nocdet.training.solver_config import SolverConfig, autocast_dtype
from nocdet.training.tracking import Best, tracking_hooks


@dataclass
class TrainResult:
    iterations: int
    train_loss: float
    val_loss: float | None
    seconds: float
    interrupted: str | None = None
    best: Best | None = None
    """What ``best.pt`` holds (None: no validation was run)."""


def learning_rate(config: SolverConfig, iteration: int) -> float:
    """Step schedule: ``lr * gamma^(number of steps passed)``."""
    return step_lr(config.lr, iteration, config.lr_steps, config.lr_gamma)


def _forward_loss(head: torch.nn.Module, batch: RoIBatch, autocast_to: torch.dtype | None = None) -> torch.Tensor:
    """The softmax loss of ``batch``; its forward pass autocast to ``autocast_to`` (None: fp32)."""
    device = next(head.parameters()).device
    inputs = [x.to(device, non_blocking=True) for x in batch.inputs]
    with torch.autocast(device.type, dtype=autocast_to, enabled=autocast_to is not None):
        logits = head(inputs if len(inputs) == 2 else inputs[0]).logits
    return F.cross_entropy(logits.float(), batch.labels.to(device))


@torch.no_grad()
def validation_loss(head: torch.nn.Module, cache: RoIFeatureCache, sampling: SamplingConfig, pathways: Pathways,
                    batches: int, seed: int = 12345) -> float:
    """Mean loss over a fixed set of validation batches (training's RoI sampling at the test-time levels)."""
    was_training = head.training
    head.eval()
    state = torch.get_rng_state()
    sampler = RoISampler(cache, sampling, seed, pathways.at_test)  # validation: no jitter
    losses = [float(_forward_loss(head, sampler.next())) for _ in range(batches)]
    torch.set_rng_state(state)
    head.train(was_training)
    return float(np.mean(losses))


def train_noc(head: torch.nn.Module, train_cache: RoIFeatureCache, out_dir: str | Path, *,
              sampling: SamplingConfig, solver: SolverConfig, pathways: Pathways, seed: int,
              val_cache: RoIFeatureCache | None = None, resume: bool = False,
              progress: bool = True) -> TrainResult:
    """Train ``head`` in place; checkpoints and logs go to ``out_dir`` (module doc)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    torch.manual_seed(seed)
    sampler = RoISampler(train_cache, sampling, seed, pathways)
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=solver.lr, momentum=solver.momentum, weight_decay=solver.weight_decay)
    autocast_to = autocast_dtype(solver.amp, str(next(head.parameters()).device))

    def step(_iteration: int) -> dict[str, float]:
        loss = _forward_loss(head, sampler.next(), autocast_to)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach())}

    def save(iteration: int) -> None:
        save_checkpoint(ckpt_path, {"model": head.state_dict(), "optimizer": optimizer.state_dict(),
                                    "sampler": sampler.state_dict(), "rng": rng_state(), "iteration": iteration,
                                    "solver": asdict(solver), "sampling": asdict(sampling)})

    def restore() -> int:
        if not ckpt_path.exists():
            return 0
        state = load_checkpoint(ckpt_path)
        head.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        return int(state["iteration"])

    def validate(cache: RoIFeatureCache) -> dict[str, float]:
        return {"loss": validation_loss(head, cache, sampling, pathways, solver.val_batches)}

    tracking, best = tracking_hooks(out_dir, out_dir / "log.jsonl", lambda: {"model": head.state_dict()})
    head.train()
    state = engine.train(step, iterations=solver.iterations, optimizer=optimizer,
                         lr=functools.partial(learning_rate, solver),
                         checkpoints=engine.Checkpoints(ckpt_path, save, restore, solver.checkpoint_every),
                         resume=resume, log=out_dir / "log.jsonl", log_every=solver.log_every,
                         validate=None if val_cache is None else functools.partial(validate, val_cache),
                         val_every=solver.val_every, progress="train NoC" if progress else None,
                         hooks=tracking)
    return TrainResult(state.iteration, state.mean_losses.get("loss", float("nan")),
                       (state.validation or {}).get("loss"), state.seconds, state.stop, best.best)
