"""The on-disk caches under a cache root (a config's ``cache_dir``), listed and removed by ``nocdet cache``.

A root holds two kinds of entries, one folder each:

* ``roi_features/<key>/``: an RoI feature cache (:mod:`nocdet.features.roi_cache`), described by
  its ``settings.json`` (backbone, pyramid scales, store, the data set split that built it; keyed
  by image content, it serves every reading of those images);
* ``proposals/selective_search-<digest>/``: Selective Search boxes per image
  (:class:`nocdet.proposals.selective_search.ProposalCache`), described by its ``settings.json``.

An entry's "last used" time is the newest modification time of its files: RoI feature caches
touch a ``last-used`` file whenever they are built or opened; proposal files are written once.
Anything else under a root is not nocdet's and is neither listed nor removed.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from nocdet.errors import DataError

ROI_FEATURES = "roi_features"
PROPOSALS = "proposals"
_PROPOSALS_PREFIX = "selective_search-"


@dataclass(frozen=True)
class CacheEntry:
    """One cache folder: its kind ("roi-features" or "proposals"), key (folder name), what it holds,
    its size in bytes, when it was last used (seconds since the epoch) and whether it is complete."""

    kind: str
    key: str
    path: Path
    description: str
    size: int
    last_used: float
    complete: bool


def list_entries(root: str | Path) -> list[CacheEntry]:
    """The cache entries under ``root``, RoI feature caches first, each kind by key; none when
    ``root`` does not exist."""
    root = Path(root)
    entries = []
    for folder in _folders(root / ROI_FEATURES):
        entries.append(_entry("roi-features", folder, *_describe_features(folder)))
    for folder in _folders(root / PROPOSALS):
        if folder.name.startswith(_PROPOSALS_PREFIX):
            entries.append(_entry("proposals", folder, *_describe_proposals(folder)))
    return entries


def remove_entry(entry: CacheEntry) -> None:
    """Delete one cache folder; an entry that is already gone is not an error."""
    if entry.path.exists():
        shutil.rmtree(entry.path)


def format_bytes(size: float) -> str:
    """``size`` bytes in the largest unit (powers of 1000, up to TB) that keeps it >= 1: "512 B", "2.6 GB"."""
    units = ("B", "kB", "MB", "GB", "TB")
    power = 0
    while size >= 1000 and power < len(units) - 1:
        size /= 1000
        power += 1
    return f"{size:.0f} B" if power == 0 else f"{size:.1f} {units[power]}"


def _folders(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []


def _entry(kind: str, folder: Path, description: str, complete: bool) -> CacheEntry:
    size, newest = 0, folder.stat().st_mtime
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            stat = path.stat()
            size += stat.st_size
            newest = max(newest, stat.st_mtime)
    return CacheEntry(kind, folder.name, folder, description, size, newest, complete)


def _read_settings(folder: Path) -> dict | None:
    try:
        settings = json.loads((folder / "settings.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise DataError(f"unreadable cache settings ({err}); remove the folder", path=folder / "settings.json") from err
    return settings if isinstance(settings, dict) else None


def _describe_features(folder: Path) -> tuple[str, bool]:
    """"<backbone> scales <s1,s2,...> <store> store <data set split>" (the split that built it; a
    cache of format 1, keyed by image ids, is said to be no longer read) and whether every shard
    finished."""
    settings = _read_settings(folder)
    if settings is None:
        return "RoI features (no settings.json: unfinished)", False
    extraction = settings.get("settings") or {}
    scales = ",".join(str(s) for s in extraction.get("scales", []))
    text = (f"{settings.get('backbone', '?')} scales {scales} {extraction.get('store', 'pooled')} store "
            f"{settings.get('dataset', '?')}")
    if settings.get("format", 1) < 2:
        text += " [format 1 of an older nocdet, keyed by image ids: no longer read, remove it]"
    done = [p.name for p in folder.glob("shard-*-of-*.done.json")]
    world = int(done[0].split("-of-")[1].split(".")[0]) if done else 0
    return text, bool(done) and len(done) == world


def _describe_proposals(folder: Path) -> tuple[str, bool]:
    """"selective search <settings>, <n> images"; always complete (one file per image)."""
    settings = _read_settings(folder) or {}
    options = "".join(f" {key} {_short(settings[key])}" for key in ("color_spaces", "ks", "min_size", "max_side")
                      if key in settings)
    images = sum(1 for _ in folder.glob("*.npz"))
    return f"selective search{options}, {images} images", True


def _short(value: object) -> str:
    """A settings value as "hsv,lab", "50,100", "8" or "none"."""
    if isinstance(value, list):
        return ",".join(_short(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "none" if value is None else str(value)
