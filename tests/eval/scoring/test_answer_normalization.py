"""The VQA answer normalisation and accuracy rules, with values worked out by hand."""

import pytest

from alignkd.eval.scoring.normalize import normalize_gqa_answer, normalize_vqa_answer, vqa_accuracy


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Dakota Digital.", "dakota digital"),  # case and the final period
        ("The dog", "dog"),  # articles are dropped
        ("an apple", "apple"),
        ("Three", "3"),  # number words become digits
        ("none", "0"),
        ("3.5", "3.5"),  # a decimal point stays
        ("u.s.a.", "usa"),  # other periods go
        ("hello-world", "hello world"),  # a hyphen touching no space becomes a space
        ("hello - world", "hello world"),  # a hyphen touching a space is deleted
        ("1,000", "1000"),  # commas are deleted
        ("what?", "what"),
        ("dont", "don't"),  # a contraction missing its apostrophe gets it back
        ("youre right", "you're right"),
        ("yall'll", "y'all'll"),
        ("its", "its"),  # an ordinary word is not a contraction
        ("the man's hat", "man 's hat"),  # the possessive is split off
        ("  yes\n", "yes"),
        ("(blue)", "blue"),
    ],
)
def test_vqa_normalization_rules(answer, expected):
    assert normalize_vqa_answer(answer) == expected


def test_vqa_accuracy_hand_values():
    # Ten annotators: with k matching answers the leave-one-out mean is
    # (k * min((k - 1) / 3, 1) + (10 - k) * min(k / 3, 1)) / 10.
    assert vqa_accuracy("dakota", ["dakota"] * 10) == pytest.approx(1.0)
    assert vqa_accuracy("dakota", ["dakota"] * 3 + ["other"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("dakota", ["dakota"] * 2 + ["other"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("dakota", ["dakota"] + ["other"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("dakota", ["other"] * 10) == 0.0


def test_vqa_accuracy_normalizes_both_sides():
    assert vqa_accuracy("Two.", ["2"] * 10) == pytest.approx(1.0)
    assert vqa_accuracy("the red one", ["red one"] * 10) == pytest.approx(1.0)


def test_sentence_answer_scores_zero():
    # A full sentence never equals a short human answer after normalisation.
    assert vqa_accuracy("the brand of this camera is dakota digital", ["dakota digital"] * 10) == 0.0


def test_single_human_answer_is_exact_match():
    assert vqa_accuracy("Dog", ["dog"]) == 1.0
    assert vqa_accuracy("cat", ["dog"]) == 0.0


def test_vqa_accuracy_needs_answers():
    with pytest.raises(ValueError):
        vqa_accuracy("dog", [])


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("Yes.", "yes"), ("  Woman ", "woman"), ("left...", "left"), ("The dog", "the dog")],
)
def test_gqa_normalization_rules(answer, expected):
    assert normalize_gqa_answer(answer) == expected
