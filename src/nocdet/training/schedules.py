"""Learning-rate schedules of every trainer: the step schedule of SPPnet / Fast R-CNN (with
Detectron2's linear warm-up, the end-to-end setting) and the cosine schedule of pre-training.
Iterations are 0-based; each function gives the rate of one iteration."""
from __future__ import annotations

import math
from collections.abc import Sequence


def step_lr(base: float, iteration: int, steps: Sequence[int], gamma: float, warmup_iterations: int = 0,
            warmup_factor: float = 1.0) -> float:
    """``base * gamma^(steps passed)``; during warm-up times a factor going linearly from
    ``warmup_factor`` (iteration 0) towards 1 (reached at ``warmup_iterations``)."""
    rate = base * gamma ** sum(iteration >= s for s in steps)
    if iteration < warmup_iterations:
        alpha = iteration / warmup_iterations
        rate *= warmup_factor * (1 - alpha) + alpha
    return rate


def cosine_lr(base: float, iteration: int, total: int, warmup_iterations: int) -> float:
    """Linear warm-up from ``base / 10`` over ``warmup_iterations``, then cosine decay to 0 at ``total``."""
    if iteration < warmup_iterations:
        return base * (0.1 + 0.9 * iteration / warmup_iterations)
    return base * 0.5 * (1 + math.cos(math.pi * (iteration - warmup_iterations) / max(1, total - warmup_iterations)))
