"""Typed experiment configuration from YAML files with inheritance and dotted overrides.

A config file is a YAML mapping; ``_base_: other.yaml`` (a path relative to the file, or a list of
them) inherits another file, whose mappings are merged key by key (lists and scalars are replaced).
``--set a.b=c`` overrides on the command line are parsed as YAML values. The merged mapping is
converted into the dataclass schema: unknown or misspelt keys are errors that suggest the closest
valid key, values are checked against the field types and against the bounds a field declares
with :func:`bounded` (the same checks for every setting's config). A field that only one setting
reads is declared with :func:`only_in`; :func:`foreign_keys` and :func:`clear_foreign` keep it out
of the other setting.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from nocdet.errors import ConfigError

T = TypeVar("T")
BASE_KEY = "_base_"


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config file, resolving ``_base_`` inheritance (cycles are errors)."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"{path}: circular _base_ inheritance ({chain})")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from err
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping, got {type(data).__name__}")
    bases = data.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY} must be a file name or a list of file names, got {bases!r}")
    merged: dict = {}
    for base in bases:
        merged = merge(merged, load_yaml(path.parent / base, (*_seen, path)))
    return merge(merged, data)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key written twice in one mapping is an error (PyYAML keeps the
    last one silently, so a second ``solver:`` block would drop the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first on line {seen[key] + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def merge(base: Mapping, override: Mapping) -> dict:
    """Recursive merge: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a nested mapping."""
    out = merge({}, data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from err
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, Mapping) else {}
            node = node[part]
        node[parts[-1]] = value
    return out


_BOUNDS = "bounds"
_SETTING = "setting"
_OPERATORS = {"gt": (">", lambda v, b: v > b), "ge": (">=", lambda v, b: v >= b),
              "lt": ("<", lambda v, b: v < b), "le": ("<=", lambda v, b: v <= b)}


def bounded(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            gt: float | None = None, ge: float | None = None, lt: float | None = None,
            le: float | None = None) -> Any:
    """A dataclass field whose value (each item of a list) must satisfy the given bounds, e.g.
    ``lr: float = bounded(0.01, gt=0)``; :func:`check_bounds` and :func:`from_dict` enforce them."""
    limits = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_BOUNDS: limits})


def only_in(setting: str, default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            **limits: float) -> Any:
    """A field (or a whole section) that only the ``setting`` experiments read, e.g.
    ``variant: str = only_in("e2e", "c4")``; its default is that setting's default, and it is None
    in every other setting. ``limits`` are :func:`bounded`'s."""
    field = bounded(default, default_factory=default_factory, **limits)
    field.metadata = types.MappingProxyType({**field.metadata, _SETTING: setting})
    return field


def foreign_keys(cls: type, data: Mapping, setting: str, where: str = "") -> list[str]:
    """The dotted keys of ``data`` (a raw mapping for dataclass ``cls``) that give a value to a
    field declared :func:`only_in` another setting than ``setting``; unknown keys are ignored."""
    found = []
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        f = fields.get(key)
        if f is None or value is None:
            continue
        owner = f.metadata.get(_SETTING)
        if owner is not None and owner != setting:
            found.append(f"{_join(where, key)} ({owner} only)")
        elif isinstance(value, Mapping):
            section = _dataclass_of(hints[key])
            if section is not None:
                found += foreign_keys(section, value, setting, _join(where, key))
    return found


def clear_foreign(obj: Any, setting: str) -> None:
    """Set every field of dataclass ``obj`` (and of the dataclasses in it) declared
    :func:`only_in` another setting than ``setting`` to None."""
    for f in dataclasses.fields(obj):
        owner = f.metadata.get(_SETTING)
        value = getattr(obj, f.name)
        if owner is not None and owner != setting:
            setattr(obj, f.name, None)
        elif dataclasses.is_dataclass(value):
            clear_foreign(value, setting)


def missing_own(obj: Any, setting: str, where: str = "") -> list[str]:
    """The dotted keys of fields declared :func:`only_in` ``setting`` that are None although
    their default is not (e.g. ``sampling.images_per_batch: null`` in a frozen config)."""
    found = []
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), _join(where, f.name)
        if f.metadata.get(_SETTING) == setting and value is None and (
                f.default is not None or f.default_factory is not dataclasses.MISSING):
            found.append(key)
        elif dataclasses.is_dataclass(value):
            found += missing_own(value, setting, key)
    return found


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass in a field type (``X`` or ``X | None``), if any."""
    candidates = [tp, *typing.get_args(tp)]
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def check_bounds(obj: Any, where: str = "") -> None:
    """Raise ConfigError for a field of dataclass ``obj`` (and of the dataclasses in it) outside its
    :func:`bounded` limits; NaN is never within bounds."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), _join(where, f.name)
        if dataclasses.is_dataclass(value):
            check_bounds(value, key)
        limits = f.metadata.get(_BOUNDS)
        if not limits or value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            for name, limit in limits.items():
                symbol, holds = _OPERATORS[name]
                if not holds(item, limit):
                    got = value if not isinstance(value, (list, tuple)) else f"{item} in {list(value)}"
                    raise ConfigError(f"{key} must be {symbol} {limit}, got {got}")


def from_dict(cls: type[T], data: Mapping, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {_join(where, close[0])!r}?" if close else ""
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key {_join(where, key)!r}{hint} (valid keys: {valid})")
        if value is None and _SETTING in fields[key].metadata:  # another setting's field (its check is the root's)
            kwargs[key] = None
        else:
            kwargs[key] = _convert(hints[key], value, _join(where, key))
    try:
        obj = cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where or 'config'}: {err}") from err
    if not where:  # the root checks every nested config once
        check_bounds(obj)
    return obj


def to_dict(obj: Any, setting: str | None = None) -> Any:
    """A dataclass config as plain YAML-able data. The fields declared :func:`only_in` another
    setting than ``setting`` (by default the config's own ``setting`` field; None: keep all) are
    left out, so that a config lists what its setting reads."""
    if dataclasses.is_dataclass(obj):
        setting = getattr(obj, "setting", setting)
        return {f.name: to_dict(getattr(obj, f.name), setting) for f in dataclasses.fields(obj)
                if setting is None or f.metadata.get(_SETTING, setting) == setting}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v, setting) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v, setting) for k, v in obj.items()}
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load ``path`` (with inheritance), apply overrides and build the typed config."""
    data = load_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides))


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, where)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value
