"""MMBench's TSV file: questions with embedded images, circular copies, and the submission file.

MMBench (mmbench_dev_20230712.tsv, mmbench_dev_en_20231003.tsv) is one tab-separated file
with a header row. The columns used here:

- index: integer id. MMBench ships circular evaluation inside the file: the k-th rotation
  of question i (options shifted by k places, "answer" shifted with them) has index
  i + k * 1,000,000.
- question and hint (may be empty).
- A, B, C, D: the options. Trailing options may be empty, and like LLaVA the reader also
  treats the strings "nan" and "none" as empty.
- answer: the correct letter, absent in test files.
- category, l2-category, split, and image (base64-encoded image bytes).

When a file has no rotated copies (no index of 1,000,000 or more), `alignkd eval` asks
each question once per rotation itself and marks the rotation in the answer's "round_id",
so that circular evaluation is still possible.

The submission file that MMBench's evaluation server accepts holds the question columns
and a "prediction" column with the raw answer text, one row per TSV row.
"""

from __future__ import annotations

import base64
import binascii
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from alignkd.errors import DataError
from alignkd.eval.answers import format_id_list
from alignkd.eval.prompts import build_multiple_choice_text
from alignkd.eval.questions import Question
from alignkd.eval.scoring.choices import OPTION_LETTERS, option_letters

# MMBench numbers the k-th rotation of question i as i + k * CIRCULAR_INDEX_STRIDE.
CIRCULAR_INDEX_STRIDE = 1_000_000

MMBENCH_OPTION_COLUMNS = ("A", "B", "C", "D")
REQUIRED_COLUMNS = ("index", "question", "A", "B")

# Columns of the submission file, in the order that LLaVA-1.5's conversion script writes them.
# MMBench's server has rejected files that lacked an option column, so A to D are always written,
# empty where a question has fewer options. The optional columns are copied when the TSV has them.
SUBMISSION_REQUIRED_COLUMNS = ("index", "question", "A", "B", "C", "D", "prediction")
SUBMISSION_OPTIONAL_COLUMNS = ("answer", "split")

_EMPTY_VALUES = {"", "nan", "none"}


@dataclass
class MMBenchRow:
    """One row of an MMBench TSV.

    `options` are the non-empty option texts in letter order. `answer` is the correct letter,
    or None in files without answers. `columns` contains every column except the image, for
    the submission file.
    """

    index: int
    question: str
    hint: str | None
    options: list[str]
    answer: str | None
    category: str | None
    l2_category: str | None
    image_base64: str | None
    columns: dict[str, str]
    line_number: int

    @property
    def base_index(self) -> int:
        """The index of the unrotated question that this row belongs to."""
        return self.index % CIRCULAR_INDEX_STRIDE


def _is_empty(value: str | None) -> bool:
    return value is None or value.strip().lower() in _EMPTY_VALUES


def read_mmbench_tsv(path: str | Path) -> list[MMBenchRow]:
    """Read an MMBench TSV file (see the module docstring) and check its indexes and answers."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"MMBench TSV file not found: {path}")

    # Base64 images are far longer than the csv module's default field limit of 128 KiB.
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        header = reader.fieldnames or []
        missing = [column for column in REQUIRED_COLUMNS if column not in header]
        if missing:
            raise DataError(f"{path}: missing MMBench columns {', '.join(missing)}; found {', '.join(header)}")
        rows = [_parse_row(data, path, line_number) for line_number, data in enumerate(reader, start=2)]

    if not rows:
        raise DataError(f"{path}: the MMBench file contains no questions")
    seen: dict[int, int] = {}
    for row in rows:
        if row.index in seen:
            raise DataError(f"{path}:{row.line_number}: index {row.index} already appears on line {seen[row.index]}")
        seen[row.index] = row.line_number
    return rows


def _parse_row(data: dict[str, str | None], path: Path, line_number: int) -> MMBenchRow:
    # Question, hint and option texts are kept verbatim so that prompts match LLaVA-1.5's.
    source = f"{path}:{line_number}"
    raw_index = (data.get("index") or "").strip()
    try:
        index = int(float(raw_index))
    except ValueError:
        raise DataError(f"{source}: 'index' must be an integer, got {raw_index!r}") from None

    options = []
    for column in MMBENCH_OPTION_COLUMNS:
        value = data.get(column)
        if _is_empty(value):
            break
        options.append(value)
    if len(options) < 2:
        raise DataError(f"{source}: question {index} has {len(options)} options; MMBench questions need at least A and B")

    answer = None if _is_empty(data.get("answer")) else data["answer"].strip().upper()
    if answer is not None and answer not in option_letters(len(options)):
        raise DataError(f"{source}: question {index} has answer {answer!r} but only options {option_letters(len(options))}")

    columns = {key: (value or "") for key, value in data.items() if key is not None and key != "image"}
    return MMBenchRow(
        index=index,
        question=data.get("question") or "",
        hint=None if _is_empty(data.get("hint")) else data["hint"],
        options=options,
        answer=answer,
        category=None if _is_empty(data.get("category")) else data["category"].strip(),
        l2_category=None if _is_empty(data.get("l2-category")) else data["l2-category"].strip(),
        image_base64=None if _is_empty(data.get("image")) else data["image"].strip(),
        columns=columns,
        line_number=line_number,
    )


def has_rotated_copies(rows: list[MMBenchRow]) -> bool:
    """Return whether the file ships MMBench's circular copies (indexes of 1,000,000 or more)."""
    return any(row.index >= CIRCULAR_INDEX_STRIDE for row in rows)


