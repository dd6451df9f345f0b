"""Labels from the real token sequence, tokenizer styles, and generation prompts."""

from __future__ import annotations

import pytest
from data_helpers import conversation
from tokenizers import Tokenizer, normalizers, processors
from transformers import PreTrainedTokenizerFast

from alignkd.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from alignkd.data.conversation import parse_sample
from alignkd.data.problems import ProblemKind, SampleProblem
from alignkd.data.templates import get_template
from alignkd.data.tokenization import ConversationEncoder, TokenizerSpec, encode_generation_prompt
from alignkd.errors import DataError

TWO_ROUNDS = conversation("<image>\nWhat is in the image?", "A cat.", "How many?", "3", image="cat.jpg")
TEMPLATES = ["plain", "v1", "llama_2"]


def encode(tokenizer, template: str, record):
    return ConversationEncoder(tokenizer, get_template(template)).encode_one(parse_sample(record, row=0))


def first_supervised(labels: list[int]) -> int:
    return next(position for position, label in enumerate(labels) if label != IGNORE_INDEX)


@pytest.fixture
def llama_without_bos(llama_tokenizer):
    backend = Tokenizer.from_str(llama_tokenizer.backend_tokenizer.to_str())
    backend.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )


def test_prefix_detects_bos(llama_tokenizer, gpt2_tokenizer):
    assert TokenizerSpec.from_tokenizer(llama_tokenizer).prefix_ids == (llama_tokenizer.bos_token_id,)
    assert TokenizerSpec.from_tokenizer(gpt2_tokenizer).prefix_ids == ()


@pytest.mark.parametrize("template", ["v1", "llama_2"])
def test_labels_follow_bos_removal(llama_tokenizer, llama_without_bos, template):
    with_bos = encode(llama_tokenizer, template, TWO_ROUNDS)
    without_bos = encode(llama_without_bos, template, TWO_ROUNDS)

    assert with_bos.input_ids[0] == llama_tokenizer.bos_token_id
    assert without_bos.input_ids == with_bos.input_ids[1:]
    assert without_bos.labels == with_bos.labels[1:]


def test_pad_equal_eos_keeps_eos_labels(gpt2_tokenizer):
    assert gpt2_tokenizer.pad_token_id == gpt2_tokenizer.eos_token_id

    encoded = encode(gpt2_tokenizer, "v1", TWO_ROUNDS)

    eos_positions = [
        position for position, token in enumerate(encoded.input_ids) if token == gpt2_tokenizer.eos_token_id
    ]
    assert len(eos_positions) == 2
    assert eos_positions[-1] == len(encoded.input_ids) - 1
    assert all(encoded.labels[position] == gpt2_tokenizer.eos_token_id for position in eos_positions)


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_literal_eos_text_stays_text(request, style):
    tokenizer = request.getfixturevalue(f"{style}_tokenizer")
    record = conversation("Write the tag.", f"It is {tokenizer.eos_token} here.")

    encoded = encode(tokenizer, "v1", record)

    assert encoded.input_ids.count(tokenizer.eos_token_id) == 1
    assert encoded.input_ids[-1] == tokenizer.eos_token_id


def test_placeholder_label_ignored(llama_tokenizer):
    encoded = encode(llama_tokenizer, "v1", TWO_ROUNDS)

    position = encoded.input_ids.index(IMAGE_PLACEHOLDER_ID)

    assert encoded.input_ids.count(IMAGE_PLACEHOLDER_ID) == 1
    assert encoded.labels[position] == IGNORE_INDEX


def test_expanded_length_counts_vision_tokens(llama_tokenizer):
    encoded = encode(llama_tokenizer, "v1", TWO_ROUNDS)
    text_only = encode(llama_tokenizer, "v1", conversation("Hi", "Hello"))

    assert encoded.expanded_length(num_vision_tokens=9) == len(encoded.input_ids) + 8
    assert text_only.expanded_length(num_vision_tokens=9) == len(text_only.input_ids)


def test_batch_matches_single_encoding(gpt2_tokenizer):
    encoder = ConversationEncoder(gpt2_tokenizer, get_template("v1"))
    samples = [
        parse_sample(TWO_ROUNDS, row=0),
        parse_sample(conversation("Hi", "Hello"), row=1),
        parse_sample(conversation("<image>\nColour?", "Red", image="r.png"), row=2),
    ]

    batched = encoder.encode(samples)

    assert batched == [encoder.encode_one(sample) for sample in samples]


