"""The module that Trainer trains: the student and the objective (with its adapters).

The teacher is deliberately not a registered submodule. So it is not in `parameters()` (the
optimizer never sees it), not in `state_dict()` (checkpoints hold the student and the
adapters only), and not wrapped by DistributedDataParallel.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from alignkd.losses.objective import AlignKDObjective, StepNormalizers
from alignkd.models.forward import forward_vlm
from alignkd.training.teacher import TeacherSource

# Batch keys that the collator produces and the forward consumes.
BATCH_KEYS = ("input_ids", "attention_mask", "labels", "image_mask", "pixel_values", "teacher_pixel_values", "sample_index")


class DistillationModule(nn.Module):
    """Student + Align-KD objective; one forward returns {"loss": total, "terms": {name: value}}.

    The output is a plain dict so that DistributedDataParallel finds the loss tensor in it.

    Args:
        student: the VLM being trained.
        objective: the Align-KD objective; its adapters train with the student.
        teacher: where the teacher's outputs come from, or None for the "sft" preset.
    """

    def __init__(self, student: nn.Module, objective: AlignKDObjective, teacher: TeacherSource | None = None):
        super().__init__()
        self.student = student
        self.objective = objective
        # Bypass nn.Module registration on purpose (see the module docstring).
        object.__setattr__(self, "teacher", teacher)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        image_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        teacher_pixel_values: torch.Tensor | None = None,
        sample_index: torch.Tensor | None = None,
        normalizers: StepNormalizers | None = None,
    ) -> dict[str, object]:
        settings = self.objective.settings
        batch: Mapping[str, torch.Tensor | None] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "image_mask": image_mask,
            "pixel_values": pixel_values,
            "teacher_pixel_values": teacher_pixel_values,
            "sample_index": sample_index,
        }

        teacher_output = None
        if settings.needs_teacher:
            if self.teacher is None:
                raise ValueError(f"the '{settings.preset}' objective needs a teacher, but none was given")
            teacher_output = self.teacher(batch, settings)

        student_output = forward_vlm(
            self.student,
            input_ids,
            attention_mask,
            labels=labels,
            pixel_values=pixel_values,
            image_mask=image_mask,
            logit_positions=settings.student_logit_positions,
            capture_attention=settings.capture_student_attention,
        )
        result = self.objective(student_output, teacher_output, normalizers)
        return {"loss": result.total, "terms": result.terms}
