"""The SGD solver of end-to-end Faster R-CNN training (paper Sec. 4): schedule and optimizer for
the ``solver`` section (:class:`~nocdet.training.solver_config.SolverConfig`, where the settings
and the end-to-end defaults are described).
"""
from __future__ import annotations

import torch
from torch import nn

from nocdet.errors import ConfigError
from nocdet.training.schedules import step_lr
from nocdet.training.solver_config import SolverConfig

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def learning_rate(config: SolverConfig, iteration: int) -> float:
    """Learning rate of 0-based ``iteration``: linear warm-up, then ``lr * gamma^(steps passed)``.

    During warm-up the factor goes linearly from ``warmup_factor`` (iteration 0) towards 1
    (reached at ``warmup_iterations``), multiplying the step schedule (Detectron2's WarmupMultiStepLR).
    """
    return step_lr(config.lr, iteration, config.lr_steps, config.lr_gamma, config.warmup_iterations,
                   config.warmup_factor)


def parameter_groups(model: nn.Module, config: SolverConfig) -> list[dict]:
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


def build_optimizer(model: nn.Module, config: SolverConfig) -> torch.optim.SGD:
    """SGD with momentum over :func:`parameter_groups`; the trainer sets the lr every iteration."""
    groups = parameter_groups(model, config)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    return torch.optim.SGD(groups, lr=learning_rate(config, 0), momentum=config.momentum)
