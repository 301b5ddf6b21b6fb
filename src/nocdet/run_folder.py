"""The run folder of ``nocdet train``: what a run writes there, and the checks before it starts.

A run folder holds ``config.yaml``, ``train/`` (``log.jsonl``, ``checkpoint.pt``), ``metrics.json``,
``run.json``, ``diagnosis.json``, ``results/`` and ``model.pt``. A new run never mixes its files
with an earlier run's: it needs an empty (or new) folder, ``--resume`` to continue the run that is
there, or ``--overwrite`` to replace it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from nocdet.errors import ConfigError

#: what a run writes: a folder holding any of these is a run folder
RUN_FILES = ("config.yaml", "train", "metrics.json", "run.json", "diagnosis.json", "results", "model.pt")


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def prepare_run_folder(path: str | Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Check ``path`` can take this run and create it; returns it.

    Refused (ConfigError naming the folder): a path that is a file; a folder that cannot be
    written; a folder holding another run without ``resume`` or ``overwrite``; ``overwrite`` of
    a non-empty folder that is not a run folder (nocdet deletes only its own runs).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"the run folder {path} is a file; give a folder (--output)")
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the folder, --overwrite replaces it: give one")
    if path.is_dir() and any(path.iterdir()) and not resume:
        if not is_run_folder(path):
            raise ConfigError(f"{path} is not empty and holds no nocdet run: give an empty or new folder (--output)")
        if not overwrite:
            raise ConfigError(f"{path} already holds a run: continue it with --resume, or replace it with "
                              f"--overwrite, or give another folder (--output)")
        for name in RUN_FILES:
            target = path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".nocdet-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"cannot write the run folder {path}: {err.strerror or err}") from err
    return path
