"""Checkpoints that survive being killed, and a clean stop on SIGINT / SIGTERM.

A checkpoint is written to a temporary file, fsync'ed and renamed over the previous one
(:mod:`nocdet.io`), so ``kill -9`` at any moment leaves either the old or the new checkpoint,
never a torn one. :class:`StopSignals` turns SIGINT/SIGTERM into a flag the training loop polls,
so it can write a checkpoint and exit cleanly.
"""
from __future__ import annotations

import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nocdet.errors import TrainingError
from nocdet.io import atomic_torch_save


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_torch_save(path, state)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint; a missing or unreadable file is a :class:`TrainingError` naming it."""
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for a damaged file
        raise TrainingError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from err


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every random stream a trainer draws from: torch's, NumPy's, Python's and, on a CUDA
    ``device``, that device's; a checkpoint stores it so that a resumed run continues exactly."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore :func:`rng_state` (checkpoints of older versions hold torch's stream only)."""
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "python" in state:
        random.setstate(state["python"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class StopSignals:
    """Context manager: while active, SIGINT/SIGTERM set ``requested`` instead of killing."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
