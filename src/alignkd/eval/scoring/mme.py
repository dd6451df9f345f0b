"""MME: yes/no questions, two per image, scored per subtask with accuracy and accuracy-plus.

Questions: LLaVA-1.5's llava_mme.jsonl (JSONL). "question_id" and "image" are the image path
inside MME_Benchmark_release_version ("artwork/images/14777.jpg" or "count/000000470121.jpg"),
"category" is the subtask, and both questions of an image share the question_id.

Annotations: the MME_Benchmark_release_version folder. Each subtask folder contains, per
image, a .txt file with the image's name whose lines are "<question>\\t<Yes|No>", either
next to the images or in a questions_answers_YN subfolder. Answers are matched by subtask,
image name and question text. The question text is compared without the "Please answer yes
or no." sentence, because LLaVA's question file drops it, with whitespace collapsed and
ignoring case.

Scoring follows MME's own eval_tool/calculation.py. The answer is lowercased (and, here,
stripped of surrounding whitespace). An answer that is exactly "yes" or "no" is that label;
otherwise its first four characters decide: "yes" among them gives "yes", else "no" among
them gives "no" ("Yes, there is a dog." is "yes", "Not sure" is "no"). Any other answer,
such as "There is a dog, yes.", is unparseable and wrong. Per subtask: accuracy over questions, accuracy-plus over images
(the share of images whose questions are all right) and the score, their sum (at most 200).
The perception total sums the ten perception subtasks (at most 2,000) and the cognition
total the four cognition subtasks (at most 800); a total is left out when one of its
subtasks has no answers.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from alignkd.errors import DataError
from alignkd.eval.answers import AnswerRecord, format_id_list
from alignkd.eval.prompts import SHORT_ANSWER_SUFFIX, strip_suffix
from alignkd.eval.report import ScoreReport, Table, describe_folder, percent
from alignkd.eval.scoring.matching import match_answers
from alignkd.eval.scoring.request import ScoreRequest, build_provenance

PERCEPTION_SUBTASKS = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)
COGNITION_SUBTASKS = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")

_ANSWER_SUBFOLDER = "questions_answers_YN"
_YES_NO_SENTENCE = re.compile(r"please answer yes or no\.?", re.IGNORECASE)
_MME_PREFIX_LENGTH = 4

MMEKey = tuple[str, str, str]


def parse_mme_answer(text: str) -> str | None:
    """Return "yes" or "no" by MME's rule (see the module docstring), or None when it gives neither."""
    answer = text.strip().lower()
    if answer in ("yes", "no"):
        return answer

    # MME's scorer reads only this prefix, so a label later in a sentence does not count.
    prefix = answer[:_MME_PREFIX_LENGTH]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return None


def normalize_mme_question(question: str) -> str:
    """Return the question without "Please answer yes or no.", whitespace collapsed, lowercased."""
    return " ".join(_YES_NO_SENTENCE.sub(" ", question).split()).lower()


def _mme_key(subtask: str, image: str, question: str) -> MMEKey:
    return subtask, Path(image).stem, normalize_mme_question(question)


def read_mme_annotations(root: Path) -> dict[MMEKey, dict[str, Any]]:
    """Read every subtask's answer files under MME_Benchmark_release_version."""
    if not root.is_dir():
        raise DataError(f"MME annotations must be the MME_Benchmark_release_version folder, got {root}")

    annotations: dict[MMEKey, dict[str, Any]] = {}
    for subtask_folder in sorted(path for path in root.iterdir() if path.is_dir()):
        answer_folder = subtask_folder / _ANSWER_SUBFOLDER
        if not answer_folder.is_dir():
            answer_folder = subtask_folder
        for answer_file in sorted(answer_folder.glob("*.txt")):
            _read_answer_file(answer_file, subtask_folder.name, annotations)
    if not annotations:
        raise DataError(f"{root}: no MME answer files (<image>.txt with 'question<TAB>Yes|No' lines) found")
    return annotations


