"""Typed dataclass configs from plain mappings (YAML, JSON, Ray configs), checked once.

One validator for every config of the project (GLEE-Net's model config, the experiment
config, the search config): each dataclass field's annotation says what a value may be,
and the first value that does not fit raises a one-line `ConfigError` naming the dotted
field and what it accepts. Checks beyond the type (ranges, choices that depend on other
fields) stay with each config's own `check`/`validate`.

Supported annotations: bool, int, float (a YAML string such as "2e-4" is read as a number),
str, Any, nested dataclasses, `X | None`, unions, list[X], tuple[X, ...], dict[...] and
Literal[...] choices.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any


class ConfigError(ValueError):
    """A config value is wrong; the message names the field and the allowed values."""


def from_mapping(cls: type, data: Any, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from `data`, every value coerced to its annotation.

    Unknown keys are refused by name; absent keys take the dataclass defaults.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(
                f"unknown config key {prefix}{key}: allowed keys are {', '.join(names)}"
            )
        kwargs[key] = coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def coerce(tp: Any, value: Any, name: str) -> Any:
    """`value` as type `tp`, or ConfigError naming `name`."""
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value or {}, f"{name}.")
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        choice(name, value, allowed)
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(option, value, name)
            except ConfigError:
                continue
        shown = " or ".join(_type_name(o) for o in options)
        raise ConfigError(f"{name}={value!r} has the wrong type: expected {shown}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}={value!r} must be a list")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        out = [coerce(item, v, f"{name}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}={value!r} must be a mapping")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name}={value!r} must be an integer")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 2e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}={value!r} must be a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name}={value!r} must be a string")
    if tp is Any:
        return value
    raise ConfigError(f"{name}: unsupported type {tp}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " or ".join(_shown(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value).lower()


def choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """ConfigError unless `value` is one of `allowed` (of the same type: True is not 1)."""
    if not any(type(value) is type(a) and value == a for a in allowed):
        shown = ", ".join(_shown(a) for a in allowed)
        raise ConfigError(f"{name}={value!r} is not allowed: choose one of {shown}")


def at_least(name: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{name}={value!r} is too small: it must be >= {low}")


def positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name}={value!r} must be > 0")


def in_range(name: str, value: float, low: float, high: float) -> None:
    """low <= value < high."""
    if not low <= value < high:
        raise ConfigError(f"{name}={value!r} is out of range: it must be in [{low}, {high})")


__all__ = ["ConfigError", "at_least", "choice", "coerce", "from_mapping", "in_range", "positive"]
