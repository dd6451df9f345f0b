"""TextVQA scoring: VQA accuracy, LLaVA's id layout and the OCR or pure prompt variant."""

import pytest

from alignkd.errors import DataError
from alignkd.eval.score import score_answers

SUFFIX = "Answer the question using a single word or phrase."
OCR_PROMPT = f"What is the brand of this camera?\nReference OCR token: DAKOTA, DIGITAL\n{SUFFIX}"
PURE_PROMPT = f"What is the brand of this camera?\n{SUFFIX}"


@pytest.fixture
def textvqa_annotations(tmp_path, json_writer):
    return json_writer(
        tmp_path / "TextVQA_0.5.1_val.json",
        {
            "dataset_name": "textvqa",
            "data": [
                {
                    "question_id": 34602,
                    "image_id": "003a8ae2ef43b901",
                    "question": "what is the brand of this camera?",
                    "answers": ["dakota digital"] * 10,
                },
                {
                    "question_id": 34603,
                    "image_id": "b9dc400eb20bad64",
                    "question": "what kind of beer is this?",
                    "answers": ["nikon"] * 3 + ["canon"] * 7,
                },
            ],
        },
    )


def test_sentence_answer_and_variant(tmp_path, jsonl_writer, textvqa_annotations):
    # LLaVA's layout: question_id is the image id and the question is read from the prompt.
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [
            {"question_id": "003a8ae2ef43b901", "prompt": OCR_PROMPT, "text": "the brand of this camera is dakota digital"},
            {
                "question_id": "b9dc400eb20bad64",
                "prompt": f"What kind of beer is this?\nReference OCR token: NIKON\n{SUFFIX}",
                "text": "Nikon",
            },
        ],
    )

    report = score_answers("textvqa", answers, [textvqa_annotations])

    # (0 for the sentence + 0.9 for three matching human answers of ten) / 2 questions.
    assert report.metrics["accuracy"] == pytest.approx(45.0)
    assert report.provenance["generation"]["prompt_variant"] == "ocr (detected from the prompts)"
    assert "ocr (detected from the prompts)" in report.format_text()


def test_short_answer_scores_full(tmp_path, jsonl_writer, textvqa_annotations):
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [
            {"question_id": 34602, "prompt": PURE_PROMPT, "text": "Dakota Digital"},
            {"question_id": 34603, "prompt": "What kind of beer is this?", "text": "canon"},
        ],
    )

    report = score_answers("textvqa", answers, [textvqa_annotations])

    assert report.metrics["accuracy"] == pytest.approx(100.0)
    assert report.provenance["generation"]["prompt_variant"] == "pure (detected from the prompts)"


def test_recorded_variant_is_reported(tmp_path, jsonl_writer, textvqa_annotations):
    settings = {"benchmark": "textvqa", "prompt_variant": "pure", "template": "v1"}
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [
            {"question_id": 34602, "prompt": PURE_PROMPT, "text": "dakota", **settings},
            {"question_id": 34603, "prompt": "What kind of beer is this?", "text": "canon", **settings},
        ],
    )

    report = score_answers("textvqa", answers, [textvqa_annotations])

    assert report.provenance["generation"]["prompt_variant"] == "pure"
    assert report.provenance["generation"]["template"] == "v1"


def test_unmatched_question_is_error(tmp_path, jsonl_writer, textvqa_annotations):
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [{"question_id": "003a8ae2ef43b901", "prompt": f"What is written here?\n{SUFFIX}", "text": "x"}],
    )

    with pytest.raises(DataError, match="no annotation"):
        score_answers("textvqa", answers, [textvqa_annotations], allow_missing=True)
