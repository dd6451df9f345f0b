"""The kinds of fault that the data layer detects in a sample, and the exception that carries one.

Every check in the data layer (record format, conversation structure, template rules,
tokenization, image files, length limit) raises `SampleProblem` with one `ProblemKind`. The
pre-flight check counts them per kind, and the user's `on_error` policy decides whether they
stop the run or remove the sample with a count.
"""

from __future__ import annotations

import enum

from alignkd.errors import DataError


class ProblemKind(str, enum.Enum):
    """A kind of fault in one sample. The value is the name shown in reports and logs."""

    # Data format.
    INVALID_RECORD = "invalid_record"
    IMAGE_PLACEHOLDER = "image_placeholder"

    # Conversation and template.
    CONVERSATION_STRUCTURE = "conversation_structure"
    TEMPLATE_RULE = "template_rule"

    # Masking and labels.
    EMPTY_ANSWER = "empty_answer"
    NO_SUPERVISED_TOKENS = "no_supervised_tokens"
    LABEL_MISMATCH = "label_mismatch"

    # Image files.
    IMAGE_MISSING = "image_missing"
    IMAGE_EMPTY = "image_empty"
    IMAGE_CORRUPT = "image_corrupt"
    IMAGE_TRUNCATED = "image_truncated"
    IMAGE_OVERSIZED = "image_oversized"

    # Length limit. Governed by `DataConfig.over_length`, not by `on_error`.
    OVER_LENGTH = "over_length"

    @property
    def is_image_file_problem(self) -> bool:
        return self in IMAGE_FILE_PROBLEMS


IMAGE_FILE_PROBLEMS = frozenset(
    {
        ProblemKind.IMAGE_MISSING,
        ProblemKind.IMAGE_EMPTY,
        ProblemKind.IMAGE_CORRUPT,
        ProblemKind.IMAGE_TRUNCATED,
        ProblemKind.IMAGE_OVERSIZED,
    }
)

# Stable order for reports: the declaration order above.
PROBLEM_ORDER = {kind: position for position, kind in enumerate(ProblemKind)}


class SampleProblem(DataError):
    """A sample breaks one data rule.

    `message` states the rule and what was found, without the sample's name. `describe`
    adds the sample id and row so that the user can find the sample in the data file.
    """

    def __init__(self, kind: ProblemKind, message: str):
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind
        self.message = message

    def describe(self, sample_name: str) -> str:
        return f"{sample_name}: {self.message}"
