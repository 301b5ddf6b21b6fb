"""The project's own error types: every failure a user can cause names what was wrong and where."""
from __future__ import annotations

from pathlib import Path


class NocdetError(Exception):
    """Base class of all errors nocdet raises on purpose."""


class DataError(NocdetError):
    """Bad input data: names the file, the record inside it (line, object, id) and what is wrong."""

    def __init__(self, message: str, path: str | Path | None = None, record: str | None = None):
        self.path = None if path is None else str(path)
        self.record = record
        where = ""
        if self.path is not None:
            where = self.path
            if record is not None:
                where += f" [{record}]"
            where += ": "
        elif record is not None:
            where = f"[{record}]: "
        super().__init__(where + message)
        self.reason = message


class SpecError(NocdetError):
    """An invalid NoC architecture string; the message points at the offending token."""


class ConfigError(NocdetError):
    """An invalid configuration (unknown key, wrong type, inconsistent values)."""


class TrainingError(NocdetError):
    """Training cannot go on (non-finite loss, corrupt checkpoint, ...)."""
