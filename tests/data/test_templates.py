"""Golden token sequences for each chat template with both tokenizer styles.

Tokens are written as strings; "<image>" stands for IMAGE_PLACEHOLDER_ID and a leading "+"
marks a supervised position (label equal to the id). How each golden sequence follows from
the template and the tokenizer:

- llama style adds BOS ("<s>") and prepends "▁" to the first word of every tokenizer call.
  Text right after the image is a new call, so "\\nWhat" becomes "▁", "\\n", "What", as in
  MobileVLM. The trailing space of "USER: " before the image becomes a lone "▁".
- gpt2 style adds no BOS, keeps spaces as "Ġ" inside tokens, and its EOS is "<|endoftext|>".
- v1 supervises " answer" + EOS per round. llama_2 supervises " answer " + EOS, and its
  second round starts with the tokenizer's BOS. plain is BOS, image, caption and "\\n",
  with the human text dropped.

A change in the tokenizers library or in the templates that shifts a single token fails
these tests.
"""

from __future__ import annotations

import pytest
from data_helpers import conversation

from alignkd.config import ConfigError
from alignkd.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from alignkd.data.conversation import Turn, parse_sample
from alignkd.data.problems import ProblemKind, SampleProblem
from alignkd.data.templates import (
    TEMPLATES,
    ChatTemplate,
    answer,
    answer_format,
    get_template,
    prompt,
    register_template,
    user_message,
)
from alignkd.data.tokenization import ConversationEncoder

TWO_ROUNDS = conversation("<image>\nWhat is in the image?", "A cat.", "How many?", "3", image="cat.jpg")
CAPTION = conversation("<image>\nDescribe the picture.", "A dog.", image="dog.jpg")
SHORT_ANSWER = conversation(
    "<image>\nIs there a 7?\nAnswer the question using a single word or phrase.", "yes", image="digits.png"
)

LLAMA_V1_SYSTEM = [
    "<s>", "▁A", "▁chat", "▁between", "▁a", "▁curious", "▁user", "▁and", "▁an", "▁artificial",
    "▁intelligence", "▁assistant.", "▁The", "▁assistant", "▁gives", "▁helpful,", "▁detailed,",
    "▁and", "▁polite", "▁answers", "▁to", "▁the", "▁user's", "▁questions.",
]  # fmt: skip
GPT2_V1_SYSTEM = [
    "A", "Ġc", "hat", "Ġbe", "tw", "een", "Ġa", "Ġc", "uri", "ous", "Ġuser", "Ġand", "Ġan", "Ġa",
    "rti", "fic", "ial", "Ġin", "te", "lli", "gen", "ce", "Ġassistant", ".", "ĠThe", "Ġassistant",
    "Ġgi", "ves", "Ġhelpful", ",", "Ġd", "et", "ai", "le", "d", ",", "Ġand", "Ġp", "oli", "te",
    "Ġan", "swer", "s", "Ġ", "to", "Ġthe", "Ġuser", "'s", "Ġquestion", "s", ".", "Ġ",
]  # fmt: skip
LLAMA_SHORT_QUESTION = [
    "▁", "\n", "I", "s", "▁there", "▁a", "▁7", "?", "\n", "A", "nswer", "▁the", "▁question", "▁using",
    "▁a", "▁single", "▁word", "▁or", "▁phrase.",
]  # fmt: skip
GPT2_SHORT_QUESTION = [
    "Ċ", "I", "s", "Ġthe", "re", "Ġa", "Ġ7", "?", "Ċ", "An", "swer", "Ġthe", "Ġquestion", "Ġ", "usi",
    "ng", "Ġa", "Ġsi", "ng", "le", "Ġ", "wor", "d", "Ġor", "Ġp", "hr", "as", "e", ".",
]  # fmt: skip

