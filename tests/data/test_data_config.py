"""DataConfig loading through the strict config loader."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from alignkd.config import ConfigError, from_mapping
from alignkd.data.config import DataConfig


def test_defaults_from_path_only():
    config = from_mapping(DataConfig, {"path": "data.jsonl"})

    assert config.path == Path("data.jsonl")
    assert config.template == "v1"
    assert config.on_error == "error"
    assert config.image_check == "header"
    assert config.accept_truncated_images is False
    assert config.alpha_background == (255, 255, 255)


def test_full_mapping_loads():
    config = from_mapping(
        DataConfig,
        {
            "path": "mix.json",
            "image_folder": "images",
            "template": "plain",
            "max_length": 512,
            "on_error": "skip",
            "max_skip_fraction": 0.05,
            "image_check": "decode",
            "image_aspect_ratio": "resize",
            "alpha_background": [0, 0, 0],
            "group_by": "length",
        },
        prefix="data",
    )

    assert config.image_folder == Path("images")
    assert config.max_length == 512
    assert config.alpha_background == (0, 0, 0)


def test_path_required():
    with pytest.raises(ConfigError, match="missing required config key 'data.path'"):
        from_mapping(DataConfig, {}, prefix="data")


def test_unknown_key_named():
    with pytest.raises(ConfigError, match="unknown config key 'data.on_eror'.*did you mean 'on_error'"):
        from_mapping(DataConfig, {"path": "a.json", "on_eror": "skip"}, prefix="data")


def test_wrong_choice_named():
    with pytest.raises(ConfigError, match="data.image_check: expected one of 'exists', 'header', 'decode'"):
        from_mapping(DataConfig, {"path": "a.json", "image_check": "full"}, prefix="data")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("max_skip_fraction", 1.5, "max_skip_fraction: expected a fraction between 0 and 1"),
        ("max_over_length_fraction", -0.1, "max_over_length_fraction: expected a fraction"),
        ("max_length", 0, "max_length: expected a positive number"),
        ("max_image_pixels", 0, "max_image_pixels: expected a positive number"),
        ("alpha_background", [255, 255], "alpha_background: expected three integers"),
        ("alpha_background", [0, 0, 256], "alpha_background: expected three integers"),
        ("template", "vicuna", "template: unknown chat template 'vicuna'; available: llama_2, plain, v1"),
        ("check_workers", 0, "check_workers: expected at least 1"),
    ],
)
def test_invalid_values_rejected(key, value, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(DataConfig, {"path": "a.json", key: value}, prefix="data")


def test_every_field_documented():
    source = inspect.getsource(DataConfig)

    for field in dataclasses.fields(DataConfig):
        declaration = source.index(f"    {field.name}:")
        following = source[declaration:].splitlines()[1].strip()
        assert following.startswith('"""'), field.name
