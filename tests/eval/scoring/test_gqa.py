"""GQA scoring: exact match, per-type accuracy, missing ids and metrics that need other files."""

import pytest

from alignkd.errors import DataError
from alignkd.eval.score import score_answers


def _gqa_question(answer, structural, semantic):
    return {
        "question": "q",
        "imageId": "n1",
        "answer": answer,
        "isBalanced": True,
        "types": {"structural": structural, "semantic": semantic, "detailed": "x"},
    }


@pytest.fixture
def gqa_annotations(tmp_path, json_writer):
    return json_writer(
        tmp_path / "testdev_balanced_questions.json",
        {
            "101": _gqa_question("no", "verify", "attr"),
            "102": _gqa_question("woman", "query", "rel"),
            "103": _gqa_question("left", "query", "rel"),
            "104": _gqa_question("yes", "logical", "obj"),
            # Unbalanced questions are not part of the scored set.
            "105": {**_gqa_question("red", "query", "attr"), "isBalanced": False},
        },
    )


def test_gqa_hand_scores(tmp_path, jsonl_writer, gqa_annotations):
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [
            {"question_id": "101", "prompt": "p", "text": "No."},  # right after normalisation
            {"question_id": "102", "prompt": "p", "text": "Woman"},  # right
            {"question_id": "103", "prompt": "p", "text": "right"},  # wrong
            {"question_id": "104", "prompt": "p", "text": ""},  # empty: unparseable and wrong
        ],
    )

    report = score_answers("gqa", answers, [gqa_annotations])

    assert report.metrics["accuracy"] == pytest.approx(50.0)
    assert report.metrics["binary_accuracy"] == pytest.approx(50.0)  # 101 right, 104 wrong
    assert report.metrics["open_accuracy"] == pytest.approx(50.0)  # 102 right, 103 wrong
    assert report.details["semantic type"]["rel"] == {"questions": 2, "accuracy": pytest.approx(50.0)}
    assert report.details["structural type"]["verify"]["accuracy"] == pytest.approx(100.0)
    assert report.counts["questions"] == 4
    assert report.counts["unparseable"] == 1


def test_gqa_missing_id_is_error(tmp_path, jsonl_writer, gqa_annotations):
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [{"question_id": qid, "prompt": "p", "text": "no"} for qid in ("101", "102", "103")],
    )

    with pytest.raises(DataError, match=r"1 of the 4 annotated questions .* have no answer: 104"):
        score_answers("gqa", answers, [gqa_annotations])


def test_gqa_allow_missing_scores_answered(tmp_path, jsonl_writer, gqa_annotations):
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [{"question_id": "101", "prompt": "p", "text": "no"}, {"question_id": "102", "prompt": "p", "text": "man"}],
    )

    report = score_answers("gqa", answers, [gqa_annotations], allow_missing=True)

    assert report.metrics["accuracy"] == pytest.approx(50.0)
    assert report.counts["missing"] == 2
    assert any("103, 104" in note for note in report.notes)


def test_gqa_unknown_answer_id_is_error(tmp_path, jsonl_writer, gqa_annotations):
    answers = jsonl_writer(tmp_path / "answers.jsonl", [{"question_id": "999", "prompt": "p", "text": "no"}])

    with pytest.raises(DataError, match="1 answers have no annotation .*: 999"):
        score_answers("gqa", answers, [gqa_annotations], allow_missing=True)


def test_gqa_prints_no_uncomputable_metrics(tmp_path, jsonl_writer, gqa_annotations):
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [{"question_id": qid, "prompt": "p", "text": "no"} for qid in ("101", "102", "103", "104")],
    )

    report = score_answers("gqa", answers, [gqa_annotations])
    text = report.format_text().lower()

    for metric in ("validity", "plausibility", "consistency", "grounding", "distribution"):
        assert metric not in text
        assert metric not in str(report.to_json_dict()).lower()
