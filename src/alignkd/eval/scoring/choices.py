"""Extract the chosen option letter from a free-form multiple-choice answer.

Models asked to "answer with the option's letter" do not always comply: they write "B",
"B.", "(B) Boston", "The answer is B." or only the option text "Boston". LLaVA-1.5's
ScienceQA scorer accepts only the first two and the "The answer is X." form, which turns
right answers into wrong ones. `extract_choice` accepts, in this order:

1. the bare letter, optionally in brackets and followed by ".", ")" or ":" ("B", "(B)", "b.");
2. a leading letter marked as an option ("B. Boston", "B) Boston", "(B) Boston", "B: Boston");
3. a stated answer ("The answer is B", "Answer: (B)");
4. the option text itself, compared after VQA normalisation: the whole answer equal to one
   option, or, failing that, exactly one option (ignoring options that are part of a longer
   matching option) appearing in the answer as whole words.

Letters beyond the number of options are invalid. Anything else returns None, which the
scorers count as unparseable and as wrong.
"""

from __future__ import annotations

import re
import string

from alignkd.eval.scoring.normalize import normalize_vqa_answer

OPTION_LETTERS = string.ascii_uppercase

_BARE_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.):]?$")
_LEADING_LETTER = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[.):])\s")
# The letter must be a capital so that "the answer is a bird" does not read as option A.
_STATED_ANSWER = re.compile(r"\b(?i:answer)\s*(?:(?i:is)\s*)?:?\s*\(?([A-Z])\)?(?![A-Za-z])")


def option_letters(option_count: int) -> str:
    """Return the letters of `option_count` options: "ABC" for three."""
    if not 0 < option_count <= len(OPTION_LETTERS):
        raise ValueError(f"a question needs between 1 and {len(OPTION_LETTERS)} options, got {option_count}")
    return OPTION_LETTERS[:option_count]


def _letter_from_option_text(answer: str, options: list[str], letters: str) -> str | None:
    normalized_answer = normalize_vqa_answer(answer)
    if not normalized_answer:
        return None
    normalized_options = [normalize_vqa_answer(option) for option in options]

    exact = [letter for letter, option in zip(letters, normalized_options) if option and option == normalized_answer]
    if len(exact) == 1:
        return exact[0]

    padded_answer = f" {normalized_answer} "
    contained = {
        letter: option
        for letter, option in zip(letters, normalized_options)
        if option and f" {option} " in padded_answer
    }
    # "dark red" also contains the option "red"; the longer match is the one the model wrote.
    maximal = [
        letter
        for letter, option in contained.items()
        if not any(option != other and f" {option} " in f" {other} " for other in contained.values())
    ]
    if len(maximal) == 1:
        return maximal[0]
    return None


def extract_choice(answer: str, options: list[str]) -> str | None:
    """Return the option letter that `answer` chooses among `options`, or None when unclear.

    `options` are the option texts in letter order (A first). See the module docstring for
    the accepted forms.
    """
    letters = option_letters(len(options))
    text = answer.strip()

    bare = _BARE_LETTER.match(text)
    if bare:
        letter = bare.group(1).upper()
        return letter if letter in letters else None

    leading = _LEADING_LETTER.match(text)
    if leading:
        letter = leading.group(1) or leading.group(2)
        return letter if letter in letters else None

    stated = _STATED_ANSWER.search(text)
    if stated:
        letter = stated.group(1).upper()
        return letter if letter in letters else None

    return _letter_from_option_text(text, options, letters)
