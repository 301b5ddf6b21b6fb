"""Atomic writes: a failed write leaves the previous file intact and no temporary files."""
import pytest

from nocdet.errors import NocdetError
from nocdet.io import atomic_open, atomic_write_text


def test_replace_and_failure_keeps_previous(tmp_path):
    target = tmp_path / "ckpt.txt"
    atomic_write_text(target, "v1")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.txt"]


def test_oserror_is_reported_with_path(tmp_path, monkeypatch):
    import os

    target = tmp_path / "x.bin"
    atomic_write_text(target, "old")

    def no_space(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(NocdetError, match=r"x\.bin: No space left on device \(previous version kept\)"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