def rotate(options: list[str], round_id: int) -> list[str]:
    """Return the options shifted left by `round_id` places, as MMBench's circular copies are."""
    shift = round_id % len(options)
    return options[shift:] + options[:shift]


def correct_letter(row: MMBenchRow, round_id: int) -> str | None:
    """Return the correct letter of `row` when its options are rotated by `round_id`."""
    if row.answer is None:
        return None
    count = len(row.options)
    position = (OPTION_LETTERS.index(row.answer) - round_id) % count
    return option_letters(count)[position]


def read_mmbench_questions(path: str | Path) -> list[Question]:
    """Read an MMBench TSV as questions, adding option rotations when the file has no circular copies."""
    path = Path(path)
    rows = read_mmbench_tsv(path)
    rounds_per_row = not has_rotated_copies(rows)

    questions = []
    for row in rows:
        round_count = len(row.options) if rounds_per_row else 1
        for round_id in range(round_count):
            options = rotate(row.options, round_id)
            letters = option_letters(len(options))
            questions.append(
                Question(
                    question_id=row.index,
                    text=build_multiple_choice_text(row.question, options, letters, row.hint),
                    image_bytes=_decode_image(row, path),
                    extra={
                        "round_id": round_id,
                        "options": options,
                        "option_char": list(letters),
                        "category": row.category,
                    },
                    source=f"{path}:{row.line_number}",
                )
            )
    return questions


def _decode_image(row: MMBenchRow, path: Path) -> bytes:
    if row.image_base64 is None:
        raise DataError(f"{path}:{row.line_number}: question {row.index} has no base64 'image'; MMBench questions need one")
    try:
        return base64.b64decode(row.image_base64, validate=False)
    except (binascii.Error, ValueError) as error:
        raise DataError(
            f"{path}:{row.line_number}: the 'image' of question {row.index} is not valid base64 ({error})"
        ) from None


def build_submission_rows(rows: list[MMBenchRow], predictions: dict[int, str]) -> tuple[list[str], list[list[str]]]:
    """Return the header and rows of the submission file.

    `predictions` maps each TSV index to the raw answer text of its unrotated question.
    Raises DataError when an index has no prediction.
    """
    missing = [row.index for row in rows if row.index not in predictions]
    if missing:
        raise DataError(
            f"cannot write the MMBench submission: {len(missing)} questions have no answer "
            f"(indexes {format_id_list(missing)}); answer every row of the TSV first"
        )

    available = set().union(*(row.columns for row in rows))
    header = list(SUBMISSION_REQUIRED_COLUMNS)
    header += [column for column in SUBMISSION_OPTIONAL_COLUMNS if column in available]

    table = []
    for row in rows:
        values = dict(row.columns)
        values["index"] = str(row.index)
        values["prediction"] = predictions[row.index]
        for column in MMBENCH_OPTION_COLUMNS:
            values.setdefault(column, "")
        table.append([values.get(column, "") for column in header])
    return header, table


def write_mmbench_submission(rows: list[MMBenchRow], predictions: dict[int, str], path: str | Path) -> None:
    """Write the MMBench submission as .xlsx (needs openpyxl) or .tsv, chosen by the file suffix."""
    path = Path(path)
    header, table = build_submission_rows(rows, predictions)
    path.parent.mkdir(parents=True, exist_ok=True)

    if path.suffix.lower() == ".tsv":
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t")
            writer.writerow(header)
            writer.writerows(table)
        return

    if path.suffix.lower() != ".xlsx":
        raise DataError(f"MMBench submission file {path} must end in .xlsx (what the server accepts) or .tsv")
    try:
        from openpyxl import Workbook
    except ModuleNotFoundError:
        raise DataError("writing an .xlsx submission needs openpyxl: run `pip install openpyxl`, or write .tsv") from None

    workbook = Workbook()
    sheet = workbook.active
    sheet.append(header)
    for values in table:
        sheet.append(values)
    workbook.save(path)