GOLDEN = {
    ("llama", "plain", "caption"): ["<s>", "<image>", "+▁A", "+▁dog.", "+\n"],
    ("gpt2", "plain", "caption"): ["<image>", "+A", "+Ġdog", "+.", "+Ċ"],
    ("llama", "v1", "two_rounds"): LLAMA_V1_SYSTEM
    + [
        "▁USER:",
        "▁",
        "<image>",
        "▁",
        "\n",
        "What",
        "▁is",
        "▁in",
        "▁the",
        "▁image?",
        "▁ASSISTANT:",
        "+▁A",
        "+▁cat",
        "+.",
        "+</s>",
        "▁USER:",
        "▁How",
        "▁many",
        "?",
        "▁ASSISTANT:",
        "+▁3",
        "+</s>",
    ],  # fmt: skip
    ("gpt2", "v1", "two_rounds"): GPT2_V1_SYSTEM
    + [
        "USER",
        ":",
        "Ġ",
        "<image>",
        "Ċ",
        "What",
        "Ġi",
        "s",
        "Ġin",
        "Ġthe",
        "Ġi",
        "mag",
        "e",
        "?",
        "ĠASSISTANT",
        ":",
        "+ĠA",
        "+Ġc",
        "+at",
        "+.",
        "+<|endoftext|>",
        "USER",
        ":",
        "ĠHow",
        "Ġ",
        "man",
        "y",
        "?",
        "ĠASSISTANT",
        ":",
        "+Ġ3",
        "+<|endoftext|>",
    ],  # fmt: skip
    ("llama", "llama_2", "two_rounds"): [
        "<s>",
        "▁[INST]",
        "▁",
        "<image>",
        "▁",
        "\n",
        "What",
        "▁is",
        "▁in",
        "▁the",
        "▁image?",
        "▁[/INST]",
        "+▁A",
        "+▁cat",
        "+.",
        "+▁",
        "+</s>",
        "<s>",
        "▁[INST]",
        "▁How",
        "▁many",
        "?",
        "▁[/INST]",
        "+▁3",
        "+▁",
        "+</s>",
    ],  # fmt: skip
    ("gpt2", "llama_2", "two_rounds"): [
        "[",
        "INST",
        "]",
        "Ġ",
        "<image>",
        "Ċ",
        "What",
        "Ġi",
        "s",
        "Ġin",
        "Ġthe",
        "Ġi",
        "mag",
        "e",
        "?",
        "Ġ[/",
        "INST",
        "]",
        "+ĠA",
        "+Ġc",
        "+at",
        "+.",
        "+Ġ",
        "+<|endoftext|>",
        "<|endoftext|>",
        "[",
        "INST",
        "]",
        "ĠHow",
        "Ġ",
        "man",
        "y",
        "?",
        "Ġ[/",
        "INST",
        "]",
        "+Ġ3",
        "+Ġ",
        "+<|endoftext|>",
    ],  # fmt: skip
    # One-word answers after the "single word or phrase" suffix. With gpt2 style the space
    # before "yes" is its own token, and it is supervised because generation prompts stop
    # right after "ASSISTANT:" or "[/INST]".
    ("llama", "plain", "short_answer"): ["<s>", "<image>", "+▁yes", "+\n"],
    ("gpt2", "plain", "short_answer"): ["<image>", "+yes", "+Ċ"],
    ("llama", "v1", "short_answer"): LLAMA_V1_SYSTEM
    + [
        "▁USER:",
        "▁",
        "<image>",
        *LLAMA_SHORT_QUESTION,
        "▁ASSISTANT:",
        "+▁yes",
        "+</s>",
    ],  # fmt: skip
    ("gpt2", "v1", "short_answer"): GPT2_V1_SYSTEM
    + [
        "USER",
        ":",
        "Ġ",
        "<image>",
        *GPT2_SHORT_QUESTION,
        "ĠASSISTANT",
        ":",
        "+Ġ",
        "+yes",
        "+<|endoftext|>",
    ],  # fmt: skip
    ("llama", "llama_2", "short_answer"): [
        "<s>",
        "▁[INST]",
        "▁",
        "<image>",
        *LLAMA_SHORT_QUESTION,
        "▁[/INST]",
        "+▁yes",
        "+▁",
        "+</s>",
    ],  # fmt: skip
    ("gpt2", "llama_2", "short_answer"): [
        "[",
        "INST",
        "]",
        "Ġ",
        "<image>",
        *GPT2_SHORT_QUESTION,
        "Ġ[/",
        "INST",
        "]",
        "+Ġ",
        "+yes",
        "+Ġ",
        "+<|endoftext|>",
    ],  # fmt: skip
}

