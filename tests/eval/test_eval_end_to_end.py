"""`alignkd eval` and `alignkd score` on a tiny randomly initialised MobileVLM, through the CLI.

The model is random, so only the answers file's fields and the recorded settings are
checked, not the accuracy.
"""

import base64
import csv
import io
import json

import pytest
from PIL import Image

from alignkd import cli
from alignkd.models.loading import save_vlm
from alignkd.models.spec import init_model

SUFFIX = "Answer the question using a single word or phrase."
IMAGE_SIZE = 32

TINY_MOBILEVLM = {
    "family": "mobilevlm",
    "vision": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "patch_size": 16, "image_size": IMAGE_SIZE},
    "projector": {"type": "ldpnetv2", "grid_size": 2},
    "language": {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64},
}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, llama_tokenizer):
    loaded = init_model(TINY_MOBILEVLM, llama_tokenizer, seed=0)
    folder = tmp_path_factory.mktemp("tiny") / "student"
    save_vlm(loaded.model, loaded.tokenizer, loaded.image_processor, folder)
    return folder


@pytest.fixture
def digit_questions(tmp_path, jsonl_writer):
    images = tmp_path / "images"
    images.mkdir()
    # An RGBA image checks that the real image path converts modes before preprocessing.
    Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (200, 30, 30)).save(images / "red.png")
    Image.new("RGBA", (IMAGE_SIZE, IMAGE_SIZE // 2), (0, 0, 255, 128)).save(images / "blue.png")
    questions = jsonl_writer(
        tmp_path / "questions.jsonl",
        [
            {"question_id": "q1", "image": "red.png", "text": "How many digits are there?", "category": "count"},
            {"question_id": "q2", "image": "blue.png", "text": "Is there a 7?", "category": "exists"},
            {"question_id": "q3", "text": "What is 2 plus 3?", "category": "text"},
        ],
    )
    annotations = jsonl_writer(
        tmp_path / "annotations.jsonl",
        [
            {"question_id": "q1", "answer": "2", "category": "count"},
            {"question_id": "q2", "answer": "no", "category": "exists"},
            {"question_id": "q3", "answer": "5", "category": "text"},
        ],
    )
    return {"questions": questions, "images": images, "annotations": annotations}


def test_eval_and_score_tiny_model(tmp_path, tiny_model_dir, digit_questions, capsys):
    answers = tmp_path / "answers.jsonl"

    code = cli.main(
        [
            "eval", "--model", str(tiny_model_dir), "--benchmark", "short-answer",
            "--questions", str(digit_questions["questions"]), "--images", str(digit_questions["images"]),
            "--output", str(answers), "--batch-size", "2", "--max-new-tokens", "4",
        ]
    )

    assert code == 0
    assert "Wrote 3 answers" in capsys.readouterr().out
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [line["question_id"] for line in lines] == ["q1", "q2", "q3"]
    for line in lines:
        assert isinstance(line["text"], str)
        assert line["prompt"].endswith(SUFFIX)
        assert line["template"] == "v1"
        assert line["prompt_variant"] == "short-answer"
        assert line["decoding"] == {"strategy": "greedy", "do_sample": False, "num_beams": 1, "max_new_tokens": 4}
        assert line["image_aspect_ratio"] == "pad"
        assert line["model"] == str(tiny_model_dir)

    scores = tmp_path / "scores.json"
    code = cli.main(
        [
            "score", "--benchmark", "short-answer", "--answers", str(answers),
            "--annotations", str(digit_questions["annotations"]), "--output-json", str(scores),
        ]
    )

    assert code == 0
    report = json.loads(scores.read_text())
    assert report["counts"]["questions"] == 3
    assert report["provenance"]["generation"]["template"] == "v1"


def test_batch_size_does_not_change_answers(tmp_path, tiny_model_dir, digit_questions):
    outputs = {}
    for batch_size in (1, 3):
        answers = tmp_path / f"answers_{batch_size}.jsonl"
        code = cli.main(
            [
                "eval", "--model", str(tiny_model_dir), "--benchmark", "short-answer",
                "--questions", str(digit_questions["questions"]), "--images", str(digit_questions["images"]),
                "--output", str(answers), "--batch-size", str(batch_size), "--max-new-tokens", "4",
            ]
        )
        assert code == 0
        outputs[batch_size] = [json.loads(line)["text"] for line in answers.read_text().splitlines()]

    assert outputs[1] == outputs[3]


def test_mmbench_embedded_images(tmp_path, tiny_model_dir):
    buffer = io.BytesIO()
    Image.new("P", (IMAGE_SIZE, IMAGE_SIZE)).save(buffer, format="PNG")
    tsv = tmp_path / "mmbench.tsv"
    with tsv.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["index", "question", "A", "B", "answer", "category", "image"])
        writer.writerow([1, "Which colour?", "red", "blue", "A", "colour", base64.b64encode(buffer.getvalue()).decode()])
    answers = tmp_path / "answers.jsonl"

    code = cli.main(
        [
            "eval", "--model", str(tiny_model_dir), "--benchmark", "mmbench", "--questions", str(tsv),
            "--output", str(answers), "--max-new-tokens", "2",
        ]
    )

    assert code == 0
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [line["round_id"] for line in lines] == [0, 1]
    assert all(line["prompt_variant"] == "option-letter" for line in lines)
