"""Validation of one LLaVA-format record and its normalisation into user and assistant turns.

A LLaVA record looks like::

    {"id": "000123", "image": "coco/000123.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                       {"from": "gpt", "value": "A cat on a sofa."}]}

`parse_sample` checks the rules that hold for every chat template and raises
`SampleProblem` naming the rule:

- `conversations` is a non-empty list of `{"from": str, "value": str}` turns, where `from`
  is "human" (or "user") or "gpt" (or "assistant").
- Turns alternate, starting with a human turn and ending with a gpt turn, and no gpt turn
  is empty.
- `<image>` appears only in human turns: at most once when the sample has an image, and
  never when it has none.

The image placeholder is normalised as LLaVA and MobileVLM do before applying a template:
it is removed from its turn and the turn is stripped, and the template later places the
image at the start of that turn followed by a newline. When a sample has an image but no
`<image>` in its text, the image goes to the first human turn in the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from alignkd.constants import IMAGE_KEY, IMAGE_PLACEHOLDER_TEXT
from alignkd.data.problems import ProblemKind, SampleProblem

Role = Literal["user", "assistant"]

# LLaVA data uses "human" and "gpt"; the aliases cover data converted from chat formats.
ROLE_NAMES: dict[str, Role] = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}

CONVERSATIONS_KEY = "conversations"
ID_KEY = "id"

# Keys that other data formats use for the image file, rejected instead of read as text-only.
_IMAGE_KEY_VARIANTS = ("images", "image_path", "image_file")


@dataclass(frozen=True)
class Turn:
    """One message of a conversation.

    Attributes:
        role: "user" or "assistant".
        text: the message with the image placeholder removed.
        has_image: the image goes at the start of this (user) turn.
    """

    role: Role
    text: str
    has_image: bool = False


@dataclass(frozen=True)
class LlavaSample:
    """A validated LLaVA record.

    Attributes:
        row: position of the record in the data file (0-based, blank JSONL lines excluded).
        sample_id: the record's "id" as a string, or None when it has none.
        image: the image path as written in the record, or None for a text-only sample.
        turns: alternating user and assistant turns, starting with a user turn.
        placeholder_added: the record had an image but no `<image>` in its text.
    """

    row: int
    sample_id: str | None
    image: str | None
    turns: tuple[Turn, ...]
    placeholder_added: bool = False

    @property
    def has_image(self) -> bool:
        return self.image is not None


def describe_sample(sample_id: str | None, location: str) -> str:
    """Return the name of a sample for messages: its id when it has one, and always its location.

    `location` is where the record is in the file, such as "line 7 of data.jsonl".
    """
    if sample_id is None:
        return f"sample at {location}"
    return f"sample {sample_id!r} ({location})"


def read_sample_id(record: Any) -> str | None:
    if isinstance(record, dict) and record.get(ID_KEY) is not None:
        return str(record[ID_KEY])
    return None


def parse_sample(record: Any, row: int) -> LlavaSample:
    """Validate one LLaVA record and return it as normalised turns.

    Raises:
        SampleProblem: the record breaks one of the rules in the module docstring.
    """
    if not isinstance(record, dict):
        raise SampleProblem(ProblemKind.INVALID_RECORD, f"a sample must be a JSON object, got {type(record).__name__}")

    image = _read_image_field(record)
    raw_turns = _read_raw_turns(record)
    roles = [role for role, _ in raw_turns]
    _check_alternation(roles)

    for index, (role, text) in enumerate(raw_turns):
        if role == "assistant" and not text.strip():
            raise SampleProblem(
                ProblemKind.EMPTY_ANSWER,
                f"turn {index} (gpt) is empty, so its round has no answer tokens to supervise. "
                "Remove the round or the sample",
            )

    turns, placeholder_added = _place_image(raw_turns, has_image=image is not None)
    return LlavaSample(
        row=row,
        sample_id=read_sample_id(record),
        image=image,
        turns=tuple(turns),
        placeholder_added=placeholder_added,
    )


def parse_question(question: str, has_image: bool) -> Turn:
    """Normalise a single user question for a generation prompt, with the same image rules."""
    turns, _ = _place_image([("user", question)], has_image=has_image)
    return turns[0]


def _read_image_field(record: dict) -> str | None:
    image = record.get(IMAGE_KEY)
    if image is None:
        # A misspelt key would otherwise turn an image sample into a text-only one without a word.
        for key in _IMAGE_KEY_VARIANTS:
            if record.get(key) is not None:
                raise SampleProblem(
                    ProblemKind.INVALID_RECORD,
                    f"the sample names its image with the key {key!r}, but LLaVA-format data uses {IMAGE_KEY!r}",
                )
        return None

    # Some converted data sets store one image as a one-element list.
    if isinstance(image, list) and len(image) == 1:
        image = image[0]

    if not isinstance(image, str) or not image.strip():
        raise SampleProblem(
            ProblemKind.INVALID_RECORD,
            f"'{IMAGE_KEY}' must be one image path string, got {image!r}. Only one image per sample is supported",
        )
    return image


def _read_raw_turns(record: dict) -> list[tuple[Role, str]]:
    conversations = record.get(CONVERSATIONS_KEY)
    if not isinstance(conversations, list) or not conversations:
        raise SampleProblem(
            ProblemKind.INVALID_RECORD,
            f"'{CONVERSATIONS_KEY}' must be a non-empty list of turns, got {conversations!r:.80}",
        )

    turns: list[tuple[Role, str]] = []
    for index, turn in enumerate(conversations):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("from"), str)
            or not isinstance(turn.get("value"), str)
        ):
            raise SampleProblem(
                ProblemKind.INVALID_RECORD,
                f"turn {index} must be an object with string 'from' and 'value' fields, got {turn!r:.80}",
            )
        role = ROLE_NAMES.get(turn["from"].lower())
        if role is None:
            raise SampleProblem(
                ProblemKind.CONVERSATION_STRUCTURE,
                f"turn {index} has the unknown role {turn['from']!r}; expected 'human' or 'gpt'",
            )
        turns.append((role, turn["value"]))
    return turns


def _check_alternation(roles: list[Role]) -> None:
    if "assistant" not in roles:
        raise SampleProblem(
            ProblemKind.NO_SUPERVISED_TOKENS,
            "the conversation has no gpt turn, so it has no supervised tokens. Add the answer or remove the sample",
        )
    if roles[0] != "user":
        raise SampleProblem(
            ProblemKind.CONVERSATION_STRUCTURE,
            "the first turn is from gpt; a conversation must start with a human turn",
        )
    for index in range(1, len(roles)):
        if roles[index] == roles[index - 1]:
            name = "human" if roles[index] == "user" else "gpt"
            raise SampleProblem(
                ProblemKind.CONVERSATION_STRUCTURE,
                f"turns {index - 1} and {index} are both from {name}; human and gpt turns must alternate",
            )
    if roles[-1] != "assistant":
        raise SampleProblem(
            ProblemKind.CONVERSATION_STRUCTURE,
            f"the last turn ({len(roles) - 1}) is from human and has no gpt answer. "
            "A conversation must end with a gpt turn",
        )


def _place_image(raw_turns: list[tuple[Role, str]], has_image: bool) -> tuple[list[Turn], bool]:
    """Check the `<image>` placeholders and return turns with the image marked on one user turn."""
    placeholder_turns = []
    for index, (role, text) in enumerate(raw_turns):
        count = text.count(IMAGE_PLACEHOLDER_TEXT)
        if count and role == "assistant":
            raise SampleProblem(
                ProblemKind.IMAGE_PLACEHOLDER,
                f"turn {index} (gpt) contains {IMAGE_PLACEHOLDER_TEXT}; the image placeholder belongs in a human turn",
            )
        placeholder_turns.extend([index] * count)

    if not has_image and placeholder_turns:
        raise SampleProblem(
            ProblemKind.IMAGE_PLACEHOLDER,
            f"the text contains {IMAGE_PLACEHOLDER_TEXT} but the sample has no '{IMAGE_KEY}' file. "
            f"Add the image path or remove the placeholder",
        )
    if len(placeholder_turns) > 1:
        raise SampleProblem(
            ProblemKind.IMAGE_PLACEHOLDER,
            f"the text contains {len(placeholder_turns)} {IMAGE_PLACEHOLDER_TEXT} placeholders but the sample has one "
            f"'{IMAGE_KEY}' file; use exactly one placeholder per image",
        )

    if not has_image:
        return [Turn(role, text) for role, text in raw_turns], False

    placeholder_added = not placeholder_turns
    image_turn = placeholder_turns[0] if placeholder_turns else 0
    turns = []
    for index, (role, text) in enumerate(raw_turns):
        if index == image_turn:
            turns.append(Turn(role, text.replace(IMAGE_PLACEHOLDER_TEXT, "").strip(), has_image=True))
        else:
            turns.append(Turn(role, text))
    return turns, placeholder_added
