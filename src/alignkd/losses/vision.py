"""Text-focused vision-token distillation at the projector output.

For each sample with an image:

    L_all   = MSE(adapter(teacher_tokens), student_tokens) over all vision tokens
    L_focus = the same MSE over the top-K vision tokens that the teacher's text queries attend
              to most: score[n] = mean over heads of the sum over text queries of the teacher's
              first-layer attention to vision token n
    L       = L_all + focus_weight * L_focus

K is clipped to the number of vision tokens. A sample with an image but no text after it has
no scores, so its focus term is 0 and only L_all counts.

Normalisation: per-sample means (over tokens and width), summed over the image samples and
divided by `normalizer`, the number of image samples in the whole optimizer step (default:
in this batch). A batch without images gives exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkd.errors import ModelError
from alignkd.losses.adapters import TokenAdapter


@dataclass
class VisionLoss:
    """Result of `vision_token_loss`: the differentiable total and its two detached parts."""

    total: torch.Tensor
    all_tokens: torch.Tensor
    focus_tokens: torch.Tensor


def text_focus_scores(teacher_attention: torch.Tensor, row_mask: torch.Tensor) -> torch.Tensor:
    """Score each vision token by how much the teacher's text queries attend to it.

    Args:
        teacher_attention: [batch, heads, text, vision] first-layer probabilities.
        row_mask: BoolTensor [batch, text], True on real text-query rows.

    Returns:
        fp32 [batch, vision]: the sum over real text queries, averaged over heads.
    """
    masked = teacher_attention.float() * row_mask[:, None, :, None].to(torch.float32)
    return masked.sum(dim=2).mean(dim=1)


def vision_token_loss(
    student_tokens: torch.Tensor,
    teacher_tokens: torch.Tensor,
    token_adapter: TokenAdapter,
    focus_scores: torch.Tensor | None = None,
    has_text: torch.Tensor | None = None,
    *,
    top_k: int = 16,
    focus_weight: float = 0.1,
    normalizer: float | torch.Tensor | None = None,
) -> VisionLoss:
    """Distil the projector's vision tokens, with extra weight on the text-focused ones.

    Args:
        student_tokens: [images, vision, student_width] (with grad).
        teacher_tokens: [images, vision, teacher_width] for the same images, in the same order.
        token_adapter: maps teacher width to student width.
        focus_scores: fp32 [images, vision] teacher text-focus scores (see
            `text_focus_scores`), or None to skip the focus term.
        has_text: BoolTensor [images]; False for images with no text query after them, whose
            focus term is 0. Default: every image has text.
        top_k: number of focus tokens per image, clipped to the number of vision tokens.
        focus_weight: lambda, the weight of the focus term.
        normalizer: image samples in the whole optimizer step; default: in this batch.
    """
    if student_tokens.shape[:2] != teacher_tokens.shape[:2]:
        raise ModelError(
            f"teacher vision tokens [images, tokens, width] = {list(teacher_tokens.shape)} and student "
            f"{list(student_tokens.shape)} do not line up; both projectors must emit the same number of "
            "vision tokens for the vision-token term (set its weight to 0 otherwise)"
        )

    images, vision = student_tokens.shape[:2]
    if normalizer is None:
        normalizer = images
    normalizer = torch.as_tensor(normalizer, dtype=torch.float32, device=student_tokens.device).clamp(min=1)

    adapted = token_adapter(teacher_tokens.to(student_tokens.dtype)).float()
    squared_error = (adapted - student_tokens.float()).pow(2).mean(dim=-1)  # [images, vision]
    all_tokens = squared_error.mean(dim=1).sum() / normalizer if vision > 0 else squared_error.sum()

    focus_tokens = squared_error.new_zeros(())
    if focus_scores is not None and images > 0 and vision > 0 and top_k > 0:
        k = min(top_k, vision)
        top_indices = focus_scores.topk(k, dim=1).indices
        per_image = squared_error.gather(1, top_indices).mean(dim=1)
        if has_text is not None:
            per_image = per_image * has_text.to(per_image.dtype)
        focus_tokens = per_image.sum() / normalizer

    total = all_tokens + focus_weight * focus_tokens
    return VisionLoss(total=total, all_tokens=all_tokens.detach(), focus_tokens=focus_tokens.detach())
