"""Letter extraction from free-form multiple-choice answers."""

import pytest

from alignkd.eval.scoring.choices import extract_choice, option_letters

CITIES = ["New York", "Boston", "Chicago"]


@pytest.mark.parametrize(
    "answer",
    ["B", "b", "B.", "(B)", "B)", "The answer is B.", "Answer: (B)", "(B) Boston", "B. Boston", "Boston", " boston. "],
)
def test_formats_that_choose_b(answer):
    assert extract_choice(answer, CITIES) == "B"


@pytest.mark.parametrize(
    "answer",
    [
        "E",  # a letter beyond the three options
        "D. Denver",
        "the answer is a city",  # a lowercase article is not a letter
        "A dog",  # "A" followed by a word is an article, not an option mark
        "I am not sure",
        "",
        "Boston or Chicago",  # two options named
    ],
)
def test_unclear_answers_are_none(answer):
    assert extract_choice(answer, CITIES) is None


def test_longest_option_text_wins():
    assert extract_choice("It is dark red.", ["red", "dark red", "blue"]) == "B"


def test_option_letters_by_count():
    assert option_letters(2) == "AB"
    assert option_letters(5) == "ABCDE"
    with pytest.raises(ValueError):
        option_letters(0)
