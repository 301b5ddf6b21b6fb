"""``nocdet cache ls`` / ``nocdet cache clean``: what the RoI feature and proposal caches hold, and removing them.

* ``nocdet cache ls [--root DIR ...]`` prints each entry of each cache root (a config's
  ``cache_dir``; the demo's is ``runs/demo/cache``): key, kind, size, when last used, and what
  it holds (backbone, pyramid scales, store and data set split of an RoI feature cache).
* ``nocdet cache clean [--root DIR ...] (KEY ... | --all | --older-than DAYS) [--dry-run]`` removes
  the named entries (a key or a unique start of one), all of them, or those unused for DAYS days;
  ``--older-than`` also narrows ``KEY``\\s and ``--all``.

Without ``--root`` both default roots are used: the configs' default ``cache_dir``
(``.cache/nocdet`` in the current folder) and ``$XDG_CACHE_HOME/nocdet`` (``nocdet proposals compute``).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from nocdet.caches import CacheEntry, format_bytes, list_entries, remove_entry
from nocdet.errors import ConfigError

NAME = "cache"
HELP = "list (ls) or remove (clean) the RoI feature and proposal caches, with their sizes"

DAY = 86400.0


def default_roots() -> list[Path]:
    """``.cache/nocdet`` (the configs' default ``cache_dir``) and ``$XDG_CACHE_HOME/nocdet``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return [Path(".cache/nocdet"), Path(base) / "nocdet"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    roots_help = "a cache root, e.g. runs/demo/cache (repeatable; default: .cache/nocdet and $XDG_CACHE_HOME/nocdet)"
    ls = actions.add_parser("ls", help="list the cache entries: key, kind, size, last use, what they hold",
                            description="List the cache entries of each root.")
    ls.add_argument("--root", type=Path, action="append", metavar="DIR", help=roots_help)
    clean = actions.add_parser("clean", help="remove cache entries (KEY..., --all or --older-than DAYS)",
                               description="Remove cache entries: the named ones, all, or those unused for DAYS "
                                           "days. An entry still being built by a running command breaks it.")
    clean.add_argument("keys", nargs="*", metavar="KEY", help="entries to remove (a key as listed, or its start)")
    clean.add_argument("--root", type=Path, action="append", metavar="DIR", help=roots_help)
    clean.add_argument("--all", action="store_true", help="every entry of the roots")
    clean.add_argument("--older-than", type=float, metavar="DAYS",
                       help="only entries last used more than DAYS days ago (alone: all such entries)")
    clean.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")


def run(args: argparse.Namespace) -> int:
    roots = args.root or default_roots()
    entries = {root: list_entries(root) for root in roots}
    if args.action == "ls":
        return _list(entries)
    return _clean(args, [e for found in entries.values() for e in found])


def _row(entry: CacheEntry) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used))
    what = entry.description + ("" if entry.complete else " (incomplete)")
    return f"  {entry.key:<30}  {entry.kind:<12}  {format_bytes(entry.size):>9}  {when}  {what}"


def _list(entries: dict[Path, list[CacheEntry]]) -> int:
    for root, found in entries.items():
        if not found:
            print(f"{root}: no caches")
            continue
        print(f"{root}: {len(found)} entries, {format_bytes(sum(e.size for e in found))}")
        print(f"  {'KEY':<30}  {'KIND':<12}  {'SIZE':>9}  {'LAST USED':<16}  WHAT")
        for entry in found:
            print(_row(entry))
    return 0


def _select(args: argparse.Namespace, entries: list[CacheEntry]) -> list[CacheEntry]:
    if args.all and args.keys:
        raise ConfigError("give KEYs or --all, not both")
    if not (args.all or args.keys or args.older_than is not None):
        raise ConfigError("say what to remove: KEY ..., --all or --older-than DAYS (nocdet cache ls lists the keys)")
    if args.older_than is not None and args.older_than < 0:
        raise ConfigError(f"--older-than must be >= 0 days, got {args.older_than}")
    chosen = entries
    if args.keys:
        chosen = []
        for key in args.keys:
            matches = [e for e in entries if e.key == key] or [e for e in entries if e.key.startswith(key)]
            if not matches:
                raise ConfigError(f"no cache entry {key!r} in {', '.join(str(r) for r in args.root or default_roots())} "
                                  "(nocdet cache ls lists them)")
            if len({e.key for e in matches}) > 1:
                raise ConfigError(f"{key!r} starts several keys: {', '.join(sorted({e.key for e in matches}))}")
            chosen += [e for e in matches if e not in chosen]
    if args.older_than is not None:
        cutoff = time.time() - args.older_than * DAY
        chosen = [e for e in chosen if e.last_used < cutoff]
    return chosen


def _clean(args: argparse.Namespace, entries: list[CacheEntry]) -> int:
    chosen = _select(args, entries)
    verb = "would remove" if args.dry_run else "removed"
    for entry in chosen:
        if not args.dry_run:
            remove_entry(entry)
        print(f"{verb} {entry.path} ({format_bytes(entry.size)}, {entry.kind}: {entry.description})")
    print(f"{verb} {len(chosen)} of {len(entries)} entries, {format_bytes(sum(e.size for e in chosen))}")
    return 0
