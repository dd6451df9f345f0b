"""Fixtures for the data tests: small data files, image files and a tiny image processor."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from data_helpers import PROCESSOR_SIDE
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil


@pytest.fixture
def write_data(tmp_path: Path) -> Callable[..., Path]:
    """Write records as a JSON list (`.json`) or JSON Lines (`.jsonl`) and return the path."""

    def write(records: list[Any], name: str = "data.json") -> Path:
        path = tmp_path / name
        if path.suffix == ".jsonl":
            path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
        else:
            path.write_text(json.dumps(records), encoding="utf-8")
        return path

    return write


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A folder with a few valid images: red.png (12x6 RGB) and blue.jpg (6x12 RGB)."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (12, 6), (255, 0, 0)).save(folder / "red.png")
    Image.new("RGB", (6, 12), (0, 0, 255)).save(folder / "blue.jpg")
    return folder


@pytest.fixture
def image_processor() -> CLIPImageProcessorPil:
    """CLIP preprocessing at PROCESSOR_SIDE pixels, built locally."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": PROCESSOR_SIDE}, crop_size={"height": PROCESSOR_SIDE, "width": PROCESSOR_SIDE}
    )
