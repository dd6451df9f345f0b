"""POPE scoring: per-split metrics worked out by hand, their mean, hashes and id mismatches."""

import hashlib

import pytest

from alignkd.errors import DataError
from alignkd.eval.score import score_answers
from alignkd.eval.scoring.pope import parse_pope_answer

SUFFIX = "Answer the question using a single word or phrase."

# (image, object, label) per split; POPE numbers questions per file from 1.
ADVERSARIAL = [("a.jpg", "dog", "yes"), ("a.jpg", "cat", "no"), ("b.jpg", "car", "yes"), ("b.jpg", "bus", "no")]
RANDOM = [("a.jpg", "dog", "yes"), ("c.jpg", "cup", "yes"), ("c.jpg", "kite", "no"), ("d.jpg", "tie", "no")]

ADVERSARIAL_ANSWERS = ["Yes", "No", "No, there is not.", "Yes, there is a cat."]  # TP, TN, FN, FP
RANDOM_ANSWERS = ["yes", "There is a dog.", "no", "I am not sure"]  # TP, TP (no yes/no word), TN, TN


def _question(image, thing):
    return f"Is there a {thing} in the image?"


@pytest.fixture
def pope_dir(tmp_path, jsonl_writer):
    folder = tmp_path / "coco"
    for split, rows in (("adversarial", ADVERSARIAL), ("random", RANDOM)):
        jsonl_writer(
            folder / f"coco_pope_{split}.json",
            [
                {"question_id": number, "image": image, "text": _question(image, thing), "label": label}
                for number, (image, thing, label) in enumerate(rows, start=1)
            ],
        )
    return folder


def _answers(split, rows, texts, first_id, with_fields=True):
    lines = []
    for offset, ((image, thing, _), text) in enumerate(zip(rows, texts)):
        line = {"question_id": first_id + offset, "prompt": f"{_question(image, thing)}\n{SUFFIX}", "text": text}
        if with_fields:
            line.update(image=image, category=split)
        lines.append(line)
    return lines


def test_pope_hand_scores(tmp_path, jsonl_writer, pope_dir):
    # LLaVA renumbers questions across splits (random starts at 10000001); matching is by content.
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        _answers("adversarial", ADVERSARIAL, ADVERSARIAL_ANSWERS, 1)
        + _answers("random", RANDOM, RANDOM_ANSWERS, 10000001),
    )

    report = score_answers("pope", answers, [pope_dir])

    adversarial = report.details["adversarial"]
    assert (adversarial["true_positive"], adversarial["true_negative"]) == (1, 1)
    assert (adversarial["false_negative"], adversarial["false_positive"]) == (1, 1)
    for metric in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        assert adversarial[metric] == pytest.approx(50.0), metric

    random = report.details["random"]
    for metric in ("accuracy", "precision", "recall", "f1"):
        assert random[metric] == pytest.approx(100.0), metric
    assert random["yes_ratio"] == pytest.approx(50.0)
    assert random["unparseable"] == 1

    assert report.metrics["mean_f1"] == pytest.approx(75.0)
    assert report.metrics["mean_accuracy"] == pytest.approx(75.0)
    assert report.metrics["adversarial_f1"] == pytest.approx(50.0)
    assert report.counts["unparseable"] == 1


def test_pope_records_label_hashes(tmp_path, jsonl_writer, pope_dir):
    answers = jsonl_writer(
        tmp_path / "answers.jsonl",
        _answers("adversarial", ADVERSARIAL, ADVERSARIAL_ANSWERS, 1) + _answers("random", RANDOM, RANDOM_ANSWERS, 5),
    )

    report = score_answers("pope", answers, [pope_dir])

    recorded = {entry["path"]: entry["sha256"] for entry in report.provenance["annotation_files"]}
    for split in ("adversarial", "random"):
        path = pope_dir / f"coco_pope_{split}.json"
        assert recorded[str(path)] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_pope_unmatched_id_is_error(tmp_path, jsonl_writer, pope_dir):
    lines = _answers("adversarial", ADVERSARIAL, ADVERSARIAL_ANSWERS, 1) + _answers("random", RANDOM, RANDOM_ANSWERS, 5)
    lines.append({"question_id": 77, "prompt": "Is there a zebra in the image?", "text": "no", "image": "a.jpg", "category": "random"})
    answers = jsonl_writer(tmp_path / "answers.jsonl", lines)

    with pytest.raises(DataError, match=r"1 answers have no annotation .*: 77 \(line 9\)"):
        score_answers("pope", answers, [pope_dir])


def test_pope_missing_label_is_error(tmp_path, jsonl_writer, pope_dir):
    broken = pope_dir / "coco_pope_random.json"
    rows = broken.read_text().splitlines()
    rows[2] = '{"question_id": 3, "image": "c.jpg", "text": "Is there a kite in the image?"}'
    broken.write_text("\n".join(rows) + "\n")
    answers = jsonl_writer(tmp_path / "answers.jsonl", _answers("random", RANDOM, RANDOM_ANSWERS, 1))

    with pytest.raises(DataError, match=r"coco_pope_random.json:3: question 3 has label None"):
        score_answers("pope", answers, [pope_dir])


def test_llava_answers_need_questions(tmp_path, jsonl_writer, pope_dir):
    # LLaVA's answer lines have no split or image; the question file supplies them.
    questions = jsonl_writer(
        tmp_path / "llava_pope_test.jsonl",
        [
            {"question_id": 1 + offset, "image": image, "text": f"{_question(image, thing)}\n{SUFFIX}", "category": "adversarial"}
            for offset, (image, thing, _) in enumerate(ADVERSARIAL)
        ],
    )
    answers = jsonl_writer(
        tmp_path / "answers.jsonl", _answers("adversarial", ADVERSARIAL, ADVERSARIAL_ANSWERS, 1, with_fields=False)
    )
    labels = [pope_dir / "coco_pope_adversarial.json"]

    report = score_answers("pope", answers, labels, questions=questions)
    assert report.metrics["mean_f1"] == pytest.approx(50.0)

    # With a single label file the split is known, but the image is not.
    with pytest.raises(DataError, match="pass the question file with --questions"):
        score_answers("pope", answers, labels)


@pytest.mark.parametrize(
    ("text", "label", "stated"),
    [
        ("Yes", "yes", True),
        ("No", "no", True),
        ("No.", "no", True),
        ("There is not a dog.", "no", True),
        ("Yes. No dog is visible.", "yes", True),  # only the first sentence counts
        ("There is a dog", "yes", False),  # no yes/no word, so POPE's rule returns yes
        ("NO", "yes", True),  # POPE's rule matches only "No", "no" and "not"
    ],
)
def test_pope_answer_rule(text, label, stated):
    assert parse_pope_answer(text) == (label, stated)
