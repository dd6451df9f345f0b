"""Token ids and labels of a conversation, with labels taken from the real token sequence.

A template (`alignkd.data.templates`) renders a conversation into segments. This module
turns them into ids:

1. Consecutive text segments form one run of text. A run ends at the image and at each
   special token of the template (BOS, EOS), so runs are exactly the stretches of plain text.
2. All runs of a batch of samples go through the fast tokenizer in one call, with
   `add_special_tokens=False` and the character offset of every token.
3. A token is supervised when its character span overlaps a supervised segment: an answer,
   or the template text around it (the separator before it, the end of the turn). A token
   that merges the space before an answer with its first word ("▁Yes", "ĠYes") is
   therefore supervised, and a token made only of prompt text never is.
4. The sample's ids are the tokenizer's own start tokens (for example LLaMA's BOS, or none),
   the runs' ids, one `IMAGE_PLACEHOLDER_ID` for the image, and the template's BOS and EOS
   ids, in order.

Why offsets over whole runs rather than re-tokenising pieces and counting: the labels are
read off the very tokens that make up `input_ids`, so no count can drift from the
sequence. This holds whether or not the tokenizer adds BOS, whether or not it prepends the
LLaMA leading-space marker, and when pad equals EOS, because no length is ever derived
from ids.

Splitting runs at the image follows LLaVA and MobileVLM, which tokenize the text on each
side of `<image>` separately. Inserting BOS and EOS by id, with `split_special_tokens=True`
for the text, means that a literal "</s>" in a user's data stays text instead of ending
the turn. A consequence is that text right after the image or after a special token starts
a new tokenizer call, so a SentencePiece-style tokenizer prepends its "▁" marker there.
MobileVLM's preprocessing also tokenizes the text after the image in a call of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignkd.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID
from alignkd.data.conversation import LlavaSample, Turn, parse_question
from alignkd.data.problems import ProblemKind, SampleProblem
from alignkd.data.templates import ChatTemplate, Segment, SegmentKind, get_template
from alignkd.errors import DataError


@dataclass(frozen=True)
class EncodedSample:
    """The unexpanded token ids of one sample and their labels.

    Attributes:
        input_ids: token ids, with one IMAGE_PLACEHOLDER_ID where the image goes.
        labels: the id at supervised positions and IGNORE_INDEX elsewhere (the placeholder included).
    """

    input_ids: list[int]
    labels: list[int]

    @property
    def num_supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    @property
    def has_image(self) -> bool:
        return IMAGE_PLACEHOLDER_ID in self.input_ids

    def expanded_length(self, num_vision_tokens: int) -> int:
        """Length of the sequence once a model replaces the placeholder by `num_vision_tokens` tokens."""
        length = len(self.input_ids)
        if self.has_image:
            length += num_vision_tokens - 1
        return length


@dataclass(frozen=True)
class TokenizerSpec:
    """The special tokens of a tokenizer that the templates use.

    Attributes:
        prefix_ids: ids the tokenizer adds before the text of an encoding (BOS for LLaMA,
            none for GPT-2). Tokens it adds after the text are not used: the template ends turns.
        bos_token_id, eos_token_id, pad_token_id: the tokenizer's ids, or None when undefined.
    """

    prefix_ids: tuple[int, ...]
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenizerSpec:
        if not getattr(tokenizer, "is_fast", False):
            raise DataError(
                f"tokenizer {type(tokenizer).__name__} is not a fast (Rust) tokenizer, and labels need its character "
                "offsets. Load it with AutoTokenizer.from_pretrained(path) and use_fast left at True"
            )
        return cls(
            prefix_ids=_added_prefix(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )


def _added_prefix(tokenizer: Any) -> tuple[int, ...]:
    """Find the ids that the tokenizer puts before the text when it adds special tokens."""
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    with_specials = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(with_specials) - len(plain) + 1):
        if with_specials[start : start + len(plain)] == plain:
            return tuple(with_specials[:start])
    raise DataError(
        f"cannot tell which tokens the tokenizer {type(tokenizer).__name__} adds around the text: "
        f"{probe!r} encodes to {plain} without special tokens and to {with_specials} with them"
    )


@dataclass
class _TextRun:
    """A stretch of plain text: its index in the batch's texts, its supervised character
    ranges, and which of those ranges are answers (positions in `supervised_ranges`)."""

    index: int
    supervised_ranges: list[tuple[int, int]]
    answer_ranges: list[int]


@dataclass
class _FixedIds:
    ids: list[int]
    supervised: bool


class ConversationEncoder:
    """Encodes validated LLaVA samples with one tokenizer and one template.

    Args:
        tokenizer: a fast transformers tokenizer.
        template: the chat template.

    Raises:
        DataError: the tokenizer is not a fast tokenizer, or lacks a special token that the
            template needs (for example `v1` needs an EOS token to end each answer).
    """

    def __init__(self, tokenizer: Any, template: ChatTemplate):
        self.tokenizer = tokenizer
        self.template = template
        self.spec = TokenizerSpec.from_tokenizer(tokenizer)
        for attribute in template.required_special_tokens:
            if getattr(self.spec, f"{attribute}_id") is None:
                raise DataError(
                    f"chat template {template.name!r} needs the tokenizer's {attribute}, but tokenizer "
                    f"{getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__} defines none. "
                    f"Set tokenizer.{attribute} or choose another template"
                )

    def encode(self, samples: Sequence[LlavaSample]) -> list[EncodedSample | SampleProblem]:
        """Encode a batch of samples. A sample that breaks a rule gets its SampleProblem in its place."""
        results: list[EncodedSample | SampleProblem | None] = [None] * len(samples)
        rendered: list[list[Segment]] = []
        positions: list[int] = []
        for position, sample in enumerate(samples):
            try:
                self.template.check(sample.turns, sample.has_image)
            except SampleProblem as problem:
                results[position] = problem
                continue
            rendered.append(self.template.render(sample.turns))
            positions.append(position)

        for position, result in zip(positions, self.encode_segments(rendered)):
            results[position] = result
        return results  # type: ignore[return-value]

    def encode_one(self, sample: LlavaSample) -> EncodedSample:
        """Encode one sample. Raises SampleProblem when it breaks a rule."""
        (result,) = self.encode([sample])
        if isinstance(result, SampleProblem):
            raise result
        return result

    def encode_prompt(self, turn: Turn) -> list[int]:
        """Return the ids of one user turn up to where the assistant's answer starts."""
        self.template.check([turn], turn.has_image)
        (result,) = self.encode_segments([self.template.render([turn])], require_supervised=False)
        if isinstance(result, SampleProblem):
            raise result
        return result.input_ids

    def encode_segments(
        self, segment_lists: Sequence[Sequence[Segment]], require_supervised: bool = True
    ) -> list[EncodedSample | SampleProblem]:
        """Tokenize rendered conversations, all their text runs in one tokenizer call."""
        texts: list[str] = []
        plans = [self._plan(segments, texts) for segments in segment_lists]

        if texts:
            encoding = self.tokenizer(
                texts,
                add_special_tokens=False,
                return_offsets_mapping=True,
                return_attention_mask=False,
                split_special_tokens=True,
            )
            run_ids = encoding["input_ids"]
            run_offsets = encoding["offset_mapping"]
        else:
            run_ids, run_offsets = [], []

        results: list[EncodedSample | SampleProblem] = []
        for plan in plans:
            try:
                results.append(self._assemble(plan, texts, run_ids, run_offsets, require_supervised))
            except SampleProblem as problem:
                results.append(problem)
        return results

    def _plan(self, segments: Sequence[Segment], texts: list[str]) -> list[_TextRun | _FixedIds]:
        """Group text segments into runs (appended to `texts`) between fixed ids."""
        plan: list[_TextRun | _FixedIds] = []
        parts: list[str] = []
        supervised: list[tuple[int, int]] = []
        answers: list[int] = []
        length = 0

        def close_run() -> None:
            nonlocal parts, supervised, answers, length
            if parts:
                texts.append("".join(parts))
                plan.append(_TextRun(len(texts) - 1, supervised, answers))
            parts, supervised, answers, length = [], [], [], 0

        for segment in segments:
            if segment.kind is SegmentKind.TEXT:
                if not segment.text:
                    continue
                span = (length, length + len(segment.text))
                if segment.supervised:
                    if segment.role == "answer":
                        answers.append(len(supervised))
                    supervised.append(span)
                parts.append(segment.text)
                length = span[1]
                continue

            close_run()
            plan.append(_FixedIds(self._special_ids(segment), segment.supervised))

        close_run()
        return plan

    def _special_ids(self, segment: Segment) -> list[int]:
        if segment.kind is SegmentKind.IMAGE:
            return [IMAGE_PLACEHOLDER_ID]
        if segment.kind is SegmentKind.SEQUENCE_START:
            return list(self.spec.prefix_ids)
        if segment.kind is SegmentKind.BOS:
            return [self.spec.bos_token_id]  # type: ignore[list-item]
        if segment.kind is SegmentKind.EOS:
            return [self.spec.eos_token_id]  # type: ignore[list-item]
        raise ValueError(f"unknown segment kind {segment.kind}")

    def _assemble(
        self,
        plan: list[_TextRun | _FixedIds],
        texts: list[str],
        run_ids: list[list[int]],
        run_offsets: list[list[tuple[int, int]]],
        require_supervised: bool,
    ) -> EncodedSample:
        input_ids: list[int] = []
        labels: list[int] = []
        for item in plan:
            if isinstance(item, _FixedIds):
                input_ids += item.ids
                supervised = item.supervised and IMAGE_PLACEHOLDER_ID not in item.ids
                labels += item.ids if supervised else [IGNORE_INDEX] * len(item.ids)
                continue

            ids = run_ids[item.index]
            mask, covered = _label_run(run_offsets[item.index], item.supervised_ranges)
            for range_index in item.answer_ranges:
                if not covered[range_index]:
                    start, end = item.supervised_ranges[range_index]
                    raise SampleProblem(
                        ProblemKind.LABEL_MISMATCH,
                        f"the answer {texts[item.index][start:end]!r:.60} produced no tokens with this tokenizer, "
                        "so it cannot be supervised. Check that the tokenizer matches the data",
                    )
            input_ids += ids
            labels += [token if keep else IGNORE_INDEX for token, keep in zip(ids, mask)]

        encoded = EncodedSample(input_ids, labels)
        if require_supervised and encoded.num_supervised == 0:
            raise SampleProblem(
                ProblemKind.NO_SUPERVISED_TOKENS,
                f"the sample has no supervised tokens under template {self.template.name!r}, "
                "so it would train on nothing",
            )
        return encoded


