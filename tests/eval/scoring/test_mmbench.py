"""MMBench scoring: circular evaluation, single-pass accuracy and the submission file."""

import csv
import base64

import pytest

from alignkd.errors import DataError
from alignkd.eval.score import score_answers

IMAGE = base64.b64encode(b"not decoded when scoring").decode()
COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "l2-category", "split"]


def write_tsv(path, rows):
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, delimiter="\t")
        writer.writeheader()
        for row in rows:
            writer.writerow({"image": IMAGE, "hint": "", "C": "", "D": "", "split": "dev", "l2-category": "l2", **row})
    return path


def _row(index, options, answer, category="color"):
    return {"index": index, "question": f"Question {index % 1_000_000}?", "answer": answer, "category": category,
            **dict(zip("ABCD", options))}


@pytest.fixture
def circular_tsv(tmp_path):
    # MMBench ships rotations: index i + 1,000,000 contains the options shifted by one place.
    return write_tsv(
        tmp_path / "mmbench_dev.tsv",
        [
            _row(1, ["red", "blue"], "A"),
            _row(2, ["cat", "dog", "cow"], "C", category="animal"),
            _row(1_000_001, ["blue", "red"], "B"),
            _row(1_000_002, ["dog", "cow", "cat"], "B", category="animal"),
            _row(2_000_002, ["cow", "cat", "dog"], "A", category="animal"),
        ],
    )


def _answer(index, text, round_id=0):
    return {"question_id": index, "round_id": round_id, "prompt": f"prompt {index} {round_id}", "text": text}


def test_circular_hand_scores(tmp_path, jsonl_writer, circular_tsv):
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [
            _answer(1, "A"),  # right
            _answer(1_000_001, "The answer is B."),  # right: question 1 passes every rotation
            _answer(2, "C. cow"),  # right
            _answer(1_000_002, "cow"),  # option text of B: right
            _answer(2_000_002, "B"),  # wrong: question 2 fails circular evaluation
        ],
    )

    report = score_answers("mmbench", answers, [circular_tsv])

    assert report.metrics["circular_accuracy"] == pytest.approx(50.0)
    assert report.metrics["single_pass_accuracy"] == pytest.approx(100.0)
    assert report.details["circular_by_category"]["color"]["accuracy"] == pytest.approx(100.0)
    assert report.details["circular_by_category"]["animal"]["accuracy"] == pytest.approx(0.0)
    assert report.counts["questions"] == 2
    assert report.counts["passes"] == 5


def test_rotations_added_by_eval(tmp_path, jsonl_writer):
    # A TSV without circular copies: `alignkd eval` asks each rotation and records round_id.
    tsv = write_tsv(tmp_path / "plain.tsv", [_row(1, ["red", "blue"], "B"), _row(2, ["cat", "dog"], "A")])
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [
            _answer(1, "B"),  # options red, blue: right
            _answer(1, "A", round_id=1),  # options blue, red: right
            _answer(2, "A"),  # right
            _answer(2, "A", round_id=1),  # options dog, cat: wrong
        ],
    )

    report = score_answers("mmbench", answers, [tsv])

    assert report.metrics["circular_accuracy"] == pytest.approx(50.0)
    assert report.metrics["single_pass_accuracy"] == pytest.approx(100.0)


def test_single_round_without_copies(tmp_path, jsonl_writer):
    tsv = write_tsv(tmp_path / "plain.tsv", [_row(1, ["red", "blue"], "B"), _row(2, ["cat", "dog"], "A")])
    answers = jsonl_writer(tmp_path / "answers.jsonl", [_answer(1, "B"), _answer(2, "B")])

    report = score_answers("mmbench", answers, [tsv])

    assert report.metrics == {"single_pass_accuracy": pytest.approx(50.0)}
    assert any("circular accuracy not computed" in note for note in report.notes)


def test_submission_schema(tmp_path, jsonl_writer, circular_tsv):
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [_answer(1, "A"), _answer(1_000_001, "B"), _answer(2, "C"), _answer(1_000_002, "B"), _answer(2_000_002, "A")],
    )
    submission = tmp_path / "upload" / "submission.tsv"

    score_answers("mmbench", answers, [circular_tsv], submission=submission)

    with submission.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert list(rows[0]) == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert [row["index"] for row in rows] == ["1", "2", "1000001", "1000002", "2000002"]
    assert rows[0]["prediction"] == "A"
    assert rows[0]["A"] == "red"
    assert rows[0]["C"] == ""


def test_submission_xlsx_columns(tmp_path, jsonl_writer, circular_tsv):
    openpyxl = pytest.importorskip("openpyxl")
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [_answer(1, "A"), _answer(1_000_001, "B"), _answer(2, "C"), _answer(1_000_002, "B"), _answer(2_000_002, "A")],
    )
    submission = tmp_path / "submission.xlsx"

    score_answers("mmbench", answers, [circular_tsv], submission=submission)

    sheet = openpyxl.load_workbook(submission).active
    header = [cell.value for cell in sheet[1]]
    assert header[:7] == ["index", "question", "A", "B", "C", "D", "prediction"]
    assert sheet.max_row == 6


def test_submission_needs_every_row(tmp_path, jsonl_writer, circular_tsv):
    answers = jsonl_writer(
        tmp_path / "answers.jsonl", [_answer(1, "A"), _answer(1_000_001, "B"), _answer(2, "C"), _answer(1_000_002, "B")]
    )

    with pytest.raises(DataError, match=r"1 questions have no answer \(indexes 2000002\)"):
        score_answers("mmbench", answers, [circular_tsv], allow_missing=True, submission=tmp_path / "s.tsv")


def test_test_split_only_submits(tmp_path, jsonl_writer):
    tsv = write_tsv(tmp_path / "test.tsv", [_row(1, ["red", "blue"], ""), _row(1_000_001, ["blue", "red"], "")])
    answers = jsonl_writer(tmp_path / "answers.jsonl", [_answer(1, "A"), _answer(1_000_001, "B")])

    report = score_answers("mmbench", answers, [tsv], submission=tmp_path / "s.tsv")

    assert report.metrics == {}
    assert (tmp_path / "s.tsv").is_file()
    assert any("no accuracy is computed" in note for note in report.notes)