def test_batch_keeps_problem_in_place(llama_tokenizer):
    encoder = ConversationEncoder(llama_tokenizer, get_template("plain"))
    samples = [
        parse_sample(conversation("Q", "A"), row=0),
        parse_sample(conversation("<image>", "A cat.", image="a.png"), row=1),
    ]

    first, second = encoder.encode(samples)

    assert isinstance(first, SampleProblem)
    assert first.kind is ProblemKind.TEMPLATE_RULE
    assert second.num_supervised > 0


def test_answer_without_tokens_is_mismatch(gpt2_tokenizer):
    backend = Tokenizer.from_str(gpt2_tokenizer.backend_tokenizer.to_str())
    backend.normalizer = normalizers.Replace("§", "")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")

    with pytest.raises(SampleProblem) as raised:
        encode(tokenizer, "plain", conversation("<image>", "§§§", image="a.png"))

    assert raised.value.kind is ProblemKind.LABEL_MISMATCH
    assert "produced no tokens" in raised.value.message


def test_template_needs_eos(llama_tokenizer):
    backend = Tokenizer.from_str(llama_tokenizer.backend_tokenizer.to_str())
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")

    with pytest.raises(DataError, match="needs the tokenizer's eos_token"):
        ConversationEncoder(tokenizer, get_template("v1"))


def test_slow_tokenizer_rejected():
    class SlowTokenizer:
        is_fast = False

    with pytest.raises(DataError, match="not a fast"):
        ConversationEncoder(SlowTokenizer(), get_template("v1"))


@pytest.mark.parametrize("style", ["llama", "gpt2"])
@pytest.mark.parametrize("template", TEMPLATES)
def test_generation_prompt_is_training_prefix(request, style, template):
    tokenizer = request.getfixturevalue(f"{style}_tokenizer")
    record = conversation("<image>\nWhat is in the image?", "A cat.", image="cat.jpg")
    encoded = encode(tokenizer, template, record)

    prompt = encode_generation_prompt(tokenizer, template, "<image>\nWhat is in the image?", has_image=True)

    assert prompt == encoded.input_ids[: first_supervised(encoded.labels)]


@pytest.mark.parametrize("style", ["llama", "gpt2"])
@pytest.mark.parametrize("template", ["v1", "llama_2"])
def test_generation_prompt_text_only(request, style, template):
    tokenizer = request.getfixturevalue(f"{style}_tokenizer")
    encoded = encode(tokenizer, template, conversation("How many?", "3"))

    prompt = encode_generation_prompt(tokenizer, template, "How many?", has_image=False)

    assert prompt == encoded.input_ids[: first_supervised(encoded.labels)]
    assert IMAGE_PLACEHOLDER_ID not in prompt


def test_generation_prompt_adds_image(llama_tokenizer):
    with_placeholder = encode_generation_prompt(llama_tokenizer, "v1", "<image>\nWhat is it?", has_image=True)
    without_placeholder = encode_generation_prompt(llama_tokenizer, "v1", "What is it?", has_image=True)

    assert without_placeholder == with_placeholder
    assert with_placeholder.count(IMAGE_PLACEHOLDER_ID) == 1


def test_generation_prompt_ends_at_role(gpt2_tokenizer):
    prompt = encode_generation_prompt(gpt2_tokenizer, "v1", "Hi", has_image=False)

    assert gpt2_tokenizer.decode(prompt).endswith("ASSISTANT:")


def test_generation_prompt_system_override(gpt2_tokenizer):
    prompt = encode_generation_prompt(gpt2_tokenizer, "v1", "Hi", has_image=False, system_prompt="Be brief.")

    assert gpt2_tokenizer.decode(prompt) == "Be brief. USER: Hi ASSISTANT:"


def test_generation_prompt_placeholder_without_image(llama_tokenizer):
    with pytest.raises(DataError, match="no 'image' file"):
        encode_generation_prompt(llama_tokenizer, "v1", "<image>\nWhat is it?", has_image=False)


def test_plain_generation_needs_image(llama_tokenizer):
    with pytest.raises(DataError, match="needs an image"):
        encode_generation_prompt(llama_tokenizer, "plain", "Describe.", has_image=False)


@pytest.mark.parametrize("template", ["v1", "llama_2"])
def test_image_only_question(gpt2_tokenizer, template):
    # A human turn that is only the image: no text follows the image before the answer.
    encoded = encode(gpt2_tokenizer, template, conversation("<image>", "A cat.", image="cat.jpg"))
    image_at = encoded.input_ids.index(IMAGE_PLACEHOLDER_ID)

    after_image = gpt2_tokenizer.decode(encoded.input_ids[image_at + 1 : first_supervised(encoded.labels)])

    assert after_image == {"v1": " ASSISTANT:", "llama_2": " [/INST]"}[template]
    assert encoded.num_supervised > 0
