"""GQA test-dev balanced: exact match after normalisation.

Questions: LLaVA-1.5's llava_gqa_testdev_balanced.jsonl (JSONL, "question_id" is the GQA
question id as a string, "image" is "<imageId>.jpg").

Annotations: GQA's testdev_balanced_questions.json, a JSON object from question id to
{"question", "imageId", "answer", "types": {"structural", "semantic", "detailed"},
"isBalanced", ...}. Only balanced questions are scored (all of them in that file).

Scoring: a prediction is correct when, after stripping whitespace and trailing periods and
lowercasing, it equals the annotated answer (the rule of LLaVA-1.5's GQA conversion followed
by the official evaluator's string comparison). The report gives the accuracy, the binary
(yes/no: structural types verify, logical, compare, choose) and open (structural type query)
accuracies, and the accuracy per structural and per semantic type. The official evaluator's
validity, plausibility, consistency, grounding and distribution need GQA's choices and scene
graph files, which are not distributed for test-dev, so they are not computed or printed.
An empty prediction is counted as unparseable.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from alignkd.errors import DataError
from alignkd.eval.report import ScoreReport, Table, percent
from alignkd.eval.scoring.matching import match_answers
from alignkd.eval.scoring.normalize import normalize_gqa_answer
from alignkd.eval.scoring.request import ScoreRequest, build_provenance

# The GQA evaluator calls questions of structural type "query" open and all others binary.
_OPEN_STRUCTURAL_TYPE = "query"


def read_gqa_annotations(path: Path) -> dict[str, dict[str, Any]]:
    """Read testdev_balanced_questions.json and return the balanced questions by id."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected GQA's object from question id to question, got {type(data).__name__}")

    questions = {}
    for question_id, question in data.items():
        if not isinstance(question, dict) or not isinstance(question.get("answer"), str):
            raise DataError(f"{path}: question {question_id!r} has no string 'answer'")
        if question.get("isBalanced", True):
            questions[str(question_id)] = question
    if not questions:
        raise DataError(f"{path}: no balanced questions found")
    return questions


def score_gqa(request: ScoreRequest) -> ScoreReport:
    """Score GQA answers by exact match (see the module docstring)."""
    path = request.single_annotation_path("GQA's testdev_balanced_questions.json")
    annotations = read_gqa_annotations(path)
    match = match_answers(
        request.answers.records,
        annotations,
        lambda answer: answer.question_id,
        answers_label=str(request.answers.path),
        annotations_label=str(path),
        allow_missing=request.allow_missing,
    )

    correct_by_group: dict[str, dict[str, list[bool]]] = {
        "answer type": defaultdict(list),
        "structural type": defaultdict(list),
        "semantic type": defaultdict(list),
    }
    outcomes = []
    unparseable = 0
    for answer, question in match.pairs:
        prediction = normalize_gqa_answer(answer.text)
        unparseable += prediction == ""
        correct = prediction == normalize_gqa_answer(question["answer"])
        outcomes.append(correct)

        types = question.get("types") or {}
        structural = types.get("structural")
        if structural:
            answer_type = "open" if structural == _OPEN_STRUCTURAL_TYPE else "binary"
            correct_by_group["answer type"][answer_type].append(correct)
            correct_by_group["structural type"][structural].append(correct)
        if types.get("semantic"):
            correct_by_group["semantic type"][types["semantic"]].append(correct)

    metrics = {"accuracy": percent(sum(outcomes), len(outcomes))}
    details: dict[str, Any] = {}
    tables = []
    for group, values in correct_by_group.items():
        if not values:
            continue
        rows = [[name, len(results), percent(sum(results), len(results))] for name, results in sorted(values.items())]
        tables.append(Table(f"Accuracy by {group}", [group, "questions", "accuracy"], rows))
        details[group] = {name: {"questions": count, "accuracy": value} for name, count, value in rows}
    for name in ("binary", "open"):
        results = correct_by_group["answer type"].get(name)
        if results:
            metrics[f"{name}_accuracy"] = percent(sum(results), len(results))

    return ScoreReport(
        benchmark="gqa",
        metrics=metrics,
        counts={"questions": len(outcomes), "unparseable": unparseable, "missing": len(match.missing)},
        tables=tables,
        notes=match.missing_note(),
        provenance=build_provenance(request, [path]),
        details=details,
    )
