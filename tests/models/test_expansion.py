"""Placeholder expansion: positions computed per sample, re-padding, labels, masks and input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alignkd.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from alignkd.errors import ModelError
from alignkd.models.expansion import check_image_inputs, expand_placeholders

IMG = IMAGE_PLACEHOLDER_ID
HIDDEN = 8
VOCAB = 20


@pytest.fixture
def embed():
    return nn.Embedding(VOCAB, HIDDEN)


def vision(images: int, tokens: int) -> torch.Tensor:
    return torch.randn(images, tokens, HIDDEN)


def test_single_sample_hand_worked(embed):
    input_ids = torch.tensor([[1, 5, IMG, 7]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7]])
    tokens = vision(1, 3)
    batch = expand_placeholders(input_ids, torch.ones_like(input_ids), labels, tokens, torch.tensor([True]), embed)

    # [1, 5, v0, v1, v2, 7]
    assert batch.spans.vision_start.tolist() == [2]
    assert batch.spans.vision_end.tolist() == [5]
    assert batch.spans.text_end.tolist() == [6]
    assert batch.attention_mask.tolist() == [[1] * 6]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 5]]
    assert batch.labels.tolist() == [[IGNORE_INDEX] * 5 + [7]]
    with torch.no_grad():
        torch.testing.assert_close(batch.inputs_embeds[0, :2], embed(torch.tensor([1, 5])))
        torch.testing.assert_close(batch.inputs_embeds[0, 2:5], tokens[0])
        torch.testing.assert_close(batch.inputs_embeds[0, 5], embed(torch.tensor(7)))


def test_images_at_different_positions(embed):
    # Different text before the image, so the vision spans start at different positions.
    input_ids = torch.tensor([[1, IMG, 4, 5, 0, 0], [1, 2, 3, IMG, 4, 5]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    tokens = vision(2, 4)
    batch = expand_placeholders(input_ids, attention_mask, None, tokens, torch.tensor([True, True]), embed)

    assert batch.spans.vision_start.tolist() == [1, 3]
    assert batch.spans.vision_end.tolist() == [5, 7]
    assert batch.spans.text_end.tolist() == [7, 9]
    assert batch.attention_mask.tolist() == [[1] * 7 + [0] * 2, [1] * 9]
    with torch.no_grad():
        torch.testing.assert_close(batch.inputs_embeds[0, 1:5], tokens[0])
        torch.testing.assert_close(batch.inputs_embeds[1, 3:7], tokens[1])
        torch.testing.assert_close(batch.inputs_embeds[0, 7:], torch.zeros(2, HIDDEN))


def test_text_only_sample_keeps_length(embed):
    input_ids = torch.tensor([[1, IMG, 4], [1, 2, 3]])
    tokens = vision(1, 5)
    batch = expand_placeholders(input_ids, torch.ones_like(input_ids), None, tokens, torch.tensor([True, False]), embed)
    assert batch.inputs_embeds.shape == (2, 7, HIDDEN)
    assert batch.attention_mask.tolist() == [[1] * 7, [1, 1, 1, 0, 0, 0, 0]]
    assert batch.spans.has_image.tolist() == [True, False]
    assert batch.spans.text_after_image_length.tolist() == [1, 0]
    assert batch.image_sample_index.tolist() == [0]


def test_left_padding_preserved(embed):
    input_ids = torch.tensor([[0, 0, 1, IMG, 4], [1, 2, 3, IMG, 4]])
    attention_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    batch = expand_placeholders(input_ids, attention_mask, None, vision(2, 3), torch.tensor([True, True]), embed)
    assert batch.attention_mask.tolist() == [[0, 0, 1, 1, 1, 1, 1], [1] * 7]
    assert batch.position_ids[0, 2:].tolist() == [0, 1, 2, 3, 4]
    assert batch.spans.vision_start.tolist() == [3, 3]
    assert batch.spans.text_end.tolist() == [7, 7]


def test_forced_left_padding_for_generation(embed):
    # No input padding, but only the first sample grows: the second is padded on the left so
    # that both prompts end at the last column.
    input_ids = torch.tensor([[1, IMG, 4], [1, 2, 3]])
    batch = expand_placeholders(
        input_ids,
        torch.ones_like(input_ids),
        None,
        vision(1, 3),
        torch.tensor([True, False]),
        embed,
        padding_side="left",
    )
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert batch.position_ids[1].tolist() == [0, 0, 0, 1, 2]
    assert batch.spans.text_end.tolist() == [5, 5]


def test_gradient_reaches_vision_tokens(embed):
    input_ids = torch.tensor([[1, IMG, 4]])
    tokens = vision(1, 2).requires_grad_()
    batch = expand_placeholders(input_ids, torch.ones_like(input_ids), None, tokens, torch.tensor([True]), embed)
    batch.inputs_embeds.sum().backward()
    torch.testing.assert_close(tokens.grad, torch.ones_like(tokens))


def test_two_placeholders_rejected():
    input_ids = torch.tensor([[1, 2], [IMG, IMG]])
    with pytest.raises(ModelError, match=r"batch rows \[1\] contain more than one image placeholder"):
        check_image_inputs(input_ids, torch.ones_like(input_ids), torch.zeros(2, 3, 4, 4), None)


def test_image_mask_disagreement_rejected():
    input_ids = torch.tensor([[1, IMG], [1, 2]])
    mask = torch.ones_like(input_ids)
    with pytest.raises(ModelError, match=r"rows \[1\] as having an image"):
        check_image_inputs(input_ids, mask, torch.zeros(2, 3, 4, 4), torch.tensor([True, True]))
    with pytest.raises(ModelError, match=r"rows \[0\] contain an image placeholder"):
        check_image_inputs(input_ids, mask, None, torch.tensor([False, False]))


def test_image_count_mismatch_rejected():
    input_ids = torch.tensor([[1, IMG], [1, 2]])
    with pytest.raises(ModelError, match="1 image placeholders but pixel_values contains 2 images"):
        check_image_inputs(input_ids, torch.ones_like(input_ids), torch.zeros(2, 3, 4, 4), None)


def test_placeholder_in_padding_rejected():
    input_ids = torch.tensor([[1, 2, IMG]])
    with pytest.raises(ModelError, match="padding position"):
        check_image_inputs(input_ids, torch.tensor([[1, 1, 0]]), torch.zeros(1, 3, 4, 4), None)


def test_holes_in_attention_mask_rejected(embed):
    input_ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ModelError, match="not contiguous"):
        expand_placeholders(input_ids, torch.tensor([[1, 0, 1]]), None, vision(0, 2), torch.tensor([False]), embed)
