"""The generic short-answer benchmark: exact match after VQA normalisation, overall and per category.

Questions: LLaVA JSONL, {"question_id", "image" (optional), "text", "category"}. The prompt
ends with "Answer the question using a single word or phrase.".

Annotations: JSONL, {"question_id", "answer": str, "category" (optional)}.

Scoring: a prediction is correct when it equals the answer after the standard VQA answer
normalisation (`normalize_vqa_answer`: case, punctuation, articles, number words to digits,
contractions), so "Three." matches "3" and "a dog" matches "dog". The report gives the
accuracy overall and per annotated category, with the number of questions in each. An
empty prediction is counted as unparseable.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from alignkd.errors import DataError
from alignkd.eval.report import ScoreReport, Table, percent
from alignkd.eval.scoring.matching import match_answers
from alignkd.eval.scoring.normalize import normalize_vqa_answer
from alignkd.eval.scoring.request import ScoreRequest, build_provenance

DEFAULT_CATEGORY = "default"


def read_short_answer_annotations(path: Path) -> dict[str, dict[str, Any]]:
    """Read annotation JSONL lines {"question_id", "answer", "category"} keyed by question id."""
    annotations: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            source = f"{path}:{line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{source}: invalid JSON ({error.msg})") from None
            if not isinstance(row, dict) or "question_id" not in row:
                raise DataError(f"{source}: expected an object with 'question_id' and 'answer'")
            if not isinstance(row.get("answer"), str):
                raise DataError(f"{source}: question {row['question_id']!r} needs a string 'answer'")
            question_id = str(row["question_id"])
            if question_id in annotations:
                raise DataError(f"{source}: question {question_id!r} is annotated twice")
            annotations[question_id] = row
    if not annotations:
        raise DataError(f"{path}: the annotation file contains no questions")
    return annotations


def score_short_answer(request: ScoreRequest) -> ScoreReport:
    """Score short answers by normalised exact match (see the module docstring)."""
    path = request.single_annotation_path("a JSONL file of {question_id, answer, category}")
    annotations = read_short_answer_annotations(path)
    match = match_answers(
        request.answers.records,
        annotations,
        lambda answer: answer.question_id,
        answers_label=str(request.answers.path),
        annotations_label=str(path),
        allow_missing=request.allow_missing,
    )

    by_category: dict[str, list[bool]] = defaultdict(list)
    unparseable_by_category: dict[str, int] = defaultdict(int)
    for answer, annotation in match.pairs:
        category = str(annotation.get("category") or DEFAULT_CATEGORY)
        prediction = normalize_vqa_answer(answer.text)
        unparseable_by_category[category] += prediction == ""
        by_category[category].append(prediction == normalize_vqa_answer(annotation["answer"]))

    outcomes = [correct for values in by_category.values() for correct in values]
    rows = [
        [category, len(values), percent(sum(values), len(values)), unparseable_by_category[category]]
        for category, values in sorted(by_category.items())
    ]
    details = {
        category: {"questions": count, "accuracy": accuracy, "unparseable": unparseable}
        for category, count, accuracy, unparseable in rows
    }
    return ScoreReport(
        benchmark="short-answer",
        metrics={"accuracy": percent(sum(outcomes), len(outcomes))},
        counts={
            "questions": len(outcomes),
            "unparseable": sum(unparseable_by_category.values()),
            "missing": len(match.missing),
        },
        tables=[Table("Per category", ["category", "questions", "accuracy", "unparseable"], rows)],
        notes=match.missing_note(),
        provenance=build_provenance(request, [path]),
        details=details,
    )
