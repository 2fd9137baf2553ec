"""Configuration: dataclasses filled from TOML/JSON, with `--set a.b=c` overrides.

Every unknown key is an error that lists the valid ones; nothing is silently ignored.
"""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")




def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def from_dict(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``values``; unknown keys raise ConfigError."""
    valid = field_names(cls)
    unknown = sorted(set(values) - set(valid))
    if unknown:
        section = f"[{where}] " if where else ""
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {section}{', '.join(unknown)}; "
            f"valid keys{' in [' + where + ']' if where else ''}: {', '.join(valid)}"
        )
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


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
