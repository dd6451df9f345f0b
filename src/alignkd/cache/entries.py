"""One sample's teacher outputs: cut out of a batch's `VLMOutput`, and turned into stored tensors and back."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch

from alignkd.cache.format import (
    ATTENTION,
    ATTENTION_FIELD,
    FIELD_KINDS,
    LOG_PROBS_FIELD,
    LOGITS,
    TAIL_FIELD,
    TARGETS_FIELD,
    TOKEN_IDS_FIELD,
    VISION_TOKENS,
    VISION_TOKENS_FIELD,
    CacheError,
    tensor_name,
)
from alignkd.errors import ModelError
from alignkd.losses.topk import TopKLogProbs, top_k_log_probs
from alignkd.models.interface import VLMOutput

STORED_FLOAT_DTYPE = torch.float16
"""Dtype of the stored attention blocks and vision tokens."""


@dataclass
class SampleEntry:
    """The teacher's outputs for one sample.

    Fields:
        key: the sample key (see `alignkd.cache.keys`).
        token_hash: hash of the sample's token ids, labels and image (`alignkd.cache.keys.sample_hash`).
        top_k: the sample's logit rows reduced to top-k log-probabilities, or None when logits
            are not stored.
        targets: LongTensor [rows]; the next-token id of each logit row, or None with `top_k`.
        attention: [heads, text, vision]; the layer-0 text-after-image x vision block, or None
            when not stored or when the sample has no text after an image.
        vision_tokens: [vision, hidden]; the projector output of the sample's image, or None.
        has_image: the sample has an image.
        attention_rows: text queries after the image (the rows of `attention` when stored).
        sequence_tokens: real tokens after image expansion.
    """

    key: str
    token_hash: str
    top_k: TopKLogProbs | None
    targets: torch.Tensor | None
    attention: torch.Tensor | None
    vision_tokens: torch.Tensor | None
    has_image: bool
    attention_rows: int
    sequence_tokens: int

    @property
    def logit_rows(self) -> int:
        return 0 if self.top_k is None else self.top_k.rows


def split_teacher_output(
    output: VLMOutput,
    *,
    keys: list[str],
    token_hashes: list[str],
    outputs: Collection[str],
    top_k: int,
    temperature: float,
    vocab_size: int,
    chunk_size: int,
) -> list[SampleEntry]:
    """Cut a teacher's batch output into one entry per sample, with the logits reduced to top-k.

    Args:
        output: the teacher's `VLMOutput` for a batch of `len(keys)` samples.
        keys, token_hashes: per sample, in batch order.
        outputs: the output kinds to keep ("logits", "attention", "vision_tokens").
        top_k, temperature, vocab_size: see `alignkd.losses.topk.top_k_log_probs`.
        chunk_size: logit rows per fp32 chunk of the top-k reduction.
    """
    batch_size = output.attention_mask.shape[0]
    if len(keys) != batch_size or len(token_hashes) != batch_size:
        raise ValueError(f"expected {batch_size} keys and token hashes, got {len(keys)} and {len(token_hashes)}")

    reduced = None
    if LOGITS in outputs:
        if output.logits is None:
            raise ModelError("the teacher's forward returned no logits; call it with logit_positions set")
        reduced = top_k_log_probs(
            output.logits, top_k, temperature=temperature, vocab_size=vocab_size, chunk_size=chunk_size
        )
    if ATTENTION in outputs and output.text_vision_attention is None:
        raise ModelError("the teacher's forward returned no attention; call it with capture_attention=True")

    rows_per_sample = output.logit_position_mask.sum(dim=1).tolist()
    first_rows = [0]
    for rows in rows_per_sample[:-1]:
        first_rows.append(first_rows[-1] + rows)
    attention_rows = output.spans.text_after_image_length.tolist()
    has_image = output.spans.has_image.tolist()
    sequence_tokens = output.attention_mask.sum(dim=1).tolist()
    image_of_sample = {int(sample): image for image, sample in enumerate(output.image_sample_index.tolist())}

    entries = []
    for sample in range(batch_size):
        start, end = first_rows[sample], first_rows[sample] + rows_per_sample[sample]
        sample_top_k = targets = attention = vision_tokens = None
        if reduced is not None:
            sample_top_k = TopKLogProbs(
                reduced.log_probs[start:end],
                reduced.token_ids[start:end],
                reduced.tail_log_prob[start:end],
                reduced.vocab_size,
                reduced.temperature,
            )
            targets = output.targets[start:end]
        if ATTENTION in outputs and has_image[sample] and attention_rows[sample] > 0:
            attention = output.text_vision_attention[sample, :, : attention_rows[sample]]
        if VISION_TOKENS in outputs and has_image[sample]:
            vision_tokens = output.vision_tokens[image_of_sample[sample]]
        entries.append(
            SampleEntry(
                key=keys[sample],
                token_hash=token_hashes[sample],
                top_k=sample_top_k,
                targets=targets,
                attention=attention,
                vision_tokens=vision_tokens,
                has_image=bool(has_image[sample]),
                attention_rows=int(attention_rows[sample]),
                sequence_tokens=int(sequence_tokens[sample]),
            )
        )
    return entries


def _to_stored_float(tensor: torch.Tensor, what: str, key: str) -> torch.Tensor:
    stored = tensor.detach().to("cpu", STORED_FLOAT_DTYPE).contiguous()
    if not torch.isfinite(stored).all():
        largest = float(tensor.detach().abs().max())
        raise CacheError(
            f"the teacher's {what} of sample {key!r} do not fit float16 (largest magnitude {largest:.6g}, "
            f"float16 holds up to {torch.finfo(STORED_FLOAT_DTYPE).max:.6g}); such a teacher cannot be cached "
            "in this format"
        )
    return stored


def entry_tensors(entry: SampleEntry, position: int, id_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Convert `entry` to the named CPU tensors that store it at `position` of a shard (see `alignkd.cache.format`)."""
    tensors: dict[str, torch.Tensor] = {}
    if entry.top_k is not None:
        tensors[tensor_name(position, LOG_PROBS_FIELD)] = entry.top_k.log_probs.detach().to("cpu", torch.float32).contiguous()
        tensors[tensor_name(position, TOKEN_IDS_FIELD)] = entry.top_k.token_ids.detach().to("cpu", id_dtype).contiguous()
        tensors[tensor_name(position, TAIL_FIELD)] = entry.top_k.tail_log_prob.detach().to("cpu", torch.float32).contiguous()
        tensors[tensor_name(position, TARGETS_FIELD)] = entry.targets.detach().to("cpu", torch.int32).contiguous()
    if entry.attention is not None:
        tensors[tensor_name(position, ATTENTION_FIELD)] = _to_stored_float(entry.attention, "attention probabilities", entry.key)
    if entry.vision_tokens is not None:
        tensors[tensor_name(position, VISION_TOKENS_FIELD)] = _to_stored_float(entry.vision_tokens, "vision tokens", entry.key)
    return tensors


