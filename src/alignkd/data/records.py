"""Lazy access to the records of a LLaVA-format data file (a JSON list or JSON Lines).

A LLaVA data file is either a JSON list of samples (`.json`) or one JSON object per line
(`.jsonl`). Both are read into the same structure: a byte buffer (or the file itself) plus
an index of the start and end offset of each record, so that `records[row]` parses one
record when it is needed.

- JSON Lines files are never loaded whole. Opening one scans the file once to index the
  line offsets, and each access seeks to its line. Blank lines are skipped; rows count
  only the non-blank lines.
- A JSON list has to be parsed whole, because its record boundaries are only known after
  parsing. The parsed records are re-encoded as compact JSON bytes in one buffer and the
  Python objects are dropped. The buffer avoids the copy-on-read memory growth that a
  large list of dicts causes in forked DataLoader workers.

Records are returned as parsed JSON values. Their content is validated later, sample by
sample, by `alignkd.data.conversation`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from alignkd.data.problems import ProblemKind, SampleProblem
from alignkd.errors import DataError

logger = logging.getLogger(__name__)

RecordFormat = Literal["json", "jsonl"]

# Files up to this size that start with a broken line are parsed whole, to tell one JSON
# object from JSON Lines.
_MAX_OBJECT_CHECK_BYTES = 64 * 1024 * 1024


class LlavaRecords:
    """The records of one LLaVA-format data file, parsed one at a time on access.

    Args:
        path: a `.json` file containing a JSON list of samples, or a JSON Lines file (`.jsonl`,
            or a `.json` file whose first character is `{`).

    Raises:
        DataError: the file is missing, empty, or is neither a JSON list nor JSON Lines.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"data file not found: {self.path}. Pass the path of a LLaVA-format .json or .jsonl file")

        self.format: RecordFormat = _detect_format(self.path)
        self._buffer: bytes | None = None
        self._handle = None
        self._handle_pid: int | None = None

        if self.format == "jsonl":
            self._starts, self._ends, self._line_numbers = _index_json_lines(self.path)
        else:
            self._buffer, self._starts, self._ends = _encode_json_list(self.path)
            self._line_numbers = None

        logger.info("Indexed %d records in %s (%s)", len(self), self.path, self.format)

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, row: int) -> Any:
        """Parse record `row`.

        Raises:
            SampleProblem: an `invalid_record` problem when the line is not valid JSON.
        """
        raw = self._read(row)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SampleProblem(ProblemKind.INVALID_RECORD, f"{self.locate(row)} is not valid JSON ({error})") from None

    def locate(self, row: int) -> str:
        """Return where record `row` sits in the file, for messages ("line 7 of data.jsonl")."""
        if self._line_numbers is not None:
            return f"line {int(self._line_numbers[row])} of {self.path.name}"
        return f"item {row} of {self.path.name}"

    def _read(self, row: int) -> bytes:
        start = int(self._starts[row])
        end = int(self._ends[row])
        if self._buffer is not None:
            return self._buffer[start:end]

        # Each process opens its own handle: a handle inherited through fork would share its
        # file position with the parent and with the other DataLoader workers.
        if self._handle is None or self._handle_pid != os.getpid():
            self._handle = self.path.open("rb")
            self._handle_pid = os.getpid()
        self._handle.seek(start)
        return self._handle.read(end - start)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_handle_pid"] = None
        return state


def _detect_format(path: Path) -> RecordFormat:
    """Decide between a JSON list and JSON Lines from the first non-blank character."""
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(4096)
            if not chunk:
                raise DataError(
                    f"data file {path} is empty. Expected a JSON list of samples or one JSON object per line"
                )
            stripped = chunk.lstrip()
            if stripped:
                break

    # A UTF-8 byte order mark is tolerated, as json.loads tolerates it on str input.
    stripped = stripped.removeprefix(b"\xef\xbb\xbf").lstrip()
    first = stripped[:1]
    if first == b"[":
        return "json"
    if first == b"{":
        _check_first_line_is_object(path)
        return "jsonl"
    raise DataError(
        f"data file {path} starts with {first!r}: expected a JSON list of samples ('[') "
        "or JSON Lines with one sample object per line ('{')"
    )


def _check_first_line_is_object(path: Path) -> None:
    """Reject a file that is one JSON object spread over several lines.

    Such a file (a config or a manifest, say) is not JSON Lines, and reading it line by line
    would report every line as a broken sample. A JSON Lines file whose first line is broken
    still loads, so that the line is reported as one invalid record.
    """
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                break
    try:
        json.loads(line)
        return
    except json.JSONDecodeError:
        pass

    # Parse the whole file only when it is small enough to be a config rather than data.
    if path.stat().st_size > _MAX_OBJECT_CHECK_BYTES:
        return
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError:
        return
    if isinstance(data, dict):
        keys = ", ".join(list(data)[:5])
        raise DataError(
            f"data file {path} is one JSON object (keys: {keys}), not LLaVA data. Expected a JSON list of "
            "samples or JSON Lines with one sample object per line"
        )


def _index_json_lines(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the start offset, end offset and 1-based line number of each non-blank line."""
    starts: list[int] = []
    ends: list[int] = []
    line_numbers: list[int] = []

    offset = 0
    with path.open("rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                starts.append(offset)
                ends.append(offset + len(line))
                line_numbers.append(line_number)
            offset += len(line)

    return (
        np.asarray(starts, dtype=np.int64),
        np.asarray(ends, dtype=np.int64),
        np.asarray(line_numbers, dtype=np.int64),
    )


def _encode_json_list(path: Path) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Parse a JSON list and return its records as one buffer of JSON bytes with offsets."""
    try:
        with path.open("rb") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(
            f"data file {path} is not valid JSON ({error}). A .json data file must contain one JSON list of samples; "
            "for one sample per line, name the file .jsonl"
        ) from None
    if not isinstance(data, list):
        raise DataError(f"data file {path} contains a JSON {type(data).__name__}, expected a list of samples")

    encoded = [json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") for record in data]
    del data

    lengths = np.fromiter((len(item) for item in encoded), dtype=np.int64, count=len(encoded))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    return b"".join(encoded), starts, ends
