"""MMBench (dev): multiple choice with circular evaluation.

Questions and annotations: the same MMBench TSV (see `alignkd.eval.mmbench_data`). Answers
are matched by index and, for rotations that `alignkd eval` added itself, by "round_id".

Scoring: the chosen letter is extracted robustly (`alignkd.eval.scoring.choices`) from the
options as shown in that pass. Circular evaluation, MMBench's reported metric, counts a
question as right only when every rotation of it is answered right; rotations are grouped
by index modulo 1,000,000 (MMBench's numbering) or by round_id. The report also gives the
single-pass accuracy over the unrotated questions, labelled as such, and the circular
accuracy per category. When the answers cover only the unrotated questions of a file
without circular copies (LLaVA's default single round), the circular accuracy is left out
with a note. MMBench's server falls back to asking ChatGPT when it cannot read a letter;
here such answers are counted as unparseable and wrong.

`--submission FILE` writes the server's submission file (.xlsx or .tsv); for the test split,
whose TSV has no "answer" column, that is the only output.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from alignkd.eval.answers import AnswerRecord
from alignkd.eval.mmbench_data import (
    MMBenchRow,
    correct_letter,
    has_rotated_copies,
    read_mmbench_tsv,
    rotate,
    write_mmbench_submission,
)
from alignkd.eval.report import ScoreReport, Table, percent
from alignkd.eval.scoring.choices import extract_choice
from alignkd.eval.scoring.matching import match_answers
from alignkd.eval.scoring.request import ScoreRequest, build_provenance

MMBenchKey = tuple[int, int]


def _round_of(answer: AnswerRecord) -> int:
    round_id = answer.get("round_id", 0)
    return int(round_id) if isinstance(round_id, (int, str)) and str(round_id).isdigit() else -1


def _key_of(answer: AnswerRecord) -> MMBenchKey | tuple[str, int]:
    try:
        return int(float(answer.question_id)), _round_of(answer)
    except ValueError:
        return answer.question_id, _round_of(answer)


def _expected_passes(rows: list[MMBenchRow], with_rounds: bool) -> dict[MMBenchKey, tuple[MMBenchRow, int]]:
    expected = {}
    for row in rows:
        round_count = len(row.options) if with_rounds else 1
        for round_id in range(round_count):
            expected[(row.index, round_id)] = (row, round_id)
    return expected


def score_mmbench(request: ScoreRequest) -> ScoreReport:
    """Score MMBench answers with circular evaluation (see the module docstring)."""
    path = request.single_annotation_path("the MMBench TSV file")
    rows = read_mmbench_tsv(path)
    notes: list[str] = []

    added_rounds = not has_rotated_copies(rows) and any(_round_of(record) > 0 for record in request.answers.records)
    expected = _expected_passes(rows, with_rounds=added_rounds)
    match = match_answers(
        request.answers.records,
        expected,
        _key_of,
        answers_label=str(request.answers.path),
        annotations_label=str(path),
        allow_missing=request.allow_missing,
    )
    notes.extend(match.missing_note())

    if request.submission is not None:
        predictions = {row.index: answer.text for answer, (row, round_id) in match.pairs if round_id == 0}
        write_mmbench_submission(rows, predictions, request.submission)
        notes.append(f"submission written to {request.submission}")

    if any(row.answer is None for row in rows):
        notes.append(f"{path} has no 'answer' for every question (a test split), so no accuracy is computed")
        return ScoreReport(
            benchmark="mmbench",
            metrics={},
            counts={"questions": len(match.pairs), "unparseable": 0, "missing": len(match.missing)},
            notes=notes,
            provenance=build_provenance(request, [path]),
        )

    passes_by_question: dict[int, list[bool]] = defaultdict(list)
    category_of: dict[int, str] = {}
    single_pass = []
    unparseable = 0
    for answer, (row, round_id) in match.pairs:
        options = rotate(row.options, round_id)
        chosen = extract_choice(answer.text, options)
        unparseable += chosen is None
        correct = chosen == correct_letter(row, round_id)
        passes_by_question[row.base_index].append(correct)
        if row.index == row.base_index and round_id == 0:
            single_pass.append(correct)
            category_of[row.base_index] = row.category or "uncategorised"

    circular_available = has_rotated_copies(rows) or added_rounds
    metrics: dict[str, float | None] = {}
    details: dict[str, Any] = {}
    tables = []
    if circular_available:
        circular = {question: all(results) for question, results in passes_by_question.items()}
        metrics["circular_accuracy"] = percent(sum(circular.values()), len(circular))

        by_category: dict[str, list[bool]] = defaultdict(list)
        for question, correct in circular.items():
            by_category[category_of.get(question, "uncategorised")].append(correct)
        table_rows = [[name, len(values), percent(sum(values), len(values))] for name, values in sorted(by_category.items())]
        tables.append(Table("Circular accuracy by category", ["category", "questions", "accuracy"], table_rows))
        details["circular_by_category"] = {name: {"questions": count, "accuracy": value} for name, count, value in table_rows}
    else:
        notes.append(
            "circular accuracy not computed: the TSV has no rotated copies and the answers have no rotations; "
            "rerun `alignkd eval`, which adds the rotations, to get MMBench's reported metric"
        )
    metrics["single_pass_accuracy"] = percent(sum(single_pass), len(single_pass))

    return ScoreReport(
        benchmark="mmbench",
        metrics=metrics,
        counts={
            "questions": len(passes_by_question),
            "passes": len(match.pairs),
            "unparseable": unparseable,
            "missing": len(match.missing),
        },
        tables=tables,
        notes=notes,
        provenance=build_provenance(request, [path]),
        details=details,
    )
