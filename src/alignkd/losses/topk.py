"""Logit distillation against a teacher reduced to its top-k log-probabilities.

The teacher cache (`alignkd.cache`) keeps, for each logit row, the teacher's k most probable
token ids S with their log-probabilities at the run's temperature, and the log of the mass
outside them (the tail). This module defines the distillation term on that reduced form.

Buckets. The vocabulary is split into k + 1 buckets: the k tokens of S, and one tail bucket
that contains every other token. The teacher's bucket probabilities are exactly what is stored.
The student's are its probabilities of the k tokens (from its full softmax) and its mass on
the tokens outside S (the log-sum-exp of its logits over those tokens, so nothing cancels).
Each divergence is then computed between these two (k + 1)-bucket distributions, with the
same formulas as the full-vocabulary term (`alignkd.losses.divergence`):

- reverse_kl, forward_kl and jsd are f-divergences. Merging outcomes into buckets never
  increases an f-divergence (the data-processing inequality), so each bucketed value is a
  lower bound of the full-vocabulary value. The gap is the divergence between the two
  distributions restricted to the tail, weighted by the tail masses: it is 0 when the student
  spreads its tail mass in the teacher's proportions, and small when the tail mass is small.
- teacher_ce (-sum p_teacher * log p_student) is not an f-divergence. On buckets it equals the
  teacher's bucket entropy plus forward KL on buckets. It is also a lower bound of the
  full-vocabulary value. The gap is the forward-KL gap plus p_tail times the entropy of the
  teacher's distribution within the tail, and that second part does not depend on the student
  (no gradient).

With k equal to the vocabulary size the tail is empty (log-probability -inf) and every
divergence equals the full-vocabulary one. Entries whose teacher log-probability is -inf (a
masked token, or the empty tail) are removed from both distributions before any arithmetic, as
`log_probs_pair` does for the full vocabulary, so values and gradients stay finite.

Numerics follow `alignkd.losses.logits`: rows are processed in chunks in fp32, the gradient
with respect to the student's logits is computed in the forward pass, and each term is a sum
over rows divided by a step-wide normaliser. Gradient reaches the student's logits only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkd.errors import ModelError
from alignkd.losses.divergence import (
    MASKED_LOGIT,
    Divergence,
    log_probs_pair,
)
from alignkd.losses.logits import TokenLosses, check_rows, chunked_token_losses, default_chunk_rows, shared_vocabulary_size


@dataclass
class TopKLogProbs:
    """A teacher's next-token distributions reduced to k tokens and a tail bucket per row.

    Fields:
        log_probs: [rows, k] float; log p_teacher of each kept token at `temperature` (-inf allowed).
        token_ids: [rows, k] integer; the kept token ids, distinct within a row, below `vocab_size`.
        tail_log_prob: [rows] float; log of the teacher's mass on every other token, -inf when
            k equals `vocab_size`.
        vocab_size: vocabulary entries the distributions cover (the shared tokenizer length).
        temperature: the softmax temperature of the log-probabilities.
    """

    log_probs: torch.Tensor
    token_ids: torch.Tensor
    tail_log_prob: torch.Tensor
    vocab_size: int
    temperature: float

    @property
    def rows(self) -> int:
        return self.log_probs.shape[0]

    @property
    def k(self) -> int:
        return self.log_probs.shape[1]

    def to(self, device: torch.device | str) -> TopKLogProbs:
        return TopKLogProbs(
            self.log_probs.to(device),
            self.token_ids.to(device),
            self.tail_log_prob.to(device),
            self.vocab_size,
            self.temperature,
        )

    @classmethod
    def concatenate(cls, parts: list[TopKLogProbs]) -> TopKLogProbs:
        """Stack the rows of `parts` in order; they must share k, vocabulary size and temperature."""
        if not parts:
            raise ValueError("cannot concatenate an empty list of top-k rows")
        first = parts[0]
        for part in parts[1:]:
            if (part.k, part.vocab_size, part.temperature) != (first.k, first.vocab_size, first.temperature):
                raise ValueError(
                    f"top-k rows with k={part.k}, vocab_size={part.vocab_size}, temperature={part.temperature} "
                    f"cannot be stacked with k={first.k}, vocab_size={first.vocab_size}, "
                    f"temperature={first.temperature}"
                )
        return cls(
            torch.cat([part.log_probs for part in parts]),
            torch.cat([part.token_ids for part in parts]),
            torch.cat([part.tail_log_prob for part in parts]),
            first.vocab_size,
            first.temperature,
        )


def top_k_log_probs(
    logits: torch.Tensor,
    k: int,
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
) -> TopKLogProbs:
    """Reduce teacher logit rows to their top-k log-probabilities and the log of the tail mass.

    Args:
        logits: [rows, teacher_vocab], any float dtype.
        k: tokens kept per row; clipped to `vocab_size`.
        temperature: logits are divided by it before the softmax.
        vocab_size: leading columns that form the distribution (the tokenizer length, which cuts
            off embedding padding rows); default: every column.
        chunk_size: rows per fp32 chunk; None: `default_chunk_rows(vocab)`.

    Returns:
        fp32 log-probabilities sorted from the most probable token, int64 ids and the fp32 tail.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [rows, vocab], got shape {tuple(logits.shape)}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    vocab_size = logits.shape[1] if vocab_size is None else vocab_size
    if not 0 < vocab_size <= logits.shape[1]:
        raise ModelError(
            f"the teacher has {logits.shape[1]} logit columns, fewer than the {vocab_size} vocabulary entries "
            "to cache; the teacher's LM head must cover the tokenizer"
        )
    k = min(k, vocab_size)

    values, ids, tails = [], [], []
    if chunk_size is None:
        chunk_size = default_chunk_rows(logits.shape[1])
    for start in range(0, logits.shape[0], chunk_size):
        log_probs = torch.log_softmax(logits[start : start + chunk_size, :vocab_size].float() / temperature, dim=-1)
        top_values, top_ids = log_probs.topk(k, dim=-1)
        rest = log_probs.scatter(1, top_ids, float("-inf"))
        values.append(top_values)
        ids.append(top_ids)
        tails.append(torch.logsumexp(rest, dim=-1))

    if not values:
        empty = logits.new_zeros((0, k), dtype=torch.float32)
        return TopKLogProbs(empty, empty.long(), empty[:, 0], vocab_size, float(temperature))
    return TopKLogProbs(torch.cat(values), torch.cat(ids), torch.cat(tails), vocab_size, float(temperature))


