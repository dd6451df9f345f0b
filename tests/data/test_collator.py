"""The collator's batch: right padding, per-sample images, and the batch contract."""

from __future__ import annotations

import pytest
import torch

from alignkd.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from alignkd.data.collator import VLMDataCollator

PAD = 0
IMAGE_SHAPE = (3, 4, 4)


def item(input_ids, labels=None, image_value=None, row=0):
    sample = {
        "input_ids": torch.tensor(input_ids),
        "labels": torch.tensor(labels if labels is not None else input_ids),
        "pixel_values": None if image_value is None else torch.full(IMAGE_SHAPE, float(image_value)),
        "sample_index": row,
    }
    return sample


@pytest.fixture
def collator():
    return VLMDataCollator(pad_token_id=PAD, image_shape=IMAGE_SHAPE)


def test_mixed_batch_second_has_image(collator):
    text = item([5, 6, 7], [IGNORE_INDEX, 6, 7], row=10)
    image = item([5, IMAGE_PLACEHOLDER_ID, 8, 9, 2], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 9, 2], 0.5, row=11)

    batch = collator([text, image])

    assert batch["input_ids"].tolist() == [[5, 6, 7, PAD, PAD], [5, IMAGE_PLACEHOLDER_ID, 8, 9, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, 6, 7, IGNORE_INDEX, IGNORE_INDEX],
        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 9, 2],
    ]
    assert batch["image_mask"].tolist() == [False, True]
    assert batch["pixel_values"].shape == (1, *IMAGE_SHAPE)
    assert torch.all(batch["pixel_values"] == 0.5)
    assert batch["sample_index"].tolist() == [10, 11]
    assert "teacher_pixel_values" not in batch


def test_text_only_batch_has_no_images(collator):
    batch = collator([item([5, 6]), item([7])])

    assert batch["pixel_values"].shape == (0, *IMAGE_SHAPE)
    assert batch["image_mask"].tolist() == [False, False]
    assert not (batch["input_ids"] == IMAGE_PLACEHOLDER_ID).any()


def test_images_in_batch_order(collator):
    batch = collator(
        [item([IMAGE_PLACEHOLDER_ID, 1], image_value=1), item([1]), item([IMAGE_PLACEHOLDER_ID, 2], image_value=3)]
    )

    assert batch["image_mask"].tolist() == [True, False, True]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 3.0]


def test_pad_equal_eos_attention_from_lengths():
    eos = 2
    collator = VLMDataCollator(pad_token_id=eos, image_shape=IMAGE_SHAPE)

    batch = collator([item([5, eos, 6, eos]), item([7, eos])])

    # The EOS tokens inside the sequences are real tokens even though pad equals EOS.
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist()[1] == [7, eos, IGNORE_INDEX, IGNORE_INDEX]


def test_sequence_at_limit_not_truncated(collator):
    limit = 6
    full = item([1, IMAGE_PLACEHOLDER_ID, 3, 4, 5, 2], image_value=0)

    batch = collator([full, item([1, 2])])

    assert batch["input_ids"].shape[1] == limit
    assert batch["input_ids"][0, -1].item() == 2
    assert batch["labels"][0, -1].item() == 2


def test_padding_invariance(collator):
    first = item([1, 2, 3], [IGNORE_INDEX, 2, 3])
    second = item([4, 5, 6, 7, 8], [IGNORE_INDEX, IGNORE_INDEX, 6, 7, 8])

    alone = collator([first])
    together = collator([first, second])

    length = alone["input_ids"].shape[1]
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(together[key][0, :length], alone[key][0])
    assert together["attention_mask"][0, length:].sum() == 0


def test_pad_to_multiple_of():
    collator = VLMDataCollator(pad_token_id=PAD, image_shape=IMAGE_SHAPE, pad_to_multiple_of=4)

    batch = collator([item([1, 2, 3, 4, 5])])

    assert batch["input_ids"].shape == (1, 8)
    assert batch["attention_mask"].sum() == 5


def test_teacher_pixel_values_stacked():
    teacher_shape = (3, 6, 6)
    collator = VLMDataCollator(pad_token_id=PAD, image_shape=IMAGE_SHAPE, teacher_image_shape=teacher_shape)
    with_image = item([IMAGE_PLACEHOLDER_ID, 1], image_value=1)
    with_image["teacher_pixel_values"] = torch.full(teacher_shape, 2.0)

    batch = collator([item([1]), with_image])

    assert batch["teacher_pixel_values"].shape == (1, *teacher_shape)
    assert torch.all(batch["teacher_pixel_values"] == 2.0)
    assert collator([item([1])])["teacher_pixel_values"].shape == (0, *teacher_shape)


def test_dtypes_match_contract(collator):
    batch = collator([item([IMAGE_PLACEHOLDER_ID, 1], image_value=1)])

    assert batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].dtype == torch.long
    assert batch["labels"].dtype == torch.long
    assert batch["image_mask"].dtype == torch.bool
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["sample_index"].dtype == torch.long


def test_placeholder_without_image_rejected(collator):
    with pytest.raises(ValueError, match="1 image placeholders in its input_ids but no image"):
        collator([item([IMAGE_PLACEHOLDER_ID, 1], row=4)])
