"""The run folder of ``nocdet train``: what a run writes there, and the checks before it starts.

A run folder holds ``config.yaml``, ``train/`` (``log.jsonl``, ``checkpoint.pt``), ``metrics.json``,
``run.json``, ``diagnosis.json``, ``results/`` and ``model.pt``. A new run never mixes its files
with an earlier run's: it needs an empty (or new) folder, ``--resume`` to continue the run that is
there, or ``--overwrite`` to replace it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nocdet.config import to_dict
from nocdet.errors import ConfigError
from nocdet.io import remove_entries

#: config keys a resumed run may change: where it runs, not what it computes
RESUMABLE_CHANGES = ("device", "solver.workers", "proposals.workers")
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
        remove_entries(path, RUN_FILES)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".nocdet-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"cannot write the run folder {path}: {err.strerror or err}") from err
    return path


def check_resume_config(path: str | Path, cfg: Any) -> None:
    """Refuse to resume the run in ``path`` with a config other than the one it was started with
    (its ``config.yaml``), naming the keys that differ: the continuation would silently be
    another experiment (another schedule, another NoC, the other setting)."""
    saved_file = Path(path) / "config.yaml"
    if not saved_file.is_file():
        return
    try:
        saved = yaml.safe_load(saved_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{saved_file}: not valid YAML ({err}); cannot check what the run was made with") from err
    differ = [text for key, text in _differences(saved if isinstance(saved, dict) else {}, to_dict(cfg))
              if key not in RESUMABLE_CHANGES]
    if differ:
        shown = "; ".join(differ[:8]) + (f"; ... and {len(differ) - 8} more" if len(differ) > 8 else "")
        raise ConfigError(f"the run in {path} was made with another config ({shown}): resume it with the same "
                          f"config file and --set overrides (its config.yaml holds them), or start a new run "
                          f"(--overwrite or another --output)")


def _differences(saved: dict, now: dict, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, what differs)`` for every leaf that differs between two config mappings."""
    keys = []
    for key in sorted(set(saved) | set(now), key=str):
        where = f"{prefix}{key}"
        a, b = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _differences(a, b, where + ".")
        elif a != b:
            keys.append((where, f"{where}: {a!r} in the run, {b!r} now"))
    return keys
