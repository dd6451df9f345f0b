"""One forward for every supported VLM, returning what the Align-KD objective consumes."""

from __future__ import annotations

import torch
from torch import nn

from alignkd.constants import IGNORE_INDEX
from alignkd.errors import ModelError
from alignkd.models.adapters import VLMAdapter, get_vlm_adapter
from alignkd.models.expansion import ExpandedBatch, PaddingSide, embed_multimodal
from alignkd.models.interface import LogitPositions, VLMOutput
from alignkd.models.probe import install_probe, text_vision_attention

_LOGIT_POSITIONS = ("supervised", "all", "none")


def prepare_inputs(
    adapter: VLMAdapter,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    image_mask: torch.Tensor | None = None,
    padding_side: PaddingSide = "auto",
) -> ExpandedBatch:
    """Encode the images and expand the placeholders with `adapter`'s model (see expansion.py)."""
    return embed_multimodal(
        input_ids,
        attention_mask,
        labels,
        pixel_values,
        image_mask,
        encode_images=adapter.encode_images,
        embed_tokens=adapter.input_embeddings,
        num_vision_tokens=adapter.num_vision_tokens,
        hidden_size=adapter.hidden_size,
        padding_side=padding_side,
    )


def select_logit_positions(
    attention_mask: torch.Tensor, labels: torch.Tensor | None, logit_positions: LogitPositions
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (position_mask [batch, seq], targets [positions]) for `logit_positions`.

    Position t is selected when it is a real token and, for "supervised", label t + 1 is
    supervised, or for "all", token t + 1 is real. The target of t is label t + 1
    (IGNORE_INDEX where that label is not supervised, or everywhere when `labels` is None).
    """
    if logit_positions not in _LOGIT_POSITIONS:
        raise ModelError(f"logit_positions must be one of {', '.join(_LOGIT_POSITIONS)}, got {logit_positions!r}")
    if logit_positions == "supervised" and labels is None:
        raise ModelError("logit_positions='supervised' needs labels; pass labels or use 'all' or 'none'")

    real = attention_mask.bool()
    batch_size, seq = real.shape
    position_mask = torch.zeros_like(real)
    if labels is None:
        next_labels = torch.full((batch_size, max(seq - 1, 0)), IGNORE_INDEX, dtype=torch.long, device=real.device)
    else:
        next_labels = labels[:, 1:]

    if logit_positions == "supervised":
        position_mask[:, :-1] = real[:, :-1] & (next_labels != IGNORE_INDEX)
    elif logit_positions == "all":
        position_mask[:, :-1] = real[:, :-1] & real[:, 1:]

    targets = next_labels[position_mask[:, :-1]]
    return position_mask, targets


def forward_vlm(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    image_mask: torch.Tensor | None = None,
    *,
    logit_positions: LogitPositions = "supervised",
    capture_attention: bool = False,
) -> VLMOutput:
    """Run a MobileVLM or LLaVA model on an unexpanded batch and return a `VLMOutput`.

    Steps:
    1. Encode the images of the samples that have one.
    2. Replace each placeholder with the model's vision tokens.
    3. Run the decoder on the expanded embeddings.
    4. Apply the LM head only at the positions chosen by `logit_positions`.
    With `capture_attention`, the layer-0 text x vision attention block comes back too. The
    probe computes it while the decoder keeps its SDPA or flash kernels.

    Args:
        model: the VLM (DDP and similar wrappers are unwrapped; to train under DDP, call this
            inside the forward of the wrapped module so that DDP sees the forward).
        input_ids: [batch, seq] with at most one IMAGE_PLACEHOLDER_ID per sample.
        attention_mask: [batch, seq]; every row left- or right-padded.
        labels: [batch, seq] with IGNORE_INDEX on prompt, padding and the placeholder, or None.
        pixel_values: [images, 3, H, W]; the images of the samples that have one, in batch order.
        image_mask: BoolTensor [batch]; read from the placeholders when None.
        logit_positions: which positions get logits (see `LogitPositions`).
        capture_attention: also return the layer-0 text x vision attention.

    Run the teacher under torch.no_grad(): then nothing of its forward, the probe included,
    is kept for backward.
    """
    adapter = get_vlm_adapter(model)
    expanded = prepare_inputs(adapter, input_ids, attention_mask, labels, pixel_values, image_mask)

    probe = None
    if capture_attention:
        probe = install_probe(adapter.decoder, adapter.layer0_attention)

    decoder_inputs = dict(
        inputs_embeds=expanded.inputs_embeds,
        attention_mask=expanded.attention_mask,
        position_ids=expanded.position_ids,
        use_cache=False,
    )
    if probe is not None:
        with probe.recording():
            hidden_states = adapter.decoder(**decoder_inputs).last_hidden_state
    else:
        hidden_states = adapter.decoder(**decoder_inputs).last_hidden_state

    position_mask, targets = select_logit_positions(expanded.attention_mask, expanded.labels, logit_positions)
    logits = None
    if logit_positions != "none":
        logits = adapter.lm_head(hidden_states[position_mask])

    attention = row_mask = None
    if probe is not None:
        attention, row_mask = text_vision_attention(
            probe, expanded.attention_mask, expanded.spans, adapter.num_vision_tokens
        )
        probe.clear()

    return VLMOutput(
        logits=logits,
        logit_position_mask=position_mask,
        targets=targets,
        vision_tokens=expanded.vision_tokens,
        image_sample_index=expanded.image_sample_index,
        spans=expanded.spans,
        text_vision_attention=attention,
        text_vision_row_mask=row_mask,
        attention_mask=expanded.attention_mask,
        labels=expanded.labels,
    )
