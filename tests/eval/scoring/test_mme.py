"""MME scoring: first yes/no word, accuracy and accuracy-plus per image pair, subtask counts and totals."""

import pytest

from alignkd.errors import DataError
from alignkd.eval.score import score_answers
from alignkd.eval.scoring.mme import PERCEPTION_SUBTASKS, parse_mme_answer

SUFFIX = "Answer the question using a single word or phrase."
YES_NO = "Please answer yes or no."


def _write_pairs(folder, image_name, pairs):
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{question} {YES_NO}\t{label}\n" for question, label in pairs)
    (folder / f"{image_name}.txt").write_text(lines, encoding="utf-8")


@pytest.fixture
def mme_root(tmp_path):
    root = tmp_path / "MME_Benchmark_release_version"
    # "existence" keeps its answer files next to the images; "artwork" uses questions_answers_YN.
    _write_pairs(root / "existence", "0001", [("Is there a dog in this image?", "Yes"), ("Is there a cat in this image?", "No")])
    _write_pairs(root / "existence", "0002", [("Is there a car in this image?", "Yes"), ("Is there a bus in this image?", "No")])
    _write_pairs(
        root / "artwork" / "questions_answers_YN",
        "14777",
        [("Is this artwork religious?", "No"), ("Is this artwork created by Monet?", "No")],
    )
    return root


def _answer(image, question, text):
    # LLaVA's question file drops "Please answer yes or no." and adds the short-answer suffix.
    category = image.split("/")[0]
    return {"question_id": image, "prompt": f"{question}\n{SUFFIX}", "text": text, "category": category, "image": image}


def test_mme_hand_scores(tmp_path, jsonl_writer, mme_root):
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        [
            _answer("existence/0001.jpg", "Is there a dog in this image?", "Yes, there is a dog."),  # right
            _answer("existence/0001.jpg", "Is there a cat in this image?", "No"),  # right: image pair right
            _answer("existence/0002.jpg", "Is there a car in this image?", "Yes"),  # right
            _answer("existence/0002.jpg", "Is there a bus in this image?", "Yes"),  # wrong: pair wrong
            _answer("artwork/images/14777.jpg", "Is this artwork religious?", "I cannot tell"),  # unparseable
            _answer("artwork/images/14777.jpg", "Is this artwork created by Monet?", "no"),  # right
        ],
    )

    report = score_answers("mme", answers, [mme_root])

    existence = report.details["existence"]
    assert existence["questions"] == 4
    assert existence["images"] == 2
    assert existence["accuracy"] == pytest.approx(75.0)
    assert existence["accuracy_plus"] == pytest.approx(50.0)
    assert existence["score"] == pytest.approx(125.0)

    artwork = report.details["artwork"]
    assert (artwork["questions"], artwork["images"], artwork["unparseable"]) == (2, 1, 1)
    assert artwork["accuracy"] == pytest.approx(50.0)
    assert artwork["accuracy_plus"] == pytest.approx(0.0)
    assert artwork["score"] == pytest.approx(50.0)

    # Eight perception subtasks have no answers, so no perception total is printed.
    assert "perception_score" not in report.metrics
    assert any("perception total not computed" in note for note in report.notes)
    assert report.counts["unparseable"] == 1


def test_mme_perception_total(tmp_path, jsonl_writer):
    root = tmp_path / "MME"
    lines = []
    for subtask in PERCEPTION_SUBTASKS:
        _write_pairs(root / subtask, "img", [("Is it red?", "Yes"), ("Is it blue?", "No")])
        # Every subtask is answered right (200 points) except the second question of "count".
        second = "Yes" if subtask == "count" else "No"
        lines += [_answer(f"{subtask}/img.jpg", "Is it red?", "Yes"), _answer(f"{subtask}/img.jpg", "Is it blue?", second)]
    answers = jsonl_writer(tmp_path / "answers.jsonl", lines)

    report = score_answers("mme", answers, [root])

    assert report.details["count"]["score"] == pytest.approx(50.0)
    assert report.metrics["perception_score"] == pytest.approx(9 * 200 + 50)
    assert "cognition_score" not in report.metrics


def test_mme_missing_question_is_error(tmp_path, jsonl_writer, mme_root):
    answers = jsonl_writer(
        tmp_path / "answers.jsonl", [_answer("existence/0001.jpg", "Is there a dog in this image?", "Yes")]
    )

    with pytest.raises(DataError, match="5 of the 6 annotated questions"):
        score_answers("mme", answers, [mme_root])


def test_mme_folder_hash_recorded(tmp_path, jsonl_writer, mme_root):
    answers = jsonl_writer(
        tmp_path / "answers.jsonl", [_answer("existence/0001.jpg", "Is there a dog in this image?", "Yes")]
    )

    report = score_answers("mme", answers, [mme_root], allow_missing=True)

    (folder,) = report.provenance["annotation_files"]
    assert folder["files"] == 3
    assert len(folder["sha256"]) == 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", "yes"),
        (" no ", "no"),
        ("yes.", "yes"),
        ("Yes, there is a dog.", "yes"),
        ("No, it is not.", "no"),
        ("Not sure", "no"),  # "no" inside the first four characters
        ("None", "no"),
        ("Yesterday", "yes"),  # "yes" inside the first four characters
        ("There is no dog, yes.", None),  # only the first four characters count
        ("The answer is yes", None),
        ("I cannot tell", None),
        ("", None),
    ],
)
def test_mme_four_character_rule(text, expected):
    assert parse_mme_answer(text) == expected
