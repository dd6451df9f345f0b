"""Token-level losses on the packed logit rows: supervised cross-entropy and logit distillation.

Both terms are computed in one chunked pass over the student's logits. Each chunk of rows is
converted to fp32, its loss and its gradient with respect to the student's logits are
computed at once, and the gradient is written into a buffer that the backward pass returns.
So no fp32 [tokens, vocab] tensor larger than one chunk is ever alive, the teacher's logits
are never copied whole, and the student's logits are read once for both terms.

Normalisation rule (what makes gradient accumulation exact): each term is a sum over tokens
divided by the number of tokens of its kind in the whole optimizer step, summed over every
micro-batch and every data-parallel rank. With that divisor, batch 4 with accumulation 1 and
batch 1 with accumulation 4 give the same gradient, because the per-token contributions are
the same and only their grouping into micro-batches differs. The caller passes the step
totals (`ce_normalizer`, `kd_normalizer`); without them, the counts of this call are used,
which is the per-batch mean. Divisors are clamped to at least 1, so a batch with no
supervised token gives 0, never 0/0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from alignkd.constants import IGNORE_INDEX
from alignkd.errors import ModelError
from alignkd.losses.divergence import Divergence, log_probs_pair, token_divergence

logger = logging.getLogger(__name__)

_logged_vocabulary_cuts: set[tuple[int, int, int]] = set()

# Default chunk: about this many fp32 values per [rows, vocab] tensor, 8 MiB. Measured on 2 CPU
# cores with a 32,000-token vocabulary (benchmarks/logit_loss.py), chunks of 64 rows used less
# memory and time than chunks of 256.
DEFAULT_CHUNK_VALUES = 2**21
MIN_CHUNK_ROWS = 16


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk that keep one fp32 [rows, vocab] tensor near DEFAULT_CHUNK_VALUES values."""
    return max(MIN_CHUNK_ROWS, DEFAULT_CHUNK_VALUES // max(vocab_size, 1))


@dataclass
class TokenLosses:
    """Result of `token_losses`.

    Fields:
        total: differentiable scalar, ce_weight * cross_entropy + kd_weight * distillation.
        cross_entropy: detached scalar, the normalised supervised cross-entropy.
        distillation: detached scalar, the normalised logit distillation term (0 without a teacher).
    """

    total: torch.Tensor
    cross_entropy: torch.Tensor
    distillation: torch.Tensor


def shared_vocabulary_size(student_vocab: int, teacher_vocab: int, tokenizer_length: int | None) -> int:
    """Return how many leading vocabulary columns the logit distillation compares.

    Checkpoints often pad the embedding matrix beyond the tokenizer (to a multiple of 64, say).
    Such padding rows are cut off: both models are compared on the first `tokenizer_length`
    columns. Any other difference is an error, because the two models would then not share
    token ids.
    """
    if tokenizer_length is None:
        if student_vocab != teacher_vocab:
            raise ModelError(
                f"teacher vocabulary ({teacher_vocab}) and student vocabulary ({student_vocab}) differ; "
                "pass the tokenizer length so that padding rows can be cut, or use models that share a tokenizer"
            )
        return student_vocab

    if student_vocab < tokenizer_length or teacher_vocab < tokenizer_length:
        raise ModelError(
            f"teacher vocabulary ({teacher_vocab}) and student vocabulary ({student_vocab}) cannot both cover "
            f"the tokenizer's {tokenizer_length} tokens; teacher and student must share one tokenizer"
        )

    if max(student_vocab, teacher_vocab) > tokenizer_length:
        key = (student_vocab, teacher_vocab, tokenizer_length)
        if key not in _logged_vocabulary_cuts:
            _logged_vocabulary_cuts.add(key)
            logger.info(
                "Logit distillation compares the first %d vocabulary entries (the tokenizer length); "
                "student has %d and teacher %d, the rest are padding rows",
                tokenizer_length,
                student_vocab,
                teacher_vocab,
            )
    return tokenizer_length


TeacherLogProbs = Callable[[torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]
"""(student_chunk [rows, vocab] fp32, start, end) -> fp32 (student, teacher) log-probabilities of
the chunk's rows over the support that the divergence compares."""


class _ChunkedTokenLoss(torch.autograd.Function):
    """Fused, chunked cross-entropy + distillation whose gradient is computed in forward.

    `settings["teacher_log_probs"]` gives the distributions each chunk compares: full-vocabulary
    teacher logits here, top-k buckets for a cached teacher (alignkd.losses.topk).
    """

    @staticmethod
    def forward(ctx, student_logits, targets, distill_mask, settings):
        rows, _ = student_logits.shape
        needs_grad = ctx.needs_input_grad[0]
        grad_dtype = torch.float32 if student_logits.dtype == torch.float16 else student_logits.dtype
        grad = torch.empty(student_logits.shape, dtype=grad_dtype, device=student_logits.device) if needs_grad else None

        ce_sum = torch.zeros((), dtype=torch.float32, device=student_logits.device)
        kd_sum = torch.zeros((), dtype=torch.float32, device=student_logits.device)
        teacher_log_probs: TeacherLogProbs | None = settings["teacher_log_probs"]
        use_teacher = teacher_log_probs is not None and settings["kd_weight"] != 0.0
        temperature = settings["temperature"]

        for start in range(0, rows, settings["chunk_size"]):
            end = min(rows, start + settings["chunk_size"])
            student_chunk = student_logits[start:end].detach().float().requires_grad_(needs_grad)

            with torch.enable_grad():
                chunk_ce = F.cross_entropy(student_chunk, targets[start:end], ignore_index=IGNORE_INDEX, reduction="sum")
                chunk_total = settings["ce_weight"] * chunk_ce / settings["ce_normalizer"]

                chunk_kd = torch.zeros((), dtype=torch.float32, device=student_logits.device)
                if use_teacher:
                    student_side, teacher_side = teacher_log_probs(student_chunk, start, end)
                    per_token = token_divergence(student_side, teacher_side, settings["divergence"], settings["beta"])
                    # Hinton's T^2 keeps gradient magnitudes independent of the temperature.
                    chunk_kd = (per_token * distill_mask[start:end]).sum() * temperature**2
                    chunk_total = chunk_total + settings["kd_weight"] * chunk_kd / settings["kd_normalizer"]

            if needs_grad:
                (chunk_grad,) = torch.autograd.grad(chunk_total, student_chunk)
                grad[start:end] = chunk_grad
            ce_sum += chunk_ce.detach()
            kd_sum += chunk_kd.detach()

        cross_entropy = ce_sum / settings["ce_normalizer"]
        distillation = kd_sum / settings["kd_normalizer"]
        total = settings["ce_weight"] * cross_entropy + settings["kd_weight"] * distillation

        ctx.save_for_backward(grad if needs_grad else None)
        ctx.mark_non_differentiable(cross_entropy, distillation)
        return total, cross_entropy, distillation

    @staticmethod
    def backward(ctx, grad_total, _grad_cross_entropy, _grad_distillation):
        (grad,) = ctx.saved_tensors
        if grad is None:
            return None, None, None, None
        # The buffer was made for this call alone, so scaling it in place avoids a second
        # [tokens, vocab] allocation; Trainer passes 1 (or the world size under DDP).
        if not (grad_total.numel() == 1 and float(grad_total) == 1.0):
            grad.mul_(grad_total.to(grad.dtype))
        return grad, None, None, None


def check_rows(student_logits: torch.Tensor, targets: torch.Tensor, chunk_size: int | None, temperature: float) -> int:
    """Check the shared arguments of the chunked losses and return the chunk size to use."""
    if student_logits.dim() != 2:
        raise ValueError(f"student_logits must be [tokens, vocab], got shape {tuple(student_logits.shape)}")
    if targets.shape != student_logits.shape[:1]:
        raise ValueError(f"targets must be [tokens]={student_logits.shape[0]}, got shape {tuple(targets.shape)}")
    if chunk_size is None:
        chunk_size = default_chunk_rows(student_logits.shape[1])
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return int(chunk_size)


def chunked_token_losses(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_log_probs: TeacherLogProbs | None,
    distill_mask: torch.Tensor | None,
    *,
    ce_weight: float,
    kd_weight: float,
    divergence: Divergence,
    beta: float,
    temperature: float,
    ce_normalizer: float | torch.Tensor | None,
    kd_normalizer: float | torch.Tensor | None,
    chunk_size: int,
) -> TokenLosses:
    """Run the chunked cross-entropy + distillation pass once the teacher side is prepared.

    Applies the normalisation rule of the module docstring; `token_losses` and
    `alignkd.losses.topk.topk_token_losses` differ only in `teacher_log_probs`.
    """
    supervised = targets != IGNORE_INDEX
    if distill_mask is None:
        distill_mask = supervised
    distill_mask = distill_mask.to(dtype=torch.float32)

    if ce_normalizer is None:
        ce_normalizer = supervised.sum()
    if kd_normalizer is None:
        kd_normalizer = distill_mask.sum()

    settings = {
        "ce_weight": float(ce_weight),
        "kd_weight": float(kd_weight),
        "divergence": divergence,
        "beta": float(beta),
        "temperature": float(temperature),
        "ce_normalizer": max(float(ce_normalizer), 1.0),
        "kd_normalizer": max(float(kd_normalizer), 1.0),
        "chunk_size": int(chunk_size),
        "teacher_log_probs": teacher_log_probs,
    }
    total, cross_entropy, distillation = _ChunkedTokenLoss.apply(student_logits, targets, distill_mask, settings)
    return TokenLosses(total=total, cross_entropy=cross_entropy, distillation=distillation)


def token_losses(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    distill_mask: torch.Tensor | None = None,
    *,
    ce_weight: float = 1.0,
    kd_weight: float = 1.0,
    divergence: Divergence = "reverse_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    ce_normalizer: float | torch.Tensor | None = None,
    kd_normalizer: float | torch.Tensor | None = None,
    tokenizer_length: int | None = None,
    chunk_size: int | None = None,
) -> TokenLosses:
    """Compute the supervised cross-entropy and the logit distillation term in one pass.

    Args:
        student_logits: [tokens, student_vocab], the student's packed logit rows.
        targets: LongTensor [tokens], the next-token ids; IGNORE_INDEX rows are left out of
            the cross-entropy.
        teacher_logits: [tokens, teacher_vocab] rows at the same positions, or None for no
            distillation. Never differentiated.
        distill_mask: [tokens] bool or float weights of the distillation term per row; by
            default the supervised rows (targets != IGNORE_INDEX).
        ce_weight, kd_weight: weights of the two terms in `total`.
        divergence, beta: see `alignkd.losses.divergence.Divergence`.
        temperature: softens both distributions; the term is multiplied by temperature^2.
        ce_normalizer, kd_normalizer: step totals of supervised and distilled tokens (see the
            module docstring); default: the counts in this call.
        tokenizer_length: shared tokenizer length, used to cut padding rows off the vocabularies.
        chunk_size: rows per fp32 chunk; peak extra memory is about chunk_size * vocab * 4
            bytes times a small constant. None: `default_chunk_rows(vocab)`.

    Returns:
        TokenLosses with the differentiable total and the two detached terms.
    """
    chunk_size = check_rows(student_logits, targets, chunk_size, temperature)

    teacher_log_probs = None
    if teacher_logits is not None:
        if teacher_logits.shape[0] != student_logits.shape[0]:
            raise ModelError(
                f"teacher has {teacher_logits.shape[0]} logit rows and student {student_logits.shape[0]}; "
                "the rows must be taken at the same positions of the same samples"
            )
        shared_vocab = shared_vocabulary_size(student_logits.shape[1], teacher_logits.shape[1], tokenizer_length)

        def teacher_log_probs(student_chunk: torch.Tensor, start: int, end: int):
            return log_probs_pair(student_chunk[:, :shared_vocab], teacher_logits[start:end, :shared_vocab], temperature)

    return chunked_token_losses(
        student_logits,
        targets,
        teacher_log_probs,
        distill_mask,
        ce_weight=ce_weight,
        kd_weight=kd_weight,
        divergence=divergence,
        beta=beta,
        temperature=temperature,
        ce_normalizer=ce_normalizer,
        kd_normalizer=kd_normalizer,
        chunk_size=chunk_size,
    )
