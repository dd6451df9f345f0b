"""The top-k logit distillation term: hand-computed values, parity with the full vocabulary, bounds."""

import math

import pytest
import torch
import torch.nn.functional as F

from alignkd.constants import IGNORE_INDEX
from alignkd.errors import ModelError
from alignkd.losses.logits import token_losses
from alignkd.losses.topk import TopKLogProbs, top_k_log_probs, topk_token_losses

DIVERGENCES = ["reverse_kl", "forward_kl", "jsd", "teacher_ce"]


def _inputs(rows=7, vocab=13, seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(rows, vocab, generator=generator) * 3
    teacher = torch.randn(rows, vocab, generator=generator) * 3
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    targets[[1, 4]] = IGNORE_INDEX
    return student, teacher, targets


def test_top_k_reduction_by_hand():
    teacher = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]])
    reduced = top_k_log_probs(teacher, 2)
    assert reduced.token_ids.tolist() == [[0, 1]]
    torch.testing.assert_close(reduced.log_probs.exp(), torch.tensor([[0.5, 0.3]]))
    torch.testing.assert_close(reduced.tail_log_prob.exp(), torch.tensor([0.2]))


def test_full_k_has_empty_tail():
    _, teacher, _ = _inputs()
    reduced = top_k_log_probs(teacher, 100)
    assert reduced.k == teacher.shape[1]
    assert torch.isneginf(reduced.tail_log_prob).all()


def test_reduction_cuts_vocabulary_padding():
    _, teacher, _ = _inputs()
    reduced = top_k_log_probs(teacher, 4, vocab_size=10, temperature=2.0)
    expected = torch.log_softmax(teacher[:, :10] / 2.0, dim=-1).topk(4, dim=-1)
    torch.testing.assert_close(reduced.log_probs, expected.values)
    assert int(reduced.token_ids.max()) < 10
    assert reduced.temperature == 2.0


def test_reverse_kl_on_buckets_by_hand():
    # Teacher p = (0.5, 0.3, 0.2) keeps token 0, and its tail bucket has 0.5. Student q = (0.25,
    # 0.25, 0.5) has 0.75 in the same tail. KL(q || p) over the two buckets:
    teacher = top_k_log_probs(torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]]), 1)
    student = torch.tensor([[math.log(0.25), math.log(0.25), math.log(0.5)]])
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)

    result = topk_token_losses(student, torch.tensor([2]), teacher, divergence="reverse_kl")
    assert result.distillation.item() == pytest.approx(expected, rel=1e-6)


