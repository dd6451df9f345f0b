"""The answers file: reading LLaVA's layout, recorded settings and the checks before scoring."""

import pytest

from alignkd.errors import DataError
from alignkd.eval.answers import NOT_RECORDED, read_answers

SETTINGS = {
    "benchmark": "gqa",
    "prompt_variant": "short-answer",
    "template": "v1",
    "system_prompt": "",
    "decoding": {"strategy": "greedy", "do_sample": False, "num_beams": 1, "max_new_tokens": 16},
    "image_aspect_ratio": "pad",
    "model": "runs/student",
}


def test_llava_lines_have_no_settings(tmp_path, jsonl_writer):
    path = jsonl_writer(
        tmp_path / "answers.jsonl",
        [{"question_id": "1", "prompt": "p", "text": "No", "answer_id": "x", "model_id": "llava", "metadata": {}}],
    )

    answers = read_answers(path, benchmark="gqa")

    assert answers.records[0].text == "No"
    assert answers.settings["template"] == NOT_RECORDED
    assert len(answers.sha256) == 64


def test_recorded_settings_are_read(tmp_path, jsonl_writer):
    path = jsonl_writer(tmp_path / "answers.jsonl", [{"question_id": i, "prompt": str(i), "text": "x", **SETTINGS} for i in range(3)])

    answers = read_answers(path, benchmark="gqa")

    assert answers.settings == SETTINGS


def test_mixed_settings_are_error(tmp_path, jsonl_writer):
    lines = [{"question_id": 1, "prompt": "a", "text": "x", **SETTINGS}, {"question_id": 2, "prompt": "b", "text": "x", **SETTINGS}]
    lines[1]["template"] = "plain"
    path = jsonl_writer(tmp_path / "answers.jsonl", lines)

    with pytest.raises(DataError, match="disagree on 'template'"):
        read_answers(path)


def test_benchmark_mismatch_is_error(tmp_path, jsonl_writer):
    path = jsonl_writer(tmp_path / "answers.jsonl", [{"question_id": 1, "prompt": "a", "text": "x", **SETTINGS}])

    with pytest.raises(DataError, match="generated for benchmark 'gqa' but are being scored as 'pope'"):
        read_answers(path, benchmark="pope")


def test_duplicate_answers_are_error(tmp_path, jsonl_writer):
    path = jsonl_writer(
        tmp_path / "answers.jsonl",
        [{"question_id": 1, "prompt": "a", "text": "x"}, {"question_id": "1", "prompt": "a", "text": "y"}],
    )

    with pytest.raises(DataError, match="question '1' on lines 1 and 2"):
        read_answers(path)


def test_same_id_other_prompt_allowed(tmp_path, jsonl_writer):
    # MME asks two questions per image under one question_id.
    path = jsonl_writer(
        tmp_path / "answers.jsonl",
        [{"question_id": "count/1.jpg", "prompt": "a", "text": "x"}, {"question_id": "count/1.jpg", "prompt": "b", "text": "y"}],
    )

    assert len(read_answers(path).records) == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a", "text": "x"}', "answers.jsonl:1: missing key 'question_id'"),
        ('{"question_id": 1, "prompt": "a", "text": null}', "question 1 has no string 'text'"),
        ("not json", "answers.jsonl:1: invalid JSON"),
    ],
)
def test_invalid_lines_name_the_line(tmp_path, line, message):
    path = tmp_path / "answers.jsonl"
    path.write_text(line + "\n")

    with pytest.raises(DataError, match=message):
        read_answers(path)


def test_missing_file_is_error(tmp_path):
    with pytest.raises(DataError, match="answers file not found"):
        read_answers(tmp_path / "absent.jsonl")
