"""Prompt suffixes and the TextVQA prompt variants."""

import pytest

from alignkd.errors import DataError
from alignkd.eval.prompts import (
    MULTIPLE_CHOICE_SUFFIX,
    SHORT_ANSWER_SUFFIX,
    apply_suffix,
    build_multiple_choice_text,
    build_textvqa_prompt,
    detect_textvqa_variant,
    split_textvqa_prompt,
)

OCR_TEXT = f"What is the brand?\nReference OCR token: DAKOTA, DIGITAL\n{SHORT_ANSWER_SUFFIX}"


def test_suffix_added_once():
    once = apply_suffix("Is it red?", SHORT_ANSWER_SUFFIX)

    assert once == f"Is it red?\n{SHORT_ANSWER_SUFFIX}"
    assert apply_suffix(once, SHORT_ANSWER_SUFFIX) == once
    assert apply_suffix(once + "\n", SHORT_ANSWER_SUFFIX) == once


def test_textvqa_split_either_order():
    assert split_textvqa_prompt(OCR_TEXT) == ("What is the brand?", "Reference OCR token: DAKOTA, DIGITAL")
    assert split_textvqa_prompt("Reference OCR token: A\nWhat is it?") == ("What is it?", "Reference OCR token: A")
    assert split_textvqa_prompt("What is it?") == ("What is it?", None)


def test_textvqa_variants():
    assert build_textvqa_prompt(OCR_TEXT, "ocr", "q:1") == OCR_TEXT
    assert build_textvqa_prompt(OCR_TEXT, "pure", "q:1") == f"What is the brand?\n{SHORT_ANSWER_SUFFIX}"
    with pytest.raises(DataError, match="q:1: the 'ocr' prompt variant needs"):
        build_textvqa_prompt("What is the brand?", "ocr", "q:1")


def test_empty_ocr_line_kept_verbatim():
    # LLaVA's file writes "Reference OCR token: " with a trailing space when there are no tokens.
    text = f"What is shown?\nReference OCR token: \n{SHORT_ANSWER_SUFFIX}"

    assert build_textvqa_prompt(text, "ocr", "q:1") == text


def test_textvqa_variant_detection():
    assert detect_textvqa_variant([OCR_TEXT, OCR_TEXT], "f") == "ocr"
    assert detect_textvqa_variant(["What?", "Who?"], "f") == "pure"
    with pytest.raises(DataError, match="1 of 2 TextVQA questions"):
        detect_textvqa_variant([OCR_TEXT, "Who?"], "f")


def test_multiple_choice_layout():
    text = build_multiple_choice_text("Which city?", ["Rome", "Oslo"], "AB", hint="Look at the map.")

    assert text == "Look at the map.\nWhich city?\nA. Rome\nB. Oslo"
    assert apply_suffix(text, MULTIPLE_CHOICE_SUFFIX).endswith("\nAnswer with the option's letter from the given choices directly.")
