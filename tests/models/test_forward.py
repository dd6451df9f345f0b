"""forward_vlm: spans for real templates, packed logits, batch invariance, and parity with native forwards."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from vlm_test_helpers import random_images, sharpen

from alignkd.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from alignkd.data.conversation import parse_sample
from alignkd.data.templates import get_template
from alignkd.data.tokenization import ConversationEncoder
from alignkd.errors import ModelError
from alignkd.models.adapters import get_vlm_adapter
from alignkd.models.forward import forward_vlm

IMG = IMAGE_PLACEHOLDER_ID


def encode(tokenizer, template: str, conversations: list[tuple[str, str]], image: bool = True):
    record = {"id": "s", "conversations": [{"from": role, "value": text} for role, text in conversations]}
    if image:
        record["image"] = "picture.png"
    return ConversationEncoder(tokenizer, get_template(template)).encode_one(parse_sample(record, 0))


def right_pad(samples: list[tuple[list[int], list[int]]], pad_id: int = 0):
    length = max(len(ids) for ids, _ in samples)
    input_ids = torch.full((len(samples), length), pad_id)
    labels = torch.full((len(samples), length), IGNORE_INDEX)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    for row, (ids, sample_labels) in enumerate(samples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(sample_labels)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask, labels


def expected_spans(ids: list[int], num_vision: int) -> tuple[int, int, int]:
    start = ids.index(IMG)
    return start, start + num_vision, len(ids) - 1 + num_vision


@pytest.mark.parametrize("tokenizer_name", ["llama_tokenizer", "gpt2_tokenizer"])
def test_spans_plain_and_v1(build_vlm, request, tokenizer_name):
    tokenizer = request.getfixturevalue(tokenizer_name)
    loaded = build_vlm(tokenizer=tokenizer)
    plain = encode(tokenizer, "plain", [("human", "<image>\nDescribe."), ("gpt", "A cat sitting on a red sofa.")])
    v1 = encode(tokenizer, "v1", [("human", "<image>\nWhat is in the image?"), ("gpt", "A dog.")])
    input_ids, attention_mask, labels = right_pad([(plain.input_ids, plain.labels), (v1.input_ids, v1.labels)])

    with torch.no_grad():
        output = forward_vlm(loaded.model, input_ids, attention_mask, labels, random_images(2))

    num_vision = get_vlm_adapter(loaded.model).num_vision_tokens
    for row, sample in enumerate([plain, v1]):
        start, end, text_end = expected_spans(sample.input_ids, num_vision)
        assert output.spans.vision_start[row] == start
        assert output.spans.vision_end[row] == end
        assert output.spans.text_end[row] == text_end
    # plain puts the image right after the tokenizer's own start tokens; v1 after the system prompt.
    assert output.spans.vision_start[0] == len(tokenizer("x")["input_ids"]) - len(
        tokenizer("x", add_special_tokens=False)["input_ids"]
    )
    assert output.spans.vision_start[1] > output.spans.vision_start[0]


def test_image_in_middle_of_text(build_vlm):
    loaded = build_vlm()
    input_ids = torch.tensor([[1, 10, 11, 12, IMG, 13, 14, 15]])
    output = forward_vlm(
        loaded.model, input_ids, torch.ones_like(input_ids), None, random_images(1), logit_positions="all"
    )
    assert output.spans.vision_start.tolist() == [4]
    assert output.spans.vision_end.tolist() == [8]
    assert output.spans.text_end.tolist() == [11]
    assert output.text_vision_attention is None


def test_supervised_logits_match_model_forward(build_vlm):
    loaded = build_vlm()
    model = loaded.model
    input_ids = torch.tensor([[1, 10, IMG, 13, 14, 15], [1, IMG, 20, 21, 0, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    labels = torch.tensor(
        [[IGNORE_INDEX] * 4 + [14, 15], [IGNORE_INDEX, IGNORE_INDEX, 20, 21, IGNORE_INDEX, IGNORE_INDEX]]
    )
    images = random_images(2)

    with torch.no_grad():
        output = forward_vlm(model, input_ids, attention_mask, labels, images)
        native = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, pixel_values=images)

    torch.testing.assert_close(output.logits, native.logits[output.logit_position_mask])
    assert output.targets.tolist() == [14, 15, 20, 21]
    loss = F.cross_entropy(output.logits.float(), output.targets)
    torch.testing.assert_close(loss, native.loss)


def test_all_and_none_positions(build_vlm):
    loaded = build_vlm()
    input_ids = torch.tensor([[1, IMG, 13, 14], [1, 5, 0, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    labels = torch.tensor(
        [[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 14], [IGNORE_INDEX, 5, IGNORE_INDEX, IGNORE_INDEX]]
    )
    with torch.no_grad():
        everything = forward_vlm(
            loaded.model, input_ids, attention_mask, labels, random_images(1), logit_positions="all"
        )
        nothing = forward_vlm(loaded.model, input_ids, attention_mask, labels, random_images(1), logit_positions="none")

    # Sample 0 has 1 + 4 + 2 = 7 real tokens (6 next-token pairs), sample 1 has 2 (1 pair).
    assert everything.logits.shape[0] == 7
    assert everything.targets.tolist() == [IGNORE_INDEX] * 5 + [14, 5]
    assert nothing.logits is None
    assert not nothing.logit_position_mask.any()


def test_supervised_without_labels_rejected(build_vlm):
    loaded = build_vlm()
    input_ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ModelError, match="needs labels"):
        forward_vlm(loaded.model, input_ids, torch.ones_like(input_ids))


@pytest.mark.parametrize("family, projector", [("mobilevlm", "ldpnetv2"), ("llava", "mlp2x_gelu")])
def test_batch_equals_single_samples(build_vlm, family, projector):
    loaded = build_vlm(family, projector)
    samples = [
        ([1, 10, IMG, 13, 14, 15], [IGNORE_INDEX] * 4 + [14, 15]),
        ([1, 2, 3, 4, IMG, 20, 21], [IGNORE_INDEX] * 5 + [20, 21]),
        ([1, 30, 31, 32], [IGNORE_INDEX, 30, 31, 32]),
    ]
    images = random_images(2)
    image_of = [images[0:1], images[1:2], None]

    with torch.no_grad():
        batched = forward_vlm(loaded.model, *right_pad(samples), images, capture_attention=True)
        singles = [
            forward_vlm(loaded.model, *right_pad([sample]), image, capture_attention=True)
            for sample, image in zip(samples, image_of)
        ]

    torch.testing.assert_close(batched.logits, torch.cat([single.logits for single in singles]), atol=1e-5, rtol=1e-5)
    assert batched.targets.tolist() == sum((single.targets.tolist() for single in singles), [])
    for row, single in enumerate(singles):
        rows = int(single.text_vision_row_mask.sum())
        assert int(batched.text_vision_row_mask[row].sum()) == rows
        torch.testing.assert_close(
            batched.text_vision_attention[row, :, :rows],
            single.text_vision_attention[0, :, :rows],
            atol=1e-6,
            rtol=1e-5,
        )
    torch.testing.assert_close(
        batched.vision_tokens, torch.cat([s.vision_tokens for s in singles]), atol=1e-6, rtol=1e-5
    )
    assert batched.image_sample_index.tolist() == [0, 1]


def test_llava_matches_transformers_forward(build_vlm):
    loaded = build_vlm("llava", "mlp2x_gelu")
    model = loaded.model
    num_vision = get_vlm_adapter(model).num_vision_tokens
    image_token = model.config.image_token_id
    prompt = [1, 10, 11, IMG, 13, 14]
    native_ids = torch.tensor([[token for token in prompt[:3]] + [image_token] * num_vision + prompt[4:]])
    images = random_images(1)

    with torch.no_grad():
        output = forward_vlm(
            model,
            torch.tensor([prompt]),
            torch.ones(1, len(prompt), dtype=torch.long),
            None,
            images,
            logit_positions="all",
        )
        native = model(input_ids=native_ids, pixel_values=images)

    torch.testing.assert_close(output.logits, native.logits[0, :-1], atol=1e-5, rtol=1e-5)


def test_text_only_batch(build_vlm):
    loaded = build_vlm()
    input_ids = torch.tensor([[1, 5, 6], [1, 7, 0]])
    attention_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    output = forward_vlm(
        loaded.model, input_ids, attention_mask, None, None, logit_positions="all", capture_attention=True
    )
    adapter = get_vlm_adapter(loaded.model)
    assert output.vision_tokens.shape == (0, adapter.num_vision_tokens, adapter.hidden_size)
    assert output.text_vision_attention.shape == (2, adapter.num_attention_heads, 0, adapter.num_vision_tokens)
    assert output.text_vision_row_mask.shape == (2, 0)


def test_teacher_under_no_grad_keeps_no_graph(build_vlm):
    loaded = build_vlm()
    input_ids = torch.tensor([[1, IMG, 5, 6]])
    with torch.no_grad():
        output = forward_vlm(
            loaded.model,
            input_ids,
            torch.ones_like(input_ids),
            None,
            random_images(1),
            logit_positions="all",
            capture_attention=True,
        )
    assert output.logits.grad_fn is None
    assert output.text_vision_attention.grad_fn is None
    assert output.vision_tokens.grad_fn is None


def test_wrapper_module_rejected(build_vlm):
    loaded = build_vlm()
    holder = torch.nn.ModuleDict({"teacher": loaded.model, "student": build_vlm(seed=1).model})
    input_ids = torch.tensor([[1, 2]])
    with pytest.raises(ModelError, match="got ModuleDict"):
        forward_vlm(holder, input_ids, torch.ones_like(input_ids), logit_positions="all")


def test_frozen_vision_tower_runs_without_grad(build_vlm):
    loaded = build_vlm()
    model = loaded.model
    sharpen(model)
    model.model.vision_tower.requires_grad_(False)
    input_ids = torch.tensor([[1, IMG, 5, 6]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6]])
    output = forward_vlm(model, input_ids, torch.ones_like(input_ids), labels, random_images(1))
    F.cross_entropy(output.logits, output.targets).backward()
    assert all(parameter.grad is None for parameter in model.model.vision_tower.parameters())
    assert model.model.mm_projector.mlp.mlp[0].weight.grad is not None
