"""Short-answer question kinds about digit scenes, kept in a registry.

Each kind is a small class that lists the subjects it can ask about in a scene (a cell, a
digit, a row), computes the one-word answer, and phrases the question from a template. The
first template of a kind is its fixed phrasing, and further templates are paraphrases that
are used only on request. Register a new kind with `@register_question_kind`.

Built-in kinds, with their answers:

- "read": the digit in a named cell ("0" to "9"), or "empty" for a blank cell.
- "count": how many cells hold a digit ("0" up to rows x cols).
- "exists": whether a given digit is in the scene ("yes" or "no", drawn half and half).
- "where": the one-word name of the cell that contains a given digit, for example
  "top-left". It is only asked about a digit that is in exactly one cell.
- "sum": the sum of the digits in a row, where blank cells count as 0.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Hashable, Mapping, Sequence, TypeVar

import numpy as np

from alignkd.config import ConfigError
from alignkd.demo.scenes import Scene

logger = logging.getLogger(__name__)

# Words for the rows and columns of grids of up to three rows and three columns. Beyond three,
# rows and columns get numbered names, so a cell of a 4x5 grid is named like "row4-column2".
_ROW_WORDS = {1: ("middle",), 2: ("top", "bottom"), 3: ("top", "middle", "bottom")}
_COLUMN_WORDS = {1: ("center",), 2: ("left", "right"), 3: ("left", "center", "right")}

# Answer words of the built-in kinds. A blank cell is "empty" rather than "none": short-answer
# scoring applies the standard VQA answer normalisation, which turns "none" into "0". With
# "none", a blank cell and the digit 0 would score as the same answer.
BLANK_ANSWER = "empty"
YES_ANSWER = "yes"
NO_ANSWER = "no"


@dataclass(frozen=True)
class QuestionSpace:
    """The grid shape and digit classes that questions can refer to."""

    rows: int
    """Number of cell rows in every scene."""

    cols: int
    """Number of cell columns in every scene."""

    digits: tuple[int, ...]
    """The digit classes that can appear in a cell, ascending."""

    def row_word(self, row: int) -> str:
        """Return the one-word name of a row, for example "top" or "row4"."""
        words = _ROW_WORDS.get(self.rows)
        return words[row] if words else f"row{row + 1}"

    def column_word(self, col: int) -> str:
        """Return the one-word name of a column, for example "left" or "column4"."""
        words = _COLUMN_WORDS.get(self.cols)
        return words[col] if words else f"column{col + 1}"

    def position_name(self, row: int, col: int) -> str:
        """Return the one-word name of a cell, for example "top-left", used in questions and as an answer."""
        return f"{self.row_word(row)}-{self.column_word(col)}"

    def row_phrase(self, row: int) -> str:
        """Return how questions refer to a row, for example "the top row" or "row 4"."""
        if self.rows in _ROW_WORDS:
            return f"the {self.row_word(row)} row"
        return f"row {row + 1}"

    def positions(self) -> list[tuple[int, int]]:
        """Return every (row, col) in row-major order."""
        return [(r, c) for r in range(self.rows) for c in range(self.cols)]


@dataclass(frozen=True)
class Question:
    """One question about a scene with its one-word answer."""

    kind: str
    """Name of the question kind in the registry, used as the evaluation category."""

    text: str
    """The question as the user turn shows it, without the image placeholder."""

    answer: str
    """The expected answer: a single word."""


class QuestionKind(ABC):
    """A kind of question: what it can ask about a scene, its answer and its phrasing."""

    name: ClassVar[str]
    """Registry key, also written as the evaluation category."""

    templates: ClassVar[tuple[str, ...]]
    """`str.format` templates. The first is the fixed phrasing and the rest are paraphrases."""

    @abstractmethod
    def all_subjects(self, space: QuestionSpace) -> list[Hashable]:
        """Return every subject this kind can ask about in some scene of `space`."""

    @abstractmethod
    def subjects(self, scene: Scene, space: QuestionSpace) -> list[Hashable]:
        """Return the subjects this kind can ask about in `scene`."""

    @abstractmethod
    def answer(self, scene: Scene, subject: Any, space: QuestionSpace) -> str:
        """Return the one-word answer about `subject` in `scene`."""

    @abstractmethod
    def all_answers(self, space: QuestionSpace) -> list[str]:
        """Return every answer this kind can give in `space`."""

    @abstractmethod
    def template_fields(self, subject: Any, space: QuestionSpace) -> dict[str, str]:
        """Return the values that fill the templates for `subject`."""

    def choose_subject(
        self,
        scene: Scene,
        space: QuestionSpace,
        rng: np.random.Generator,
        exclude: Sequence[Hashable] = (),
    ) -> Hashable | None:
        """Draw a subject of `scene` uniformly, skipping `exclude`, or return None when none is left."""
        options = [subject for subject in self.subjects(scene, space) if subject not in exclude]
        if not options:
            return None
        return options[int(rng.integers(len(options)))]

    def phrase(self, subject: Any, space: QuestionSpace, template_index: int = 0) -> str:
        """Return the question text about `subject` in the template at `template_index`."""
        return self.templates[template_index].format(**self.template_fields(subject, space))

    def ask(self, scene: Scene, subject: Any, space: QuestionSpace, template_index: int = 0) -> Question:
        """Return the question about `subject` in `scene` with its answer."""
        return Question(
            kind=self.name,
            text=self.phrase(subject, space, template_index),
            answer=self.answer(scene, subject, space),
        )

    def all_texts(self, space: QuestionSpace, paraphrases: bool) -> list[str]:
        """Return every question text this kind can produce, in all templates if `paraphrases`."""
        template_count = len(self.templates) if paraphrases else 1
        return [
            self.phrase(subject, space, index)
            for subject in self.all_subjects(space)
            for index in range(template_count)
        ]


QUESTION_KINDS: dict[str, QuestionKind] = {}
"""Registered question kinds by name, in registration order."""

KindClass = TypeVar("KindClass", bound=type[QuestionKind])


def register_question_kind(kind_class: KindClass) -> KindClass:
    """Add an instance of `kind_class` to `QUESTION_KINDS` under its `name` (a class decorator)."""
    name = kind_class.name
    if name in QUESTION_KINDS:
        raise ValueError(f"question kind {name!r} is already registered by {type(QUESTION_KINDS[name]).__name__}")
    QUESTION_KINDS[name] = kind_class()
    return kind_class


def get_question_kind(name: str) -> QuestionKind:
    """Return the registered kind `name`, or raise ConfigError listing the registered kinds."""
    if name not in QUESTION_KINDS:
        raise ConfigError(f"unknown question kind {name!r}; registered kinds: {', '.join(QUESTION_KINDS)}")
    return QUESTION_KINDS[name]


@register_question_kind
class ReadQuestion(QuestionKind):
    """Question about the digit in a named cell, answered "empty" for a blank cell. Subject: (row, col)."""

    name = "read"
    templates = (
        "Which digit is in the {position} cell?",
        "What digit does the {position} cell show?",
        "Read the digit in the {position} cell.",
    )

    def all_subjects(self, space):
        return space.positions()

    def subjects(self, scene, space):
        return space.positions()

    def answer(self, scene, subject, space):
        digit = scene.digit_at(*subject)
        return BLANK_ANSWER if digit is None else str(digit)

    def all_answers(self, space):
        return [str(digit) for digit in space.digits] + [BLANK_ANSWER]

    def template_fields(self, subject, space):
        return {"position": space.position_name(*subject)}


@register_question_kind
class CountQuestion(QuestionKind):
    """Question about the number of filled cells. The only subject is the whole scene, written "all"."""

    name = "count"
    templates = (
        "How many digits are there?",
        "How many digits does the image show?",
        "Count the digits.",
    )

    def all_subjects(self, space):
        return ["all"]

    def subjects(self, scene, space):
        return ["all"]

    def answer(self, scene, subject, space):
        return str(len(scene.present_digits()))

    def all_answers(self, space):
        return [str(count) for count in range(space.rows * space.cols + 1)]

    def template_fields(self, subject, space):
        return {}


@register_question_kind
class ExistsQuestion(QuestionKind):
    """Yes-or-no question about whether a digit is in the scene. Subject: the digit.

    Half of the drawn questions expect "yes", where the scene allows it.
    """

    name = "exists"
    templates = (
        "Is there a {digit}?",
        "Does the image contain a {digit}?",
        "Is a {digit} shown?",
    )

    def all_subjects(self, space):
        return list(space.digits)

    def subjects(self, scene, space):
        return list(space.digits)

    def answer(self, scene, subject, space):
        return YES_ANSWER if subject in scene.present_digits() else NO_ANSWER

    def all_answers(self, space):
        return [YES_ANSWER, NO_ANSWER]

    def template_fields(self, subject, space):
        return {"digit": str(subject)}

    def choose_subject(self, scene, space, rng, exclude=()):
        # Drawing the digit uniformly would make "no" the answer about three times in four
        # (a 2x2 scene contains about three of ten digits), so draw the answer first.
        present = sorted(set(scene.present_digits()))
        present_options = [digit for digit in present if digit not in exclude]
        absent_options = [digit for digit in space.digits if digit not in present and digit not in exclude]

        options = present_options if rng.random() < 0.5 else absent_options
        if not options:
            options = present_options or absent_options
        if not options:
            return None
        return options[int(rng.integers(len(options)))]


@register_question_kind
class WhereQuestion(QuestionKind):
    """Question about the cell that contains a digit, answered by the cell's one-word name.

    Subject: a digit that is in exactly one cell.
    """

    name = "where"
    templates = (
        "Which cell holds the {digit}?",
        "Where is the {digit}?",
        "In which cell is the {digit}?",
    )

    def all_subjects(self, space):
        return list(space.digits)

    def subjects(self, scene, space):
        present = scene.present_digits()
        return sorted(digit for digit in set(present) if present.count(digit) == 1)

    def answer(self, scene, subject, space):
        matches = [(r, c) for r, c, digit in scene.cells() if digit == subject]
        if len(matches) != 1:
            raise ValueError(
                f"a 'where' question requires a digit that is in exactly one cell, but {subject} is in "
                f"{len(matches)} cells of the scene {scene.digits}"
            )
        return space.position_name(*matches[0])

    def all_answers(self, space):
        return [space.position_name(r, c) for r, c in space.positions()]

    def template_fields(self, subject, space):
        return {"digit": str(subject)}


@register_question_kind
class SumQuestion(QuestionKind):
    """Question about the sum of the digits in a row, where blank cells count as 0. Subject: the row index."""

    name = "sum"
    templates = (
        "What is the sum of {row}?",
        "What do the digits in {row} add up to?",
        "Add up the digits in {row}.",
    )

    def all_subjects(self, space):
        return list(range(space.rows))

    def subjects(self, scene, space):
        return list(range(space.rows))

    def answer(self, scene, subject, space):
        return str(sum(digit for digit in scene.digits[subject] if digit is not None))

    def all_answers(self, space):
        return [str(total) for total in range(space.cols * max(space.digits) + 1)]

    def template_fields(self, subject, space):
        return {"row": space.row_phrase(subject)}


def default_kind_weights() -> dict[str, float]:
    """Return equal weights for every registered kind."""
    return {name: 1.0 for name in QUESTION_KINDS}


def balanced_kind_sequence(
    num_questions: int,
    kind_weights: Mapping[str, float],
    rng: np.random.Generator,
) -> list[str]:
    """Return `num_questions` kind names in random order, with counts proportional to `kind_weights`.

    Counts are rounded by the largest-remainder method, so they add up to `num_questions` and
    each differs from its exact share by less than one. Ties go to the kind listed first.
    """
    for name, weight in kind_weights.items():
        get_question_kind(name)
        if weight < 0:
            raise ConfigError(f"kind_weights.{name}: expected a weight of 0 or more, got {weight!r}")
    total = sum(kind_weights.values())
    if total <= 0:
        raise ConfigError(f"kind_weights: at least one weight must be positive, got {dict(kind_weights)}")

    names = list(kind_weights)
    shares = [kind_weights[name] / total * num_questions for name in names]
    counts = [int(share) for share in shares]
    by_remainder = sorted(range(len(names)), key=lambda index: (counts[index] - shares[index], index))
    for index in by_remainder[: num_questions - sum(counts)]:
        counts[index] += 1

    sequence = [name for name, count in zip(names, counts) for _ in range(count)]
    return [sequence[index] for index in rng.permutation(len(sequence))]
