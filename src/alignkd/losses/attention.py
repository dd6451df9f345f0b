"""First-layer text-to-vision attention distillation.

The block compared is the first decoder layer's attention probabilities whose rows are the
text queries after the image and whose columns are the image's vision keys, taken for each
sample from its own spans (see `alignkd.models.interface.VLMOutput.text_vision_attention`).
The teacher block is mapped to the student's head count by a `HeadAdapter`; the loss is the
mean squared error per sample, averaged over the samples that have such a block.

Normalisation: the per-sample MSE is a mean over [student_heads, text_i, vision] cells, so
every sample weighs the same whatever its text length. The batch term is the sum of the
per-sample MSEs divided by `normalizer`: the number of contributing samples in the whole
optimizer step (all micro-batches and ranks), which makes gradient accumulation exact. By
default it is the count in this batch. Samples without an image, or with no text after it,
contribute nothing; a batch without any gives exactly 0 (never 0/0).
"""

from __future__ import annotations

import torch

from alignkd.errors import ModelError
from alignkd.losses.adapters import HeadAdapter


def contributing_rows(row_mask: torch.Tensor) -> torch.Tensor:
    """LongTensor [batch]: number of text query rows per sample, from a [batch, text] row mask."""
    return row_mask.sum(dim=1)


def text_vision_attention_loss(
    student_attention: torch.Tensor,
    teacher_attention: torch.Tensor,
    row_mask: torch.Tensor,
    head_adapter: HeadAdapter,
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error between the adapted teacher block and the student block.

    Args:
        student_attention: [batch, student_heads, text, vision], probabilities (with grad).
        teacher_attention: [batch, teacher_heads, text, vision], probabilities (no grad).
        row_mask: BoolTensor [batch, text]; True on real text-query rows. Teacher and student
            must agree on it (same text tokens after the image).
        head_adapter: maps teacher heads to student heads.
        normalizer: contributing samples in the whole optimizer step; default: in this batch.

    Returns:
        fp32 scalar: sum over samples of the per-sample MSE, divided by `normalizer`.
    """
    if student_attention.shape[0] != teacher_attention.shape[0] or student_attention.shape[2:] != teacher_attention.shape[2:]:
        raise ModelError(
            "the first-layer attention blocks of teacher and student do not line up: teacher "
            f"[batch, heads, text, vision] = {list(teacher_attention.shape)}, student = {list(student_attention.shape)}. "
            "Both models must turn an image into the same number of vision tokens for the attention term; "
            "set its weight to 0 otherwise"
        )

    rows = contributing_rows(row_mask)
    contributing = rows > 0
    if normalizer is None:
        normalizer = contributing.sum()

    adapted = head_adapter(teacher_attention.float())
    squared_error = (adapted - student_attention.float()).pow(2)
    squared_error = squared_error * row_mask[:, None, :, None].to(squared_error.dtype)

    heads, vision = student_attention.shape[1], student_attention.shape[3]
    cells = (rows * heads * vision).clamp(min=1).to(squared_error.dtype)
    per_sample = squared_error.sum(dim=(1, 2, 3)) / cells
    per_sample = per_sample * contributing.to(per_sample.dtype)

    return per_sample.sum() / torch.as_tensor(normalizer, dtype=per_sample.dtype).clamp(min=1)