def tensor_bytes_by_kind(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """Bytes of `tensors` per output kind, from their names."""
    totals: dict[str, int] = {}
    for name, tensor in tensors.items():
        kind = FIELD_KINDS[name.rsplit("/", 1)[1]]
        totals[kind] = totals.get(kind, 0) + tensor.numel() * tensor.element_size()
    return totals


def entry_from_tensors(
    read: Callable[[str], torch.Tensor | None],
    position: int,
    *,
    key: str,
    token_hash: str,
    has_image: bool,
    attention_rows: int,
    sequence_tokens: int,
    vocab_size: int,
    temperature: float,
) -> SampleEntry:
    """Rebuild the entry at `position` of a shard; `read(name)` returns a stored tensor or None."""
    log_probs = read(tensor_name(position, LOG_PROBS_FIELD))
    top_k = targets = None
    if log_probs is not None:
        top_k = TopKLogProbs(
            log_probs,
            read(tensor_name(position, TOKEN_IDS_FIELD)).long(),
            read(tensor_name(position, TAIL_FIELD)),
            vocab_size,
            temperature,
        )
        targets = read(tensor_name(position, TARGETS_FIELD)).long()
    return SampleEntry(
        key=key,
        token_hash=token_hash,
        top_k=top_k,
        targets=targets,
        attention=read(tensor_name(position, ATTENTION_FIELD)),
        vision_tokens=read(tensor_name(position, VISION_TOKENS_FIELD)),
        has_image=has_image,
        attention_rows=attention_rows,
        sequence_tokens=sequence_tokens,
    )
