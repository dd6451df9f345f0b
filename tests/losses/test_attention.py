"""First-layer text-to-vision attention loss: known values, layouts and empty spans."""

import pytest
import torch

from alignkd.errors import ModelError
from alignkd.losses.adapters import HeadAdapter
from alignkd.losses.attention import text_vision_attention_loss


def _adapter(weight, bias):
    adapter = HeadAdapter(len(weight[0]), len(weight))
    with torch.no_grad():
        adapter.mix.weight.copy_(torch.tensor(weight))
        adapter.mix.bias.copy_(torch.tensor(bias))
    return adapter


def test_known_value_two_to_one_heads():
    # Teacher heads [0.6, 0.4] and [0.2, 0.8] mixed 0.5/0.5 plus bias 0.1 give [0.5, 0.7];
    # the student's [0.3, 0.7] differs by [0.2, 0], so the MSE is 0.04 / 2 = 0.02.
    teacher = torch.tensor([[[[0.6, 0.4]], [[0.2, 0.8]]]])
    student = torch.tensor([[[[0.3, 0.7]]]])
    rows = torch.tensor([[True]])
    loss = text_vision_attention_loss(student, teacher, rows, _adapter([[0.5, 0.5]], [0.1]))
    assert loss.item() == pytest.approx(0.02, abs=1e-7)


def _sample(text_rows, heads_t=3, heads_s=2, vision=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.rand(1, heads_t, text_rows, vision, generator=generator)
    student = torch.rand(1, heads_s, text_rows, vision, generator=generator)
    return teacher, student


def _pad_rows(tensor, rows):
    padding = torch.zeros(*tensor.shape[:2], rows - tensor.shape[2], tensor.shape[3])
    return torch.cat([tensor, padding], dim=2)


def test_batch_equals_mean_of_samples():
    # Samples with 3, 1 and 2 text queries after their images, padded to 3 rows in the batch.
    adapter = _adapter([[0.3, 0.2, 0.5], [0.1, 0.7, 0.2]], [0.05, -0.02])
    lengths = [3, 1, 2]
    samples = [_sample(length, seed=index) for index, length in enumerate(lengths)]

    per_sample = [
        text_vision_attention_loss(student, teacher, torch.ones(1, length, dtype=torch.bool), adapter)
        for (teacher, student), length in zip(samples, lengths)
    ]
    teacher = torch.cat([_pad_rows(teacher, 3) for teacher, _ in samples])
    student = torch.cat([_pad_rows(student, 3) for _, student in samples])
    rows = torch.arange(3)[None, :] < torch.tensor(lengths)[:, None]

    batched = text_vision_attention_loss(student, teacher, rows, adapter)
    assert batched.item() == pytest.approx(float(sum(per_sample).detach() / 3), rel=1e-6)


def test_padding_rows_values_ignored():
    adapter = _adapter([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [0.0, 0.0])
    teacher, student = _sample(2)
    rows = torch.tensor([[True, True, False]])
    clean = text_vision_attention_loss(_pad_rows(student, 3), _pad_rows(teacher, 3), rows, adapter)
    noisy_student = _pad_rows(student, 3)
    noisy_student[:, :, 2] = 5.0
    noisy = text_vision_attention_loss(noisy_student, _pad_rows(teacher, 3), rows, adapter)
    assert noisy.item() == pytest.approx(clean.item(), rel=1e-7)


def test_empty_spans_contribute_nothing():
    # Sample 0 has text after its image; sample 1 has an image and no text after it.
    adapter = _adapter([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]], [0.0, 0.0])
    teacher, student = _sample(2)
    rows = torch.tensor([[True, True], [False, False]])
    batch_teacher = torch.cat([teacher, torch.zeros_like(teacher)])
    batch_student = torch.cat([student, torch.rand_like(student)])
    batched = text_vision_attention_loss(batch_student, batch_teacher, rows, adapter)
    alone = text_vision_attention_loss(student, teacher, rows[:1], adapter)
    assert batched.item() == pytest.approx(alone.item(), rel=1e-7)


def test_nothing_left_is_zero_with_gradients():
    adapter = _adapter([[0.5, 0.5, 0.0]], [0.1])
    student = torch.rand(2, 1, 0, 4, requires_grad=True)
    teacher = torch.rand(2, 3, 0, 4)
    loss = text_vision_attention_loss(student, teacher, torch.zeros(2, 0, dtype=torch.bool), adapter)
    loss.backward()
    assert loss.item() == 0.0
    assert adapter.mix.weight.grad is not None
    assert torch.isfinite(adapter.mix.weight.grad).all()


def test_gradient_only_on_real_rows():
    adapter = _adapter([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]], [0.0, 0.0])
    teacher, student = _sample(2)
    student = _pad_rows(student, 3).requires_grad_(True)
    rows = torch.tensor([[True, True, False]])
    text_vision_attention_loss(student, _pad_rows(teacher, 3), rows, adapter).backward()
    assert student.grad[:, :, :2].abs().sum().item() > 0
    assert student.grad[:, :, 2].abs().sum().item() == 0.0


def test_step_normalizer_divides_sum():
    adapter = _adapter([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [0.0, 0.0])
    teacher, student = _sample(2)
    rows = torch.ones(1, 2, dtype=torch.bool)
    own = text_vision_attention_loss(student, teacher, rows, adapter)
    step = text_vision_attention_loss(student, teacher, rows, adapter, normalizer=4)
    assert step.item() == pytest.approx(own.item() / 4, rel=1e-7)


def test_vision_count_mismatch_is_error():
    adapter = _adapter([[1.0, 0.0, 0.0]], [0.0])
    with pytest.raises(ModelError, match="same number of vision tokens"):
        text_vision_attention_loss(torch.rand(1, 1, 2, 4), torch.rand(1, 3, 2, 6), torch.ones(1, 2, dtype=torch.bool), adapter)
