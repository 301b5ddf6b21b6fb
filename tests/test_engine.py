"""The training engine with a trivial step function: one weight fitted by SGD to random targets.

The step draws its sample from torch's global stream, so an exact resume needs the weight, the
optimizer's momentum and the random stream from the checkpoint, and the right start iteration.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from nocdet.errors import TrainingError
from nocdet.training import engine
from nocdet.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

TIMING = ("seconds", "seconds_per_iteration")


class Interrupt(Exception):
    """Stands for a kill: the run ends where it is, without any clean-up of ours."""


class Toy:
    """A weight ``w`` fitted to ``y = 3 x`` with ``x ~ N(0, 1)``; records the iterations it ran.

    ``act``: ``{iteration: what}`` with ``what`` a signal to raise during that step, ``"nan"``
    for a NaN loss or ``"kill"`` to raise :class:`Interrupt`."""

    def __init__(self, folder: Path, act: dict[int, object] | None = None):
        self.folder, self.act = folder, act or {}
        self.w = torch.zeros((), requires_grad=True)
        self.optimizer = torch.optim.SGD([self.w], lr=0.1, momentum=0.9)
        self.ran: list[int] = []
        self.saved: list[int] = []
        self.validated: list[float] = []

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / "checkpoint.pt"

    def step(self, iteration: int) -> dict[str, float]:
        self.ran.append(iteration)
        what = self.act.get(iteration)
        if what == "kill":
            raise Interrupt
        if isinstance(what, signal.Signals):
            signal.raise_signal(what)
        x = torch.randn(())
        loss = (self.w * x - 3 * x) ** 2
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": float("nan") if what == "nan" else float(loss.detach())}

    def save(self, iteration: int) -> None:
        self.saved.append(iteration)
        save_checkpoint(self.checkpoint_path, {"w": self.w.detach().clone(), "optimizer": self.optimizer.state_dict(),
                                               "rng": rng_state(), "iteration": iteration})

    def restore(self) -> int:
        if not self.checkpoint_path.exists():
            return 0
        state = load_checkpoint(self.checkpoint_path)
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        return state["iteration"]

    def validate(self) -> dict[str, float]:
        self.validated.append(float(self.w.detach()))
        return {"distance": abs(self.validated[-1] - 3)}

    def train(self, iterations: int = 6, resume: bool = False, every: int = 2, **options) -> engine.TrainState:
        torch.manual_seed(0)
        self.folder.mkdir(parents=True, exist_ok=True)
        settings = dict(iterations=iterations, optimizer=self.optimizer, lr=lambda i: 0.1 / (1 + i),
                        checkpoints=engine.Checkpoints(self.checkpoint_path, self.save, self.restore, every),
                        resume=resume, log=self.folder / "log.jsonl", log_every=1, validate=self.validate,
                        val_every=3, progress=None)
        return engine.train(self.step, **{**settings, **options})

    def log(self) -> list[dict]:
        lines = (self.folder / "log.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def test_a_hand_computed_run_logs_window_means_lr_and_validation(tmp_path):
    """Step losses 1, 2, ..., 5: windows of two iterations, the last one short; lr = rate(i)."""
    weight = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=1.0)
    seen_lr = []

    def step(iteration: int) -> dict[str, float]:
        seen_lr.append(optimizer.param_groups[0]["lr"])
        return {"a": float(iteration + 1), "b": 10.0}

    state = engine.train(step, iterations=5, optimizer=optimizer, lr=lambda i: 0.5 ** i,
                         checkpoints=engine.Checkpoints(tmp_path / "ck.pt", lambda i: None, lambda: 0, 100),
                         log=tmp_path / "log.jsonl", log_every=2, validate=lambda: {"x": 7}, val_every=0)
    assert seen_lr == [1.0, 0.5, 0.25, 0.125, 0.0625]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [{k: r[k] for k in r if k not in TIMING} for r in log] == [
        {"iteration": 2, "loss": 11.5, "a": 1.5, "b": 10.0, "lr": 0.5},
        {"iteration": 4, "loss": 13.5, "a": 3.5, "b": 10.0, "lr": 0.125},
        {"iteration": 5, "loss": 15.0, "a": 5.0, "b": 10.0, "lr": 0.0625, "val_x": 7}]
    assert all(r["seconds_per_iteration"] >= 0 and r["seconds"] >= 0 for r in log)
    assert state.iteration == 5 and state.stop is None and state.validation == {"x": 7}
    assert state.mean_losses == {"loss": 15.0, "a": 5.0, "b": 10.0}


def test_resume_after_a_kill_continues_exactly_and_logs_each_iteration_once(tmp_path):
    straight = Toy(tmp_path / "straight")
    straight.train()
    killed = Toy(tmp_path / "killed", {4: "kill"})  # killed in iteration 5, after 4 was logged and checkpointed...
    with pytest.raises(Interrupt):
        killed.train()
    assert killed.saved == [2, 4]
    # ... and had the kill come after iteration 5 was logged, the log would hold it too
    with (tmp_path / "killed" / "log.jsonl").open("a") as log:
        log.write('{"iteration": 5, "loss": 99.0}\n{"iteration": 6, "lo')
    resumed = Toy(tmp_path / "killed")  # a new process: fresh weight and optimizer
    state = resumed.train(resume=True)
    assert resumed.ran == [4, 5] and state.start == 4 and state.iteration == 6
    assert float(resumed.w.detach()) == float(straight.w.detach()) != 0
    assert resumed.log() == straight.log()
    assert [r["iteration"] for r in resumed.log()] == [1, 2, 3, 4, 5, 6]
    assert resumed.validated == [straight.validated[-1]]  # validation at 3 before the kill, at 6 after


def test_a_run_without_a_checkpoint_starts_at_zero_and_a_finished_one_does_nothing(tmp_path):
    fresh = Toy(tmp_path / "a")
    assert fresh.train(resume=True).start == 0 and fresh.ran == list(range(6))
    again = Toy(tmp_path / "a")
    state = again.train(resume=True)
    assert again.ran == [] and state.iteration == 6 and again.saved == []
    assert [r["iteration"] for r in again.log()] == [1, 2, 3, 4, 5, 6]  # kept as it was


def test_non_finite_loss_names_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path):
    toy = Toy(tmp_path, {4: "nan"})
    with pytest.raises(TrainingError, match=r"^iteration 5: loss is nan \(non-finite\); training stopped, the last "
                                            r"good checkpoint .*checkpoint\.pt is kept; try a lower learning rate$"):
        toy.train()
    assert toy.saved == [2, 4] and load_checkpoint(toy.checkpoint_path)["iteration"] == 4
    assert [r["iteration"] for r in toy.log()] == [1, 2, 3, 4]
    early = Toy(tmp_path / "early", {0: "nan"})
    with pytest.raises(TrainingError, match="iteration 1: .*no checkpoint was written yet; use less"):
        early.train(advice="use less")


def test_a_stop_signal_writes_a_checkpoint_and_ends_cleanly(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    toy = Toy(tmp_path, {2: signal.SIGTERM})
    state = toy.train(every=100)
    assert state.stop == "SIGTERM" and state.iteration == 3 and toy.ran == [0, 1, 2]
    assert toy.saved == [3] and load_checkpoint(toy.checkpoint_path)["iteration"] == 3
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    assert Toy(tmp_path / "end", {5: signal.SIGINT}).train(every=100).stop is None  # nothing left to stop


def test_a_callers_signals_and_stop_test_are_used(tmp_path):
    """A trainer may decide the stop itself (e2e: agreed by all processes) with its own signals."""
    from nocdet.training.checkpoint import StopSignals

    signals = StopSignals()
    toy = Toy(tmp_path)
    state = toy.train(signals=signals, stop_requested=lambda: "agreed" if toy.ran[-1] == 1 else None)
    assert state.stop == "agreed" and state.iteration == 2 and toy.saved == [2]


class Recorder(engine.Hook):
    def __init__(self, name: str, calls: list[str], stop_at: int | None = None):
        self.name, self.calls, self.stop_at = name, calls, stop_at

    def before_train(self, state):
        self.calls.append(f"{self.name}.before_train@{state.iteration}")

    def before_step(self, state):
        self.calls.append(f"{self.name}.before_step@{state.iteration}")

    def after_step(self, state):
        self.calls.append(f"{self.name}.after_step@{state.iteration}")
        if state.iteration == self.stop_at:
            state.stop = "enough"

    def after_train(self, state):
        self.calls.append(f"{self.name}.after_train@{state.iteration}")


def test_hooks_run_in_order_and_end_also_on_failure():
    calls: list[str] = []

    def step(iteration: int) -> dict[str, float]:
        calls.append(f"step {iteration}")
        return {"loss": 0.0}

    state = engine.run(step, [Recorder("a", calls), Recorder("b", calls, stop_at=3)], iterations=10, start=1)
    assert state.stop == "enough" and state.iteration == 3
    assert calls == ["a.before_train@1", "b.before_train@1",
                     "a.before_step@1", "b.before_step@1", "step 1", "a.after_step@2", "b.after_step@2",
                     "a.before_step@2", "b.before_step@2", "step 2", "a.after_step@3", "b.after_step@3",
                     "b.after_train@3", "a.after_train@3"]

    calls.clear()

    def failing(iteration: int) -> dict[str, float]:
        raise ValueError("broken")

    class Refuses(engine.Hook):
        def before_train(self, state):
            raise RuntimeError("cannot start")

    with pytest.raises(ValueError):
        engine.run(failing, [Recorder("a", calls)], iterations=2)
    assert calls == ["a.before_train@0", "a.before_step@0", "a.after_train@0"]
    calls.clear()
    with pytest.raises(RuntimeError):  # only the hooks that started are ended
        engine.run(step, [Recorder("a", calls), Refuses(), Recorder("c", calls)], iterations=2)
    assert calls == ["a.before_train@0", "a.after_train@0"]
