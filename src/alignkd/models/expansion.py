"""Replace each sample's image placeholder with the model's vision tokens.

A batch arrives unexpanded: `input_ids` [batch, seq] contains at most one
IMAGE_PLACEHOLDER_ID per sample, and `pixel_values` contains the images of the samples that
have one, in batch order. This module checks that the placeholders, `image_mask` and the
images agree. It then builds the final sequence of every sample in one vectorised scatter:
text embeddings and vision tokens at their computed positions, the attention mask, the labels
(IGNORE_INDEX on vision tokens), position ids and the `Spans`. Each model expands with its own
number of vision tokens, so a teacher and a student may give the same sample different lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from alignkd.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from alignkd.errors import ModelError
from alignkd.models.interface import Spans

PaddingSide = Literal["auto", "left", "right"]
"""Where the expanded batch is padded. "auto" keeps the side of the input batch, and right when
the input has no padding. Generation passes "left" so that every prompt ends at the last column."""


@dataclass
class ExpandedBatch:
    """The final sequence of a batch, ready for the language model's decoder.

    Fields:
        inputs_embeds: [batch, seq, hidden]; zero vectors at padding positions.
        attention_mask: LongTensor [batch, seq]; 1 on real tokens (text and vision).
        position_ids: LongTensor [batch, seq]; 0, 1, ... over each sample's real tokens.
        labels: LongTensor [batch, seq] with IGNORE_INDEX on vision tokens and padding, or None.
        vision_tokens: [images, vision_tokens, hidden]; the projector output placed in the sequence.
        image_sample_index: LongTensor [images]; the batch row of each image.
        spans: where each sample's vision tokens and text lie.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    vision_tokens: torch.Tensor
    image_sample_index: torch.Tensor
    spans: Spans


