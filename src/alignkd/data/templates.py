"""Chat templates: how a conversation becomes a sequence of text, image and special tokens.

A template renders turns into `Segment`s and never touches a tokenizer. Each text segment
carries its role in the labels:

- "prompt": not supervised (system prompt, role names, questions).
- "answer": supervised, and must produce at least one token (the assistant's message).
- "answer_format": supervised template text around an answer: the separator between the
  assistant's role name and the answer, and the text that ends the turn (for example
  `plain`'s newline).

A generation prompt stops right after the assistant's role name ("ASSISTANT:"), so
everything after it is what the model must learn to produce, the separator included. With
a byte-level tokenizer that keeps the space as its own token ("Ġ", then "yes"), the space
token is therefore supervised too.

The tokenizer's own tokens are segments of their own: `SEQUENCE_START` (whatever the
tokenizer adds at the start of an encoding, such as LLaMA's BOS, or nothing), `BOS` and
`EOS` (the tokenizer's `bos_token` and `eos_token`). Because the end of an answer is the
tokenizer's EOS id rather than a literal "</s>" string, `v1` works with any tokenizer that
defines an EOS token. `alignkd.data.tokenization` turns segments into ids and labels.

Registered templates (MobileVLM's formats are in its `conversation.py`):

- `plain` (pretraining): `SEQUENCE_START <image> caption \\n`. The human text is dropped
  and the caption with its newline is supervised.
- `v1` (Vicuna v1.1): `SYSTEM USER: question ASSISTANT: answer</s>USER: ...`.
- `llama_2`: `[INST] <<SYS>>\\nSYSTEM\\n<</SYS>>\\n\\nquestion [/INST] answer </s><s>[INST] ...`.
  The system block is left out when the system prompt is empty, which is the default.
  MobileVLM's `llama_2` entry uses Meta's default Llama 2 system prompt instead: pass it as
  `system_prompt` to reproduce that format exactly.

To add a template, subclass `ChatTemplate`, implement `render`, and call `register_template`.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from alignkd.config import ConfigError
from alignkd.data.conversation import Turn
from alignkd.data.problems import ProblemKind, SampleProblem

TextRole = Literal["prompt", "answer", "answer_format"]


class SegmentKind(enum.Enum):
    TEXT = "text"
    IMAGE = "image"
    SEQUENCE_START = "sequence_start"
    BOS = "bos"
    EOS = "eos"


@dataclass(frozen=True)
class Segment:
    """One piece of a rendered conversation.

    Attributes:
        kind: text, the image, or one of the tokenizer's special tokens.
        text: the text of a TEXT segment, empty otherwise.
        role: "prompt" (not supervised), "answer" or "answer_format" (supervised).
    """

    kind: SegmentKind
    text: str = ""
    role: TextRole = "prompt"

    @property
    def supervised(self) -> bool:
        return self.role != "prompt"


IMAGE = Segment(SegmentKind.IMAGE)
SEQUENCE_START = Segment(SegmentKind.SEQUENCE_START)
BOS = Segment(SegmentKind.BOS)
END_OF_TURN_EOS = Segment(SegmentKind.EOS, role="answer_format")


def prompt(text: str) -> Segment:
    return Segment(SegmentKind.TEXT, text, "prompt")


def answer(text: str) -> Segment:
    return Segment(SegmentKind.TEXT, text, "answer")


def answer_format(text: str) -> Segment:
    return Segment(SegmentKind.TEXT, text, "answer_format")


def user_message(turn: Turn) -> list[Segment]:
    """Render a user turn's message, with the image first and a newline when it has one.

    The text has the placeholder removed already. An image turn with no other text renders
    as the image alone, as LLaVA's preprocessing strips the trailing newline.
    """
    if not turn.has_image:
        return [prompt(turn.text)]
    if not turn.text:
        return [IMAGE]
    return [IMAGE, prompt("\n" + turn.text)]


def rounds(turns: Sequence[Turn]) -> list[tuple[Turn, Turn | None]]:
    """Pair turns into (user, assistant) rounds. The last assistant is None for a generation prompt."""
    pairs = []
    for index in range(0, len(turns), 2):
        assistant = turns[index + 1] if index + 1 < len(turns) else None
        pairs.append((turns[index], assistant))
    return pairs


class ChatTemplate(abc.ABC):
    """A conversation format.

    `render` receives validated turns (alternating, starting with a user turn). For training
    the turns end with an assistant turn. For a generation prompt they end with a user turn,
    and the rendering stops where the assistant's answer would start.
    """

    name: ClassVar[str]
    # Special tokens that the template uses, so that a tokenizer without them is rejected once.
    required_special_tokens: ClassVar[tuple[Literal["bos_token", "eos_token"], ...]] = ()

    def __init__(self, system_prompt: str | None = None):
        self.system_prompt = self.default_system_prompt if system_prompt is None else system_prompt

    default_system_prompt: ClassVar[str] = ""

    def check(self, turns: Sequence[Turn], has_image: bool) -> None:  # noqa: B027 (an optional hook)
        """Raise SampleProblem(TEMPLATE_RULE) when the conversation does not fit this template.

        The default accepts every conversation that passed the checks common to all templates.
        """

    @abc.abstractmethod
    def render(self, turns: Sequence[Turn]) -> list[Segment]:
        """Render the conversation into segments."""


class PlainTemplate(ChatTemplate):
    """MobileVLM's pretraining format: the image followed by its caption and a newline."""

    name = "plain"

    def check(self, turns: Sequence[Turn], has_image: bool) -> None:
        if len(rounds(turns)) != 1:
            raise SampleProblem(
                ProblemKind.TEMPLATE_RULE,
                f"template 'plain' needs exactly one human turn and one gpt turn, got {len(turns)} turns. "
                "Use template 'v1' for multi-turn data",
            )
        if not has_image:
            raise SampleProblem(
                ProblemKind.TEMPLATE_RULE,
                "template 'plain' needs an image in every sample, and this sample is text-only. "
                "Use template 'v1' for data with text-only samples",
            )

    def render(self, turns: Sequence[Turn]) -> list[Segment]:
        # The human text is dropped: the image alone is the prompt.
        segments = [SEQUENCE_START, IMAGE]
        if len(turns) > 1:
            segments += [answer(turns[1].text), answer_format("\n")]
        return segments