def bucket_log_probs(
    student_logits: torch.Tensor,
    teacher: TopKLogProbs,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the student's and the teacher's fp32 log-probabilities over the k + 1 buckets.

    Args:
        student_logits: [rows, vocab] (the shared vocabulary only), differentiable.
        teacher: the same rows of the teacher, on the same device.
        temperature: divides the student's logits; the teacher's are stored at it.

    Returns:
        (student, teacher), each [rows, k + 1]; the last column is the tail bucket. Buckets that
        are -inf on either side have probability exactly 0 on both, and both rows are
        renormalised over the rest (see `log_probs_pair`).
    """
    student = student_logits.float() / temperature
    is_masked = student == float("-inf")
    # A -inf student logit becomes a finite stand-in, so a row of them gives no NaN; its bucket
    # is set back to -inf below and removed from both sides.
    student = student.masked_fill(is_masked, MASKED_LOGIT)
    ids = teacher.token_ids.long()

    normalizer = torch.logsumexp(student, dim=-1, keepdim=True)
    kept = student.gather(1, ids) - normalizer
    kept = kept.masked_fill(is_masked.gather(1, ids), float("-inf"))
    # The tail is summed over the tokens outside S in log space. When S is the whole vocabulary,
    # the result is about MASKED_LOGIT, and the teacher's -inf tail removes that bucket.
    outside = student.scatter(1, ids, MASKED_LOGIT)
    tail = torch.logsumexp(outside, dim=-1, keepdim=True) - normalizer

    student_buckets = torch.cat([kept, tail], dim=1)
    teacher_buckets = torch.cat([teacher.log_probs.float(), teacher.tail_log_prob.float()[:, None]], dim=1)
    return log_probs_pair(student_buckets, teacher_buckets, 1.0)


def topk_token_losses(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher: TopKLogProbs,
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
    """Compute the supervised cross-entropy and the top-k logit distillation term in one pass.

    The arguments are those of `alignkd.losses.logits.token_losses`, except that the teacher
    comes as top-k log-probabilities (see the module docstring for what the term then means).

    Args:
        student_logits: [tokens, student_vocab], the student's packed logit rows.
        targets: LongTensor [tokens]; IGNORE_INDEX rows are left out of the cross-entropy.
        teacher: the teacher's rows at the same positions; never differentiated.
        distill_mask: [tokens] bool or float weights of the distillation term per row; by
            default the supervised rows.
        temperature: must equal the temperature the teacher's log-probabilities were made at.
        tokenizer_length: shared tokenizer length; it must equal `teacher.vocab_size` when given.

    Raises:
        ModelError: the rows, the vocabulary or the temperature do not match the teacher's.
    """
    chunk_size = check_rows(student_logits, targets, chunk_size, temperature)
    if teacher.rows != student_logits.shape[0]:
        raise ModelError(
            f"the cached teacher has {teacher.rows} logit rows and the student {student_logits.shape[0]}; "
            "the rows must be taken at the same positions of the same samples"
        )
    if abs(teacher.temperature - temperature) > 1e-6 * temperature:
        raise ModelError(
            f"the teacher's log-probabilities were computed at temperature {teacher.temperature}, but the loss "
            f"uses {temperature}; use the same temperature or recompute the teacher's outputs"
        )

    shared_vocab = shared_vocabulary_size(student_logits.shape[1], teacher.vocab_size, tokenizer_length)
    if shared_vocab != teacher.vocab_size:
        raise ModelError(
            f"the cached teacher covers {teacher.vocab_size} vocabulary entries, but the student and its tokenizer "
            f"share {shared_vocab}; teacher and student must use one tokenizer"
        )
    if teacher.rows and int(teacher.token_ids.max()) >= shared_vocab:
        raise ModelError(
            f"the cached teacher contains token id {int(teacher.token_ids.max())}, outside the shared vocabulary of "
            f"{shared_vocab} entries; the teacher's outputs do not belong to this tokenizer"
        )

    device = student_logits.device
    teacher_rows = TopKLogProbs(
        teacher.log_probs.to(device),
        teacher.token_ids.to(device),
        teacher.tail_log_prob.to(device),
        shared_vocab,
        temperature,
    )

    def teacher_log_probs(student_chunk: torch.Tensor, start: int, end: int):
        chunk = TopKLogProbs(
            teacher_rows.log_probs[start:end],
            teacher_rows.token_ids[start:end],
            teacher_rows.tail_log_prob[start:end],
            shared_vocab,
            temperature,
        )
        return bucket_log_probs(student_chunk[:, :shared_vocab], chunk, temperature)

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
