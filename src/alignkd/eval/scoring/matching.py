"""Pair answers with annotations, and raise instead of scoring when they do not line up.

An answer without an annotation always raises, because it means the question file and the
annotations come from different versions or splits. An annotation without an answer raises
too, unless the user passes --allow-missing; the report then says how many were missing and
every metric covers only the answered questions.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from alignkd.errors import DataError
from alignkd.eval.answers import AnswerRecord, format_id_list

Annotation = TypeVar("Annotation")


@dataclass
class MatchResult(Generic[Annotation]):
    """Answer and annotation pairs in answers-file order, and the annotation keys left unanswered."""

    pairs: list[tuple[AnswerRecord, Annotation]]
    missing: list[Hashable] = field(default_factory=list)

    def missing_note(self) -> list[str]:
        """Return the report note for unanswered annotations (empty when none are missing)."""
        if not self.missing:
            return []
        return [
            f"{len(self.missing)} annotated questions have no answer and are left out of every metric "
            f"(--allow-missing): {format_id_list(self.missing)}. These scores are not comparable with full-set scores."
        ]


def match_answers(
    answers: list[AnswerRecord],
    annotations: dict[Hashable, Annotation],
    key_of: Callable[[AnswerRecord], Hashable],
    *,
    answers_label: str,
    annotations_label: str,
    allow_missing: bool,
) -> MatchResult[Annotation]:
    """Pair each answer with the annotation whose key `key_of(answer)` returns.

    Raises DataError listing the question ids of answers with no annotation, the keys that
    several answers map to, and (unless `allow_missing`) the keys of annotations with no
    answer.
    """
    pairs = []
    unmatched = []
    claimed: dict[Hashable, AnswerRecord] = {}
    doubly_answered = []
    for answer in answers:
        key = key_of(answer)
        if key not in annotations:
            unmatched.append(f"{answer.question_id} (line {answer.line_number})")
            continue
        if key in claimed:
            doubly_answered.append(f"{key} (lines {claimed[key].line_number} and {answer.line_number})")
            continue
        claimed[key] = answer
        pairs.append((answer, annotations[key]))

    if unmatched:
        raise DataError(
            f"{answers_label}: {len(unmatched)} answers have no annotation in {annotations_label}: "
            f"{format_id_list(unmatched)}. The question file and the annotations must come from the same "
            "benchmark version and split"
        )
    if doubly_answered:
        raise DataError(
            f"{answers_label}: {len(doubly_answered)} annotated questions are answered more than once: "
            f"{format_id_list(doubly_answered)}"
        )

    missing = [key for key in annotations if key not in claimed]
    if missing and not allow_missing:
        raise DataError(
            f"{answers_label}: {len(missing)} of the {len(annotations)} annotated questions in {annotations_label} "
            f"have no answer: {format_id_list(missing)}. Answer them (for example `alignkd eval --resume`), or pass "
            "--allow-missing to score only the answered questions"
        )
    return MatchResult(pairs=pairs, missing=missing)

