"""Short-answer scoring: normalised exact match overall and per category, with counts."""

import pytest

from alignkd.errors import DataError
from alignkd.eval.score import score_answers


@pytest.fixture
def annotations(tmp_path, jsonl_writer):
    return jsonl_writer(
        tmp_path / "annotations.jsonl",
        [
            {"question_id": "q1", "answer": "3", "category": "count"},
            {"question_id": "q2", "answer": "2", "category": "count"},
            {"question_id": "q3", "answer": "yes", "category": "exists"},
            {"question_id": "q4", "answer": "top left", "category": "where"},
        ],
    )


def test_short_answer_hand_scores(tmp_path, jsonl_writer, annotations):
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [
            {"question_id": "q1", "prompt": "p", "text": "Three."},  # number word: right
            {"question_id": "q2", "prompt": "p", "text": "4"},  # wrong
            {"question_id": "q3", "prompt": "p", "text": "Yes"},  # right
            {"question_id": "q4", "prompt": "p", "text": ""},  # empty: unparseable, wrong
        ],
    )

    report = score_answers("short-answer", answers, [annotations])

    assert report.metrics["accuracy"] == pytest.approx(50.0)
    assert report.details["count"] == {"questions": 2, "accuracy": pytest.approx(50.0), "unparseable": 0}
    assert report.details["exists"] == {"questions": 1, "accuracy": pytest.approx(100.0), "unparseable": 0}
    assert report.details["where"] == {"questions": 1, "accuracy": pytest.approx(0.0), "unparseable": 1}
    assert report.counts == {"questions": 4, "unparseable": 1, "missing": 0}


def test_integer_and_string_ids_match(tmp_path, jsonl_writer):
    annotations = jsonl_writer(tmp_path / "a.jsonl", [{"question_id": 7, "answer": "dog"}])
    answers = jsonl_writer(tmp_path / "answers.jsonl", [{"question_id": "7", "prompt": "p", "text": "a dog"}])

    report = score_answers("short-answer", answers, [annotations])

    assert report.metrics["accuracy"] == pytest.approx(100.0)
    assert report.details["default"]["questions"] == 1


def test_annotation_without_answer_is_error(tmp_path, jsonl_writer):
    annotations = jsonl_writer(tmp_path / "a.jsonl", [{"question_id": "q1", "category": "count"}])
    answers = jsonl_writer(tmp_path / "answers.jsonl", [{"question_id": "q1", "prompt": "p", "text": "3"}])

    with pytest.raises(DataError, match=r"a.jsonl:1: question 'q1' needs a string 'answer'"):
        score_answers("short-answer", answers, [annotations])
