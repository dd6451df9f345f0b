"""The demo's teacher and students: sizes, the shipped teacher, and student initialisation.

Both use the MobileVLM V2 architecture (CLIP vision tower, LDPv2 projector, LLaMA decoder)
at toy sizes. As in the Align-KD paper, teacher and students share one vision tower: a
student starts from the teacher's trained tower, which stays frozen, plus its own random
projector and a smaller, narrower LLM with fewer heads.

The teacher ships with the package (`assets/teacher`, about 1.5 MB, with its tokenizer and
image processor) so that the demo does not spend its time budget training it; `alignkd demo
--train-teacher` reproduces it.
"""

from __future__ import annotations

import copy
import logging
from importlib import resources
from pathlib import Path
from typing import Any

from alignkd.models.loading import LoadedVLM, get_vlm_adapter, load_vlm, save_vlm
from alignkd.models.spec import init_model

logger = logging.getLogger(__name__)

# The 32 x 32 scene in 16-pixel patches gives one patch per grid cell (a 2 x 2 grid), and the
# LDPv2 projector keeps that grid, so each model gets 4 vision tokens per image.
VISION_SPEC: dict[str, Any] = {"hidden_size": 64, "num_layers": 3, "num_heads": 4, "patch_size": 16, "image_size": 32}
VISION_TOKEN_GRID = (2, 2)

TEACHER_SPEC: dict[str, Any] = {
    "family": "mobilevlm",
    "vision": VISION_SPEC,
    "projector": {"type": "ldpnetv2", "grid_size": VISION_TOKEN_GRID[0]},
    "language": {
        "hidden_size": 128,
        "num_layers": 2,
        "num_heads": 4,
        "intermediate_size": 256,
        "max_position_embeddings": 256,
    },
}

STUDENT_SPEC: dict[str, Any] = {
    "family": "mobilevlm",
    "vision": VISION_SPEC,
    "projector": {"type": "ldpnetv2", "grid_size": VISION_TOKEN_GRID[0]},
    "language": {
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 256,
    },
}


def shipped_teacher_dir() -> Path:
    """Folder of the teacher that ships with alignkd."""
    return Path(str(resources.files("alignkd.demo") / "assets" / "teacher"))


def has_shipped_teacher() -> bool:
    return (shipped_teacher_dir() / "config.json").is_file()


def init_student(teacher: LoadedVLM, spec: dict[str, Any], seed: int, output_dir: str | Path) -> Path:
    """Write a random student that shares the teacher's trained vision tower and tokenizer.

    The student's vision spec must equal the teacher's: the tower is copied weight for weight.
    """
    spec = copy.deepcopy(spec)
    student = init_model(spec, teacher.tokenizer, seed=seed)
    teacher_tower = get_vlm_adapter(teacher.model).vision_tower
    student_tower = get_vlm_adapter(student.model).vision_tower
    student_tower.load_state_dict(teacher_tower.state_dict(), strict=True)
    save_vlm(student.model, teacher.tokenizer, teacher.image_processor, output_dir)
    return Path(output_dir)


def count_parameters(model_dir: str | Path) -> dict[str, int]:
    """Parameters of a saved model: in all, and in its vision tower, projector and LLM."""
    loaded = load_vlm(model_dir)
    adapter = get_vlm_adapter(loaded.model)
    return {
        "total": sum(parameter.numel() for parameter in loaded.model.parameters()),
        "vision_tower": sum(parameter.numel() for parameter in adapter.vision_tower.parameters()),
        "projector": sum(parameter.numel() for parameter in adapter.projector.parameters()),
        "language_model": sum(parameter.numel() for parameter in adapter.language_model.parameters()),
    }
