"""Layer-0 attention probe: equal to eager attention, causal, chunk-independent, gradient to q/k only."""

from __future__ import annotations

import copy

import pytest
import torch
from vlm_test_helpers import random_images, sharpen

from alignkd.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from alignkd.errors import ModelError
from alignkd.models.adapters import get_vlm_adapter
from alignkd.models.forward import forward_vlm, prepare_inputs
from alignkd.models.probe import Layer0Probe, attention_rows, full_attention, install_probe, text_vision_attention

IMG = IMAGE_PLACEHOLDER_ID

# Right-padded (sample 1 is shorter) and left-padded versions of the same two samples.
RIGHT = (
    torch.tensor([[1, 10, IMG, 13, 14, 15], [1, 2, 3, IMG, 20, 0]]),
    torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]),
)
LEFT = (
    torch.tensor([[1, 10, IMG, 13, 14, 15], [0, 1, 2, 3, IMG, 20]]),
    torch.tensor([[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]]),
)
UNPADDED = (torch.tensor([[1, 10, IMG, 13, 14, 15]]), torch.ones(1, 6, dtype=torch.long))


def eager_layer0(model, batch):
    """Layer-0 attention from transformers' eager path with output_attentions on a copy of `model`."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    decoder = get_vlm_adapter(eager).decoder
    with torch.no_grad():
        outputs = decoder(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            output_attentions=True,
            use_cache=False,
        )
    return outputs.attentions[0]


def probe_full(model, batch):
    adapter = get_vlm_adapter(model)
    probe = install_probe(adapter.decoder, adapter.layer0_attention)
    with torch.no_grad(), probe.recording():
        adapter.decoder(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
    return full_attention(probe, batch.attention_mask)


@pytest.mark.parametrize("inputs", [UNPADDED, RIGHT, LEFT], ids=["unpadded", "right", "left"])
def test_full_capture_equals_eager(build_vlm, inputs):
    model = build_vlm().model
    sharpen(model, std=0.3)
    input_ids, attention_mask = inputs
    with torch.no_grad():
        batch = prepare_inputs(
            get_vlm_adapter(model), input_ids, attention_mask, None, random_images(input_ids.shape[0])
        )

    probabilities = probe_full(model, batch)
    eager = eager_layer0(model, batch)
    assert probabilities.shape == eager.shape

    real = batch.attention_mask.bool()
    for row in range(real.shape[0]):
        queries = real[row].nonzero().flatten()
        torch.testing.assert_close(probabilities[row][:, queries], eager[row][:, queries].float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(probabilities[row][:, queries].sum(-1), torch.ones(eager.shape[1], len(queries)))
        assert (probabilities[row][:, ~real[row]] == 0).all()

    above_diagonal = torch.triu(torch.ones(real.shape[1], real.shape[1], dtype=torch.bool), diagonal=1)
    assert (probabilities[:, :, above_diagonal] == 0).all()


@pytest.mark.parametrize("inputs", [RIGHT, LEFT], ids=["right", "left"])
def test_text_vision_block_equals_eager_slice(build_vlm, inputs):
    model = build_vlm().model
    sharpen(model, std=0.3)
    input_ids, attention_mask = inputs
    images = random_images(2)
    with torch.no_grad():
        output = forward_vlm(
            model, input_ids, attention_mask, None, images, logit_positions="none", capture_attention=True
        )
        batch = prepare_inputs(get_vlm_adapter(model), input_ids, attention_mask, None, images)
    eager = eager_layer0(model, batch)

    spans = output.spans
    for row in range(2):
        start, end, text_end = int(spans.vision_start[row]), int(spans.vision_end[row]), int(spans.text_end[row])
        expected = eager[row, :, end:text_end, start:end].float()
        rows = text_end - end
        torch.testing.assert_close(output.text_vision_attention[row, :, :rows], expected, atol=1e-5, rtol=0)
        assert (output.text_vision_attention[row, :, rows:] == 0).all()
        assert output.text_vision_row_mask[row].tolist() == [True] * rows + [False] * (3 - rows)


def test_probe_keeps_outputs_unchanged(build_vlm):
    model = build_vlm().model
    input_ids, attention_mask = RIGHT
    images = random_images(2)
    with torch.no_grad():
        before = forward_vlm(model, input_ids, attention_mask, None, images, logit_positions="all")
        captured = forward_vlm(
            model, input_ids, attention_mask, None, images, logit_positions="all", capture_attention=True
        )
    adapter = get_vlm_adapter(model)
    assert adapter.decoder.config._attn_implementation == "alignkd_sdpa"
    assert adapter.vision_tower.vision_tower.vision_model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(captured.logits, before.logits, atol=0, rtol=0)


def test_chunking_does_not_change_result():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 9, 8, generator=generator)
    key = torch.randn(2, 2, 9, 8, generator=generator)
    padding = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])
    positions = torch.arange(9).expand(2, 9)
    whole = attention_rows(query, key, 8**-0.5, padding, positions, padding.bool(), chunk_rows=9)
    chunked = attention_rows(query, key, 8**-0.5, padding, positions, padding.bool(), chunk_rows=2)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-5)


def test_known_two_token_probabilities():
    # Scores (q . k) * scaling: row 1 attends to keys 0 and 1 with scores 0 and ln 3, so the
    # probabilities are 1/4 and 3/4. Row 0 attends to key 0 only.
    query = torch.tensor([[[[1.0], [1.0]]]])
    key = torch.tensor([[[[0.0], [torch.log(torch.tensor(3.0))]]]])
    probabilities = attention_rows(
        query, key, 1.0, torch.ones(1, 2), torch.tensor([[0, 1]]), torch.tensor([[True, True]])
    )
    torch.testing.assert_close(probabilities[0, 0], torch.tensor([[1.0, 0.0], [0.25, 0.75]]))


def test_gradient_reaches_layer0_query_and_key_only(build_vlm):
    model = build_vlm().model
    sharpen(model, std=0.3)
    input_ids, attention_mask = RIGHT
    output = forward_vlm(
        model, input_ids, attention_mask, None, random_images(2), logit_positions="none", capture_attention=True
    )
    (output.text_vision_attention**2).sum().backward()

    layers = model.model.layers
    attention = layers[0].self_attn
    assert attention.q_proj.weight.grad is not None and attention.q_proj.weight.grad.abs().sum() > 0
    assert attention.k_proj.weight.grad is not None and attention.k_proj.weight.grad.abs().sum() > 0
    assert attention.v_proj.weight.grad is None
    assert attention.o_proj.weight.grad is None
    assert layers[0].mlp.up_proj.weight.grad is None
    assert all(parameter.grad is None for parameter in layers[1].parameters())
    assert model.lm_head.weight.grad is None


def test_gradient_with_activation_checkpointing(build_vlm):
    def grads(checkpointing: bool):
        model = build_vlm().model
        sharpen(model, std=0.3)
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        input_ids, attention_mask = RIGHT
        labels = torch.where(attention_mask.bool(), input_ids.clamp(min=0), IGNORE_INDEX)
        labels[:, :4] = IGNORE_INDEX
        output = forward_vlm(model, input_ids, attention_mask, labels, random_images(2), capture_attention=True)
        loss = output.logits.logsumexp(-1).sum() + output.text_vision_attention.sum()
        loss.backward()
        return model.model.layers[0].self_attn.q_proj.weight.grad

    torch.testing.assert_close(grads(True), grads(False), atol=1e-6, rtol=1e-5)


def test_probe_saves_no_full_rows_for_backward():
    generator = torch.Generator().manual_seed(0)
    batch, heads, seq, head_dim = 1, 4, 64, 8
    query = torch.randn(batch, heads, seq, head_dim, generator=generator, requires_grad=True)
    key = torch.randn(batch, 2, seq, head_dim, generator=generator, requires_grad=True)
    rows = torch.arange(40, 60)[None]
    columns = torch.arange(4, 12)[None]

    saved_sizes = []

    def pack(tensor):
        saved_sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = attention_rows(
            query, key, 1.0, torch.ones(batch, seq), rows, torch.ones(1, 20, dtype=torch.bool), columns, chunk_rows=16
        )
    result.sum().backward()

    # A block of full rows is batch x heads x 16 x seq values, more than the query itself. Only
    # inputs, indices and the kept columns may be saved.
    block_of_rows = batch * heads * 16 * seq
    assert max(saved_sizes) < block_of_rows
    assert query.grad is not None and key.grad is not None


def test_transposed_layout_rejected():
    probe = Layer0Probe()
    # [batch, seq, heads, head_dim], the layout flash-attention kernels use internally.
    probe.store(torch.randn(2, 6, 4, 8), torch.randn(2, 6, 2, 8), 1.0)
    with pytest.raises(ModelError, match=r"layer-0 query has shape \(2, 6, 4, 8\)"):
        full_attention(probe, torch.ones(2, 6))


def test_nothing_recorded_rejected():
    with pytest.raises(ModelError, match="recorded nothing"):
        text_vision_attention(Layer0Probe(), torch.ones(1, 4), None, 2)


def test_probe_off_by_default(build_vlm):
    model = build_vlm().model
    input_ids, attention_mask = RIGHT
    output = forward_vlm(model, input_ids, attention_mask, None, random_images(2), logit_positions="all")
    assert output.text_vision_attention is None
    assert output.text_vision_row_mask is None
    assert get_vlm_adapter(model).decoder.config._attn_implementation == "sdpa"


def test_llava_probe_equals_eager(build_vlm):
    model = build_vlm("llava", "mlp2x_gelu").model
    sharpen(model, std=0.3)
    input_ids, attention_mask = RIGHT
    with torch.no_grad():
        batch = prepare_inputs(get_vlm_adapter(model), input_ids, attention_mask, None, random_images(2))
    probabilities = probe_full(model, batch)
    eager = eager_layer0(model, batch)
    real = batch.attention_mask.bool()
    mask = real[:, None, :, None].expand_as(eager)
    torch.testing.assert_close(probabilities[mask], eager[mask].float(), atol=1e-5, rtol=0)
