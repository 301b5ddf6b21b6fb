"""Crash-safe file writing: a reader never sees a half-written file.

Every write goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed
over the target (atomic on POSIX). A failure (e.g. disk full) removes the temporary file and
leaves the previous version of the target intact; the error names the file and the reason
("No space left on device").

A process killed by ``kill -9`` mid-write cannot remove its temporary file. Temporary names
carry their writer (a hash of the host name and the process id), and the first write of a
process into a folder removes the temporary files there whose writer is a process of this host
that no longer runs: stale files never pile up, and a live writer's file is never touched.

Where a command writes is checked before it does any work (:func:`output_folder`,
:func:`output_file`): a file where a folder is wanted, or a location that cannot be written
(read-only, no permission), is a :class:`~nocdet.errors.ConfigError` naming the option and path.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from nocdet.errors import ConfigError, NocdetError

_UMASK = os.umask(0)
os.umask(_UMASK)
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_OWNER = re.compile(r"\.([0-9a-f]{8})-(\d+)\.[^.]*\.tmp$")  # ... .<host>-<pid>.<random>.tmp
_swept: set[tuple[int, str]] = set()  # (pid, folder) pairs already swept by this process


def owner_tag() -> str:
    """``<host hash>-<pid>``: names this process in temporary file and folder names."""
    return f"{_HOST}-{os.getpid()}"


def is_orphan(name: str) -> bool:
    """Whether ``name`` is a temporary file or folder of a dead process of this host."""
    match = _OWNER.search(name)
    if match is None or match.group(1) != _HOST:
        return False
    try:
        os.kill(int(match.group(2)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # alive (another user's), or not a pid at all
        return False
    return False


def remove_orphans(folder: str | Path) -> None:
    """Delete the temporary files and folders in ``folder`` left by dead processes (see module doc)."""
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(".tmp") and is_orphan(entry.name):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    _remove(entry.path)


def output_folder(path: str | Path, option: str = "--out") -> Path:
    """Create the folder ``path`` that a command writes into and check it can be written; returns
    it. Refused (ConfigError naming ``option`` and the path): a file at ``path`` or above it, and a
    location where nothing can be written (tested by writing, which also catches read-only file
    systems and root-owned folders that permission bits alone would not)."""
    path = Path(path)
    _refuse_files_in_the_way(path, path, option)
    _probe(path, path, option)
    return path


def output_file(path: str | Path, option: str = "--out") -> Path:
    """Check that the file ``path`` can be written (creating its folder); returns it. Refused as
    :func:`output_folder` refuses, and a folder at ``path`` itself. An existing file there is
    kept until the command replaces it (atomically, :func:`atomic_open`)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name")
    _refuse_files_in_the_way(path.parent, path, option)
    _probe(path.parent, path, option)
    return path


def _refuse_files_in_the_way(folder: Path, given: Path, option: str) -> None:
    """ConfigError when ``folder`` or a folder above it is a file (``given``: the path as given)."""
    for parent in (folder, *folder.parents):
        if parent.is_dir():
            return
        if parent.exists():
            if parent == given:
                raise ConfigError(f"{option} {given} is a file; give a folder")
            raise ConfigError(f"{option} {given}: {parent} is a file, not a folder")


def _probe(folder: Path, given: Path, option: str) -> None:
    """Make ``folder`` and write (and remove) an empty file in it; ConfigError naming ``given`` if not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".probe.{owner_tag()}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"{option} {given}: cannot write there ({err.strerror or err})") from err


def remove_entries(folder: str | Path, names: Iterable[str]) -> None:
    """Delete the named files and folders of ``folder`` that exist (the outputs a tool owns there)."""
    for name in names:
        target = Path(folder) / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on clean exit it replaces ``path`` atomically."""
    if mode not in ("wb", "w"):
        raise ValueError("atomic_open writes only ('w' or 'wb')")
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as err:
        _remove(tmp)
        raise NocdetError(f"could not write {path}: {err.strerror or err} (previous version kept)") from err
    except BaseException:
        _remove(tmp)
        raise
    _sweep_once(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """``torch.save`` through :func:`atomic_open`."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _sweep_once(folder: Path) -> None:
    """:func:`remove_orphans` on the first write of this process into ``folder`` (cheap after)."""
    key = (os.getpid(), str(folder))
    if key not in _swept:
        _swept.add(key)
        remove_orphans(folder)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)
