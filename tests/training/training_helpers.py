"""Specs of a tiny teacher and student, a small LLaVA data set, and distill configs for them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image


VISION = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "patch_size": 8, "image_size": 32}

# The teacher is wider and has more heads than the student; both emit 2 x 2 vision tokens.
TEACHER_SPEC = {
    "family": "mobilevlm",
    "vision": VISION,
    "projector": {"type": "ldpnetv2", "grid_size": 2},
    "language": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128},
}
STUDENT_SPEC = {
    "family": "mobilevlm",
    "vision": VISION,
    "projector": {"type": "ldpnetv2", "grid_size": 2},
    "language": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64},
}

ANSWERS = ["A cat sitting on a red sofa.", "A dog.", "the quick brown fox", "yes", "no"]


def write_llava_data(folder: Path, num_samples: int = 24, text_only_every: int = 4, seed: int = 0) -> Path:
    """Write random images and a LLaVA JSON whose answers depend on the image's mean colour."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(num_samples):
        if text_only_every and index % text_only_every == text_only_every - 1:
            samples.append(
                {
                    "id": f"text-{index}",
                    "conversations": [
                        {"from": "human", "value": "How many digits are there?"},
                        {"from": "gpt", "value": str(index % 10)},
                    ],
                }
            )
            continue
        bright = index % 2 == 0
        pixels = rng.integers(128 if bright else 0, 256 if bright else 128, size=(32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{index}.png")
        samples.append(
            {
                "id": f"image-{index}",
                "image": f"{index}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat is in the image?"},
                    {"from": "gpt", "value": ANSWERS[0] if bright else ANSWERS[1]},
                ],
            }
        )
    path = folder / "train.json"
    path.write_text(json.dumps(samples), encoding="utf-8")
    return path


def write_config(setup: dict, output_dir: Path, **overrides) -> Path:
    """Write a distill config for the tiny setup; keyword arguments replace top-level sections."""
    config = {
        "teacher": {"path": str(setup["teacher"])},
        "student": {"path": str(setup["student"])},
        "output_dir": str(output_dir),
        "stage": "finetune",
        "finetune": {
            "data": {
                "path": str(setup["data"]),
                "image_folder": str(setup["data"].parent / "images"),
                "template": "v1",
                "max_length": 128,
            },
            "optimization": {
                "learning_rate": 2.0e-3,
                "per_device_batch_size": 4,
                "gradient_accumulation_steps": 2,
                "max_steps": 6,
                "warmup_ratio": 0.0,
            },
        },
        "loss": {"preset": "paper"},
        "logging_steps": 1,
        "save_steps": 2,
    }
    config.update(overrides)
    path = output_dir.parent / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path
