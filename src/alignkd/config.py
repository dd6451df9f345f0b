"""Strict loading of dataclass configs from YAML mappings.

Every config in alignkd is a dataclass whose fields are documented where they are declared.
`from_mapping` builds one from a plain mapping (parsed YAML) and rejects unknown keys and
values of the wrong type with an error that names the dotted key, so that a typo such as
`learning_rat: 1e-4` stops the run instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, Union

import yaml

from alignkd.errors import AlignKDError

T = TypeVar("T")


class ConfigError(AlignKDError, ValueError):
    """A config key is unknown, missing or has a value of the wrong type."""


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(choice) for choice in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(_describe(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against `annotation` and convert it (for example a str to a Path)."""
    origin = typing.get_origin(annotation)

    if annotation is Any:
        return value

    if origin in (Union, types.UnionType):
        arguments = typing.get_args(annotation)
        if value is None and type(None) in arguments:
            return None
        alternatives = [argument for argument in arguments if argument is not type(None)]
        # With one real alternative (an optional field), its own error is the most precise one,
        # for example an unknown key deep inside an optional section.
        if len(alternatives) == 1:
            return _convert(value, alternatives[0], key)
        for argument in alternatives:
            try:
                return _convert(value, argument, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_describe(annotation)}, got {value!r}")

    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        items = [_convert(item, item_type, f"{key}[{index}]") for index, item in enumerate(value)]
        return tuple(items) if origin is tuple else items

    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, value_type = typing.get_args(annotation) or (str, Any)
        return {str(name): _convert(item, value_type, f"{key}.{name}") for name, item in value.items()}

    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {annotation.__name__} fields, got {value!r}")
        return from_mapping(annotation, value, prefix=key)

    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            # PyYAML follows YAML 1.1, which reads "1e-4" (no dot) as a string.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if annotation is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key}: expected a path, got {value!r}")
        return Path(value)
    return value


def from_mapping(cls: type[T], mapping: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build the dataclass `cls` from `mapping`, rejecting unknown keys and wrong types.

    Missing keys take the field's default; a field without a default is required.
    Errors name the dotted key (`prefix.field`) and suggest the closest valid key.
    """
    mapping = dict(mapping or {})
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    hints = typing.get_type_hints(cls)

    unknown = [name for name in mapping if name not in fields]
    if unknown:
        messages = []
        for name in unknown:
            dotted = f"{prefix}.{name}" if prefix else name
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            messages.append(f"unknown config key '{dotted}'{hint}")
        valid = ", ".join(sorted(fields))
        raise ConfigError("; ".join(messages) + f". Valid keys here: {valid}")

    values = {}
    for name, field in fields.items():
        dotted = f"{prefix}.{name}" if prefix else name
        if name in mapping:
            values[name] = _convert(mapping[name], hints[name], dotted)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key '{dotted}' ({_describe(hints[name])})")

    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as error:
            raise ConfigError(f"{prefix + ': ' if prefix else ''}{error}") from None
    return instance


def to_mapping(instance: Any) -> Any:
    """Turn a config dataclass (or nested values) into plain YAML-safe data."""
    if dataclasses.is_dataclass(instance) and not isinstance(instance, type):
        return {field.name: to_mapping(getattr(instance, field.name)) for field in dataclasses.fields(instance)}
    if isinstance(instance, Mapping):
        return {str(key): to_mapping(value) for key, value in instance.items()}
    if isinstance(instance, (list, tuple)):
        return [to_mapping(value) for value in instance]
    if isinstance(instance, Path):
        return str(instance)
    return instance


def apply_overrides(mapping: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `mapping` with `dotted.key=value` overrides applied.

    Values are parsed as YAML, so `train.max_steps=10` gives an int and `loss.preset=sft` a str.
    """
    result = _deep_copy(mapping)
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override '{override}' must have the form dotted.key=value")
        dotted, raw_value = override.split("=", 1)
        keys = dotted.strip().split(".")
        if not all(keys):
            raise ConfigError(f"override '{override}' has an empty key")
        target = result
        for key in keys[:-1]:
            child = target.get(key)
            if child is None:
                child = target[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{override}': '{key}' is not a mapping")
            target = child
        target[keys[-1]] = yaml.safe_load(raw_value) if raw_value.strip() else ""
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _deep_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_deep_copy(item) for item in value]
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must contain a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys, got {type(data).__name__}")
    return data
