"""Per-token divergences: known values, masking and numerics in low precision."""

import math

import pytest
import torch

from alignkd.losses.divergence import log_probs_pair, token_divergence


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def test_known_values_two_tokens():
    # Student logits [0, ln 3] give p_s = [1/4, 3/4]; teacher logits [0, 0] give p_t = [1/2, 1/2].
    student = torch.tensor([[0.0, math.log(3.0)]])
    teacher = torch.tensor([[0.0, 0.0]])
    log_s, log_t = log_probs_pair(student, teacher)
    p_s, p_t = [0.25, 0.75], [0.5, 0.5]

    reverse = token_divergence(log_s, log_t, "reverse_kl")
    forward = token_divergence(log_s, log_t, "forward_kl")
    teacher_ce = token_divergence(log_s, log_t, "teacher_ce")
    jsd = token_divergence(log_s, log_t, "jsd", beta=0.5)

    mixture = [0.375, 0.625]
    assert reverse.item() == pytest.approx(_kl(p_s, p_t), abs=1e-6)
    assert forward.item() == pytest.approx(_kl(p_t, p_s), abs=1e-6)
    assert teacher_ce.item() == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)), abs=1e-6)
    assert jsd.item() == pytest.approx(0.5 * _kl(p_t, mixture) + 0.5 * _kl(p_s, mixture), abs=1e-6)


def test_jsd_beta_weights_sides():
    student = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.0, 1.0, 0.5]])
    log_s, log_t = log_probs_pair(student, teacher)
    p_s, p_t = log_s.exp()[0].tolist(), log_t.exp()[0].tolist()
    beta = 0.2
    mixture = [beta * t + (1 - beta) * s for s, t in zip(p_s, p_t)]
    expected = beta * _kl(p_t, mixture) + (1 - beta) * _kl(p_s, mixture)
    assert token_divergence(log_s, log_t, "jsd", beta=beta).item() == pytest.approx(expected, abs=1e-6)


def test_temperature_softens_both():
    student = torch.tensor([[4.0, 0.0]])
    teacher = torch.tensor([[0.0, 4.0]])
    log_s, log_t = log_probs_pair(student, teacher, temperature=2.0)
    assert log_s.exp()[0, 0].item() == pytest.approx(math.exp(2) / (math.exp(2) + 1), abs=1e-6)
    assert log_t.exp()[0, 1].item() == pytest.approx(math.exp(2) / (math.exp(2) + 1), abs=1e-6)


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "jsd", "teacher_ce"])
def test_masked_vocabulary_entries_finite(divergence):
    # Entry 2 is masked in the teacher only, entry 3 in both; row 1 is a padded row of -inf.
    inf = float("-inf")
    student = torch.tensor([[1.0, 0.5, 3.0, inf], [inf, inf, inf, inf]], requires_grad=True)
    teacher = torch.tensor([[0.2, 0.1, inf, inf], [inf, inf, inf, inf]])
    log_s, log_t = log_probs_pair(student, teacher)
    values = token_divergence(log_s, log_t, divergence)
    values.sum().backward()

    assert torch.isfinite(values).all()
    assert torch.isfinite(student.grad).all()
    # The padded row becomes two uniform distributions: no divergence, only the teacher's entropy.
    expected_padded = math.log(4.0) if divergence == "teacher_ce" else 0.0
    assert values[1].item() == pytest.approx(expected_padded, abs=1e-6)
    # Masked entries are removed from both distributions, so they get no gradient.
    assert student.grad[0, 2:].abs().sum().item() == 0.0


def test_shared_support_renormalises():
    inf = float("-inf")
    student = torch.tensor([[0.0, 0.0, 5.0]])
    teacher = torch.tensor([[0.0, 0.0, inf]])
    log_s, log_t = log_probs_pair(student, teacher)
    # On the shared support {0, 1} both are uniform, so every divergence is 0.
    for divergence in ("reverse_kl", "forward_kl", "jsd"):
        assert token_divergence(log_s, log_t, divergence).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "jsd"])
def test_low_temperature_low_precision_gradients(dtype, divergence):
    # Finite logits at temperature 0.05: probabilities underflow in fp16, log-probabilities do not.
    student = torch.tensor([[8.0, -3.0, 1.0, 0.5]], dtype=dtype, requires_grad=True)
    teacher = torch.tensor([[-2.0, 6.0, 0.0, 1.0]], dtype=dtype)
    log_s, log_t = log_probs_pair(student, teacher, temperature=0.05)
    value = token_divergence(log_s, log_t, divergence).sum()
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(student.grad.float()).all()


def test_wide_logit_range_fp16():
    # Logits spanning more than 100 in fp16: the softmax of the smallest entries underflows.
    student = torch.tensor([[60.0, -60.0, 0.0]], dtype=torch.float16, requires_grad=True)
    teacher = torch.tensor([[-60.0, 60.0, 0.0]], dtype=torch.float16)
    log_s, log_t = log_probs_pair(student, teacher)
    value = token_divergence(log_s, log_t, "reverse_kl").sum()
    value.backward()
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(120.0, rel=1e-3)
    assert torch.isfinite(student.grad.float()).all()


def test_jsd_rejects_degenerate_beta():
    log_s, log_t = log_probs_pair(torch.zeros(1, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="beta"):
        token_divergence(log_s, log_t, "jsd", beta=0.0)
