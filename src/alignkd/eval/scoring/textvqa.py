"""TextVQA validation: VQA accuracy over the ten human answers.

Questions: LLaVA-1.5's llava_textvqa_val_v051_ocr.jsonl (JSONL). Its "question_id" is the
TextVQA image id and "text" is the question, a "Reference OCR token: ..." line and the
short-answer suffix. The "pure" variant drops the OCR line (see `alignkd.eval.prompts`).

Annotations: TextVQA_0.5.1_val.json, {"data": [{"question_id": int, "image_id": str,
"question": str, "answers": [ten strings], ...}]}.

Matching: an answer whose question_id is a TextVQA question id matches that question.
Otherwise (LLaVA's layout) it matches the question with the same image id and the same
question text, compared case-insensitively, as LLaVA-1.5's scorer does; the question text is
read from the answer's prompt.

Scoring: the prediction and the human answers are normalised with the standard VQA rules
(`normalize_vqa_answer`) and the question scores the mean over the ten leave-one-out sets of
min(matches / 3, 1) (`vqa_accuracy`). A sentence such as "the brand is dakota digital"
matches no human answer and scores 0, which is why the prompt asks for a short answer.
The prompt variant ("ocr" or "pure") is taken from the answers file, or detected from the
prompts when the file does not record it, and is named in the report. An empty prediction
is counted as unparseable.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from alignkd.errors import DataError
from alignkd.eval.answers import NOT_RECORDED, AnswerRecord
from alignkd.eval.prompts import TEXTVQA_OCR_VARIANT, TEXTVQA_PURE_VARIANT, split_textvqa_prompt
from alignkd.eval.report import ScoreReport, percent
from alignkd.eval.scoring.matching import match_answers
from alignkd.eval.scoring.normalize import normalize_vqa_answer, vqa_accuracy
from alignkd.eval.scoring.request import ScoreRequest, build_provenance


def read_textvqa_annotations(path: Path) -> dict[str, dict[str, Any]]:
    """Read TextVQA_0.5.1_val.json and return its questions by question id (as a string)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected TextVQA's {{'data': [...]}} layout")

    questions = {}
    for position, entry in enumerate(entries):
        for key in ("question_id", "image_id", "question", "answers"):
            if key not in entry:
                raise DataError(f"{path}: entry {position} has no '{key}'")
        answers = entry["answers"]
        if not isinstance(answers, list) or not answers or not all(isinstance(item, str) for item in answers):
            raise DataError(f"{path}: question {entry['question_id']} needs a non-empty list of string 'answers'")
        questions[str(entry["question_id"])] = entry
    return questions


def _key_function(annotations: dict[str, dict[str, Any]]):
    """Return key_of(answer) for `match_answers`, matching by question id or by (image id, question)."""
    by_image_and_question: dict[tuple[str, str], list[str]] = {}
    for question_id, entry in annotations.items():
        key = (str(entry["image_id"]), entry["question"].strip().lower())
        by_image_and_question.setdefault(key, []).append(question_id)
    used: set[str] = set()

    def key_of(answer: AnswerRecord) -> Hashable:
        if answer.question_id in annotations:
            used.add(answer.question_id)
            return answer.question_id
        question, _ = split_textvqa_prompt(answer.prompt or "")
        candidates = by_image_and_question.get((answer.question_id, question.lower()), [])
        # The same question can be asked twice about one image; each answer takes the next one.
        for question_id in candidates:
            if question_id not in used:
                used.add(question_id)
                return question_id
        return (answer.question_id, question)

    return key_of


def _prompt_variant(request: ScoreRequest) -> str:
    recorded = request.answers.settings.get("prompt_variant")
    if recorded not in (None, NOT_RECORDED):
        return recorded
    with_ocr = [split_textvqa_prompt(record.prompt or "")[1] is not None for record in request.answers.records]
    if all(with_ocr):
        return f"{TEXTVQA_OCR_VARIANT} (detected from the prompts)"
    if not any(with_ocr):
        return f"{TEXTVQA_PURE_VARIANT} (detected from the prompts)"
    return f"mixed: {sum(with_ocr)} of {len(with_ocr)} prompts have OCR tokens"


def score_textvqa(request: ScoreRequest) -> ScoreReport:
    """Score TextVQA answers with VQA accuracy (see the module docstring)."""
    path = request.single_annotation_path("TextVQA_0.5.1_val.json")
    annotations = read_textvqa_annotations(path)
    match = match_answers(
        request.answers.records,
        annotations,
        _key_function(annotations),
        answers_label=str(request.answers.path),
        annotations_label=str(path),
        allow_missing=request.allow_missing,
    )

    scores = []
    unparseable = 0
    for answer, entry in match.pairs:
        unparseable += normalize_vqa_answer(answer.text) == ""
        scores.append(vqa_accuracy(answer.text, entry["answers"]))

    variant = _prompt_variant(request)
    return ScoreReport(
        benchmark="textvqa",
        metrics={"accuracy": percent(sum(scores), len(scores))},
        counts={"questions": len(scores), "unparseable": unparseable, "missing": len(match.missing)},
        notes=match.missing_note() + [f"prompt variant: {variant}; 'ocr' and 'pure' scores are not comparable"],
        provenance=build_provenance(request, [path], prompt_variant=variant),
    )
