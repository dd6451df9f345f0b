"""Token ids that a teacher and a student share.

Distillation compares the two models' logits id by id, so both tokenizers must give each
string the same id. They may differ only by special tokens appended after the shared ids.
LLaVA-1.5, for example, appends `<image>` and `<pad>` to the LLaMA tokenizer that MobileVLM
uses unchanged. Such tokens stand for images or padding, never for answer text, so leaving
them out of the logit comparison loses nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from alignkd.errors import AlignKDError

logger = logging.getLogger(__name__)

# Differing tokens named in an error message.
_EXAMPLES_SHOWN = 5


def shared_tokenizer_length(teacher_tokenizer: Any, student_tokenizer: Any) -> int:
    """Return the number of leading token ids on which the two tokenizers agree.

    Raises:
        AlignKDError: an id below the shorter tokenizer's length maps to different tokens, or
            the longer tokenizer has tokens after the shared ids that are not special tokens.
    """
    teacher_length = len(teacher_tokenizer)
    student_length = len(student_tokenizer)
    shared = min(teacher_length, student_length)

    teacher_tokens = _tokens_by_id(teacher_tokenizer)
    student_tokens = _tokens_by_id(student_tokenizer)
    differing = [index for index in range(shared) if teacher_tokens.get(index) != student_tokens.get(index)]
    if differing:
        examples = ", ".join(
            f"id {index}: teacher {teacher_tokens.get(index)!r}, student {student_tokens.get(index)!r}"
            for index in differing[:_EXAMPLES_SHOWN]
        )
        raise AlignKDError(
            f"the teacher tokenizer ({teacher_length} tokens) and the student tokenizer ({student_length} tokens) "
            f"map {len(differing)} of their first {shared} ids to different tokens ({examples}). "
            "Distillation needs one shared tokenizer: give both models the same tokenizer files"
        )

    if teacher_length == student_length:
        return shared

    role, longer, longer_tokens = (
        ("teacher", teacher_tokenizer, teacher_tokens)
        if teacher_length > student_length
        else ("student", student_tokenizer, student_tokens)
    )
    extra = [longer_tokens.get(index) for index in range(shared, len(longer))]
    special = _special_tokens(longer)
    not_special = [token for token in extra if token not in special]
    if not_special:
        raise AlignKDError(
            f"the {role} tokenizer has {len(extra)} tokens after the {shared} ids it shares with the other model, "
            f"and {len(not_special)} of them are not special tokens (for example {not_special[:_EXAMPLES_SHOWN]}). "
            "Distillation needs one shared tokenizer: give both models the same tokenizer files"
        )

    logger.info(
        "Teacher and student tokenizers share their first %d ids; the %s's extra special tokens %s are left "
        "out of the logit comparison",
        shared,
        role,
        extra,
    )
    return shared


def _tokens_by_id(tokenizer: Any) -> dict[int, str]:
    return {index: token for token, index in tokenizer.get_vocab().items()}


def _special_tokens(tokenizer: Any) -> set[str]:
    special = set(tokenizer.all_special_tokens)
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False):
            special.add(str(added))
    return special
