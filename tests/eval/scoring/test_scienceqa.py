"""ScienceQA scoring: robust letter extraction and IMG-only against overall accuracy."""

import pytest

from alignkd.errors import DataError
from alignkd.eval.score import score_answers


def _problem(choices, answer, image, split="test"):
    return {"question": "q", "choices": choices, "answer": answer, "hint": "", "image": image, "split": split}


@pytest.fixture
def problems(tmp_path, json_writer):
    return json_writer(
        tmp_path / "scienceqa" / "problems.json",
        {
            "1": _problem(["New York", "Boston", "Chicago"], 1, "image.png"),  # image, answer B
            "2": _problem(["Boston", "Denver"], 0, "image.png"),  # image, answer A
            "3": _problem(["Paris", "Rome", "Boston"], 2, None),  # text only, answer C
            "4": _problem(["x", "y"], 0, None, split="train"),  # another split
        },
    )


def test_scienceqa_hand_scores(tmp_path, jsonl_writer, problems):
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [
            {"question_id": "1", "prompt": "p", "text": "The answer is B."},  # right
            {"question_id": "2", "prompt": "p", "text": "(B) Denver"},  # wrong
            {"question_id": "3", "prompt": "p", "text": "Boston"},  # option text: C, right
        ],
    )

    report = score_answers("scienceqa", answers, [problems])

    assert report.metrics["accuracy"] == pytest.approx(200 / 3)
    assert report.metrics["img_accuracy"] == pytest.approx(50.0)  # only problems 1 and 2
    assert report.counts["questions"] == 3
    assert report.counts["image_questions"] == 2
    assert report.counts["unparseable"] == 0
    assert report.details["split"] == "test"
    text = report.format_text()
    assert "image questions (IMG)" in text
    assert "all questions" in text


def test_unparseable_counted_as_wrong(tmp_path, jsonl_writer, problems):
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [
            {"question_id": "1", "prompt": "p", "text": "I am not sure"},
            {"question_id": "2", "prompt": "p", "text": "A"},
            {"question_id": "3", "prompt": "p", "text": "E"},  # no option E
        ],
    )

    report = score_answers("scienceqa", answers, [problems])

    assert report.counts["unparseable"] == 2
    assert report.metrics["accuracy"] == pytest.approx(100 / 3)
    assert "2 answers could not be parsed" in report.format_text()


def test_image_only_answers(tmp_path, jsonl_writer, problems):
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [{"question_id": "1", "prompt": "p", "text": "B"}, {"question_id": "2", "prompt": "p", "text": "B"}],
    )

    report = score_answers("scienceqa", answers, [problems])

    assert report.metrics == {"img_accuracy": pytest.approx(50.0)}
    assert any("accuracy over all 3 questions" in note for note in report.notes)


def test_pid_splits_file_is_used(tmp_path, jsonl_writer, json_writer, problems):
    json_writer(problems.with_name("pid_splits.json"), {"test": ["1", "3"], "train": ["4"]})
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [{"question_id": "1", "prompt": "p", "text": "B"}, {"question_id": "3", "prompt": "p", "text": "C"}],
    )

    report = score_answers("scienceqa", answers, [problems])

    assert report.metrics["accuracy"] == pytest.approx(100.0)
    assert report.counts["image_questions"] == 1
    assert [entry["path"] for entry in report.provenance["annotation_files"]][1].endswith("pid_splits.json")


def test_scienceqa_other_split(tmp_path, jsonl_writer, problems):
    answers = jsonl_writer(tmp_path / "answers.jsonl", [{"question_id": "4", "prompt": "p", "text": "A"}])

    with pytest.raises(DataError, match="no annotation"):
        score_answers("scienceqa", answers, [problems])
    assert score_answers("scienceqa", answers, [problems], split="train").metrics["accuracy"] == pytest.approx(100.0)
