"""Answer normalisation rules shared by the scorers.

`normalize_vqa_answer` implements the answer processing of the VQA and TextVQA evaluation
servers (EvalAI) as LLaVA-1.5's TextVQA scorer applies it (`llava/eval/m4c_evaluator.py`,
which states that it is copied from facebookresearch/mmf). The steps, in order:

1. Lowercase; delete "," and "?"; split the possessive "'s" off its word ("man's" becomes
   "man 's"); replace newlines and tabs with spaces; strip.
2. Punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it
   touches a space anywhere in the answer (or when the answer contains a comma between two
   digits), and is replaced by a space otherwise. Then every "." that is not followed by a
   digit is deleted, so "3.5" keeps its point and "u.s." becomes "us".
3. Words: number words from "none"/"zero" to "ten" become digits, the articles "a", "an" and
   "the" are dropped, and contractions written without their apostrophe ("dont", "youre")
   get it back.

`normalize_gqa_answer` is the rule of LLaVA-1.5's GQA conversion (`scripts/convert_gqa_for_eval.py`):
trailing periods removed and lowercased, after which the GQA evaluator compares exact strings.
"""

from __future__ import annotations

import re

_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]

_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")

# A period is kept only where a digit follows it (a decimal point).
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

_ARTICLES = {"a", "an", "the"}

# Contractions that the VQA answer processing restores when an answer spells them with one
# apostrophe missing. Forms whose apostrophe-free spelling is an ordinary word ("its", "well",
# "were", "ill", "shed", "wed", "hell") are not in the standard table and so are not here.
# The standard table's capitalised entries for "I'm", "I've" and "I'd've" never match the
# lowercased text, so they are left out too, which keeps the scores identical. Its entry that
# rewrites "somebody'd" to "somebodyd" is a typo and is left out; it affects only that word.
_CONTRACTIONS_WITH_APOSTROPHES = [
    "ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't",
    "don't", "hadn't", "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he's", "how'd",
    "how'll", "how's", "isn't", "it'd", "it'd've", "it'll", "ma'am", "mightn't", "mightn't've",
    "might've", "mustn't", "must've", "needn't", "not've", "o'clock", "oughtn't", "'ow's'at",
    "shan't", "she'd've", "should've", "shouldn't", "shouldn't've", "somebody'd've",
    "somebody'll", "somebody's", "someone'd", "someone'd've", "someone'll", "someone's",
    "something'd", "something'd've", "something'll", "that's", "there'd", "there'd've",
    "there're", "there's", "they'd", "they'd've", "they'll", "they're", "they've", "'twas",
    "wasn't", "we'd've", "we've", "weren't", "what'll", "what're", "what's", "what've",
    "when's", "where'd", "where's", "where've", "who'd", "who'd've", "who'll", "who's",
    "who've", "why'll", "why're", "why's", "won't", "would've", "wouldn't", "wouldn't've",
    "y'all", "y'all'll", "y'all'd've", "you'd", "you'd've", "you'll", "you're", "you've",
]


def _spellings_missing_one_apostrophe(contraction: str) -> list[str]:
    positions = [index for index, character in enumerate(contraction) if character == "'"]
    return [contraction[:position] + contraction[position + 1 :] for position in positions]


_CONTRACTIONS = {
    spelling: contraction
    for contraction in _CONTRACTIONS_WITH_APOSTROPHES
    for spelling in _spellings_missing_one_apostrophe(contraction)
}


def _split_words(text: str) -> str:
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    result = text
    for mark in _PUNCTUATION:
        # The test looks at the text as it was before any mark was handled.
        if delete_all or f"{mark} " in text or f" {mark}" in text:
            result = result.replace(mark, "")
        else:
            result = result.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", result)


def _process_words(text: str) -> str:
    words = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_vqa_answer(answer: str) -> str:
    """Normalise `answer` with the VQA/TextVQA evaluation rules described in the module docstring."""
    return _process_words(_process_punctuation(_split_words(answer)))


def normalize_gqa_answer(answer: str) -> str:
    """Strip whitespace and trailing periods and lowercase, as LLaVA-1.5 prepares GQA predictions."""
    return answer.strip().rstrip(".").strip().lower()


def vqa_accuracy(prediction: str, human_answers: list[str]) -> float:
    """Return the VQA accuracy in [0, 1] of `prediction` against the human answers.

    Each human answer is left out in turn and the prediction scores min(matches / 3, 1)
    against the others, where matches counts the remaining answers equal to it after
    normalisation. The score is the mean over the leave-one-out rounds, which is the
    official VQA/TextVQA rule for ten human answers. With a single human answer the rule
    reduces to exact match after normalisation.
    """
    if not human_answers:
        raise ValueError("vqa_accuracy needs at least one human answer")

    normalized_prediction = normalize_vqa_answer(prediction)
    normalized_answers = [normalize_vqa_answer(answer) for answer in human_answers]
    matches = sum(answer == normalized_prediction for answer in normalized_answers)

    if len(normalized_answers) == 1:
        return float(min(matches, 1))

    total = 0.0
    for answer in normalized_answers:
        matches_among_others = matches - (answer == normalized_prediction)
        total += min(matches_among_others / 3, 1.0)
    return total / len(normalized_answers)


__all__ = ["normalize_vqa_answer", "normalize_gqa_answer", "vqa_accuracy"]
