"""Validation of LLaVA records and normalisation of the image placeholder."""

from __future__ import annotations

import pytest
from data_helpers import conversation

from alignkd.data.conversation import Turn, describe_sample, parse_question, parse_sample
from alignkd.data.problems import ProblemKind, SampleProblem


def problem_of(record) -> SampleProblem:
    with pytest.raises(SampleProblem) as raised:
        parse_sample(record, row=0)
    return raised.value


def test_valid_sample_turns():
    sample = parse_sample(conversation("<image>\nWhat is it?", "A cat.", image="cat.jpg", sample_id=7), row=3)

    assert sample.row == 3
    assert sample.sample_id == "7"
    assert sample.image == "cat.jpg"
    assert sample.turns == (Turn("user", "What is it?", has_image=True), Turn("assistant", "A cat."))
    assert not sample.placeholder_added


def test_placeholder_moves_to_turn_start():
    sample = parse_sample(conversation("What is it?  <image>", "A cat.", image="cat.jpg"), row=0)

    assert sample.turns[0] == Turn("user", "What is it?", has_image=True)


def test_placeholder_in_later_turn_stays_there():
    record = conversation("Hello.", "Hi.", "Look: <image>", "A cat.", image="cat.jpg")

    sample = parse_sample(record, row=0)

    assert sample.turns[0] == Turn("user", "Hello.")
    assert sample.turns[2] == Turn("user", "Look:", has_image=True)


def test_missing_placeholder_goes_to_first_turn():
    sample = parse_sample(conversation("What is it?", "A cat.", image="cat.jpg"), row=0)

    assert sample.turns[0] == Turn("user", "What is it?", has_image=True)
    assert sample.placeholder_added


def test_text_only_sample_keeps_text():
    sample = parse_sample(conversation("  Hi there ", "Hello"), row=0)

    assert not sample.has_image
    assert sample.turns[0] == Turn("user", "  Hi there ")


def test_user_and_assistant_aliases():
    record = {"conversations": [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello"}]}

    assert [turn.role for turn in parse_sample(record, row=0).turns] == ["user", "assistant"]


def test_single_image_list_accepted():
    record = conversation("<image>\nHi", "Hello")
    record["image"] = ["cat.jpg"]

    assert parse_sample(record, row=0).image == "cat.jpg"


def test_null_image_means_text_only():
    record = conversation("Hi", "Hello")
    record["image"] = None

    assert not parse_sample(record, row=0).has_image


@pytest.mark.parametrize("key", ["images", "image_path"])
def test_other_image_key_rejected(key):
    record = conversation("What is it?", "A cat.")
    record[key] = ["cat.jpg"]

    problem = problem_of(record)

    assert problem.kind is ProblemKind.INVALID_RECORD
    assert f"the key {key!r}" in problem.message


def test_two_placeholders_one_image():
    problem = problem_of(conversation("<image>\n<image>\nCompare.", "Same.", image="a.jpg"))

    assert problem.kind is ProblemKind.IMAGE_PLACEHOLDER
    assert "2 <image> placeholders" in problem.message


def test_placeholder_without_image():
    problem = problem_of(conversation("<image>\nWhat is it?", "A cat."))

    assert problem.kind is ProblemKind.IMAGE_PLACEHOLDER
    assert "no 'image' file" in problem.message


def test_placeholder_in_gpt_turn():
    problem = problem_of(conversation("Describe.", "<image> A cat.", image="a.jpg"))

    assert problem.kind is ProblemKind.IMAGE_PLACEHOLDER
    assert "turn 1 (gpt)" in problem.message


def test_first_turn_from_gpt():
    record = {
        "conversations": [
            {"from": "gpt", "value": "Hi"},
            {"from": "human", "value": "Q"},
            {"from": "gpt", "value": "A"},
        ]
    }

    problem = problem_of(record)

    assert problem.kind is ProblemKind.CONVERSATION_STRUCTURE
    assert "first turn is from gpt" in problem.message


def test_two_human_turns_in_row():
    record = {
        "conversations": [
            {"from": "human", "value": "Q1"},
            {"from": "human", "value": "Q2"},
            {"from": "gpt", "value": "A"},
        ]
    }

    problem = problem_of(record)

    assert problem.kind is ProblemKind.CONVERSATION_STRUCTURE
    assert "turns 0 and 1 are both from human" in problem.message


def test_trailing_human_turn():
    problem = problem_of(conversation("Q1", "A1", "Q2"))

    assert problem.kind is ProblemKind.CONVERSATION_STRUCTURE
    assert "must end with a gpt turn" in problem.message


def test_human_turn_only():
    problem = problem_of(conversation("Just a question"))

    assert problem.kind is ProblemKind.NO_SUPERVISED_TOKENS
    assert "no supervised tokens" in problem.message


@pytest.mark.parametrize("answer", ["", "   \n"])
def test_empty_gpt_value(answer):
    problem = problem_of(conversation("Q", answer))

    assert problem.kind is ProblemKind.EMPTY_ANSWER
    assert "turn 1 (gpt) is empty" in problem.message


def test_unknown_role():
    record = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "gpt", "value": "A"}]}

    problem = problem_of(record)

    assert problem.kind is ProblemKind.CONVERSATION_STRUCTURE
    assert "'system'" in problem.message


@pytest.mark.parametrize(
    "record",
    [
        ["not", "an", "object"],
        {"id": "x"},
        {"conversations": []},
        {"conversations": [{"from": "human"}]},
        {"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "A"}]},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "image": 5},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "image": ["a", "b"]},
    ],
)
def test_malformed_record(record):
    assert problem_of(record).kind is ProblemKind.INVALID_RECORD


def test_problem_names_sample():
    problem = problem_of(conversation("<image>\nQ", "A"))

    text = problem.describe(describe_sample("sam_42", "item 2 of data.json"))

    assert text.startswith("sample 'sam_42' (item 2 of data.json): ")


def test_sample_without_id_named_by_location():
    assert describe_sample(None, "line 9 of data.jsonl") == "sample at line 9 of data.jsonl"


def test_question_image_added():
    assert parse_question("What is it?", has_image=True) == Turn("user", "What is it?", has_image=True)


def test_question_placeholder_without_image():
    with pytest.raises(SampleProblem, match="no 'image' file"):
        parse_question("<image>\nWhat is it?", has_image=False)