def test_teacher_ce_on_buckets_by_hand():
    teacher = top_k_log_probs(torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]]), 1)
    student = torch.tensor([[math.log(0.25), math.log(0.25), math.log(0.5)]])
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))

    result = topk_token_losses(student, torch.tensor([2]), teacher, divergence="teacher_ce")
    assert result.distillation.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_full_k_equals_full_vocabulary(divergence, chunk_size):
    student, teacher, targets = _inputs()
    live_student = student.clone().requires_grad_(True)
    live = token_losses(live_student, targets, teacher, divergence=divergence, beta=0.3, temperature=2.0, kd_weight=0.7)
    live.total.backward()

    cached_student = student.clone().requires_grad_(True)
    reduced = top_k_log_probs(teacher, teacher.shape[1], temperature=2.0)
    cached = topk_token_losses(
        cached_student, targets, reduced, divergence=divergence, beta=0.3, temperature=2.0, kd_weight=0.7, chunk_size=chunk_size
    )
    cached.total.backward()

    assert cached.distillation.item() == pytest.approx(live.distillation.item(), rel=1e-5)
    assert cached.cross_entropy.item() == pytest.approx(live.cross_entropy.item(), rel=1e-6)
    torch.testing.assert_close(cached_student.grad, live_student.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_small_k_is_lower_bound(divergence):
    student, teacher, targets = _inputs(rows=20, vocab=50, seed=1)
    everything = torch.ones_like(targets, dtype=torch.bool)
    full = token_losses(student, targets, teacher, everything, divergence=divergence)
    previous = 0.0
    for k in (1, 5, 20, 49):
        bucketed = topk_token_losses(student, targets, top_k_log_probs(teacher, k), everything, divergence=divergence)
        assert bucketed.distillation.item() <= full.distillation.item() + 1e-5, k
        # Splitting the tail further refines the buckets, which never lowers the value.
        assert bucketed.distillation.item() >= previous - 1e-5, k
        previous = bucketed.distillation.item()


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_student_matching_teacher_gives_zero(divergence):
    _, teacher, targets = _inputs()
    reduced = top_k_log_probs(teacher, 3)
    result = topk_token_losses(teacher.clone(), targets, reduced, divergence=divergence)
    if divergence == "teacher_ce":
        # Equal distributions leave the teacher's bucket entropy.
        buckets = torch.cat([reduced.log_probs, reduced.tail_log_prob[:, None]], dim=1)
        entropy = -(buckets.exp() * buckets).sum(dim=1)[targets != IGNORE_INDEX].mean()
        assert result.distillation.item() == pytest.approx(entropy.item(), rel=1e-5)
    else:
        assert result.distillation.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_masked_entries_stay_finite(divergence):
    student, teacher, targets = _inputs()
    teacher[:, 5:] = float("-inf")  # fewer finite teacher entries than k
    student[0, 2] = float("-inf")
    student = student.half().requires_grad_(True)
    reduced = top_k_log_probs(teacher, 8, temperature=0.05)
    result = topk_token_losses(student, targets, reduced, divergence=divergence, temperature=0.05)
    result.total.backward()

    assert torch.isfinite(result.total)
    assert torch.isfinite(student.grad).all()
    live = token_losses(student.detach().float(), targets, teacher, divergence=divergence, temperature=0.05)
    assert result.distillation.item() == pytest.approx(live.distillation.item(), rel=1e-4)


def test_gradient_reaches_only_student():
    student, teacher, targets = _inputs()
    reduced = top_k_log_probs(teacher, 4)
    reduced.log_probs.requires_grad_(True)
    student = student.requires_grad_(True)
    topk_token_losses(student, targets, reduced).total.backward()
    assert student.grad is not None
    assert reduced.log_probs.grad is None


def test_batch_split_gives_same_sums():
    student, teacher, targets = _inputs(rows=10)
    reduced = top_k_log_probs(teacher, 4)
    whole = topk_token_losses(student, targets, reduced, ce_normalizer=8, kd_normalizer=8)

    halves = []
    for rows in (slice(0, 6), slice(6, 10)):
        part = TopKLogProbs(
            reduced.log_probs[rows], reduced.token_ids[rows], reduced.tail_log_prob[rows], reduced.vocab_size, 1.0
        )
        halves.append(topk_token_losses(student[rows], targets[rows], part, ce_normalizer=8, kd_normalizer=8))
    assert sum(half.total.item() for half in halves) == pytest.approx(whole.total.item(), rel=1e-6)


def test_other_temperature_is_error():
    student, teacher, targets = _inputs()
    with pytest.raises(ModelError, match="temperature 1.0"):
        topk_token_losses(student, targets, top_k_log_probs(teacher, 4), temperature=2.0)


def test_misaligned_rows_are_error():
    student, teacher, targets = _inputs()
    with pytest.raises(ModelError, match="6 logit rows"):
        topk_token_losses(student, targets, top_k_log_probs(teacher[:6], 4))


def test_other_vocabulary_is_error():
    student, teacher, targets = _inputs()
    reduced = top_k_log_probs(teacher[:, :10], 4)
    with pytest.raises(ModelError, match=r"teacher vocabulary \(10\)"):
        topk_token_losses(student, targets, reduced, tokenizer_length=13)


def test_matches_reference_formula_with_tail():
    # An independent fp64 computation of forward KL over the k + 1 buckets.
    student, teacher, targets = _inputs(rows=5, vocab=9, seed=3)
    k = 3
    log_t = F.log_softmax(teacher.double(), dim=-1)
    log_s = F.log_softmax(student.double(), dim=-1)
    top = log_t.topk(k, dim=-1)
    inside = torch.zeros_like(log_t, dtype=torch.bool).scatter(1, top.indices, True)
    t_buckets = torch.cat([top.values, log_t.masked_fill(inside, -math.inf).logsumexp(-1, keepdim=True)], 1)
    s_buckets = torch.cat([log_s.gather(1, top.indices), log_s.masked_fill(inside, -math.inf).logsumexp(-1, keepdim=True)], 1)
    per_row = (t_buckets.exp() * (t_buckets - s_buckets)).sum(-1)
    supervised = targets != IGNORE_INDEX
    expected = per_row[supervised].mean()

    result = topk_token_losses(student, targets, top_k_log_probs(teacher, k), divergence="forward_kl")
    assert result.distillation.item() == pytest.approx(expected.item(), rel=1e-5)
