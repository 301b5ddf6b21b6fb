"""The JSON-lines training log (``train/log.jsonl``) that every trainer writes: one record a line,
``{"iteration": N, ...}``, flushed as written, and cut back to the resume point when a run resumes,
so that a kill between two checkpoints never leaves an iteration in the log twice."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from nocdet.io import atomic_write_text


def lines_upto(path: Path, upto: int) -> str:
    """The log's lines of iterations ``<= upto``; lines torn by a kill (or not ours) are dropped."""
    if not path.exists():
        return ""
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["iteration"] <= upto:
                keep.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    return "".join(keep)


class RunLog:
    """``train/log.jsonl`` opened for a run starting at iteration ``start`` (0: a new, empty log)."""

    def __init__(self, path: str | Path, start: int = 0):
        self.path = Path(path)
        atomic_write_text(self.path, lines_upto(self.path, start) if start > 0 else "")
        self._file: TextIO | None = self.path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        assert self._file is not None, "the log is closed"
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
