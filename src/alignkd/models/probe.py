"""Layer-0 attention probe: text-query x vision-key attention probabilities without eager attention.

Align-KD distils the first decoder layer's attention of the text after the image over the
image's vision tokens. Fused kernels (SDPA, flash attention) never form the probabilities, and
asking transformers for `output_attentions` forces eager attention in every layer and keeps
[batch, heads, seq, seq] per layer. The probe avoids both:

1. `install_probe` registers wrapper attention implementations ("alignkd_sdpa", "alignkd_eager",
   "alignkd_flash_attention_2", ...) with transformers' AttentionInterface, and the base
   implementation's mask function under the same name with AttentionMaskInterface (without
   it transformers builds no mask for an unknown name). It switches the language model, and
   only the language model, to the wrapper of its current implementation. Every layer still
   runs the base kernel, so outputs are unchanged.
2. While `Layer0Probe.recording()` is active, the wrapper stores layer 0's post-RoPE query and
   key. It does no arithmetic inside the attention call. Activation checkpointing of the
   decoder layers re-runs layer 0 during backward, and that re-run must repeat exactly the
   operations of the first run.
3. After the decoder returns, `attention_rows` computes softmax(Q K^T * scaling + mask) in
   fp32 for the requested query rows only, in blocks of query rows. The mask comes from the 2D
   padding mask and causality, independent of the kernel's mask format. Each block keeps only
   the requested key columns. With autograd on, each block runs under
   torch.utils.checkpoint, so only the kept columns and one block are alive at a time.

Gradient from the probe reaches layer 0's q_proj and k_proj (and what feeds them: the input
embeddings, the projector). It reaches no value or output projection and no other layer.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from alignkd.errors import ModelError
from alignkd.models.interface import Spans

logger = logging.getLogger(__name__)

WRAPPER_PREFIX = "alignkd_"
"""Prefix of the attention implementation names registered by this module."""

DEFAULT_BLOCK_BYTES = 32 * 2**20
"""Size of one block of fp32 probabilities, batch x heads x rows x seq x 4 bytes, from which the
rows per block are derived. A block needs about twice this much while it is computed (scores
and their softmax)."""

PROBE_ATTRIBUTE = "alignkd_probe"
"""Name of the layer-0 attention module's attribute that stores its `Layer0Probe`."""


