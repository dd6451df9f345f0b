"""Builders shared by the teacher cache tests (imported by name, so the module name is unique)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from alignkd.cache.writer import CacheOptions, write_teacher_cache
from alignkd.config import apply_overrides, from_mapping
from alignkd.data.dataset import LlavaDataset, prepare_dataset
from alignkd.losses.objective import AlignKDObjective, ResolvedObjective
from alignkd.models.loading import LoadedVLM, get_vlm_adapter, load_vlm
from alignkd.training.config import DistillConfig
from alignkd.training.teacher import LiveTeacher

# Larger than the tiny tokenizer's vocabulary, so the cache keeps every token and its tail is empty.
FULL_VOCABULARY_K = 1000


VISION = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "patch_size": 8, "image_size": 32}

# The teacher is wider and has more heads than the student; both emit 2 x 2 vision tokens, so
# "all" logit positions line up.
TEACHER_SPEC = {
    "family": "mobilevlm",
    "vision": VISION,
    "projector": {"type": "ldpnetv2", "grid_size": 2},
    "language": {"hidden_size": 48, "num_layers": 2, "num_heads": 4, "intermediate_size": 96},
}
STUDENT_SPEC = {
    "family": "mobilevlm",
    "vision": VISION,
    "projector": {"type": "ldpnetv2", "grid_size": 2},
    "language": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64},
}

# Answers of different lengths, so that a length threshold splits the samples.
ANSWERS = ["yes", "A dog.", "A cat sitting on a red sofa.", "the quick brown fox jumps over the lazy dog"]

NUM_SAMPLES = 12


def write_llava_data(folder: Path, num_samples: int = NUM_SAMPLES, seed: int = 0) -> Path:
    """Write random 32x32 images and a LLaVA JSON; every fourth sample is text-only."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples: list[dict[str, Any]] = []
    for index in range(num_samples):
        answer = ANSWERS[index % len(ANSWERS)]
        if index % 4 == 3:
            samples.append(
                {
                    "id": f"text-{index}",
                    "conversations": [
                        {"from": "human", "value": "How many digits are there?"},
                        {"from": "gpt", "value": answer},
                    ],
                }
            )
            continue
        pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{index}.png")
        samples.append(
            {
                "id": f"image-{index}",
                "image": f"{index}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat is in the image?"},
                    {"from": "gpt", "value": answer},
                ],
            }
        )
    path = folder / "train.json"
    path.write_text(json.dumps(samples), encoding="utf-8")
    return path


def config_mapping(setup: dict[str, Path], output_dir: Path, **sections: Any) -> dict[str, Any]:
    """A distill config mapping for the tiny setup; keyword arguments replace top-level sections."""
    config: dict[str, Any] = {
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
                "max_steps": 2,
                "warmup_ratio": 0.0,
                "shuffle": False,
            },
        },
        "loss": {"preset": "paper"},
        "logging_steps": 1,
        "save_steps": 100,
    }
    config.update(sections)
    return config


def write_config(setup: dict[str, Path], output_dir: Path, **sections: Any) -> Path:
    """Write `config_mapping(...)` as YAML next to `output_dir` and return its path."""
    path = output_dir.parent / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config_mapping(setup, output_dir, **sections)), encoding="utf-8")
    return path


def distill_config(setup: dict[str, Path], output_dir: Path, *overrides: str, **sections: Any) -> DistillConfig:
    return from_mapping(DistillConfig, apply_overrides(config_mapping(setup, output_dir, **sections), list(overrides)))


def write_cache(config: DistillConfig, out: Path, **options: Any) -> Path:
    options.setdefault("batch_size", 4)
    write_teacher_cache(config, CacheOptions(out=out, **options))
    return out


@dataclass
class LiveRun:
    """The parts of a distillation run that the parity tests compare: models, data and objective."""

    config: DistillConfig
    settings: ResolvedObjective
    student: LoadedVLM
    teacher: LoadedVLM
    dataset: LlavaDataset
    objective: AlignKDObjective

    def batches(self, batch_size: int = 4) -> list[dict[str, Any]]:
        collate = self.dataset.collator()
        items = [self.dataset[index] for index in range(len(self.dataset))]
        return [collate(items[start : start + batch_size]) for start in range(0, len(items), batch_size)]

    def live_teacher(self) -> LiveTeacher:
        return LiveTeacher(self.teacher.model)


def build_live_run(config: DistillConfig, settings: ResolvedObjective | None = None) -> LiveRun:
    """Load both models and the finetune dataset as `distill` does, and build the objective for `settings`."""
    settings = settings or config.loss.resolved()
    student = load_vlm(config.student.path)
    teacher = load_vlm(config.teacher.path)
    student_adapter = get_vlm_adapter(student.model)
    teacher_adapter = get_vlm_adapter(teacher.model)
    processors = {"student": student.image_processor, "teacher": teacher.image_processor}
    num_vision_tokens = max(student_adapter.num_vision_tokens, teacher_adapter.num_vision_tokens)
    dataset, _ = prepare_dataset(config.finetune.data, student.tokenizer, processors, num_vision_tokens, progress=False)
    objective = AlignKDObjective(
        settings,
        teacher_heads=teacher_adapter.num_attention_heads,
        student_heads=student_adapter.num_attention_heads,
        teacher_width=teacher_adapter.hidden_size,
        student_width=student_adapter.hidden_size,
        tokenizer_length=len(student.tokenizer),
    )
    return LiveRun(config, settings, student, teacher, dataset, objective)


def with_settings(settings: ResolvedObjective, **changes: Any) -> ResolvedObjective:
    return dataclasses.replace(settings, **changes)