def _rows(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


def check_image_inputs(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor | None,
    image_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Check that placeholders, `image_mask` and `pixel_values` agree; return `image_mask` [batch].

    `image_mask` may be None, in which case it is read from the placeholders. Raises ModelError
    naming the batch rows that break a rule.
    """
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ModelError(
            f"input_ids and attention_mask must both be [batch, seq], got {tuple(input_ids.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )

    placeholders = (input_ids == IMAGE_PLACEHOLDER_ID).sum(dim=1)
    if (placeholders > 1).any():
        raise ModelError(
            f"batch rows {_rows(placeholders > 1)} contain more than one image placeholder "
            f"({IMAGE_PLACEHOLDER_ID}); each sample may have at most one image"
        )

    in_padding = (input_ids == IMAGE_PLACEHOLDER_ID) & (attention_mask == 0)
    if in_padding.any():
        raise ModelError(
            f"batch rows {_rows(in_padding.any(dim=1))} have the image placeholder at a padding position "
            "(attention_mask 0); the placeholder must be a real token"
        )

    has_placeholder = placeholders == 1
    if image_mask is None:
        image_mask = has_placeholder
    else:
        image_mask = image_mask.to(device=input_ids.device, dtype=torch.bool)
        if image_mask.shape != has_placeholder.shape:
            raise ModelError(f"image_mask must be [batch] = [{input_ids.shape[0]}], got {tuple(image_mask.shape)}")
        if (image_mask & ~has_placeholder).any():
            raise ModelError(
                f"image_mask marks batch rows {_rows(image_mask & ~has_placeholder)} as having an image, "
                f"but their input_ids contain no image placeholder ({IMAGE_PLACEHOLDER_ID})"
            )
        if (has_placeholder & ~image_mask).any():
            raise ModelError(
                f"batch rows {_rows(has_placeholder & ~image_mask)} contain an image placeholder, "
                "but image_mask says they have no image"
            )

    num_images = int(image_mask.sum())
    given = 0 if pixel_values is None else pixel_values.shape[0]
    if given != num_images:
        raise ModelError(
            f"the batch has {num_images} image placeholders but pixel_values contains {given} images; "
            "pixel_values must contain exactly the images of the samples that have one, in batch order"
        )
    return image_mask


def _padding_side(real: torch.Tensor, requested: PaddingSide) -> Literal["left", "right"]:
    """Check that every row's real tokens are contiguous and decide where to pad the output."""
    length = real.sum(dim=1, keepdim=True)
    columns = torch.arange(real.shape[1], device=real.device)[None, :]
    right_padded = (real == (columns < length)).all(dim=1)
    left_padded = (real == (columns >= real.shape[1] - length)).all(dim=1)

    broken = ~(right_padded | left_padded)
    if broken.any():
        raise ModelError(
            f"attention_mask rows {_rows(broken)} are not contiguous; each sample must be left-padded or right-padded"
        )
    empty = length.squeeze(1) == 0
    if empty.any():
        raise ModelError(f"batch rows {_rows(empty)} have no real tokens (attention_mask all 0)")

    if requested != "auto":
        return requested
    if right_padded.all():
        return "right"
    if left_padded.all():
        return "left"
    raise ModelError("the batch mixes left-padded and right-padded rows; pad every row on the same side")


def expand_placeholders(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None,
    vision_tokens: torch.Tensor,
    image_mask: torch.Tensor,
    embed_tokens: nn.Module,
    padding_side: PaddingSide = "auto",
) -> ExpandedBatch:
    """Build the final sequence with `vision_tokens` [images, N, hidden] in place of the placeholders.

    Inputs are checked by `check_image_inputs` first. A sample of `n` real tokens becomes
    `n - 1 + N` tokens if it has an image, else `n`; the batch is re-padded to the longest.
    """
    batch_size, _ = input_ids.shape
    device = input_ids.device
    num_vision = vision_tokens.shape[1]
    real = attention_mask.bool()
    side = _padding_side(real, padding_side)

    is_placeholder = (input_ids == IMAGE_PLACEHOLDER_ID) & real
    is_text = real & ~is_placeholder

    # Each input position becomes `width` output positions: N for the placeholder, 1 for a real
    # token, 0 for padding. The exclusive cumulative sum is its first output position.
    width = torch.where(is_placeholder, num_vision, 1) * real
    new_length = width.sum(dim=1)
    total_length = int(new_length.max())
    offset = total_length - new_length if side == "left" else torch.zeros_like(new_length)
    start = offset[:, None] + torch.cumsum(width, dim=1) - width

    text_rows, text_columns = is_text.nonzero(as_tuple=True)
    text_positions = start[text_rows, text_columns]
    text_embeds = embed_tokens(input_ids[text_rows, text_columns])

    image_rows = image_mask.nonzero().flatten()
    placeholder_columns = is_placeholder[image_rows].int().argmax(dim=1)
    image_starts = start[image_rows, placeholder_columns]
    vision_positions = image_starts[:, None] + torch.arange(num_vision, device=device)[None, :]
    vision_rows = image_rows[:, None].expand(-1, num_vision)

    rows = torch.cat([text_rows, vision_rows.flatten()])
    positions = torch.cat([text_positions, vision_positions.flatten()])
    values = torch.cat([text_embeds, vision_tokens.to(text_embeds.dtype).flatten(0, 1)])

    hidden_size = text_embeds.shape[-1]
    inputs_embeds = text_embeds.new_zeros(batch_size, total_length, hidden_size).index_put((rows, positions), values)

    expanded_mask = torch.zeros(batch_size, total_length, dtype=torch.long, device=device)
    expanded_mask[rows, positions] = 1
    position_ids = (expanded_mask.cumsum(dim=1) - 1).clamp(min=0)

    expanded_labels = None
    if labels is not None:
        expanded_labels = torch.full((batch_size, total_length), IGNORE_INDEX, dtype=torch.long, device=device)
        expanded_labels[text_rows, text_positions] = labels[text_rows, text_columns].long()

    vision_start = offset.clone()
    vision_start[image_rows] = image_starts
    vision_end = vision_start + image_mask.long() * num_vision
    spans = Spans(vision_start=vision_start, vision_end=vision_end, text_end=offset + new_length)

    return ExpandedBatch(
        inputs_embeds=inputs_embeds,
        attention_mask=expanded_mask,
        position_ids=position_ids,
        labels=expanded_labels,
        vision_tokens=vision_tokens,
        image_sample_index=image_rows,
        spans=spans,
    )


def embed_multimodal(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None,
    pixel_values: torch.Tensor | None,
    image_mask: torch.Tensor | None,
    *,
    encode_images: Callable[[torch.Tensor], torch.Tensor],
    embed_tokens: nn.Module,
    num_vision_tokens: int,
    hidden_size: int,
    padding_side: PaddingSide = "auto",
) -> ExpandedBatch:
    """Check the image inputs, encode the images and expand the placeholders.

    `encode_images` maps pixel_values [images, 3, H, W] to vision tokens
    [images, num_vision_tokens, hidden_size]. The vision tower is not run when no sample has an
    image, so text-only samples cost no vision compute and contribute no vision tokens.
    """
    image_mask = check_image_inputs(input_ids, attention_mask, pixel_values, image_mask)

    if pixel_values is not None and pixel_values.shape[0] > 0:
        vision_tokens = encode_images(pixel_values)
        if vision_tokens.shape[1] != num_vision_tokens:
            raise ModelError(
                f"the vision encoder made {vision_tokens.shape[1]} tokens per image from pixel_values of shape "
                f"{tuple(pixel_values.shape)}, but the model expects {num_vision_tokens}; preprocess images "
                "with the model's own image processor"
            )
    else:
        dtype = embed_tokens.weight.dtype
        vision_tokens = torch.zeros(0, num_vision_tokens, hidden_size, dtype=dtype, device=input_ids.device)

    return expand_placeholders(
        input_ids, attention_mask, labels, vision_tokens, image_mask, embed_tokens, padding_side=padding_side
    )
