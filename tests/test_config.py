"""The strict config loader: unknown keys, types, nesting, overrides and round trips."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from alignkd.config import ConfigError, apply_overrides, from_mapping, load_yaml, to_mapping


@dataclass
class Inner:
    rate: float = 0.1
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    optional_inner: Inner | None = None
    path: Path | None = None
    sizes: list[int] = field(default_factory=list)
    flag: bool = False


def test_defaults_and_nesting():
    config = from_mapping(Outer, {"name": "x", "inner": {"rate": 2}, "sizes": [1, 2], "path": "a/b"})
    assert config.inner.rate == 2.0
    assert isinstance(config.inner.rate, float)
    assert config.inner.mode == "a"
    assert config.sizes == [1, 2]
    assert config.path == Path("a/b")
    assert config.optional_inner is None


def test_unknown_key_suggests_close_match():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.rat' \(did you mean 'rate'\?\)"):
        from_mapping(Outer, {"name": "x", "inner": {"rat": 1.0}})


def test_unknown_key_inside_optional_section():
    with pytest.raises(ConfigError, match="unknown config key 'optional_inner.speed'"):
        from_mapping(Outer, {"name": "x", "optional_inner": {"speed": 1.0}})


def test_wrong_types_name_the_key():
    with pytest.raises(ConfigError, match="inner.rate: expected a number, got 'fast'"):
        from_mapping(Outer, {"name": "x", "inner": {"rate": "fast"}})
    with pytest.raises(ConfigError, match="flag: expected true or false, got 1"):
        from_mapping(Outer, {"name": "x", "flag": 1})
    with pytest.raises(ConfigError, match=r"inner.mode: expected one of 'a', 'b', got 'c'"):
        from_mapping(Outer, {"name": "x", "inner": {"mode": "c"}})
    with pytest.raises(ConfigError, match=r"sizes\[1\]: expected an integer"):
        from_mapping(Outer, {"name": "x", "sizes": [1, 2.5]})


def test_missing_required_key():
    with pytest.raises(ConfigError, match="missing required config key 'name'"):
        from_mapping(Outer, {})


def test_overrides_parse_yaml_values():
    mapping = apply_overrides({"name": "x", "inner": {"rate": 0.1}}, ["inner.rate=3e-4", "flag=true", "inner.mode=b", "new.key=7"])
    # YAML 1.1 reads "3e-4" as a string; the loader accepts it for a float field.
    assert from_mapping(Outer, {"name": "x", **{k: v for k, v in mapping.items() if k != "new"}}).inner.rate == 3e-4
    assert mapping["flag"] is True
    assert mapping["inner"]["mode"] == "b"
    assert mapping["new"]["key"] == 7
    with pytest.raises(ConfigError, match="dotted.key=value"):
        apply_overrides({}, ["no-equals-sign"])
    with pytest.raises(ConfigError, match="'name' is not a mapping"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_round_trip_through_mapping():
    config = from_mapping(Outer, {"name": "x", "optional_inner": {"rate": 5}, "path": "p", "sizes": [3]})
    assert from_mapping(Outer, to_mapping(config)) == config


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_yaml(listing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(empty) == {}
