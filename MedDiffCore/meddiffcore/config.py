"""Dataclass configs from TOML/YAML files and JSON model cards.

Configs are plain nested dataclasses. This module maps dictionaries onto them
strictly: an unknown key is an error that names the key, the section and the
keys that are known, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (.toml) or YAML (.yaml/.yml) or JSON file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist", "check the path, or copy one of the configs in meddiffcore/configs/")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file '{path}' has an unknown extension '{suffix}'", "use .toml, .yaml or .json")
    except ConfigError:
        raise
    except Exception as exc:  # parser errors carry line numbers; keep them
        raise ConfigError(f"config file '{path}' cannot be parsed: {exc}", "fix the syntax at the position given") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must contain a table of settings, not {type(data).__name__}", "see the example configs")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as TOML scalars/arrays) to a nested dict copy."""
    result = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' has no '='", "write overrides as section.key=value, e.g. train.steps=100")
        key, raw = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is a value, not a section", "check the key path")
        node[parts[-1]] = value
    return result


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclasses.

    Unknown keys raise :class:`ConfigError`; values are coerced to the annotated
    types where that is unambiguous (lists to tuples, ints to floats).
    """
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"section '{where or cls.__name__}' must be a table, got {type(data).__name__}", "see the example configs")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        section = f"section '{where}'" if where else f"{cls.__name__}"
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)} in {section}",
            f"known keys are: {', '.join(sorted(fields))}",
        )
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid settings in '{where or cls.__name__}': {exc}", "check the values against the documentation") from exc


def _coerce(annotation: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(f"'{path}' cannot be None", "give a value")
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"'{path}' must be a table of settings", f"see the fields of {annotation.__name__}")
        return from_dict(annotation, value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{path}' must be a list, got {value!r}", "write it as [a, b, ...]")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"'{path}' must have {len(args)} items, got {len(value)}", "check the list length")
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value))) if args else tuple(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{path}' must be a list, got {value!r}", "write it as [a, b, ...]")
        return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{path}' must be a table", "write it as {key = value}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"'{path}' is {value!r}", f"choose one of {', '.join(repr(a) for a in args)}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{path}' must be a number, got {value!r}", "write a number such as 0.5")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"'{path}' must be a whole number, got {value!r}", "write an integer such as 100")
        return int(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{path}' must be true or false, got {value!r}", "write true or false")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{path}' must be text, got {value!r}", "quote the value")
        return value
    return value


def to_dict(obj: Any) -> Any:
    """A dataclass (possibly nested) as plain JSON-compatible data; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
