"""Batching of dataset items into the training batch that the models consume."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignkd.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID


@dataclass
class VLMDataCollator:
    """Pads a list of `LlavaDataset` items on the right and stacks the images of the samples that have one.

    The batch is a dict:
        input_ids: LongTensor [batch, seq], padded with `pad_token_id`, unexpanded: one
            IMAGE_PLACEHOLDER_ID in each sample with an image, none in text-only samples.
        attention_mask: LongTensor [batch, seq]; 1 on each sample's own tokens. It comes from
            the sample lengths, never from comparing ids with the pad id, so it stays right
            when the pad id equals EOS.
        labels: LongTensor [batch, seq]; IGNORE_INDEX on padding.
        image_mask: BoolTensor [batch]; the sample has an image. Decided per sample.
        pixel_values: FloatTensor [images, 3, H, W]; the images of the samples with
            image_mask True, in batch order. [0, 3, H, W] when none has one.
        teacher_pixel_values: the same for the teacher's processor, only when
            `teacher_image_shape` is set.
        sample_index: LongTensor [batch]; each sample's row in the data file.

    Nothing is truncated: lengths are checked per sample before batching.

    Args:
        pad_token_id: the tokenizer's pad id.
        image_shape: [channels, height, width] of the student's processed images.
        teacher_image_shape: the same for the teacher, when its processor differs.
        pad_to_multiple_of: round the padded length up to a multiple of this, or None.
    """

    pad_token_id: int
    image_shape: tuple[int, int, int]
    teacher_image_shape: tuple[int, int, int] | None = None
    pad_to_multiple_of: int | None = None

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("cannot collate an empty list of samples")

        lengths = [len(item["input_ids"]) for item in items]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of

        batch_size = len(items)
        input_ids = torch.full((batch_size, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
        for row, (item, length) in enumerate(zip(items, lengths)):
            input_ids[row, :length] = item["input_ids"]
            labels[row, :length] = item["labels"]
            attention_mask[row, :length] = 1

        image_mask = torch.tensor([item.get("pixel_values") is not None for item in items], dtype=torch.bool)
        self._check_placeholders(items, image_mask)

        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "image_mask": image_mask,
            "pixel_values": self._stack(items, "pixel_values", self.image_shape),
            "sample_index": torch.tensor([int(item["sample_index"]) for item in items], dtype=torch.long),
        }
        if self.teacher_image_shape is not None:
            batch["teacher_pixel_values"] = self._stack(items, "teacher_pixel_values", self.teacher_image_shape)
        return batch

    @staticmethod
    def _stack(items: Sequence[dict[str, Any]], key: str, shape: tuple[int, int, int]) -> torch.Tensor:
        images = [item[key] for item in items if item.get("pixel_values") is not None]
        if not images:
            return torch.zeros((0, *shape), dtype=torch.float32)
        return torch.stack(images)

    @staticmethod
    def _check_placeholders(items: Sequence[dict[str, Any]], image_mask: torch.Tensor) -> None:
        for item, has_image in zip(items, image_mask.tolist()):
            placeholders = int((item["input_ids"] == IMAGE_PLACEHOLDER_ID).sum())
            if placeholders != int(has_image):
                raise ValueError(
                    f"sample at row {item['sample_index']} has {placeholders} image placeholders in its input_ids "
                    f"but {'an' if has_image else 'no'} image; each sample needs exactly one placeholder per image"
                )
