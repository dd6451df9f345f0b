"""Question kinds: answers worked out by hand, phrasing, registry and kind balance."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from alignkd.config import ConfigError
from alignkd.demo.questions import (
    QUESTION_KINDS,
    QuestionKind,
    QuestionSpace,
    balanced_kind_sequence,
    get_question_kind,
    register_question_kind,
)
from alignkd.demo.scenes import Scene, SceneLayout, compose_scenes, load_digit_pools
from alignkd.eval.scoring.normalize import normalize_vqa_answer

SPACE = QuestionSpace(rows=2, cols=2, digits=tuple(range(10)))

# 7 | blank
# 3 | 3
SCENE = Scene.from_digits([[7, None], [3, 3]])


def _answer(kind_name, subject):
    return get_question_kind(kind_name).answer(SCENE, subject, SPACE)


def test_read_answers_by_hand():
    assert _answer("read", (0, 0)) == "7"
    assert _answer("read", (0, 1)) == "empty"
    assert _answer("read", (1, 0)) == "3"
    assert _answer("read", (1, 1)) == "3"


def test_count_answer_by_hand():
    assert _answer("count", "all") == "3"
    assert get_question_kind("count").answer(Scene.from_digits([[None, None], [None, None]]), "all", SPACE) == "0"


def test_exists_answers_by_hand():
    assert _answer("exists", 7) == "yes"
    assert _answer("exists", 3) == "yes"
    assert _answer("exists", 5) == "no"
    assert _answer("exists", 0) == "no"


def test_where_asks_unique_digits_only():
    where = get_question_kind("where")

    assert where.subjects(SCENE, SPACE) == [7]
    assert where.answer(SCENE, 7, SPACE) == "top-left"
    with pytest.raises(ValueError, match="exactly one cell"):
        where.answer(SCENE, 3, SPACE)


def test_sum_counts_blanks_as_zero():
    assert _answer("sum", 0) == "7"
    assert _answer("sum", 1) == "6"
    assert get_question_kind("sum").answer(Scene.from_digits([[None, None], [9, 9]]), 0, SPACE) == "0"


def test_fixed_phrasing_per_kind():
    assert get_question_kind("read").phrase((0, 1), SPACE) == "Which digit is in the top-right cell?"
    assert get_question_kind("count").phrase("all", SPACE) == "How many digits are there?"
    assert get_question_kind("exists").phrase(7, SPACE) == "Is there a 7?"
    assert get_question_kind("where").phrase(3, SPACE) == "Which cell holds the 3?"
    assert get_question_kind("sum").phrase(1, SPACE) == "What is the sum of the bottom row?"


def test_position_names_per_grid():
    three = QuestionSpace(rows=3, cols=3, digits=(0,))
    assert three.position_name(1, 1) == "middle-center"
    assert three.position_name(2, 0) == "bottom-left"
    assert three.row_phrase(1) == "the middle row"

    wide = QuestionSpace(rows=1, cols=2, digits=(0,))
    assert wide.position_name(0, 1) == "middle-right"

    large = QuestionSpace(rows=4, cols=5, digits=(0,))
    assert large.position_name(3, 4) == "row4-column5"
    assert large.row_phrase(0) == "row 1"


def test_answers_are_listed_single_words():
    # Every answer of every kind, over many random scenes, is one of the kind's listed answers.
    pools = load_digit_pools(seed=0)
    space = QuestionSpace(rows=2, cols=2, digits=pools.classes)
    scenes = compose_scenes(pools, "train", SceneLayout(), 200, np.random.default_rng(0))

    for name, kind in QUESTION_KINDS.items():
        listed = set(kind.all_answers(space))
        for scene in scenes:
            for subject in kind.subjects(scene, space):
                answer = kind.answer(scene, subject, space)
                assert answer in listed, f"{name}: {answer!r} for {subject!r} in {scene.digits}"
                assert len(answer.split()) == 1


@pytest.mark.parametrize("rows, cols", [(2, 2), (3, 3), (4, 5)])
def test_answers_distinct_after_vqa_normalisation(rows, cols):
    # Short-answer scoring compares answers after VQA normalisation, which for example turns
    # "none" into "0", so two answers of one kind must not normalise to the same string.
    space = QuestionSpace(rows=rows, cols=cols, digits=tuple(range(10)))
    for name, kind in QUESTION_KINDS.items():
        answers = kind.all_answers(space)
        normalised = {normalize_vqa_answer(answer) for answer in answers}
        assert len(normalised) == len(answers), name


def test_exists_balances_yes_and_no():
    exists = get_question_kind("exists")
    rng = np.random.default_rng(0)

    answers = Counter(exists.answer(SCENE, exists.choose_subject(SCENE, SPACE, rng), SPACE) for _ in range(2000))

    assert 0.45 < answers["yes"] / 2000 < 0.55


def test_choose_subject_skips_excluded():
    read = get_question_kind("read")
    rng = np.random.default_rng(0)
    already_asked = [(0, 0), (0, 1), (1, 0)]

    assert read.choose_subject(SCENE, SPACE, rng, exclude=already_asked) == (1, 1)
    assert read.choose_subject(SCENE, SPACE, rng, exclude=SPACE.positions()) is None


def test_balanced_sequence_exact_counts():
    rng = np.random.default_rng(0)

    equal = Counter(balanced_kind_sequence(10, {name: 1.0 for name in QUESTION_KINDS}, rng))
    assert equal == {name: 2 for name in QUESTION_KINDS}

    # Shares 6.67 and 3.33 round to 7 and 3, and a zero weight gives no questions.
    weighted = Counter(balanced_kind_sequence(10, {"read": 2.0, "count": 1.0, "sum": 0.0}, rng))
    assert weighted == {"read": 7, "count": 3}


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"colour": 1.0}, "unknown question kind 'colour'"),
        ({"read": -1.0}, "kind_weights.read"),
        ({"read": 0.0}, "at least one weight must be positive"),
    ],
)
def test_balanced_sequence_rejects_bad_weights(weights, message):
    with pytest.raises(ConfigError, match=message):
        balanced_kind_sequence(5, weights, np.random.default_rng(0))


@pytest.fixture
def restore_registry():
    saved = dict(QUESTION_KINDS)
    yield
    QUESTION_KINDS.clear()
    QUESTION_KINDS.update(saved)


def test_register_new_kind(restore_registry):
    @register_question_kind
    class ParityQuestion(QuestionKind):
        name = "parity"
        templates = ("Is the digit in the {position} cell even?",)

        def all_subjects(self, space):
            return space.positions()

        def subjects(self, scene, space):
            return [(r, c) for r, c, digit in scene.cells() if digit is not None]

        def answer(self, scene, subject, space):
            return "yes" if scene.digit_at(*subject) % 2 == 0 else "no"

        def all_answers(self, space):
            return ["yes", "no"]

        def template_fields(self, subject, space):
            return {"position": space.position_name(*subject)}

    question = get_question_kind("parity").ask(SCENE, (1, 0), SPACE)

    assert question.text == "Is the digit in the bottom-left cell even?"
    assert question.answer == "no"
    assert question.kind == "parity"
    assert Counter(balanced_kind_sequence(4, {"parity": 1.0}, np.random.default_rng(0))) == {"parity": 4}


def test_register_duplicate_name_raises(restore_registry):
    class SecondRead(type(get_question_kind("read"))):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_question_kind(SecondRead)
