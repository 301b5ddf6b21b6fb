"""The SGD solver of end-to-end Faster R-CNN training (paper Sec. 4): settings, schedule, optimizer.

The paper trains with "the same hyper-parameters as Faster R-CNN on MS COCO": SGD with momentum
0.9, a step schedule (lr 0.003 for 240k iterations, then 0.0003 for 80k, on 8 GPUs with one
image each) and weight decay 1e-4 for ResNets. The defaults below are that schedule; a linear
warm-up (Goyal et al., as in Detectron) is added because a randomly initialised NoC on a
pretrained trunk otherwise diverges easily at the start with larger batches.

``images_per_batch`` and ``lr`` describe the *global* batch: under ``torchrun`` each of the W
processes gets ``images_per_batch / W`` images of every batch, and gradients are averaged, so a
run on W processes follows the same trajectory as a single process with the whole batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from nocdet.config import bounded, check_bounds
from nocdet.errors import ConfigError
from nocdet.training.schedules import step_lr

AMP_MODES = ("none", "bfloat16", "float16")
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass
class E2ESolverConfig:
    """Settings of end-to-end training; ``validate`` checks them."""

    iterations: int = bounded(320000, ge=1)
    """Number of SGD iterations (global batches)."""
    images_per_batch: int = bounded(8, ge=1)
    """Global batch size in images, split evenly over the processes."""
    lr: float = bounded(0.003, gt=0)
    """Base learning rate for the global batch (scale it linearly with ``images_per_batch``)."""
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(1e-4, ge=0)
    """L2 weight decay of weights (conv / fc kernels)."""
    weight_decay_norm: float = bounded(0.0, ge=0)
    """Weight decay of biases and normalisation-layer parameters (BN/GN/LN scales and shifts).
    0 as in Detectron2 and the torchvision references: decaying them only shrinks the scale of
    activations and fights the normalisation; frozen BN (torchvision's default) has none anyway."""
    warmup_iterations: int = bounded(500, ge=0)
    """Iterations of linear warm-up from ``lr * warmup_factor`` to ``lr`` (0 = none)."""
    warmup_factor: float = bounded(1.0 / 3.0, gt=0, le=1)
    lr_steps: list[int] = bounded(default_factory=lambda: [240000], gt=0)
    """Iterations at which the learning rate is multiplied by ``lr_gamma``. Steps at or beyond
    ``iterations`` are allowed (never reached), so a run can be stopped early and extended later."""
    lr_gamma: float = bounded(0.1, gt=0, le=1)
    clip_grad_norm: float | None = bounded(None, gt=0)
    """Clip the global gradient norm to this value (None = no clipping)."""
    amp: Literal["none", "bfloat16", "float16"] = "none"
    """Mixed precision on CUDA: autocast to this type; float16 also uses a gradient scaler."""
    flip: bool = True
    """Random horizontal flips (probability 0.5, seeded per epoch and image)."""
    aspect_ratio_grouping: bool = True
    """Batch wide (W >= H) and tall images separately, so padding to a common size wastes little."""
    checkpoint_every: int = bounded(5000, ge=1)
    log_every: int = bounded(20, ge=1)
    val_every: int = bounded(0, ge=0)
    """Validation loss and metric every this many iterations (0 = only at the end)."""
    val_images: int = bounded(500, ge=0)
    """Validate on at most this many images of the validation set (its first ones; 0 = all)."""
    workers: int = bounded(2, ge=0)
    """DataLoader worker processes per training process (0 = load in the main process)."""
    ddp_find_unused_parameters: bool = False
    """Passed to DistributedDataParallel; set it when some parameters get no gradient."""

    def validate(self) -> "E2ESolverConfig":
        """Raise :class:`ConfigError` on settings that cannot be meant (the fields' bounds, then the
        rules between fields); return self."""
        check_bounds(self, "solver")
        if any(b <= a for a, b in zip(self.lr_steps, self.lr_steps[1:])):
            raise ConfigError(f"solver.lr_steps must increase strictly, got {self.lr_steps}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"solver.amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        return self


def learning_rate(config: E2ESolverConfig, iteration: int) -> float:
    """Learning rate of 0-based ``iteration``: linear warm-up, then ``lr * gamma^(steps passed)``.

    During warm-up the factor goes linearly from ``warmup_factor`` (iteration 0) towards 1
    (reached at ``warmup_iterations``), multiplying the step schedule (Detectron2's WarmupMultiStepLR).
    """
    return step_lr(config.lr, iteration, config.lr_steps, config.lr_gamma, config.warmup_iterations,
                   config.warmup_factor)


def parameter_groups(model: nn.Module, config: E2ESolverConfig) -> list[dict]:
    """Trainable parameters in two groups: kernels (``weight_decay``), and biases plus
    normalisation-layer parameters (``weight_decay_norm``). Shared parameters appear once."""
    seen: set[int] = set()
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if isinstance(module, _NORM_LAYERS) or name == "bias" else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": config.weight_decay_norm}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, config: E2ESolverConfig) -> torch.optim.SGD:
    """SGD with momentum over :func:`parameter_groups`; the trainer sets the lr every iteration."""
    groups = parameter_groups(model, config)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    return torch.optim.SGD(groups, lr=learning_rate(config, 0), momentum=config.momentum)
