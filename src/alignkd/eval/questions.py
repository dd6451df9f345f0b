"""Questions to generate answers for, and readers for LLaVA's two question-file layouts.

LLaVA-1.5 and MobileVLM evaluate from two layouts:

- JSONL, one question per line (GQA, TextVQA, POPE, MME and the generic short-answer
  benchmark): {"question_id": ..., "image": "relative/path.jpg", "text": "...",
  "category": "..."}. "image" and "category" are optional. "text" may already end with
  the benchmark's prompt suffix, as in LLaVA's files; the suffix is then not added twice.
- JSON, a list of LLaVA conversation samples (ScienceQA, llava_test_CQM-A.json):
  {"id": ..., "image": "..." (only with an image), "conversations": [{"from": "human",
  "value": "<image>\\nContext: ...\\nA. ...\\nB. ..."}, {"from": "gpt", "value": "B"}]}.
  The question is the first human turn with the "<image>" placeholder removed.

MMBench's TSV layout is read by `alignkd.eval.mmbench_data`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkd.constants import IMAGE_KEY, IMAGE_PLACEHOLDER_TEXT
from alignkd.errors import DataError


@dataclass
class Question:
    """One question to answer.

    Fields:
        question_id: the id as written in the question file (string or integer).
        text: the user turn without the image placeholder and before the benchmark's prompt
            suffix is applied.
        image: the image path relative to the images folder, or None.
        image_bytes: the encoded image when the question file embeds it (MMBench), else None.
        extra: fields copied into the answer line (for example "category").
        source: "file:line" (or "file:#index"), for error messages.
    """

    question_id: str | int
    text: str
    image: str | None = None
    image_bytes: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def has_image(self) -> bool:
        return self.image is not None or self.image_bytes is not None


def _require_question_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"question file not found: {path}")


def read_jsonl_questions(path: str | Path) -> list[Question]:
    """Read a LLaVA JSONL question file (see the module docstring)."""
    path = Path(path)
    _require_question_file(path)

    questions = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            source = f"{path}:{line_number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{source}: invalid JSON ({error.msg}); each line must be one JSON object") from None
            if not isinstance(data, dict):
                raise DataError(f"{source}: expected a JSON object, got {type(data).__name__}")
            for key in ("question_id", "text"):
                if key not in data:
                    raise DataError(f"{source}: missing key '{key}'; LLaVA question lines need 'question_id' and 'text'")
            if not isinstance(data["text"], str):
                raise DataError(f"{source}: 'text' of question {data['question_id']!r} must be a string")

            extra = {"category": data["category"]} if "category" in data else {}
            questions.append(
                Question(
                    question_id=data["question_id"],
                    text=data["text"],
                    image=_optional_image(data, source),
                    extra=extra,
                    source=source,
                )
            )
    _require_questions(questions, path)
    return questions


def read_conversation_questions(path: str | Path) -> list[Question]:
    """Read a JSON list of LLaVA conversation samples and ask each sample's first human turn."""
    path = Path(path)
    _require_question_file(path)
    try:
        samples = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(samples, list):
        raise DataError(f"{path}: expected a JSON list of conversation samples, got {type(samples).__name__}")

    questions = []
    for index, sample in enumerate(samples):
        source = f"{path}:#{index}"
        if not isinstance(sample, dict) or "id" not in sample:
            raise DataError(f"{source}: each sample must be an object with an 'id'")
        turns = sample.get("conversations")
        human_turns = [turn for turn in turns or [] if isinstance(turn, dict) and turn.get("from") == "human"]
        if not human_turns or not isinstance(human_turns[0].get("value"), str):
            raise DataError(f"{source}: sample {sample['id']!r} has no human turn with a string 'value' to ask")

        text = human_turns[0]["value"].replace(IMAGE_PLACEHOLDER_TEXT, "").strip()
        questions.append(Question(question_id=sample["id"], text=text, image=_optional_image(sample, source), source=source))
    _require_questions(questions, path)
    return questions


def _optional_image(data: dict[str, Any], source: str) -> str | None:
    image = data.get(IMAGE_KEY)
    if image is None:
        return None
    if not isinstance(image, str) or not image:
        raise DataError(f"{source}: '{IMAGE_KEY}' must be a non-empty relative path, got {image!r}")
    return image


def _require_questions(questions: list[Question], path: Path) -> None:
    if not questions:
        raise DataError(f"{path}: the question file contains no questions")


def read_llava_questions(path: str | Path) -> list[Question]:
    """Read either LLaVA layout, telling them apart by content: a JSON list or one object per line.

    The file suffix is not used because POPE's JSONL label files end in .json.
    """
    path = Path(path)
    _require_question_file(path)
    with path.open(encoding="utf-8") as handle:
        first_character = ""
        while not first_character:
            chunk = handle.read(1)
            if not chunk:
                break
            first_character = chunk.strip()
    if first_character == "[":
        return read_conversation_questions(path)
    return read_jsonl_questions(path)
