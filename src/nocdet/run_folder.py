"""The run folder of ``nocdet train`` and ``nocdet sweep``: what a run writes there, the checks
before it starts, and the lock that keeps a second process out.

A run folder holds ``config.yaml``, ``train/`` (``log.jsonl``, ``checkpoint.pt``), ``metrics.json``,
``run.json``, ``diagnosis.json``, ``results/`` and ``model.pt``. A new run never mixes its files
with an earlier run's: it needs an empty (or new) folder, ``--resume`` to continue the run that is
there, or ``--overwrite`` to replace it. A resumed run must use the config the run was made with
(checked before anything is written). While a run works in a folder it holds ``.nocdet.lock``
(:func:`lock_run_folder`).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from nocdet.config import to_dict
from nocdet.errors import ConfigError
from nocdet.experiment import config_from_dict
from nocdet.io import output_folder, remove_entries

#: config keys a resumed run may change: where it runs, not what it computes
RESUMABLE_CHANGES = ("device", "solver.workers", "proposals.workers")
#: what a run writes: a folder holding any of these is a run folder
RUN_FILES = ("config.yaml", "train", "metrics.json", "run.json", "diagnosis.json", "results", "model.pt")
#: the advisory lock file of a folder a process works in (never part of a run's files)
LOCK_FILE = ".nocdet.lock"


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def check_run_folder(path: str | Path, *, resume: bool = False, overwrite: bool = False,
                     option: str = "--output", remedy: str | None = None) -> None:
    """Refuse (ConfigError naming the folder) what cannot take this run, without writing anything:
    a path that is a file; a folder holding another run without ``resume`` or ``overwrite``;
    ``overwrite`` of a non-empty folder that is not a run folder (nocdet deletes only its own
    runs). ``remedy``: what to do about an existing run (default: ``--resume`` or ``--overwrite``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file; give a folder")
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the folder, --overwrite replaces it: give one")
    if path.is_dir() and not resume and any(p.name != LOCK_FILE for p in path.iterdir()):
        if not is_run_folder(path):
            raise ConfigError(f"{path} is not empty and holds no nocdet run: give an empty or new folder ({option})")
        if not overwrite:
            raise ConfigError(f"{path} already holds a run: " + (remedy or (
                "continue it with --resume, or replace it with --overwrite, or give another folder "
                f"({option})")))


def prepare_run_folder(path: str | Path, *, resume: bool = False, overwrite: bool = False,
                       option: str = "--output") -> Path:
    """:func:`check_run_folder`, then create the folder (checked writable, :func:`nocdet.io.output_folder`)
    and, with ``overwrite``, delete the earlier run's files (only those); returns the folder."""
    path = Path(path)
    check_run_folder(path, resume=resume, overwrite=overwrite, option=option)
    output_folder(path, option)
    if overwrite:
        remove_entries(path, RUN_FILES)
    return path


def check_resume_config(path: str | Path, cfg: Any) -> None:
    """Refuse to resume the run in ``path`` with a config other than the one it was started with
    (its ``config.yaml``), naming the keys that differ: the checkpoint would not fit the model
    (another NoC, the other setting) or the continuation would silently be another experiment
    (another schedule). Reads only; a checkpoint without a readable ``config.yaml`` is refused."""
    saved_file = Path(path) / "config.yaml"
    if not saved_file.is_file():
        if not (Path(path) / "train" / "checkpoint.pt").exists():
            return  # nothing trained yet: nothing to fit
        raise ConfigError(f"--resume: {path} has no config.yaml, so nothing tells which config its checkpoint "
                          f"was trained with; start a new run (--overwrite or another --output)")
    try:
        saved = yaml.safe_load(saved_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{saved_file}: not valid YAML ({err}); cannot check what the run was made with") from err
    if not isinstance(saved, dict):
        raise ConfigError(f"{saved_file}: not a config (a mapping of keys); cannot check what the run was made with")
    now = to_dict(cfg)
    settings = [_setting(saved), _setting(now)]
    if settings[0] != settings[1]:
        raise ConfigError(f"the run in {path} is {settings[0]} but the config trains {settings[1]}: its checkpoint "
                          f"does not fit this model; resume with the run's config (its config.yaml), or start a new "
                          f"run (--overwrite or another --output)")
    try:  # the run's config in today's schema: an old layout translated, fields added since filled in
        saved = to_dict(config_from_dict(saved))
    except ConfigError:
        pass  # compared as written
    differ = [text for key, text in _differences(saved, now) if key not in RESUMABLE_CHANGES]
    if differ:
        shown = "; ".join(differ[:8]) + (f"; ... and {len(differ) - 8} more" if len(differ) > 8 else "")
        raise ConfigError(f"the run in {path} was made with another config ({shown}): resume it with the same "
                          f"config file and --set overrides (its config.yaml holds them), or start a new run "
                          f"(--overwrite or another --output)")


def _setting(config: dict) -> str:
    """Which of the two settings a config mapping describes (``setting: e2e``, or ``detector`` in
    the older end-to-end layout)."""
    return "an end-to-end run" if config.get("setting") == "e2e" or "detector" in config else "a frozen-feature run"


def _differences(saved: dict, now: dict, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, what differs)`` for every leaf that differs between two config mappings."""
    keys = []
    for key in sorted(set(saved) | set(now), key=str):
        where = f"{prefix}{key}"
        a, b = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _differences(a, b, where + ".")
        elif a != b:
            keys.append((where, f"{where}: {_short(a)} in the run, {_short(b)} now"))
    return keys


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def lock_run_folder(path: str | Path, option: str = "--output") -> Iterator[Path]:
    """Hold the advisory lock of the folder ``path`` (created, checked writable) while the block runs.

    The lock is ``flock`` on ``path/.nocdet.lock``, which records the holder (pid, host, command,
    start time). The kernel drops it when its process ends, however it ends (``kill -9``
    included), so a lock file left behind by a dead process is stale and simply taken over. A
    second process gets a ConfigError naming the holder. On leaving the block (normally, by an
    exception or by Ctrl-C) the lock file is removed and the lock released. On a file system
    without locks a warning says the folder is unprotected and the block runs anyway.
    """
    path = output_folder(path, option)
    lock = path / LOCK_FILE
    fd = _acquire(lock, option)
    if fd is None:
        warnings.warn(f"the file system of {path} does not support locks: nothing stops a second "
                      f"process from writing into it at the same time", stacklevel=3)
        yield path
        return
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv[:2]),
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)  # releases the lock


def _acquire(lock: Path, option: str) -> int | None:
    """A descriptor of ``lock`` holding its flock, emptied; None where the file system has no locks."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(f"{lock.parent} is in use by {holder}: wait for it to finish, or give another "
                              f"folder ({option})") from None
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return None
            raise ConfigError(f"cannot lock {lock}: {err.strerror or err}") from err
        try:  # the holder we waited behind may have removed its file: then lock the new one
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                os.ftruncate(fd, 0)  # a stale record of a dead holder goes
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _holder(fd: int) -> str:
    """Who holds the lock, from the record in its file (written just after locking: may be empty)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode())
        return (f"process {record['pid']} on host {record['host']} ({record['command']}, "
                f"since {record['since']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (starting)"