# The ids of the two-round v1 sample, stored as numbers so that a vocabulary change also fails.
GOLDEN_V1_IDS = {
    "llama": [
        1, 68, 245, 275, 63, 291, 143, 132, 77, 285, 296, 134, 217, 92, 276, 262, 287, 132, 293, 290, 231,
        66, 263, 264, 144, 62, -200, 62, 3, 154, 238, 131, 66, 289, 145, 68, 244, 6, 2, 144, 216, 281, 21,
        145, 120, 2,
    ],
    "gpt2": [
        33, 280, 301, 393, 374, 350, 257, 280, 377, 366, 330, 320, 271, 257, 369, 353, 357, 319, 310, 359,
        354, 347, 286, 14, 397, 286, 394, 378, 329, 12, 269, 349, 342, 302, 68, 12, 320, 281, 367, 310, 271,
        328, 83, 221, 371, 261, 330, 333, 332, 83, 14, 221, 296, 26, 221, -200, 199, 338, 270, 83, 319, 261,
        270, 363, 69, 31, 331, 26, 268, 280, 272, 14, 0, 296, 26, 396, 221, 362, 89, 31, 331, 26, 311, 0,
    ],
}  # fmt: skip

SAMPLES = {"two_rounds": TWO_ROUNDS, "caption": CAPTION, "short_answer": SHORT_ANSWER}


@pytest.fixture
def tokenizers(llama_tokenizer, gpt2_tokenizer):
    return {"llama": llama_tokenizer, "gpt2": gpt2_tokenizer}


def encode(tokenizer, template: str, record) -> tuple[list[int], list[int]]:
    encoded = ConversationEncoder(tokenizer, get_template(template)).encode_one(parse_sample(record, row=0))
    return encoded.input_ids, encoded.labels


def marked_tokens(tokenizer, input_ids: list[int], labels: list[int]) -> list[str]:
    tokens = []
    for token_id, label in zip(input_ids, labels):
        text = "<image>" if token_id == IMAGE_PLACEHOLDER_ID else tokenizer.convert_ids_to_tokens(token_id)
        tokens.append(("+" if label != IGNORE_INDEX else "") + text)
    return tokens


def supervised_runs(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    """Maximal stretches of supervised positions: one per answer."""
    runs: list[list[int]] = []
    previous = False
    for token_id, label in zip(input_ids, labels):
        supervised = label != IGNORE_INDEX
        if supervised and not previous:
            runs.append([])
        if supervised:
            runs[-1].append(token_id)
        previous = supervised
    return runs


@pytest.mark.parametrize("style, template, sample", sorted(GOLDEN))
def test_golden_tokens_and_labels(tokenizers, style, template, sample):
    input_ids, labels = encode(tokenizers[style], template, SAMPLES[sample])

    assert marked_tokens(tokenizers[style], input_ids, labels) == GOLDEN[(style, template, sample)]


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_golden_v1_ids(tokenizers, style):
    input_ids, labels = encode(tokenizers[style], "v1", TWO_ROUNDS)

    assert input_ids == GOLDEN_V1_IDS[style]
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(input_ids, labels))


