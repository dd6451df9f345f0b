"""Builders shared by the data tests (imported by name, so the module name is unique)."""

from __future__ import annotations

from typing import Any

# Side of the tiny image processor's output images, in pixels.
PROCESSOR_SIDE = 8


def conversation(*turns: str, image: str | None = None, sample_id: str | None = None) -> dict[str, Any]:
    """Build a LLaVA record from alternating human and gpt values."""
    record: dict[str, Any] = {
        "conversations": [
            {"from": "human" if index % 2 == 0 else "gpt", "value": value} for index, value in enumerate(turns)
        ]
    }
    if image is not None:
        record["image"] = image
    if sample_id is not None:
        record["id"] = sample_id
    return record
