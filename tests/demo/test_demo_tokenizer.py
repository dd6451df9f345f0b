"""The demo tokenizer: one token per answer word and short prompts."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from alignkd.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_TEXT
from alignkd.data.conversation import parse_sample
from alignkd.data.templates import get_template
from alignkd.data.tokenization import ConversationEncoder
from alignkd.demo.build import build_demo_task, question_prompt
from alignkd.demo.build import DemoTaskConfig
from alignkd.demo.questions import QUESTION_KINDS
from alignkd.demo.tokenizer import (
    V1_SYSTEM_PROMPT,
    answer_token_ids,
    demo_answers,
    demo_question_space,
    render_v1_conversation,
    train_demo_tokenizer,
)
from alignkd.errors import DataError


@pytest.fixture(scope="module")
def saved_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    return train_demo_tokenizer(output_dir=folder), folder


def test_every_answer_one_token(saved_tokenizer):
    tokenizer, _ = saved_tokenizer
    question = "How many digits are there?"
    answers = demo_answers()

    assert {"0", "9", "18", "empty", "yes", "no", "top-left", "bottom-right"} <= set(answers)
    for answer in answers:
        answer_id, end_id = answer_token_ids(tokenizer, question, answer)
        assert tokenizer.convert_ids_to_tokens(answer_id) == "▁" + answer
        assert end_id == tokenizer.eos_token_id


def test_question_words_one_token_each(saved_tokenizer):
    # The text after the placeholder, as LLaVA-style code tokenizes it: BOS, then one token
    # per space-separated word, then </s>.
    tokenizer, _ = saved_tokenizer
    space = demo_question_space()
    for name, kind in QUESTION_KINDS.items():
        for text in kind.all_texts(space, paraphrases=False):
            question = question_prompt(text, DemoTaskConfig())
            answer = kind.all_answers(space)[0]
            after_image = render_v1_conversation(question, answer).split(IMAGE_PLACEHOLDER_TEXT)[1]

            ids = tokenizer(after_image)["input_ids"]

            assert len(ids) == len(after_image.removesuffix("</s>").split(" ")) + 2, f"{name}: {question!r}"


def test_system_prompt_words_one_token_each(saved_tokenizer):
    tokenizer, _ = saved_tokenizer

    ids = tokenizer(V1_SYSTEM_PROMPT)["input_ids"]

    assert len(ids) == len(V1_SYSTEM_PROMPT.split(" ")) + 1
    assert tokenizer.unk_token_id not in ids


def test_data_layer_supervises_one_token(saved_tokenizer, tmp_path):
    # Encode built training samples the way training does: the labels must keep exactly the
    # answer's token and </s>, and no text may fall back to the unknown token.
    tokenizer, _ = saved_tokenizer
    paths = build_demo_task(tmp_path / "task", num_train=50, num_test=5)
    records = json.loads(paths.train_json.read_text(encoding="utf-8"))
    samples = [parse_sample(record, row) for row, record in enumerate(records)]

    encoded = ConversationEncoder(tokenizer, get_template("v1")).encode(samples)

    for record, sample in zip(records, encoded):
        answer = record["conversations"][1]["value"]
        supervised = [token for token in sample.labels if token != IGNORE_INDEX]
        assert tokenizer.convert_ids_to_tokens(supervised) == ["▁" + answer, "</s>"], record["id"]
        assert tokenizer.unk_token_id not in sample.input_ids, record["id"]


def test_saved_folder_round_trip(saved_tokenizer):
    tokenizer, folder = saved_tokenizer
    loaded = AutoTokenizer.from_pretrained(folder)
    text = render_v1_conversation("Which cell holds the 3?", "top-left")

    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text.removesuffix("</s>")


def test_larger_task_still_one_token():
    config = DemoTaskConfig(rows=3, cols=3, paraphrases=True)
    tokenizer = train_demo_tokenizer(config)

    answer_id, _ = answer_token_ids(tokenizer, "Where is the 4?", "middle-center")
    assert tokenizer.convert_ids_to_tokens(answer_id) == "▁middle-center"


def test_small_vocab_raises():
    with pytest.raises(DataError, match="larger vocab_size"):
        train_demo_tokenizer(vocab_size=100)