class Layer0Probe:
    """Records the post-RoPE query and key of one attention module while `recording()` is active.

    Attributes:
        query: [batch, heads, seq, head_dim] of the last recorded forward, or None.
        key: [batch, kv_heads, seq, head_dim] of the last recorded forward, or None.
        scaling: the softmax scale that the module passed to its attention function.
        chunk_rows: query rows per probability block, or None to derive them from
            DEFAULT_BLOCK_BYTES (see `attention_rows`).
    """

    def __init__(self, chunk_rows: int | None = None) -> None:
        if chunk_rows is not None and chunk_rows < 1:
            raise ModelError(f"probe chunk_rows must be at least 1, got {chunk_rows}")
        self.chunk_rows = chunk_rows
        self.query: torch.Tensor | None = None
        self.key: torch.Tensor | None = None
        self.scaling: float | None = None
        self._recording = False

    @property
    def is_recording(self) -> bool:
        return self._recording

    def store(self, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        self.query, self.key, self.scaling = query, key, scaling

    def clear(self) -> None:
        self.query = self.key = self.scaling = None

    @contextmanager
    def recording(self) -> Iterator["Layer0Probe"]:
        """Record the next forward of the module; recording stops when the block exits."""
        self.clear()
        self._recording = True
        try:
            yield self
        finally:
            self._recording = False

    def recorded(self, batch_size: int, seq_length: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Return the recorded (query, key, scaling) after checking them against the batch and sequence.

        Raises ModelError if nothing was recorded or if the tensors are not laid out as
        [batch, heads, seq, head_dim] (a kernel that passed another layout would otherwise give
        silently wrong probabilities).
        """
        if self.query is None or self.key is None or self.scaling is None:
            raise ModelError(
                "the layer-0 attention probe recorded nothing: the language model's attention function "
                "was not the alignkd wrapper during the forward (was the attention implementation "
                "changed after install_probe?)"
            )
        expected = (batch_size, seq_length)
        for name, tensor in (("query", self.query), ("key", self.key)):
            if tensor.dim() != 4 or (tensor.shape[0], tensor.shape[2]) != expected:
                raise ModelError(
                    f"the layer-0 {name} has shape {tuple(tensor.shape)}, expected [batch={batch_size}, heads, "
                    f"seq={seq_length}, head_dim]; the attention kernel passed another layout"
                )
        if self.query.shape[1] % self.key.shape[1] != 0 or self.query.shape[3] != self.key.shape[3]:
            raise ModelError(
                f"layer-0 query {tuple(self.query.shape)} and key {tuple(self.key.shape)} do not form "
                "grouped-query attention heads"
            )
        return self.query, self.key, self.scaling


class _ConfigView:
    """A config that reports `implementation` as `_attn_implementation` and forwards the rest."""

    def __init__(self, config: Any, implementation: str) -> None:
        self._config = config
        self._implementation = implementation

    def __getattr__(self, name: str) -> Any:
        if name == "_attn_implementation":
            return self._implementation
        return getattr(self._config, name)


class _ModuleView:
    """An attention module whose config reports the base implementation name.

    transformers' flash-attention function picks its kernel from
    `module.config._attn_implementation`, which is the wrapper's name while the probe is
    installed.

    NOTE: the flash-attention wrappers are untested here (no GPU or flash-attn package in
    the test environment); SDPA and eager are tested against eager attention.
    """

    def __init__(self, module: nn.Module, implementation: str) -> None:
        self._module = module
        self.config = _ConfigView(module.config, implementation)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _base_attention_function(name: str) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if name == "eager":
        # NOTE: transformers has no shared eager function: each model passes its own. LLaMA's is
        # exact for LLaMA-style attention (MobileVLM, LLaVA-1.5's Vicuna) but lacks the extras of
        # some other families, such as logit soft-capping.
        from transformers.models.llama.modeling_llama import eager_attention_forward

        return eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[name]


def _make_wrapper(base_name: str) -> Callable:
    needs_view = "flash" in base_name

    def attention_with_probe(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        probe = getattr(module, PROBE_ATTRIBUTE, None)
        if probe is not None and probe.is_recording:
            scaling = kwargs.get("scaling")
            if scaling is None:
                scaling = getattr(module, "scaling", query.shape[-1] ** -0.5)
            probe.store(query, key, scaling)

        base = _base_attention_function(base_name)
        target = _ModuleView(module, base_name) if needs_view else module
        return base(target, query, key, value, attention_mask, **kwargs)

    attention_with_probe.__name__ = f"{WRAPPER_PREFIX}{base_name.replace('|', '_')}_attention"
    return attention_with_probe


def register_probe_attention() -> None:
    """Register a probe wrapper for every attention implementation registered in transformers (idempotent)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    base_names = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    for base_name in base_names:
        if base_name.startswith(WRAPPER_PREFIX) or "|" in base_name:
            continue
        wrapper_name = WRAPPER_PREFIX + base_name
        if wrapper_name in ALL_ATTENTION_FUNCTIONS:
            continue
        AttentionInterface.register(wrapper_name, _make_wrapper(base_name))

        mask_function = eager_mask if base_name == "eager" else ALL_MASK_ATTENTION_FUNCTIONS.get(base_name)
        if mask_function is not None:
            AttentionMaskInterface.register(wrapper_name, mask_function)


def install_probe(decoder: nn.Module, layer0_attention: nn.Module, *, chunk_rows: int | None = None) -> Layer0Probe:
    """Switch `decoder` to the probe wrapper of its attention implementation; return layer 0's probe.

    Only `decoder.config` changes, so a vision tower with its own config keeps its attention.
    Calling it again returns the installed probe. The change is not saved with the model
    (transformers does not serialise the attention implementation).
    """
    register_probe_attention()

    config = decoder.config
    current = config._attn_implementation or "sdpa"
    if not current.startswith(WRAPPER_PREFIX):
        wrapper_name = WRAPPER_PREFIX + current
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        if wrapper_name not in ALL_ATTENTION_FUNCTIONS:
            raise ModelError(
                f"the layer-0 probe cannot wrap attention implementation {current!r}; "
                "load the model with attn_implementation 'sdpa', 'eager' or a flash-attention one"
            )
        config._attn_implementation = wrapper_name
        logger.debug("language model attention switched from %s to %s", current, wrapper_name)

    if getattr(layer0_attention, "config", config) is not config:
        raise ModelError("the layer-0 attention module does not share the decoder's config; cannot install the probe")

    probe = getattr(layer0_attention, PROBE_ATTRIBUTE, None)
    if probe is None:
        probe = Layer0Probe(chunk_rows)
        setattr(layer0_attention, PROBE_ATTRIBUTE, probe)
    return probe


def _probability_block(
    rows: torch.Tensor,
    key: torch.Tensor,
    padding_mask: torch.Tensor,
    row_positions: torch.Tensor,
    row_valid: torch.Tensor,
    key_positions: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """Compute the attention probabilities of a block of query rows, in fp32.

    Shapes: rows [batch, heads, chunk, head_dim], key [batch, kv_heads, seq, head_dim],
    padding_mask [batch, seq] bool, row_positions and row_valid [batch, chunk],
    key_positions [batch, keys] or None for all keys. Returns [batch, heads, chunk, keys].
    """
    batch, heads, chunk, head_dim = rows.shape
    kv_heads, seq = key.shape[1], key.shape[2]
    groups = heads // kv_heads

    # Query head h uses key head h // groups (the grouped-query layout of transformers'
    # repeat_kv), so grouping the query heads avoids materialising repeated keys.
    grouped = rows.float().reshape(batch, kv_heads, groups * chunk, head_dim)
    scores = torch.matmul(grouped, key.float().transpose(-1, -2)).mul_(scaling)
    scores = scores.reshape(batch, heads, chunk, seq)

    key_index = torch.arange(seq, device=key.device)
    allowed = padding_mask[:, None, None, :] & (key_index[None, None, None, :] <= row_positions[:, None, :, None])
    # Masked scores get the minimum finite value, as in transformers' eager mask. A fully masked
    # row then has a finite (uniform) softmax instead of NaN, and is zeroed below.
    # In place, so that one block needs only the scores and their softmax: neither matmul nor
    # mul keeps its output for backward.
    scores.masked_fill_(~allowed, torch.finfo(scores.dtype).min)
    probabilities = torch.softmax(scores, dim=-1)

    if key_positions is not None:
        index = key_positions[:, None, None, :].expand(batch, heads, chunk, key_positions.shape[1])
        probabilities = probabilities.gather(3, index)

    keep = row_valid & allowed.any(dim=-1).squeeze(1)
    return probabilities * keep[:, None, :, None].to(probabilities.dtype)


def attention_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    padding_mask: torch.Tensor,
    row_positions: torch.Tensor,
    row_valid: torch.Tensor,
    key_positions: torch.Tensor | None = None,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Compute causal attention probabilities of selected query rows over selected keys, in fp32.

    Args:
        query: [batch, heads, seq, head_dim], post-RoPE.
        key: [batch, kv_heads, seq, head_dim], post-RoPE; heads must be a multiple of kv_heads.
        scaling: softmax scale (head_dim ** -0.5 for LLaMA).
        padding_mask: [batch, seq]; nonzero on real tokens.
        row_positions: LongTensor [batch, rows]; the query positions to compute.
        row_valid: BoolTensor [batch, rows]; rows that are False come back as zeros.
        key_positions: LongTensor [batch, keys] of key columns to keep, or None for all seq keys.
        chunk_rows: query rows per block; None derives them from DEFAULT_BLOCK_BYTES.

    Returns:
        [batch, heads, rows, keys]; row r of sample b is softmax over keys j <= row_positions[b, r]
        that are real tokens, restricted to `key_positions`.
    """
    batch, heads, seq, head_dim = query.shape
    if heads % key.shape[1] != 0:
        raise ModelError(f"query heads ({heads}) must be a multiple of key/value heads ({key.shape[1]})")

    padding_mask = padding_mask.to(device=query.device, dtype=torch.bool)
    row_positions = row_positions.to(query.device)
    row_valid = row_valid.to(device=query.device, dtype=torch.bool)
    num_rows = row_positions.shape[1]
    num_keys = seq if key_positions is None else key_positions.shape[1]
    if num_rows == 0:
        return query.new_zeros(batch, heads, 0, num_keys, dtype=torch.float32)

    index = row_positions[:, None, :, None].expand(batch, heads, num_rows, head_dim)
    rows = query.gather(2, index)

    use_checkpoint = torch.is_grad_enabled() and (rows.requires_grad or key.requires_grad)
    blocks = []
    if chunk_rows is None:
        chunk_rows = max(1, DEFAULT_BLOCK_BYTES // (batch * heads * seq * torch.finfo(torch.float32).bits // 8))
    for start in range(0, num_rows, chunk_rows):
        stop = min(start + chunk_rows, num_rows)
        arguments = (
            rows[:, :, start:stop],
            key,
            padding_mask,
            row_positions[:, start:stop],
            row_valid[:, start:stop],
            key_positions,
            scaling,
        )
        if use_checkpoint:
            blocks.append(checkpoint(_probability_block, *arguments, use_reentrant=False))
        else:
            blocks.append(_probability_block(*arguments))
    return torch.cat(blocks, dim=2)


def text_vision_attention(
    probe: Layer0Probe, padding_mask: torch.Tensor, spans: Spans, num_vision_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute the recorded forward's text-after-image x vision attention block.

    Returns:
        attention: [batch, heads, max_text, num_vision_tokens] fp32; rows are the queries
            [vision_end, text_end) in order, columns the keys [vision_start, vision_end).
            Rows beyond a sample's text-after-image length are zero. max_text is the largest
            such length in the batch, and 0 when no sample has text after an image.
        row_mask: BoolTensor [batch, max_text]; True on real rows.
    """
    query, key, scaling = probe.recorded(*padding_mask.shape)
    seq = query.shape[2]
    device = query.device
    spans = spans.to(device)

    text_length = spans.text_after_image_length
    max_text = int(text_length.max()) if text_length.numel() else 0
    offsets = torch.arange(max_text, device=device)
    row_mask = offsets[None, :] < text_length[:, None]
    row_positions = (spans.vision_end[:, None] + offsets[None, :]).clamp(max=seq - 1)

    vision_offsets = torch.arange(num_vision_tokens, device=device)
    key_positions = (spans.vision_start[:, None] + vision_offsets[None, :]).clamp(max=seq - 1)

    attention = attention_rows(
        query, key, scaling, padding_mask, row_positions, row_mask, key_positions, probe.chunk_rows
    )
    return attention, row_mask


def full_attention(probe: Layer0Probe, padding_mask: torch.Tensor) -> torch.Tensor:
    """Compute the recorded forward's whole probability matrix [batch, heads, seq, seq] in fp32.

    Rows of padding positions are zero; every row is zero above the diagonal. Meant for tests
    and inspection: it is as large as eager attention's output.
    """
    query, key, scaling = probe.recorded(*padding_mask.shape)
    batch, _, seq, _ = query.shape
    positions = torch.arange(seq, device=query.device)[None, :].expand(batch, seq)
    padding_mask = padding_mask.to(device=query.device, dtype=torch.bool)
    return attention_rows(query, key, scaling, padding_mask, positions, padding_mask, None, probe.chunk_rows)
