"""Vision-token loss: all-token MSE plus the text-focused top-K term."""

import pytest
import torch

from alignkd.errors import ModelError
from alignkd.losses.adapters import TokenAdapter
from alignkd.losses.vision import text_focus_scores, vision_token_loss


def _first_coordinate_adapter():
    adapter = TokenAdapter(2, 1)
    with torch.no_grad():
        adapter.proj.weight.copy_(torch.tensor([[1.0, 0.0]]))
        adapter.proj.bias.zero_()
    return adapter


def test_known_value_with_focus():
    # Adapted teacher tokens [1, 2, 3], student [0, 2, 5]: squared errors [1, 0, 4].
    # All tokens: 5/3. The top-2 focus tokens (scores 0.5 and 0.4) are tokens 1 and 2: (0 + 4)/2 = 2.
    teacher = torch.tensor([[[1.0, 9.0], [2.0, 9.0], [3.0, 9.0]]])
    student = torch.tensor([[[0.0], [2.0], [5.0]]])
    scores = torch.tensor([[0.1, 0.5, 0.4]])
    loss = vision_token_loss(student, teacher, _first_coordinate_adapter(), scores, top_k=2, focus_weight=0.1)
    assert loss.all_tokens.item() == pytest.approx(5 / 3, rel=1e-6)
    assert loss.focus_tokens.item() == pytest.approx(2.0, rel=1e-6)
    assert loss.total.item() == pytest.approx(5 / 3 + 0.2, rel=1e-6)


def test_top_k_clipped_to_vision_tokens():
    teacher = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])
    student = torch.tensor([[[0.0], [0.0]]])
    scores = torch.tensor([[0.3, 0.7]])
    loss = vision_token_loss(student, teacher, _first_coordinate_adapter(), scores, top_k=16, focus_weight=1.0)
    # K = 2 covers every token, so the focus term equals the all-token term (1 + 4)/2.
    assert loss.focus_tokens.item() == pytest.approx(2.5, rel=1e-6)
    assert loss.all_tokens.item() == pytest.approx(2.5, rel=1e-6)


def test_focus_scores_sum_text_mean_heads():
    # [batch=1, heads=2, text=2, vision=2]; the second text row is padding and is ignored.
    attention = torch.tensor([[[[0.2, 0.8], [9.0, 9.0]], [[0.6, 0.4], [9.0, 9.0]]]])
    rows = torch.tensor([[True, False]])
    scores = text_focus_scores(attention, rows)
    torch.testing.assert_close(scores, torch.tensor([[0.4, 0.6]]))


def test_image_without_text_has_no_focus():
    teacher = torch.tensor([[[1.0, 0.0], [2.0, 0.0]], [[1.0, 0.0], [2.0, 0.0]]])
    student = torch.zeros(2, 2, 1)
    scores = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    has_text = torch.tensor([True, False])
    loss = vision_token_loss(student, teacher, _first_coordinate_adapter(), scores, has_text, top_k=1, focus_weight=1.0)
    # Focus: image 0 contributes token 0's error 1; image 1 contributes nothing; divided by 2 images.
    assert loss.focus_tokens.item() == pytest.approx(0.5, rel=1e-6)
    assert loss.all_tokens.item() == pytest.approx(2.5, rel=1e-6)


def test_no_images_is_zero_with_gradients():
    adapter = _first_coordinate_adapter()
    student = torch.zeros(0, 3, 1, requires_grad=True)
    loss = vision_token_loss(student, torch.zeros(0, 3, 2), adapter, torch.zeros(0, 3), top_k=2)
    loss.total.backward()
    assert loss.total.item() == 0.0
    assert adapter.proj.weight.grad is not None


def test_token_count_mismatch_is_error():
    with pytest.raises(ModelError, match="same number of vision tokens"):
        vision_token_loss(torch.zeros(1, 4, 1), torch.zeros(1, 6, 2), _first_coordinate_adapter())
