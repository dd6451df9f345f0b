"""Assemble a batch's teacher output from per-sample entries, in the layout a live teacher returns.

The expanded layout of the batch (attention mask, labels, spans, logit positions) is computed
from the token ids and the teacher's number of vision tokens, exactly as the teacher's own
forward computes it, without running any model. The entries' stored row counts and targets
are then checked against that layout, so a cached row can only be compared with the student
row at the same position of the same sample.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from alignkd.cache.entries import SampleEntry
from alignkd.cache.format import (
    ATTENTION,
    LOGITS,
    VISION_TOKENS,
    CacheError,
    CacheMismatchError,
)
from alignkd.losses.topk import TopKLogProbs
from alignkd.models.expansion import (
    ExpandedBatch,
    check_image_inputs,
    expand_placeholders,
)
from alignkd.models.forward import select_logit_positions
from alignkd.models.interface import VLMOutput


@dataclass
class CachedTeacherOutput(VLMOutput):
    """A teacher `VLMOutput` read from a cache: logits come as top-k log-probabilities.

    `logits` is None; the objective reads `topk_logits` instead. Attention blocks and vision
    tokens are fp32 (stored as fp16). `vision_tokens` has zero rows when the run needs none.

    Fields beyond `VLMOutput`:
        topk_logits: the teacher's rows in the packed (sample, position) order of `targets`,
            or None when the run distils no logits.
    """

    topk_logits: TopKLogProbs | None = None


class _ZeroEmbedding(nn.Module):
    """Stands in for a token embedding when only the layout of the expanded batch is needed."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*input_ids.shape, 1, device=input_ids.device)


def batch_layout(batch: Mapping[str, torch.Tensor], num_vision_tokens: int) -> ExpandedBatch:
    """Compute the expanded layout that the teacher gives `batch`, without embeddings (hidden width 1)."""
    input_ids = batch["input_ids"]
    image_mask = check_image_inputs(input_ids, batch["attention_mask"], batch.get("pixel_values"), batch.get("image_mask"))
    placeholders = torch.zeros(int(image_mask.sum()), num_vision_tokens, 1, device=input_ids.device)
    return expand_placeholders(
        input_ids, batch["attention_mask"], batch.get("labels"), placeholders, image_mask, _ZeroEmbedding()
    )


def assemble_teacher_output(
    entries: list[SampleEntry],
    batch: Mapping[str, torch.Tensor],
    *,
    num_vision_tokens: int,
    heads: int,
    width: int,
    logit_positions: str,
    needed: Collection[str],
) -> CachedTeacherOutput:
    """Build the teacher output of `batch` from one entry per sample, in batch order.

    Args:
        entries: the samples' entries, cached or computed live.
        batch: the collated batch (input_ids, attention_mask, labels, image_mask, pixel_values).
        num_vision_tokens, heads, width: the teacher's sizes.
        logit_positions: the teacher's logit positions ("none" when no logits are needed).
        needed: the output kinds the objective uses.

    Raises:
        CacheError: an entry lacks an output that is needed.
        CacheMismatchError: an entry's rows do not match the sample's layout.
    """
    device = batch["input_ids"].device
    layout = batch_layout(batch, num_vision_tokens)
    positions = logit_positions if LOGITS in needed else "none"
    position_mask, targets = select_logit_positions(layout.attention_mask, layout.labels, positions)

    topk_logits = None
    if LOGITS in needed:
        topk_logits = _gather_logit_rows(entries, position_mask, targets, device)

    attention = row_mask = None
    if ATTENTION in needed:
        attention, row_mask = _gather_attention(entries, layout, heads, num_vision_tokens, device)

    vision_tokens = torch.zeros(0, num_vision_tokens, width, device=device)
    if VISION_TOKENS in needed:
        vision_tokens = _gather_vision_tokens(entries, layout, num_vision_tokens, width, device)

    return CachedTeacherOutput(
        logits=None,
        logit_position_mask=position_mask,
        targets=targets,
        vision_tokens=vision_tokens,
        image_sample_index=layout.image_sample_index,
        spans=layout.spans,
        text_vision_attention=attention,
        text_vision_row_mask=row_mask,
        attention_mask=layout.attention_mask,
        labels=layout.labels,
        topk_logits=topk_logits,
    )


def _gather_logit_rows(
    entries: list[SampleEntry], position_mask: torch.Tensor, targets: torch.Tensor, device: torch.device
) -> TopKLogProbs:
    rows_per_sample = position_mask.sum(dim=1).tolist()
    parts = []
    start = 0
    for entry, rows in zip(entries, rows_per_sample):
        if entry.top_k is None:
            raise CacheError(
                f"the teacher cache entry of sample {entry.key!r} contains no logits; write the cache with a loss "
                "whose logit_weight is positive"
            )
        expected = targets[start : start + rows]
        if entry.logit_rows != rows or not torch.equal(entry.targets.to(device), expected):
            raise CacheMismatchError(
                f"the teacher cache entry of sample {entry.key!r} has {entry.logit_rows} logit rows, but the sample "
                f"has {rows} at the run's logit positions, or their next tokens differ; the cache was written for "
                "other data or settings. Write a new cache for this run with `alignkd cache-teacher`"
            )
        parts.append(entry.top_k.to(device))
        start += rows
    return TopKLogProbs.concatenate(parts)


def _gather_attention(
    entries: list[SampleEntry], layout: ExpandedBatch, heads: int, num_vision_tokens: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    text_rows = layout.spans.text_after_image_length
    max_text = int(text_rows.max()) if text_rows.numel() else 0
    attention = torch.zeros(len(entries), heads, max_text, num_vision_tokens, device=device)
    for sample, (entry, rows) in enumerate(zip(entries, text_rows.tolist())):
        if rows == 0:
            continue
        expected_shape = (heads, rows, num_vision_tokens)
        if entry.attention is None or tuple(entry.attention.shape) != expected_shape:
            found = "none" if entry.attention is None else tuple(entry.attention.shape)
            raise CacheMismatchError(
                f"the teacher cache entry of sample {entry.key!r} has an attention block of shape {found}, but the "
                f"sample needs {expected_shape}; write the cache with a loss that uses the attention (attention "
                "or focus term), for the same data"
            )
        attention[sample, :, :rows] = entry.attention.to(device, torch.float32)
    row_mask = torch.arange(max_text, device=device)[None, :] < text_rows[:, None].to(device)
    return attention, row_mask


def _gather_vision_tokens(
    entries: list[SampleEntry], layout: ExpandedBatch, num_vision_tokens: int, width: int, device: torch.device
) -> torch.Tensor:
    tokens = []
    for sample in layout.image_sample_index.tolist():
        entry = entries[sample]
        expected_shape = (num_vision_tokens, width)
        if entry.vision_tokens is None or tuple(entry.vision_tokens.shape) != expected_shape:
            found = "none" if entry.vision_tokens is None else tuple(entry.vision_tokens.shape)
            raise CacheMismatchError(
                f"the teacher cache entry of sample {entry.key!r} has vision tokens of shape {found}, but the sample "
                f"needs {expected_shape}; write the cache with a loss whose vision_weight is positive, for the same data"
            )
        tokens.append(entry.vision_tokens.to(device, torch.float32))
    if not tokens:
        return torch.zeros(0, num_vision_tokens, width, device=device)
    return torch.stack(tokens)
