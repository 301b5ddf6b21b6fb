"""The settings of ``nocdet pretrain`` (a module without torch, so that ``nocdet --help`` stays fast)."""
from __future__ import annotations

from dataclasses import dataclass

from nocdet.errors import ConfigError


@dataclass(frozen=True)
class PretrainSettings:
    """Everything besides the data and the backbone that determines a pre-training run."""

    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.05
    seed: int = 0
    crop_size: int = 64
    per_object: int = 4
    backgrounds_per_image: int = 4
    context: tuple[float, float] = (1.15, 1.5)
    holdout: float = 0.1
    dropout: float = 0.0  # of fc6/fc7 while pre-training (the NoC later sets its own)
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"epochs and batch_size must be >= 1 and lr > 0, "
                              f"got {self.epochs}, {self.batch_size}, {self.lr}")
        if not 0 < self.holdout < 1:
            raise ConfigError(f"holdout must be a fraction in (0, 1), got {self.holdout}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
