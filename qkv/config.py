"""Configuration: dataclasses filled from TOML/JSON, with `--set a.b=c` overrides.

Every unknown key is an error that lists the valid ones; nothing is silently ignored.
"""
from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")




def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _type_name(t) -> str:
    if typing.get_origin(t) in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(t))
    if typing.get_origin(t) is list:
        (item,) = typing.get_args(t) or (Any,)
        return f"a list of {_type_name(item)}" if item is not Any else "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "unset (none)", dict: "a table"}.get(typing.get_origin(t) or t, str(t))


def fits(value: Any, t) -> bool:
    """Whether ``value`` (from TOML or JSON) is of annotated type ``t``. A bool is not an
    int, an int is a float, a list of the item type is a list."""
    origin = typing.get_origin(t)
    if t is Any:
        return True
    if origin in (types.UnionType, typing.Union):
        return any(fits(value, a) for a in typing.get_args(t))
    if origin is list:
        (item,) = typing.get_args(t) or (Any,)
        return isinstance(value, list) and all(fits(v, item) for v in value)
    if origin is dict or t is dict:
        return isinstance(value, dict)
    if t is type(None):
        return value is None
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, t)


def from_dict(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``values``: unknown keys and values of the wrong type
    raise ConfigError naming the key and what it takes."""
    section = f"[{where}] " if where else ""
    if not isinstance(values, dict):
        raise ConfigError(f"{section or cls.__name__ + ' '}must be a table of key = value pairs, "
                          f"got {type(values).__name__}")
    valid = field_names(cls)
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {section}{', '.join(unknown)}; "
            f"valid keys{' in [' + where + ']' if where else ''}: {', '.join(valid)}"
        )
    hints = typing.get_type_hints(cls)
    prefix = f"{where}." if where else ""
    for key, value in values.items():
        if not fits(value, hints[key]):
            raise ConfigError(f"{prefix}{key} must be {_type_name(hints[key])}, got {value!r}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        message = str(e)
        if where and not message.startswith(f"{where}."):
            message = f"{where}: {message}"
        raise ConfigError(message) from e


def merged(base: dict[str, Any], *overs: dict[str, Any]) -> dict[str, Any]:
    """Each of ``overs`` on top of ``base`` in turn, table by table: where both hold a table
    under one key (a preset's ``backbone`` and a config's ``[model.backbone]``) the two are
    merged the same way, so that setting one field of it keeps the others; any other value
    replaces."""
    out = dict(base)
    for over in overs:
        for key, value in over.items():
            out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e


def parse_value(text: str) -> Any:
    """TOML literal if it parses (1, 3e-4, true, "x", [1, 2]); otherwise the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a nested dict (in place, returned)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (e.g. train.max_steps=200), got {item!r}")
        *parents, leaf = key.strip().split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p!r} is a value, not a section")
        node[leaf] = parse_value(value.strip())
    return tree
