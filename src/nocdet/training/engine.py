"""The one training loop of nocdet: the NoC trainer, end-to-end training and backbone pre-training
are step functions on it.

A *step function* ``step(iteration) -> {term: value}`` runs SGD iteration ``iteration``
(0-based: forward, backward, update) and returns its loss terms as floats (under DDP already
averaged over the processes). :func:`train` runs it from iteration 0, or from the iteration its
checkpoint holds, up to ``iterations``; everything around the step is a :class:`Hook`, called in
this order:

=====================  =====================================================================
:class:`LrSchedule`    sets the optimizer's learning rate before each step
:class:`FiniteLoss`    a NaN or infinite term stops training with a :class:`TrainingError`
                       naming the iteration and the term; nothing more is written, so the
                       last good checkpoint stays
:class:`LossWindow`    every ``log_every`` iterations and at the last: the window means of the
                       terms and of their sum (``loss``), ``lr``, ``seconds`` since the start
                       and ``seconds_per_iteration`` of the window
:class:`Validation`    every ``val_every`` iterations (0: only the last) and at the last: the
                       trainer's ``validate()``, logged as ``val_<name>``
:class:`LogWriter`     ``log.jsonl`` (:class:`~nocdet.training.run_log.RunLog`, cut back to the
                       resume point): the iteration's record, when it has one
(the trainer's hooks)  e.g. :mod:`nocdet.training.tracking`'s CSV and TensorBoard logs and best
                       checkpoint
:class:`StopOnSignal`  SIGINT/SIGTERM (:class:`StopSignals`) ends the run after this iteration
:class:`Checkpoints`   the trainer's ``save(iteration)`` every ``every`` iterations, at the last
                       one and when stopping early; its ``restore()`` gives the resume point
:class:`ProgressBar`   a tqdm bar with the latest window loss
=====================  =====================================================================

The log is written before the checkpoint, so a kill between the two leaves a log that the
resumed run cuts back, never an iteration that is checkpointed but not logged.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from nocdet.errors import TrainingError
from nocdet.training.checkpoint import StopSignals
from nocdet.training.run_log import RunLog

Step = Callable[[int], Mapping[str, float]]


@dataclass
class TrainState:
    """What the loop knows, shared by its hooks; :func:`run` returns it when training ends."""

    iterations: int
    """Planned number of iterations."""
    start: int
    """The iteration the run started at (a resumed run: the checkpoint's)."""
    iteration: int
    """Iterations done."""
    losses: dict[str, float] = field(default_factory=dict)
    """The latest step's loss terms."""
    lr: float | None = None
    """The latest step's learning rate."""
    record: dict[str, Any] = field(default_factory=dict)
    """What the latest iteration logs (filled by the hooks; empty: nothing)."""
    mean_losses: dict[str, float] = field(default_factory=dict)
    """Means over the latest loss window (``loss``: their sum); when the run ends, over the
    iterations since the last log point if there are any."""
    validation: dict[str, Any] | None = None
    """The latest ``validate()`` results."""
    stop: str | None = None
    """Why the run ended before ``iterations`` (the signal's name), else None."""
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0
    """Wall time of the run (set when it ends)."""

    def due(self, every: int) -> bool:
        """Whether an action done every ``every`` iterations (0: never) and at the last is due now."""
        return (every > 0 and self.iteration % every == 0) or self.iteration == self.iterations


class Hook:
    """One duty of the loop; a hook overrides the calls it needs."""

    def before_train(self, state: TrainState) -> None:
        """Once, before the first step (``state.start`` is known)."""

    def before_step(self, state: TrainState) -> None:
        """Before each step; ``state.iteration`` is the 0-based iteration about to run."""

    def after_step(self, state: TrainState) -> None:
        """After each step; ``state.iteration`` counts it (1-based)."""

    def after_train(self, state: TrainState) -> None:
        """Once at the end, also when training fails (in reverse order)."""


def run(step: Step, hooks: Sequence[Hook], iterations: int, start: int = 0) -> TrainState:
    """The loop: ``step`` for iterations ``start..iterations-1`` unless a hook sets ``state.stop``."""
    state = TrainState(iterations, start, start)
    entered: list[Hook] = []
    try:
        for hook in hooks:
            hook.before_train(state)
            entered.append(hook)
        while state.iteration < iterations and state.stop is None:
            state.record = {}
            for hook in hooks:
                hook.before_step(state)
            state.losses = dict(step(state.iteration))
            state.iteration += 1
            for hook in hooks:
                hook.after_step(state)
    finally:
        state.seconds = time.perf_counter() - state.started
        for hook in reversed(entered):
            hook.after_train(state)
    return state


class LrSchedule(Hook):
    """Sets every parameter group's rate to ``rate(iteration)`` before the step."""

    def __init__(self, optimizer: torch.optim.Optimizer, rate: Callable[[int], float]):
        self.optimizer, self.rate = optimizer, rate

    def before_step(self, state: TrainState) -> None:
        state.lr = self.rate(state.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = state.lr


class FiniteLoss(Hook):
    """Stops training at the first non-finite loss term, before anything of that iteration is
    logged or checkpointed; the message names ``checkpoint`` and ends with ``advice``."""

    def __init__(self, checkpoint: Path, advice: str):
        self.checkpoint, self.advice = checkpoint, advice

    def after_step(self, state: TrainState) -> None:
        for name, value in state.losses.items():
            if not math.isfinite(value):
                kept = (f"the last good checkpoint {self.checkpoint} is kept" if self.checkpoint.exists()
                        else "no checkpoint was written yet")
                raise TrainingError(f"iteration {state.iteration}: {name} is {value} (non-finite); "
                                    f"training stopped, {kept}; {self.advice}")


class LossWindow(Hook):
    """Collects the loss terms; at log points puts their window means and timing in the record."""

    def __init__(self, every: int):
        self.every = every
        self._window: dict[str, list[float]] = {}
        self._count = 0
        self._since = 0.0

    def _means(self) -> dict[str, float]:
        means = {name: float(np.mean(values)) for name, values in self._window.items()}
        return {"loss": sum(means.values()), **means}

    def before_step(self, state: TrainState) -> None:
        if self._count == 0:
            self._since = time.perf_counter()

    def after_step(self, state: TrainState) -> None:
        for name, value in state.losses.items():
            self._window.setdefault(name, []).append(value)
        self._count += 1
        if state.due(self.every):
            now = time.perf_counter()
            state.mean_losses = self._means()
            state.record.update(state.mean_losses, lr=state.lr, seconds=round(now - state.started, 3),
                                seconds_per_iteration=(now - self._since) / self._count)
            self._window, self._count = {}, 0

    def after_train(self, state: TrainState) -> None:
        if self._count:
            state.mean_losses = self._means()


class Validation(Hook):
    """Runs ``validate()`` when due; its results go to ``state.validation`` and, as
    ``val_<name>``, to the record."""

    def __init__(self, validate: Callable[[], Mapping[str, Any]], every: int):
        self.validate, self.every = validate, every

    def after_step(self, state: TrainState) -> None:
        if state.due(self.every):
            state.validation = dict(self.validate())
            state.record.update({f"val_{name}": value for name, value in state.validation.items()})


class LogWriter(Hook):
    """``{"iteration": N, **record}`` to a :class:`RunLog` opened at the run's start iteration."""

    def __init__(self, path: Path):
        self.path = path
        self._log: RunLog | None = None

    def before_train(self, state: TrainState) -> None:
        self._log = RunLog(self.path, state.start)

    def after_step(self, state: TrainState) -> None:
        if state.record:
            assert self._log is not None
            self._log.write({"iteration": state.iteration, **state.record})

    def after_train(self, state: TrainState) -> None:
        if self._log is not None:
            self._log.close()


class StopOnSignal(Hook):
    """Ends the run after this iteration when ``requested()`` names a reason (a signal)."""

    def __init__(self, requested: Callable[[], str | None]):
        self.requested = requested

    def after_step(self, state: TrainState) -> None:
        if state.iteration < state.iterations:
            state.stop = self.requested()


@dataclass
class Checkpoints(Hook):
    """A trainer's checkpoint: ``save(iteration)`` writes its whole state atomically to ``path``,
    ``restore()`` loads it back and returns the iteration it holds (0 when there is none)."""

    path: Path
    save: Callable[[int], None]
    restore: Callable[[], int]
    every: int

    def after_step(self, state: TrainState) -> None:
        if state.due(self.every) or state.stop is not None:
            self.save(state.iteration)


class ProgressBar(Hook):
    """A tqdm bar over all iterations (a resumed run starts part-way)."""

    def __init__(self, description: str):
        self.description = description
        self._bar: tqdm | None = None

    def before_train(self, state: TrainState) -> None:
        self._bar = tqdm(total=state.iterations, initial=state.start, desc=self.description, unit="it")

    def after_step(self, state: TrainState) -> None:
        assert self._bar is not None
        self._bar.update(1)
        if "loss" in state.record:
            self._bar.set_postfix(loss=f"{state.record['loss']:.3f}")

    def after_train(self, state: TrainState) -> None:
        if self._bar is not None:
            self._bar.close()


def train(step: Step, *, iterations: int, optimizer: torch.optim.Optimizer, lr: Callable[[int], float],
          checkpoints: Checkpoints, resume: bool = False, log: Path | None = None, log_every: int = 1,
          validate: Callable[[], Mapping[str, Any]] | None = None, val_every: int = 0,
          progress: str | None = None, signals: StopSignals | None = None,
          stop_requested: Callable[[], str | None] | None = None,
          advice: str = "try a lower learning rate", hooks: Sequence[Hook] = ()) -> TrainState:
    """Run ``step`` with the standard hooks (module doc); ``resume``: start where
    ``checkpoints.restore()`` says.

    ``log``: the ``log.jsonl`` to write (None: none, e.g. on DDP ranks other than 0);
    ``progress``: the bar's description (None: no bar); ``signals``: an active
    :class:`StopSignals` of the caller (default: one of the run's own); ``stop_requested``: the
    stop test (default: a signal has arrived), e.g. one agreed by all DDP processes; ``hooks``:
    the trainer's own, run after the log is written and before the stop test and checkpoint.
    """
    with contextlib.nullcontext(signals) if signals is not None else StopSignals() as active:
        start = checkpoints.restore() if resume else 0
        loop: list[Hook] = [LrSchedule(optimizer, lr), FiniteLoss(checkpoints.path, advice), LossWindow(log_every)]
        if validate is not None:
            loop.append(Validation(validate, val_every))
        if log is not None:
            loop.append(LogWriter(log))
        loop += [*hooks, StopOnSignal(stop_requested or (lambda: active.requested)), checkpoints]
        if progress is not None:
            loop.append(ProgressBar(progress))
        return run(step, loop, iterations, start)
