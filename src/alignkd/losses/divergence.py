"""Per-token divergences between a student's and a teacher's next-token distributions.

Everything here works on fp32 log-probabilities, because divergences computed from
probabilities underflow: a student probability of 1e-30 is 0 in fp16, and the log of it is
-inf, which turns into NaN gradients however the result is masked afterwards.

`log_probs_pair` turns two rows of logits into log-probabilities over their shared support:
a vocabulary entry that is -inf in either model (a masked or padded token) is removed from
both distributions before any arithmetic, so that every value and gradient stays finite.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Divergence = Literal["reverse_kl", "forward_kl", "jsd", "teacher_ce"]
"""The logit distillation divergences.

- "reverse_kl": KL(p_student || p_teacher), mode-seeking, the Align-KD paper's choice.
- "forward_kl": KL(p_teacher || p_student), the classic Hinton distillation loss.
- "jsd": generalised Jensen-Shannon divergence with interpolation `beta`:
  beta * KL(p_teacher || m) + (1 - beta) * KL(p_student || m), m = beta * p_teacher + (1 - beta) * p_student.
  beta = 0.5 is the symmetric JSD.
- "teacher_ce": -sum p_teacher * log p_student, the cross-entropy against the teacher's
  distribution that the authors' released code uses. It equals forward KL plus the teacher's
  entropy, so it has the same gradient but a larger value.
"""

# Stand-in for -inf after masking. It is finite in fp32, and exp() of it is exactly 0.
MASKED_LOGIT = -1.0e30


def log_probs_pair(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return fp32 log-softmax of both logit rows over their shared finite support.

    Args:
        student_logits: [tokens, vocab], any float dtype.
        teacher_logits: [tokens, vocab], any float dtype.
        temperature: logits are divided by it before the softmax.

    Returns:
        (student_log_probs, teacher_log_probs), each fp32 [tokens, vocab]. Entries that are
        -inf in either input get probability exactly 0 in both. A row with no finite entry
        at all (a padded row) becomes two identical uniform distributions, so its divergence
        and gradient are 0.
    """
    student = student_logits.float() / temperature
    teacher = teacher_logits.float() / temperature

    masked = (student == float("-inf")) | (teacher == float("-inf"))
    if masked.any():
        student = student.masked_fill(masked, MASKED_LOGIT)
        teacher = teacher.masked_fill(masked, MASKED_LOGIT)

    return torch.log_softmax(student, dim=-1), torch.log_softmax(teacher, dim=-1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities: [tokens, vocab] -> [tokens]."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def token_divergence(
    student_log_probs: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    divergence: Divergence,
    beta: float = 0.5,
) -> torch.Tensor:
    """Return the divergence of each row: [tokens, vocab] x 2 -> [tokens] (fp32).

    The teacher side is treated as a constant: callers pass teacher log-probabilities that
    do not require grad.
    """
    if divergence == "reverse_kl":
        return _kl(student_log_probs, teacher_log_probs)

    if divergence == "forward_kl":
        return _kl(teacher_log_probs, student_log_probs)

    if divergence == "teacher_ce":
        return -(teacher_log_probs.exp() * student_log_probs).sum(dim=-1)

    if divergence == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd beta must lie strictly between 0 and 1, got {beta}")
        mixture_log_probs = torch.logsumexp(
            torch.stack([teacher_log_probs + math.log(beta), student_log_probs + math.log(1.0 - beta)]),
            dim=0,
        )
        return beta * _kl(teacher_log_probs, mixture_log_probs) + (1.0 - beta) * _kl(
            student_log_probs, mixture_log_probs
        )

    raise ValueError(f"unknown divergence {divergence!r}; expected reverse_kl, forward_kl, jsd or teacher_ce")
