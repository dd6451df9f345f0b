"""MMBench TSV reading, option rotation and the questions `alignkd eval` asks."""

import base64
import csv

import pytest

from alignkd.errors import DataError
from alignkd.eval.mmbench_data import correct_letter, read_mmbench_questions, read_mmbench_tsv, rotate

IMAGE_BYTES = b"\x89PNG fake bytes"
COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]


def _write(path, rows):
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, delimiter="\t")
        writer.writeheader()
        for row in rows:
            writer.writerow({"image": base64.b64encode(IMAGE_BYTES).decode(), "hint": "", "C": "", "D": "", **row})
    return path


def test_empty_options_end_the_list(tmp_path):
    path = _write(
        tmp_path / "m.tsv",
        [{"index": 5, "question": "Q?", "A": "x", "B": "y", "C": "nan", "D": "z", "answer": "B", "category": "c"}],
    )

    (row,) = read_mmbench_tsv(path)

    assert row.options == ["x", "y"]
    assert (row.index, row.answer, row.hint, row.base_index) == (5, "B", None, 5)


def test_rotation_moves_answer():
    assert rotate(["cat", "dog", "cow"], 1) == ["dog", "cow", "cat"]

    class Row:
        options = ["cat", "dog", "cow"]
        answer = "C"

    assert [correct_letter(Row, round_id) for round_id in range(3)] == ["C", "B", "A"]


def test_questions_get_rotations(tmp_path):
    path = _write(
        tmp_path / "m.tsv",
        [{"index": 1, "question": "Which?", "hint": "Hint.", "A": "cat", "B": "dog", "answer": "A", "category": "animal"}],
    )

    first, second = read_mmbench_questions(path)

    assert first.text == "Hint.\nWhich?\nA. cat\nB. dog"
    assert second.text == "Hint.\nWhich?\nA. dog\nB. cat"
    assert second.extra == {"round_id": 1, "options": ["dog", "cat"], "option_char": ["A", "B"], "category": "animal"}
    assert first.image_bytes == IMAGE_BYTES


def test_shipped_copies_are_not_rotated_again(tmp_path):
    path = _write(
        tmp_path / "m.tsv",
        [
            {"index": 1, "question": "Which?", "A": "cat", "B": "dog", "answer": "A"},
            {"index": 1_000_001, "question": "Which?", "A": "dog", "B": "cat", "answer": "B"},
        ],
    )

    questions = read_mmbench_questions(path)

    assert [(question.question_id, question.extra["round_id"]) for question in questions] == [(1, 0), (1_000_001, 0)]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"index": 1, "question": "Q", "A": "x", "answer": "A"}, "question 1 has 1 options"),
        ({"index": 1, "question": "Q", "A": "x", "B": "y", "answer": "C"}, "question 1 has answer 'C' but only options AB"),
        ({"index": "one", "question": "Q", "A": "x", "B": "y"}, "'index' must be an integer"),
    ],
)
def test_invalid_rows_name_the_line(tmp_path, row, message):
    path = _write(tmp_path / "m.tsv", [row])

    with pytest.raises(DataError, match=message):
        read_mmbench_tsv(path)


def test_duplicate_index_is_error(tmp_path):
    row = {"index": 1, "question": "Q", "A": "x", "B": "y"}
    path = _write(tmp_path / "m.tsv", [row, row])

    with pytest.raises(DataError, match="m.tsv:3: index 1 already appears on line 2"):
        read_mmbench_tsv(path)