@pytest.mark.parametrize("style", ["llama", "gpt2"])
@pytest.mark.parametrize("template", ["v1", "llama_2"])
def test_supervised_tokens_decode_to_answers(tokenizers, style, template):
    tokenizer = tokenizers[style]
    input_ids, labels = encode(tokenizer, template, TWO_ROUNDS)

    runs = supervised_runs(input_ids, labels)

    assert len(runs) == 2
    for run, expected in zip(runs, ["A cat.", "3"]):
        assert run[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(run[:-1]).strip() == expected


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_plain_supervises_caption_and_newline(tokenizers, style):
    tokenizer = tokenizers[style]
    input_ids, labels = encode(tokenizer, "plain", CAPTION)

    (run,) = supervised_runs(input_ids, labels)

    assert tokenizer.decode(run).strip(" ") == "A dog.\n"
    assert input_ids.count(IMAGE_PLACEHOLDER_ID) == 1
    assert labels[input_ids.index(IMAGE_PLACEHOLDER_ID)] == IGNORE_INDEX


@pytest.mark.parametrize("style", ["llama", "gpt2"])
@pytest.mark.parametrize("template", ["plain", "v1", "llama_2"])
def test_short_answer_supervised(tokenizers, style, template):
    tokenizer = tokenizers[style]
    input_ids, labels = encode(tokenizer, template, SHORT_ANSWER)

    (run,) = supervised_runs(input_ids, labels)

    assert tokenizer.decode(run, skip_special_tokens=True).strip() == "yes"


def test_plain_rejects_multi_turn(llama_tokenizer):
    record = conversation("<image>\nQ1", "A1", "Q2", "A2", image="a.jpg")

    with pytest.raises(SampleProblem) as raised:
        encode(llama_tokenizer, "plain", record)

    assert raised.value.kind is ProblemKind.TEMPLATE_RULE
    assert "exactly one human turn and one gpt turn" in raised.value.message


def test_plain_rejects_text_only(llama_tokenizer):
    with pytest.raises(SampleProblem) as raised:
        encode(llama_tokenizer, "plain", conversation("Q", "A"))

    assert raised.value.kind is ProblemKind.TEMPLATE_RULE
    assert "needs an image" in raised.value.message


def test_plain_rejects_placeholder_in_gpt(llama_tokenizer):
    with pytest.raises(SampleProblem) as raised:
        encode(llama_tokenizer, "plain", conversation("Describe.", "<image> a cat", image="a.jpg"))

    assert raised.value.kind is ProblemKind.IMAGE_PLACEHOLDER


def test_text_only_v1_has_no_placeholder(gpt2_tokenizer):
    input_ids, labels = encode(gpt2_tokenizer, "v1", conversation("Hi", "Hello"))

    assert IMAGE_PLACEHOLDER_ID not in input_ids
    assert any(label != IGNORE_INDEX for label in labels)


def test_llama_2_system_prompt_block(llama_tokenizer):
    template = get_template("llama_2", system_prompt="Be brief.")

    segments = template.render([Turn("user", "Hi"), Turn("assistant", "Hello")])

    texts = "".join(segment.text for segment in segments)
    assert texts == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello "


def test_v1_custom_system_prompt():
    template = get_template("v1", system_prompt="Be brief.")

    segments = template.render([Turn("user", "Hi"), Turn("assistant", "Hello")])

    assert "".join(segment.text for segment in segments) == "Be brief. USER: Hi ASSISTANT: Hello"


def test_unknown_template_lists_names():
    with pytest.raises(ConfigError, match="available templates: llama_2, plain, v1"):
        get_template("vicuna")


def test_new_template_is_one_class(llama_tokenizer):
    class QuestionAnswerTemplate(ChatTemplate):
        name = "question_answer_test"

        def render(self, turns):
            segments = []
            for index in range(0, len(turns), 2):
                segments += [prompt("Q: "), *user_message(turns[index]), prompt("\nA:")]
                if index + 1 < len(turns):
                    segments += [answer_format(" "), answer(turns[index + 1].text), answer_format("\n")]
            return segments

    register_template(QuestionAnswerTemplate)
    try:
        input_ids, labels = encode(llama_tokenizer, "question_answer_test", conversation("Hi", "yes"))
    finally:
        del TEMPLATES["question_answer_test"]

    (run,) = supervised_runs(input_ids, labels)
    assert llama_tokenizer.decode(run).strip() == "yes"