def _read_answer_file(path: Path, subtask: str, annotations: dict[MMEKey, dict[str, Any]]) -> None:
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no"):
            raise DataError(f"{path}:{line_number}: expected '<question><TAB>Yes|No', got {line!r}")
        key = _mme_key(subtask, path.name, parts[0])
        annotations[key] = {"subtask": subtask, "image": path.stem, "label": parts[1].strip().lower()}


def _key_of(answer: AnswerRecord) -> MMEKey:
    image = answer.get("image") or answer.question_id
    subtask = answer.get("category") or image.split("/")[0]
    question = strip_suffix(answer.prompt or "", SHORT_ANSWER_SUFFIX)
    return _mme_key(subtask, image, question)


def _subtask_row(results: list[tuple[str, bool, bool]]) -> dict[str, Any]:
    by_image: dict[str, list[bool]] = defaultdict(list)
    for image, correct, _ in results:
        by_image[image].append(correct)
    accuracy = percent(sum(correct for _, correct, _ in results), len(results))
    accuracy_plus = percent(sum(all(values) for values in by_image.values()), len(by_image))
    return {
        "questions": len(results),
        "images": len(by_image),
        "accuracy": accuracy,
        "accuracy_plus": accuracy_plus,
        "score": accuracy + accuracy_plus,
        "unparseable": sum(not parsed for _, _, parsed in results),
    }


def score_mme(request: ScoreRequest) -> ScoreReport:
    """Score MME answers per subtask (see the module docstring)."""
    root = request.single_annotation_path("the MME_Benchmark_release_version folder")
    annotations = read_mme_annotations(root)
    match = match_answers(
        request.answers.records,
        annotations,
        _key_of,
        answers_label=str(request.answers.path),
        annotations_label=str(root),
        allow_missing=request.allow_missing,
    )

    results: dict[str, list[tuple[str, bool, bool]]] = defaultdict(list)
    for answer, annotation in match.pairs:
        predicted = parse_mme_answer(answer.text)
        results[annotation["subtask"]].append((annotation["image"], predicted == annotation["label"], predicted is not None))

    details = {subtask: _subtask_row(values) for subtask, values in sorted(results.items())}
    metrics: dict[str, float | None] = {}
    notes = match.missing_note()
    for total_name, subtasks in (("perception", PERCEPTION_SUBTASKS), ("cognition", COGNITION_SUBTASKS)):
        absent = [subtask for subtask in subtasks if subtask not in details]
        if absent:
            notes.append(f"{total_name} total not computed: no answers for {format_id_list(absent)}")
            continue
        metrics[f"{total_name}_score"] = sum(details[subtask]["score"] for subtask in subtasks)

    other = [subtask for subtask in details if subtask not in PERCEPTION_SUBTASKS + COGNITION_SUBTASKS]
    if other:
        notes.append(f"subtasks outside MME's perception and cognition lists, in no total: {', '.join(other)}")

    columns = ["subtask", "questions", "images", "accuracy", "accuracy_plus", "score", "unparseable"]
    rows = [[subtask, *(row[column] for column in columns[1:])] for subtask, row in details.items()]
    return ScoreReport(
        benchmark="mme",
        metrics=metrics,
        counts={
            "questions": sum(row["questions"] for row in details.values()),
            "unparseable": sum(row["unparseable"] for row in details.values()),
            "missing": len(match.missing),
        },
        tables=[Table("Per subtask (accuracy in percent; score = accuracy + accuracy_plus)", columns, rows)],
        notes=notes,
        provenance=build_provenance(request, [describe_folder(root, _answer_files(root))]),
        details=details,
    )


def _answer_files(root: Path) -> list[Path]:
    return sorted(root.glob("*/*.txt")) + sorted(root.glob(f"*/{_ANSWER_SUBFOLDER}/*.txt"))
