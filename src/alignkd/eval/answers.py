"""The answers file: one JSON object per line, one line per generated answer.

`alignkd eval` writes lines in LLaVA-1.5's answer layout with the generation settings added,
so that LLaVA's own scripts can still read them and `alignkd score` can record how the
answers were made:

    {"question_id": "201307251",               # as in the question file (string or integer)
     "prompt": "Is it overcast?\\nAnswer the question using a single word or phrase.",
     "text": "no",                               # the decoded answer, special tokens skipped
     "image": "n161313.jpg",                     # null for text-only questions
     "category": "default",                      # copied from the question file when present
     "benchmark": "gqa",
     "prompt_variant": "short-answer",
     "template": "v1",
     "system_prompt": "A chat between ...",      # the system prompt in effect ("" for none)
     "decoding": {"strategy": "greedy", "do_sample": false, "num_beams": 1, "max_new_tokens": 128},
     "image_aspect_ratio": "pad",
     "model": "runs/student"}

MMBench lines also carry "round_id", "options" and "option_char" (the options as shown, in
letter order). `prompt` is the user turn without the image placeholder, as in LLaVA.

`alignkd score` also reads answers files written by LLaVA or MobileVLM, which have only
"question_id", "prompt" and "text"; their settings are then reported as not recorded.
Several lines may share a question_id (MME asks two questions per image under one id and
LLaVA's TextVQA file uses the image id), so a line is identified by its question_id and prompt.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from alignkd.errors import DataError
from alignkd.eval.report import NOT_RECORDED, sha256_of_file

logger = logging.getLogger(__name__)

# Settings that every line of an answers file written by `alignkd eval` records. A file whose
# lines disagree on one of them cannot give one trustworthy score.
SETTING_KEYS = ("benchmark", "prompt_variant", "template", "system_prompt", "decoding", "image_aspect_ratio", "model")

AnswerKey = tuple[str, str]


def answer_key(question_id: Any, prompt: str | None) -> AnswerKey:
    """Return the identity of an answer line: its question_id as a string, and its prompt."""
    return str(question_id), prompt or ""


@dataclass
class AnswerRecord:
    """One line of an answers file.

    `question_id` is the id as a string, so that 12 and "12" match; `fields` is the whole
    line as parsed; `line_number` counts from 1.
    """

    question_id: str
    text: str
    prompt: str | None
    fields: dict[str, Any]
    line_number: int

    @property
    def key(self) -> AnswerKey:
        return answer_key(self.question_id, self.prompt)

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


@dataclass
class AnswersFile:
    """The parsed answers file with its SHA-256 and the settings its lines agree on."""

    path: Path
    sha256: str
    records: list[AnswerRecord]
    settings: dict[str, Any] = field(default_factory=dict)


def read_answers(path: str | Path, benchmark: str | None = None) -> AnswersFile:
    """Read and check an answers file.

    Raises DataError when a line is not a JSON object or lacks "question_id" or a string
    "text". It also raises when two lines answer the same question (same question_id and
    prompt), when the lines disagree on a generation setting, or when the recorded benchmark
    differs from `benchmark`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"answers file not found: {path}")

    records = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            records.append(_parse_answer_line(line, path, line_number))
    if not records:
        raise DataError(f"{path}: the answers file is empty; run `alignkd eval` first or check the path")

    _check_duplicates(records, path)
    settings = _collect_settings(records, path)

    recorded_benchmark = settings.get("benchmark")
    if benchmark is not None and recorded_benchmark not in (None, NOT_RECORDED, benchmark):
        raise DataError(
            f"{path}: the answers were generated for benchmark '{recorded_benchmark}' but are being "
            f"scored as '{benchmark}'; pass --benchmark {recorded_benchmark} or the right answers file"
        )
    return AnswersFile(path=path, sha256=sha256_of_file(path), records=records, settings=settings)


def _parse_answer_line(line: str, path: Path, line_number: int) -> AnswerRecord:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{line_number}: invalid JSON ({error.msg}); each line must be one JSON object") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}:{line_number}: expected a JSON object, got {type(data).__name__}")
    if "question_id" not in data:
        raise DataError(f"{path}:{line_number}: missing key 'question_id'")
    text = data.get("text")
    if not isinstance(text, str):
        raise DataError(
            f"{path}:{line_number}: question {data['question_id']!r} has no string 'text' (got {text!r}); "
            "every answer line needs the generated text"
        )
    prompt = data.get("prompt")
    return AnswerRecord(
        question_id=str(data["question_id"]),
        text=text,
        prompt=prompt if isinstance(prompt, str) else None,
        fields=data,
        line_number=line_number,
    )


def _check_duplicates(records: list[AnswerRecord], path: Path) -> None:
    first_line: dict[AnswerKey, int] = {}
    duplicates = []
    for record in records:
        if record.key in first_line:
            duplicates.append(f"question {record.question_id!r} on lines {first_line[record.key]} and {record.line_number}")
        else:
            first_line[record.key] = record.line_number
    if duplicates:
        raise DataError(
            f"{path}: {len(duplicates)} questions are answered more than once: {format_id_list(duplicates)}. "
            "Remove the extra lines (a resumed run appends; rerun without --resume to start over)"
        )


def _collect_settings(records: list[AnswerRecord], path: Path) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for key in SETTING_KEYS:
        values: dict[str, int] = {}
        for record in records:
            value = json.dumps(record.fields.get(key), sort_keys=True)
            values[value] = values.get(value, 0) + 1
        if len(values) > 1:
            listing = "; ".join(f"{value} on {count} lines" for value, count in values.items())
            raise DataError(
                f"{path}: the answer lines disagree on '{key}' ({listing}); score answers generated "
                "with one setting, for example by rerunning `alignkd eval` into a new file"
            )
        (value,) = values
        parsed = json.loads(value)
        settings[key] = NOT_RECORDED if parsed is None else parsed
    return settings


def format_id_list(ids: list[Any], limit: int = 10) -> str:
    """Return up to `limit` ids joined by commas, with the count of the rest."""
    listing = ", ".join(str(item) for item in ids[:limit])
    if len(ids) > limit:
        listing += f" and {len(ids) - limit} more"
    return listing


def read_existing_answers(path: str | Path) -> AnswersFile | None:
    """Return the answers already in `path` (for `alignkd eval --resume`), or None if there are none."""
    path = Path(path)
    if not path.is_file() or not path.read_text(encoding="utf-8").strip():
        return None
    return read_answers(path)


class AnswerWriter:
    """Append answer lines to a JSONL file, flushing after each batch so that a crash loses little."""

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: TextIO = self.path.open("a" if append else "w", encoding="utf-8")
        self.written = 0

    def write(self, line: dict[str, Any]) -> None:
        self._handle.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.written += 1

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "AnswerWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
