"""Chunked cross-entropy + logit distillation against a straightforward computation."""

import pytest
import torch
import torch.nn.functional as F

from alignkd.constants import IGNORE_INDEX
from alignkd.errors import ModelError
from alignkd.losses.logits import token_losses


def _reference_divergence(student, teacher, divergence, beta, temperature):
    """Full-vocabulary fp64 divergences written with torch's own KL, independent of the package."""
    log_s = F.log_softmax(student.double() / temperature, dim=-1)
    log_t = F.log_softmax(teacher.double() / temperature, dim=-1)
    if divergence == "forward_kl":
        return F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)
    if divergence == "reverse_kl":
        return F.kl_div(log_t, log_s, log_target=True, reduction="none").sum(-1)
    if divergence == "teacher_ce":
        return -(log_t.exp() * log_s).sum(-1)
    mixture = beta * log_t.exp() + (1 - beta) * log_s.exp()
    return beta * F.kl_div(mixture.log(), log_t, log_target=True, reduction="none").sum(-1) + (1 - beta) * F.kl_div(
        mixture.log(), log_s, log_target=True, reduction="none"
    ).sum(-1)


def _reference(student, targets, teacher, mask, *, divergence, beta=0.5, temperature=1.0, ce_weight=1.0, kd_weight=1.0):
    supervised = targets != IGNORE_INDEX
    ce = F.cross_entropy(student.double(), targets, ignore_index=IGNORE_INDEX, reduction="sum") / max(
        int(supervised.sum()), 1
    )
    per_token = _reference_divergence(student, teacher, divergence, beta, temperature)
    kd = (per_token * mask.double()).sum() * temperature**2 / max(float(mask.sum()), 1.0)
    return ce_weight * ce + kd_weight * kd, ce, kd


def _inputs(rows=7, vocab=11, seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(rows, vocab, generator=generator) * 3
    teacher = torch.randn(rows, vocab, generator=generator) * 3
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    targets[[1, 4]] = IGNORE_INDEX
    return student, teacher, targets


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "jsd", "teacher_ce"])
@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_matches_full_vocabulary_reference(divergence, chunk_size):
    student, teacher, targets = _inputs()
    mask = targets != IGNORE_INDEX

    reference_student = student.clone().double().requires_grad_(True)
    expected_total, expected_ce, expected_kd = _reference(
        reference_student, targets, teacher, mask, divergence=divergence, beta=0.3, temperature=2.0, kd_weight=0.7
    )
    expected_total.backward()

    chunked_student = student.clone().requires_grad_(True)
    result = token_losses(
        chunked_student,
        targets,
        teacher,
        divergence=divergence,
        beta=0.3,
        temperature=2.0,
        kd_weight=0.7,
        chunk_size=chunk_size,
    )
    result.total.backward()

    assert result.total.item() == pytest.approx(expected_total.item(), rel=1e-5)
    assert result.cross_entropy.item() == pytest.approx(expected_ce.item(), rel=1e-5)
    assert result.distillation.item() == pytest.approx(expected_kd.item(), rel=1e-5)
    torch.testing.assert_close(chunked_student.grad.double(), reference_student.grad, rtol=1e-4, atol=1e-6)


def test_all_positions_mask_includes_unsupervised_rows():
    student, teacher, targets = _inputs()
    everything = torch.ones_like(targets, dtype=torch.bool)
    result = token_losses(student, targets, teacher, everything, divergence="forward_kl")
    _, _, expected_kd = _reference(student, targets, teacher, everything, divergence="forward_kl")
    assert result.distillation.item() == pytest.approx(expected_kd.item(), rel=1e-5)


def test_accumulation_gives_same_gradient():
    # Four samples of different lengths: one batch of 4, or 4 micro-batches of 1 with the step's token count.
    generator = torch.Generator().manual_seed(3)
    lengths = [2, 5, 1, 4]
    rows = sum(lengths)
    student = torch.randn(rows, 9, generator=generator)
    teacher = torch.randn(rows, 9, generator=generator)
    targets = torch.randint(0, 9, (rows,), generator=generator)
    targets[3] = IGNORE_INDEX
    supervised_in_step = int((targets != IGNORE_INDEX).sum())

    whole = student.clone().requires_grad_(True)
    token_losses(whole, targets, teacher).total.backward()

    accumulated = student.clone().requires_grad_(True)
    start = 0
    for length in lengths:
        part = slice(start, start + length)
        token_losses(
            accumulated[part],
            targets[part],
            teacher[part],
            ce_normalizer=supervised_in_step,
            kd_normalizer=supervised_in_step,
        ).total.backward()
        start += length

    torch.testing.assert_close(accumulated.grad, whole.grad, rtol=1e-5, atol=1e-7)


def test_no_supervised_rows_is_zero():
    student = torch.randn(3, 5, requires_grad=True)
    teacher = torch.randn(3, 5)
    targets = torch.full((3,), IGNORE_INDEX)
    result = token_losses(student, targets, teacher)
    result.total.backward()
    assert result.total.item() == 0.0
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().sum().item() == 0.0


def test_empty_batch_keeps_graph():
    student = torch.randn(0, 5, requires_grad=True)
    result = token_losses(student, torch.zeros(0, dtype=torch.long), torch.randn(0, 5))
    result.total.backward()
    assert result.total.item() == 0.0
    assert student.grad.shape == (0, 5)


def test_without_teacher_is_cross_entropy():
    student, _, targets = _inputs()
    result = token_losses(student, targets)
    expected = F.cross_entropy(student, targets, ignore_index=IGNORE_INDEX)
    assert result.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert result.distillation.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    student, teacher, targets = _inputs()
    student = (student * 20).to(dtype).requires_grad_(True)
    teacher = (teacher * 20).to(dtype)
    teacher[0, 3] = float("-inf")
    result = token_losses(student, targets, teacher, temperature=0.05)
    result.total.backward()
    assert torch.isfinite(result.total)
    assert student.grad.dtype == dtype
    assert torch.isfinite(student.grad.float()).all()


def test_upstream_gradient_scales():
    student, teacher, targets = _inputs()
    once = student.clone().requires_grad_(True)
    token_losses(once, targets, teacher).total.backward()
    thrice = student.clone().requires_grad_(True)
    (token_losses(thrice, targets, teacher).total * 3).backward()
    torch.testing.assert_close(thrice.grad, once.grad * 3)


def test_padding_vocabulary_rows_cut():
    student, teacher, targets = _inputs(vocab=8)
    targets = targets.clamp(max=5)
    padded_teacher = torch.cat([teacher[:, :6], torch.randn(7, 4)], dim=1)  # 10 columns, 6 real
    result = token_losses(student, targets, padded_teacher, tokenizer_length=6)
    expected = _reference_divergence(student[:, :6], teacher[:, :6], "reverse_kl", 0.5, 1.0)
    mask = targets != IGNORE_INDEX
    assert result.distillation.item() == pytest.approx(float(expected[mask].mean()), rel=1e-5)


def test_vocabulary_mismatch_names_sizes():
    student, teacher, targets = _inputs(vocab=8)
    with pytest.raises(ModelError, match=r"teacher vocabulary \(10\).*student vocabulary \(8\)"):
        token_losses(student, targets, torch.randn(7, 10))
    with pytest.raises(ModelError, match="tokenizer"):
        token_losses(student, targets, torch.randn(7, 10), tokenizer_length=9)


def test_row_count_mismatch_names_counts():
    student, teacher, targets = _inputs()
    with pytest.raises(ModelError, match="teacher has 6 logit rows and student 7"):
        token_losses(student, targets, teacher[:6])
