"""Prompt suffixes and prompt variants of the benchmarks.

LLaVA-1.5 and MobileVLM end every question with one of two instructions (LLaVA
docs/Evaluation.md):

- short answers (GQA, TextVQA, POPE, MME, short-answer): "Answer the question using a
  single word or phrase."
- multiple choice (ScienceQA, MMBench): the options as "A. <text>" lines, then "Answer with
  the option's letter from the given choices directly."

TextVQA has two variants in common use. LLaVA-1.5's question file puts a line "Reference
OCR token: <tokens>" between the question and the suffix ("ocr"); other work asks the
question alone ("pure"). Scores differ by many points between them, so the variant is
recorded in every answer line and in the score output.
"""

from __future__ import annotations

from alignkd.errors import DataError

SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE_SUFFIX = "Answer with the option's letter from the given choices directly."

OCR_LINE_PREFIX = "Reference OCR token:"

SHORT_ANSWER_VARIANT = "short-answer"
MULTIPLE_CHOICE_VARIANT = "option-letter"
TEXTVQA_OCR_VARIANT = "ocr"
TEXTVQA_PURE_VARIANT = "pure"


def apply_suffix(text: str, suffix: str) -> str:
    """Return `text` ending with `suffix` on its own line, without adding it a second time.

    Only line breaks are trimmed before the suffix. Other trailing spaces are kept, because
    LLaVA's question files contain them (TextVQA's "Reference OCR token: " line when a
    picture has no OCR tokens) and they change the tokens of the prompt.
    """
    if text.rstrip().endswith(suffix):
        return text.rstrip()
    body = text.rstrip("\n")
    return f"{body}\n{suffix}"


def strip_suffix(text: str, suffix: str) -> str:
    """Return `text` without a trailing `suffix` line, keeping the spaces of the line before it."""
    stripped = text.rstrip()
    if stripped.endswith(suffix):
        return stripped[: -len(suffix)].rstrip("\n")
    return stripped


def split_textvqa_prompt(text: str) -> tuple[str, str | None]:
    """Split a TextVQA prompt into its question and its "Reference OCR token:" line (or None).

    The short-answer suffix is dropped. The OCR line may come before or after the question,
    as in the two layouts that LLaVA-1.5's TextVQA scorer accepts.
    """
    lines = [line for line in strip_suffix(text, SHORT_ANSWER_SUFFIX).split("\n") if line.strip()]
    ocr_lines = [line for line in lines if line.startswith(OCR_LINE_PREFIX)]
    question_lines = [line for line in lines if not line.startswith(OCR_LINE_PREFIX)]
    question = "\n".join(question_lines).strip()
    return question, (ocr_lines[0] if ocr_lines else None)


def detect_textvqa_variant(texts: list[str], source: str) -> str:
    """Return "ocr" when every question has an OCR line, "pure" when none has, else raise."""
    with_ocr = sum(split_textvqa_prompt(text)[1] is not None for text in texts)
    if with_ocr == len(texts):
        return TEXTVQA_OCR_VARIANT
    if with_ocr == 0:
        return TEXTVQA_PURE_VARIANT
    raise DataError(
        f"{source}: {with_ocr} of {len(texts)} TextVQA questions have a '{OCR_LINE_PREFIX}' line and the "
        "rest do not; use one variant per question file, or pass --prompt-variant pure to remove the lines"
    )


def build_textvqa_prompt(text: str, variant: str, source: str) -> str:
    """Return the TextVQA prompt of `variant` ("ocr" keeps the OCR line, "pure" removes it)."""
    question, ocr_line = split_textvqa_prompt(text)
    if variant == TEXTVQA_PURE_VARIANT:
        return apply_suffix(question, SHORT_ANSWER_SUFFIX)
    if variant == TEXTVQA_OCR_VARIANT:
        if ocr_line is None:
            raise DataError(
                f"{source}: the 'ocr' prompt variant needs a '{OCR_LINE_PREFIX}' line in the question text; "
                "use LLaVA's llava_textvqa_val_v051_ocr.jsonl or pass --prompt-variant pure"
            )
        return apply_suffix(f"{question}\n{ocr_line}", SHORT_ANSWER_SUFFIX)
    raise DataError(f"unknown TextVQA prompt variant {variant!r}; expected 'ocr' or 'pure'")


def build_multiple_choice_text(question: str, options: list[str], letters: str, hint: str | None = None) -> str:
    """Return "<hint>\\n<question>\\nA. <option>\\nB. <option>..." (LLaVA-1.5's MMBench layout)."""
    lines = [hint, question] if hint else [question]
    lines.extend(f"{letter}. {option}" for letter, option in zip(letters, options))
    return "\n".join(lines)
