"""Experiment tracking hooks of the training loop (:mod:`nocdet.training.engine`), beside
``train/log.jsonl``:

======================  ====================================================================
:class:`CsvLog`         ``train/log.csv``: one row per logged iteration, a column per value
                        (losses, ``lr``, timing, ``val_*`` losses and metrics)
:class:`TensorBoardLog` ``train/tb/``: the same values as TensorBoard scalars (``train/*``,
                        ``val/*``, ``lr``, ``time/*``), when the ``tensorboard`` package is
                        installed (``pip install 'nocdet[track]'``)
:class:`BestCheckpoint` ``train/best.pt``: the weights at the best validation so far, written
                        atomically, with the iteration, metric and value it holds
======================  ====================================================================

A resumed run continues all three where its checkpoint stands: the CSV is rebuilt from the
log's records up to the resume point (the log is cut back the same way, so the two never
disagree and no iteration appears twice), TensorBoard purges the events after it, and the best
checkpoint keeps the best value seen so far.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from nocdet.io import atomic_write_text
from nocdet.training.checkpoint import load_checkpoint, save_checkpoint
from nocdet.training.engine import Hook, TrainState
from nocdet.training.run_log import lines_upto

_tensorboard_note_given = False


def _scalars(record: Mapping[str, Any]) -> dict[str, float | int | str | None]:
    """The record's values a table cell can hold (numbers, text, None); others are left out."""
    return {k: v for k, v in record.items() if v is None or isinstance(v, (int, float, str))}


class CsvLog(Hook):
    """``log.csv`` of the records that :class:`~nocdet.training.engine.LogWriter` writes to
    ``source`` (``log.jsonl``). Columns appear in first-logged order (``iteration`` first); a
    record bringing a new column (the first validation) rewrites the file with the wider
    header, every other record is appended as one line."""

    def __init__(self, path: Path, source: Path):
        self.path, self.source = Path(path), Path(source)
        self._columns: list[str] = ["iteration"]
        self._rows: list[dict[str, Any]] = []
        self._file: TextIO | None = None

    def before_train(self, state: TrainState) -> None:
        text = lines_upto(self.source, state.start) if state.start > 0 else ""
        self._rows = [_scalars(json.loads(line)) for line in text.splitlines()]
        for row in self._rows:
            self._columns += [k for k in row if k not in self._columns]
        self._rewrite()

    def _rewrite(self) -> None:
        self.close()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self._columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._rows)
        atomic_write_text(self.path, buffer.getvalue())
        self._file = self.path.open("a", newline="")

    def after_step(self, state: TrainState) -> None:
        if not state.record:
            return
        row = _scalars({"iteration": state.iteration, **state.record})
        self._rows.append(row)
        new = [k for k in row if k not in self._columns]
        if new:
            self._columns += new
            self._rewrite()
            return
        assert self._file is not None
        csv.DictWriter(self._file, self._columns, lineterminator="\n").writerow(row)
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def after_train(self, state: TrainState) -> None:
        self.close()


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def tensorboard_tag(key: str) -> str | None:
    """The TensorBoard tag of a log key (None: not drawn): ``val_loss`` -> ``val/loss``,
    ``lr`` -> ``lr``, ``seconds_per_iteration`` -> ``time/seconds_per_iteration``, a loss term
    ``loss_cls`` -> ``train/loss_cls``."""
    if key == "iteration":
        return None
    if key.startswith("val_"):
        return "val/" + key[4:]
    if key == "lr":
        return "lr"
    if key.startswith("seconds"):
        return "time/" + key
    return "train/" + key


class TensorBoardLog(Hook):
    """The logged records as TensorBoard scalars in ``folder``, at step = iteration; a resumed
    run purges the events after its start iteration."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._writer: Any = None

    def before_train(self, state: TrainState) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(self.folder), purge_step=state.start + 1 if state.start > 0 else None)

    def after_step(self, state: TrainState) -> None:
        for key, value in state.record.items():
            tag = tensorboard_tag(key)
            if tag is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(tag, value, state.iteration)
        if state.record:
            self._writer.flush()

    def after_train(self, state: TrainState) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@dataclass
class Best:
    """What ``best.pt`` holds: the weights after ``iteration``, where the validation's ``metric``
    (a ``val_*`` log key) was ``value``."""

    iteration: int
    metric: str
    value: float
    higher_is_better: bool


def choose_metric(validation: Mapping[str, Any]) -> tuple[str, bool] | None:
    """The validation result that decides the best checkpoint, and whether higher is better:
    a mean AP (``*mAP``, ``coco_AP``) where one was computed, else the loss."""
    for name in validation:
        if name.endswith("mAP") or name == "coco_AP":
            return name, True
    return ("loss", False) if "loss" in validation else None


class BestCheckpoint(Hook):
    """``contents()`` (the model's weights and what a loader needs) to ``path`` at every
    validation that improves on the best so far (:func:`choose_metric`); ``best`` says what the
    file holds. Runs after :class:`~nocdet.training.engine.Validation`. A new run removes a
    ``best.pt`` left in the folder; a resumed one reads the best value back from it."""

    def __init__(self, path: Path, contents: Callable[[], dict[str, Any]]):
        self.path, self.contents = Path(path), contents
        self.best: Best | None = None
        self._seen: Mapping[str, Any] | None = None

    def before_train(self, state: TrainState) -> None:
        if state.start == 0:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            saved = load_checkpoint(self.path)
            self.best = Best(int(saved["iteration"]), saved["metric"], float(saved["value"]),
                             bool(saved["higher_is_better"]))

    def after_step(self, state: TrainState) -> None:
        validation = state.validation
        if validation is None or validation is self._seen:
            return
        self._seen = validation
        if self.best is not None:
            name, higher = self.best.metric[len("val_"):], self.best.higher_is_better
        else:
            chosen = choose_metric(validation)
            if chosen is None:
                return
            name, higher = chosen
        value = validation.get(name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        if self.best is not None and not (value > self.best.value if higher else value < self.best.value):
            return
        self.best = Best(state.iteration, f"val_{name}", float(value), higher)
        save_checkpoint(self.path, {**self.contents(), **asdict(self.best)})


def tracking_hooks(folder: Path, log: Path, contents: Callable[[], dict[str, Any]]
                   ) -> tuple[list[Hook], BestCheckpoint]:
    """The hooks of a trainer writing to ``folder`` (its ``train/``) whose ``log.jsonl`` is
    ``log``: CSV, TensorBoard when installed (said once per process when not) and the best
    checkpoint, which is also returned so the trainer can report what it holds."""
    global _tensorboard_note_given
    best = BestCheckpoint(folder / "best.pt", contents)
    hooks: list[Hook] = [CsvLog(folder / "log.csv", log)]
    if tensorboard_available():
        hooks.append(TensorBoardLog(folder / "tb"))
    elif not _tensorboard_note_given:
        _tensorboard_note_given = True
        warnings.warn("no TensorBoard logs: the tensorboard package is not installed "
                      "(pip install 'nocdet[track]'); train/log.csv has the same values", stacklevel=2)
    return [*hooks, best], best
