"""The demo's subword tokenizer, trained on every text the demo task can produce.

The corpus contains, for every question that the task's layout allows, a conversation in the
"v1" chat template, and every answer of every kind follows "ASSISTANT:" at least once. With
the default vocabulary size the BPE merges run until each word of the corpus is a single
token, so prompts are short and each one-word answer is one token followed by `</s>`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from alignkd.constants import IMAGE_PLACEHOLDER_TEXT
from alignkd.data.templates import get_template
from alignkd.data.train_tokenizer import train_tokenizer
from alignkd.demo.build import DemoTaskConfig, question_prompt
from alignkd.demo.questions import QUESTION_KINDS, QuestionSpace
from alignkd.demo.scenes import digit_classes
from alignkd.errors import DataError

logger = logging.getLogger(__name__)

# The demo trains with the data layer's "v1" (Vicuna v1.1) template. The role names and
# separators below repeat how that template lays out a turn, and a test checks through the
# data layer's encoder that the two agree.
V1_SYSTEM_PROMPT = get_template("v1").system_prompt
V1_USER_ROLE = "USER: "
V1_ASSISTANT_ROLE = "ASSISTANT: "
V1_ANSWER_END = "</s>"

# Maximum vocabulary size. It is large enough for the BPE trainer to merge every word of the
# corpus into one token, and training stops there, short of this size. The default task
# needs 291 tokens, and a 4x5 grid with paraphrases needs 373 (tokenizers 0.23).
# `check_single_token_answers` raises when a larger task needs more.
DEMO_VOCAB_SIZE = 512


def render_v1_prompt(question: str) -> str:
    """Return the "v1" text of a one-turn conversation up to the assistant's answer.

    The image placeholder opens the user turn, followed by a newline, as in LLaVA data.
    """
    return f"{V1_SYSTEM_PROMPT} {V1_USER_ROLE}{IMAGE_PLACEHOLDER_TEXT}\n{question} {V1_ASSISTANT_ROLE.rstrip()}"


def render_v1_conversation(question: str, answer: str) -> str:
    """Return the "v1" text of a one-turn conversation including the answer and its `</s>`."""
    return f"{render_v1_prompt(question)} {answer}{V1_ANSWER_END}"


def demo_question_space(config: DemoTaskConfig | None = None) -> QuestionSpace:
    """Return the grid and digit classes that the task of `config` (default: the default task) asks about."""
    config = config or DemoTaskConfig()
    return config.question_space(digit_classes())


def demo_answers(config: DemoTaskConfig | None = None) -> list[str]:
    """Return every answer word of the kinds that `config` asks, without repeats, in kind order."""
    config = config or DemoTaskConfig()
    space = demo_question_space(config)
    answers: dict[str, None] = {}
    for name in _asked_kinds(config):
        answers.update(dict.fromkeys(QUESTION_KINDS[name].all_answers(space)))
    return list(answers)


def demo_tokenizer_corpus(config: DemoTaskConfig | None = None) -> list[str]:
    """Return the training texts: each possible question and answer in a "v1" conversation.

    `</s>` is left out of the texts. The trainer does not split special tokens out of its
    input, so "7</s>" would be learned as one word, while encoding splits `</s>` off and needs
    a token for "▁7". Each conversation appears as the two pieces around `<image>` that
    LLaVA-style code tokenizes separately. `<image>` is also a text of its own, so that
    tokenizing the whole text keeps the placeholder apart from the question's first word.
    """
    config = config or DemoTaskConfig()
    space = demo_question_space(config)

    corpus = [IMAGE_PLACEHOLDER_TEXT]
    for name in _asked_kinds(config):
        kind = QUESTION_KINDS[name]
        answers = kind.all_answers(space)
        questions = [question_prompt(text, config) for text in kind.all_texts(space, paraphrases=config.paraphrases)]

        # Pair the questions with the answers in turn, so that every answer is seen after
        # "ASSISTANT:" without listing every pair.
        for index in range(max(len(questions), len(answers))):
            question = questions[index % len(questions)]
            answer = answers[index % len(answers)]
            conversation = f"{render_v1_prompt(question)} {answer}"
            corpus.extend(conversation.split(IMAGE_PLACEHOLDER_TEXT))
    return corpus


def train_demo_tokenizer(
    config: DemoTaskConfig | None = None,
    output_dir: str | Path | None = None,
    vocab_size: int = DEMO_VOCAB_SIZE,
) -> PreTrainedTokenizerFast:
    """Train the LLaMA-style demo tokenizer for the task of `config` and save it to `output_dir` if given.

    Raises DataError when some answer word is not a single token. The message lists those
    answers and requests a larger `vocab_size`.
    """
    config = config or DemoTaskConfig()
    tokenizer = train_tokenizer(demo_tokenizer_corpus(config), vocab_size=vocab_size, style="llama")
    check_single_token_answers(tokenizer, config)

    if output_dir is not None:
        tokenizer.save_pretrained(str(output_dir))
    logger.info("Trained the demo tokenizer: %d tokens (vocab_size %d requested)", len(tokenizer), vocab_size)
    return tokenizer


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, question: str, answer: str) -> list[int]:
    """Return the token ids that the answer and its `</s>` add to the encoded "v1" prompt.

    Raises DataError when the prompt's tokens change once the answer is appended, because then
    the answer has no tokens of its own.
    """
    prompt_ids = tokenizer(render_v1_prompt(question))["input_ids"]
    full_ids = tokenizer(render_v1_conversation(question, answer))["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise DataError(
            f"appending the answer {answer!r} changes the tokens of the prompt for {question!r}; "
            "the tokenizer merges across the prompt and the answer, so it cannot be used for the demo"
        )
    return full_ids[len(prompt_ids) :]


def check_single_token_answers(tokenizer: PreTrainedTokenizerBase, config: DemoTaskConfig | None = None) -> None:
    """Raise DataError unless every answer of the task encodes as one token followed by `</s>`.

    Each answer is checked after the first question of its kind, in a "v1" conversation.
    """
    config = config or DemoTaskConfig()
    space = demo_question_space(config)
    eos_id = tokenizer.convert_tokens_to_ids(V1_ANSWER_END)

    split_answers = {}
    for name in _asked_kinds(config):
        kind = QUESTION_KINDS[name]
        question = question_prompt(kind.phrase(kind.all_subjects(space)[0], space), config)
        for answer in kind.all_answers(space):
            ids = answer_token_ids(tokenizer, question, answer)
            if len(ids) != 2 or ids[-1] != eos_id:
                split_answers[answer] = tokenizer.convert_ids_to_tokens(ids)

    if split_answers:
        listed = "; ".join(f"{answer!r} -> {tokens}" for answer, tokens in split_answers.items())
        raise DataError(
            f"{len(split_answers)} demo answers are not a single token followed by {V1_ANSWER_END}: {listed}. "
            "Train the tokenizer with a larger vocab_size"
        )


def _asked_kinds(config: DemoTaskConfig) -> list[str]:
    return [name for name, weight in config.kind_weights.items() if weight > 0]
