"""The tracking hooks (CSV and TensorBoard logs, best checkpoint) on the engine, with a scripted
trainer whose losses and validation results are fixed numbers, so every expected row and the
best iteration are worked out by hand."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from nocdet.training import engine
from nocdet.training.checkpoint import load_checkpoint, save_checkpoint
from nocdet.training.tracking import choose_metric, tensorboard_tag, tracking_hooks


class Killed(Exception):
    """Stands for a kill -9 in the middle of a step."""


class Scripted:
    """Step ``i`` (0-based) returns ``{"a": i, "b": 10}``; validation after iteration ``n``
    returns ``val[n]``; the "model" is the number of steps done."""

    def __init__(self, folder: Path, val: dict[int, dict[str, float]], kill_at: int | None = None):
        self.folder, self.val, self.kill_at = folder, val, kill_at
        self.done = 0
        self.w = torch.zeros((), requires_grad=True)
        self.optimizer = torch.optim.SGD([self.w], lr=0.1)

    def step(self, iteration: int) -> dict[str, float]:
        if iteration == self.kill_at:
            raise Killed
        self.done = iteration + 1
        return {"a": float(iteration), "b": 10.0}

    def save(self, iteration: int) -> None:
        save_checkpoint(self.folder / "checkpoint.pt", {"iteration": iteration})

    def restore(self) -> int:
        path = self.folder / "checkpoint.pt"
        self.done = load_checkpoint(path)["iteration"] if path.exists() else 0
        return self.done

    def train(self, iterations: int = 8, resume: bool = False, val_every: int = 4):
        self.folder.mkdir(parents=True, exist_ok=True)
        hooks, best = tracking_hooks(self.folder, self.folder / "log.jsonl",
                                     lambda: {"model": {"done": torch.tensor(self.done)}})
        state = engine.train(self.step, iterations=iterations, optimizer=self.optimizer, lr=lambda i: 0.5 ** i,
                             checkpoints=engine.Checkpoints(self.folder / "checkpoint.pt", self.save, self.restore, 4),
                             resume=resume, log=self.folder / "log.jsonl", log_every=2,
                             validate=lambda: self.val[self.done], val_every=val_every, hooks=hooks)
        return state, best


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


LOSSES = {2: {"loss": 0.5 + 10, "a": 0.5}, 4: {"loss": 2.5 + 10, "a": 2.5},
          6: {"loss": 4.5 + 10, "a": 4.5}, 8: {"loss": 6.5 + 10, "a": 6.5}}
# lr logged is the rate of the window's last step i - 1: 0.5 ** (i - 1)


def check_rows(table: list[dict[str, str]], val: dict[int, dict[str, float]]) -> None:
    assert [int(r["iteration"]) for r in table] == [2, 4, 6, 8]
    for row in table:
        i = int(row["iteration"])
        assert float(row["loss"]) == LOSSES[i]["loss"] and float(row["a"]) == LOSSES[i]["a"]
        assert float(row["b"]) == 10.0 and float(row["lr"]) == 0.5 ** (i - 1)
        assert row["val_loss"] == ("" if i not in val else str(val[i]["loss"]))


def test_csv_has_a_row_per_logged_iteration_and_validation_columns(tmp_path):
    val = {4: {"loss": 0.9}, 8: {"loss": 0.7}}
    Scripted(tmp_path, val).train()
    table = rows(tmp_path / "log.csv")
    assert list(table[0])[:6] == ["iteration", "loss", "a", "b", "lr", "seconds"]
    check_rows(table, val)


def test_csv_is_cut_back_on_resume_like_the_jsonl(tmp_path):
    val = {4: {"loss": 0.9}, 8: {"loss": 0.7}}
    with pytest.raises(Killed):  # logged up to 6, checkpointed at 4
        Scripted(tmp_path, val, kill_at=6).train()
    assert [int(r["iteration"]) for r in rows(tmp_path / "log.csv")] == [2, 4, 6]
    Scripted(tmp_path, val).train(resume=True)
    check_rows(rows(tmp_path / "log.csv"), val)


def test_best_checkpoint_keeps_the_lowest_validation_loss(tmp_path):
    val = {2: {"loss": 0.9}, 4: {"loss": 0.5}, 6: {"loss": 0.7}, 8: {"loss": 0.5}}
    _, best = Scripted(tmp_path, val).train(val_every=2)
    saved = load_checkpoint(tmp_path / "best.pt")
    # 0.5 at 8 only ties the 0.5 at 4: the earlier one stays
    assert (best.best.iteration, best.best.metric, best.best.value) == (4, "val_loss", 0.5)
    assert saved["iteration"] == 4 and int(saved["model"]["done"]) == 4 and saved["higher_is_better"] is False


def test_best_checkpoint_prefers_map_over_loss(tmp_path):
    val = {4: {"loss": 0.9, "voc07_mAP": 0.6}, 8: {"loss": 0.4, "voc07_mAP": 0.5}}
    _, best = Scripted(tmp_path, val).train()
    assert (best.best.iteration, best.best.metric, best.best.value) == (4, "val_voc07_mAP", 0.6)
    assert choose_metric({"loss": 1.0, "coco_AP": 0.2}) == ("coco_AP", True)
    assert choose_metric({"loss": 1.0}) == ("loss", False)
    assert choose_metric({}) is None


def test_best_checkpoint_survives_resume_and_a_new_run_removes_it(tmp_path):
    val = {4: {"loss": 0.5}, 8: {"loss": 0.6}}
    with pytest.raises(Killed):
        Scripted(tmp_path, val, kill_at=6).train()
    _, best = Scripted(tmp_path, val).train(resume=True)
    assert best.best.iteration == 4  # 0.6 at 8 is worse than the 0.5 read back from best.pt
    assert int(load_checkpoint(tmp_path / "best.pt")["model"]["done"]) == 4

    val_without_validation = Scripted(tmp_path, {})
    hooks, best = tracking_hooks(tmp_path, tmp_path / "log.jsonl", lambda: {})
    engine.train(val_without_validation.step, iterations=2, optimizer=val_without_validation.optimizer,
                 lr=lambda i: 0.1, checkpoints=engine.Checkpoints(tmp_path / "c.pt", lambda i: None, lambda: 0, 0),
                 hooks=hooks)
    assert best.best is None and not (tmp_path / "best.pt").exists()


def test_tensorboard_tags():
    assert [tensorboard_tag(k) for k in ("iteration", "loss", "loss_cls", "val_loss", "val_voc07_mAP", "lr",
                                         "seconds_per_iteration")] == \
        [None, "train/loss", "train/loss_cls", "val/loss", "val/voc07_mAP", "lr", "time/seconds_per_iteration"]


def test_tensorboard_events_are_written_and_purged_on_resume(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    val = {4: {"loss": 0.9}, 8: {"loss": 0.7}}
    with pytest.raises(Killed):
        Scripted(tmp_path, val, kill_at=6).train()
    Scripted(tmp_path, val).train(resume=True)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert loss == [(i, pytest.approx(LOSSES[i]["loss"])) for i in (2, 4, 6, 8)]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("val/loss")] == [(4, 0.9), (8, 0.7)]
    assert [e.step for e in events.Scalars("lr")] == [2, 4, 6, 8]