def _label_run(offsets: Sequence[tuple[int, int]], ranges: list[tuple[int, int]]) -> tuple[list[bool], list[bool]]:
    """Match token spans against supervised character ranges.

    Returns a bool per token (does it overlap a supervised range?) and a bool per range (does
    any token overlap it?). `ranges` are sorted and disjoint. A token with an empty span
    counts by its start character. Token spans usually start in order, which allows one
    linear pass; the rare tokenizer whose spans go backwards gets the quadratic check.
    """
    mask: list[bool] = []
    covered = [False] * len(ranges)
    count = len(ranges)
    position = 0
    previous_start = 0
    for start, end in offsets:
        if start < previous_start:
            return _label_run_unordered(offsets, ranges)
        previous_start = start
        end = max(end, start + 1)

        # Ranges that end before this token starts cannot overlap any later token either.
        while position < count and ranges[position][1] <= start:
            position += 1

        supervised = False
        index = position
        while index < count and ranges[index][0] < end:
            covered[index] = True
            supervised = True
            index += 1
        mask.append(supervised)
    return mask, covered


def _label_run_unordered(
    offsets: Sequence[tuple[int, int]], ranges: list[tuple[int, int]]
) -> tuple[list[bool], list[bool]]:
    mask = []
    covered = [False] * len(ranges)
    for start, end in offsets:
        end = max(end, start + 1)
        supervised = False
        for index, (range_start, range_end) in enumerate(ranges):
            if start < range_end and end > range_start:
                covered[index] = True
                supervised = True
        mask.append(supervised)
    return mask, covered


def encode_generation_prompt(
    tokenizer: Any,
    template_name: str,
    question: str,
    has_image: bool,
    system_prompt: str | None = None,
) -> list[int]:
    """Return the token ids of one user turn up to where the assistant's answer starts.

    The ids are those of the same turn in a training sequence, with IMAGE_PLACEHOLDER_ID
    where the image goes. `question` may contain `<image>`. When `has_image` is true and it
    does not, the template puts the image at the start of the question.

    Raises:
        DataError: the question has `<image>` but `has_image` is false, has more than one,
            or breaks a template rule (for example `plain` needs an image).
    """
    template = get_template(template_name, system_prompt)
    turn = parse_question(question, has_image)
    return ConversationEncoder(tokenizer, template).encode_prompt(turn)
