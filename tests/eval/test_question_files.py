"""Reading LLaVA's question-file layouts."""

import pytest

from alignkd.errors import DataError
from alignkd.eval.benchmarks import get_benchmark
from alignkd.eval.questions import read_llava_questions


def test_jsonl_layout(tmp_path, jsonl_writer):
    path = jsonl_writer(
        tmp_path / "llava_gqa.jsonl",
        [
            {"question_id": "201307251", "image": "n161313.jpg", "text": "Is it overcast?", "category": "default"},
            {"question_id": 7, "text": "A text-only question?"},
        ],
    )

    first, second = read_llava_questions(path)

    assert (first.question_id, first.image, first.extra) == ("201307251", "n161313.jpg", {"category": "default"})
    assert first.source == f"{path}:1"
    assert (second.question_id, second.image, second.has_image) == (7, None, False)


def test_conversation_layout(tmp_path, json_writer):
    path = json_writer(
        tmp_path / "llava_test_CQM-A.json",
        [
            {"id": "4", "conversations": [{"from": "human", "value": "Which?\nA. x\nB. y"}, {"from": "gpt", "value": "B"}]},
            {
                "id": "23",
                "image": "23/image.png",
                "conversations": [{"from": "human", "value": "<image>\nContext: c\nWhich?\nA. x\nB. y"}],
            },
        ],
    )

    text_only, with_image = read_llava_questions(path)

    assert (text_only.question_id, text_only.text, text_only.image) == ("4", "Which?\nA. x\nB. y", None)
    assert (with_image.text, with_image.image) == ("Context: c\nWhich?\nA. x\nB. y", "23/image.png")


def test_missing_text_names_line(tmp_path, jsonl_writer):
    path = jsonl_writer(tmp_path / "q.jsonl", [{"question_id": 1, "text": "a"}, {"question_id": 2}])

    with pytest.raises(DataError, match=r"q.jsonl:2: missing key 'text'"):
        read_llava_questions(path)


def test_pope_label_file_as_questions(tmp_path, jsonl_writer):
    # POPE's label files are JSONL despite the .json suffix and carry their split in the name.
    path = jsonl_writer(
        tmp_path / "coco_pope_random.json",
        [{"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"}],
    )

    (question,) = get_benchmark("pope").read_questions(path)

    assert question.extra == {"category": "random"}
    assert "label" not in question.extra


def test_missing_question_file(tmp_path):
    with pytest.raises(DataError, match="question file not found"):
        read_llava_questions(tmp_path / "absent.jsonl")