class VicunaV1Template(ChatTemplate):
    """Vicuna v1.1 as MobileVLM's `v1` finetuning format uses it."""

    name = "v1"
    required_special_tokens = ("eos_token",)
    default_system_prompt = (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )

    def render(self, turns: Sequence[Turn]) -> list[Segment]:
        segments = [SEQUENCE_START]
        if self.system_prompt:
            segments.append(prompt(self.system_prompt + " "))
        for user, assistant in rounds(turns):
            segments += [prompt("USER: "), *user_message(user), prompt(" "), prompt("ASSISTANT:")]
            if assistant is not None:
                segments += [answer_format(" "), answer(assistant.text), END_OF_TURN_EOS]
        return segments


class Llama2Template(ChatTemplate):
    """The Llama 2 chat format, with an empty system prompt unless one is configured."""

    name = "llama_2"
    required_special_tokens = ("bos_token", "eos_token")

    def render(self, turns: Sequence[Turn]) -> list[Segment]:
        segments = [SEQUENCE_START]
        for index, (user, assistant) in enumerate(rounds(turns)):
            if index > 0:
                segments.append(BOS)
            segments.append(prompt("[INST] "))
            if index == 0 and self.system_prompt:
                segments.append(prompt(f"<<SYS>>\n{self.system_prompt}\n<</SYS>>\n\n"))
            segments += [*user_message(user), prompt(" [/INST]")]
            if assistant is not None:
                segments += [answer_format(" "), answer(assistant.text), answer_format(" "), END_OF_TURN_EOS]
        return segments


TEMPLATES: dict[str, type[ChatTemplate]] = {}


def register_template(template: type[ChatTemplate]) -> type[ChatTemplate]:
    """Add a template class to the registry under its `name` (usable as a class decorator)."""
    if template.name in TEMPLATES and TEMPLATES[template.name] is not template:
        raise ValueError(f"a chat template named {template.name!r} is already registered")
    TEMPLATES[template.name] = template
    return template


def get_template(name: str, system_prompt: str | None = None) -> ChatTemplate:
    """Build the registered template `name`, optionally with a replacement system prompt.

    Raises:
        ConfigError: no template has that name.
    """
    if name not in TEMPLATES:
        raise ConfigError(f"unknown chat template {name!r}; available templates: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name](system_prompt)


for _template in (PlainTemplate, VicunaV1Template, Llama2Template):
    register_template(_template)
